"""Parameter and FLOP counts against torchvision's and the paper's numbers."""

import jax
import pytest

import resnext_jax as rx
from resnext_jax.commands import summary


def _param_count(name, **overrides):
    model = rx.create_model(name, **overrides)
    size = 32 if model.stem == "cifar" else 64  # counts do not depend on it
    shapes = jax.eval_shape(lambda: rx.init_variables(model, 0, size))
    return rx.models.count_params(shapes)


# torchvision's published parameter counts, exact (1000 classes).
@pytest.mark.parametrize("name, expected", [
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
    ("resnext50_32x4d", 25_028_904),
    ("resnext101_32x8d", 88_791_336),
    ("resnext101_64x4d", 83_455_272),
])
def test_param_counts_match_torchvision_exactly(name, expected):
    assert _param_count(name) == expected


# Paper Tables 3/7 (rounded to 0.1M); we require 0.2%.
@pytest.mark.parametrize("name, num_classes, millions", [
    ("resnext101_32x4d", 1000, 44.2),
    ("resnext29_8x64d", 10, 34.4),
    ("resnext29_16x64d", 10, 68.1),
])
def test_param_counts_match_paper(name, num_classes, millions):
    count = _param_count(name, num_classes=num_classes)
    assert abs(count / 1e6 - millions) / millions < 0.002, count


def test_table2_settings_have_resnet50_complexity():
    # Paper Table 2: the C x d settings keep ResNeXt-50's complexity (~25M).
    base = _param_count("resnet50")
    for name in ("resnext50_2x40d", "resnext50_4x24d", "resnext50_8x14d",
                 "resnext50_32x4d"):
        assert abs(_param_count(name) - base) / base < 0.03, name


def test_resnext50_1x64d_is_resnet50():
    assert (rx.models.model_config("resnext50_1x64d")
            == rx.models.model_config("resnet50"))


@pytest.mark.parametrize("name, gmacs", [
    ("resnext50_32x4d", 4.23), ("resnet50", 4.09),
    ("resnext101_32x8d", 16.41), ("resnext101_64x4d", 15.46),
])
def test_flops_match_torchvision(name, gmacs):
    macs = rx.models.count_macs(rx.create_model(name), image_size=224)
    assert abs(macs / 1e9 - gmacs) / gmacs < 0.01, macs


def test_flops_scale_with_image_size():
    model = rx.create_model("resnext50_32x4d")
    small, big = rx.models.count_macs(model, 112), rx.models.count_macs(model, 224)
    assert 3.5 < big / small < 4.5


def test_count_params_excludes_batch_stats():
    model = rx.create_model("resnet50", num_classes=10)
    shapes = jax.eval_shape(lambda: rx.init_variables(model, 0, 32))
    assert rx.models.count_params(shapes) == rx.models.count_params(shapes["params"])
    assert "batch_stats" in shapes


def test_summary_rows_add_up():
    model = rx.create_model("resnext50_32x4d")
    rows = rx.summarize(model, 224)
    assert [r["stage"] for r in rows] == [
        "stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(r["params"] for r in rows) == 25_028_904
    assert [r["output_shape"] for r in rows[:5]] == [
        (56, 56, 64), (56, 56, 256), (28, 28, 512), (14, 14, 1024),
        (7, 7, 2048)]


def test_summary_command_prints_table(capsys):
    assert summary.main(["resnext50_32x4d"]) == 0
    out = capsys.readouterr().out
    assert "25,028,904" in out and "4.230" in out


def test_summary_command_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit):
        summary.main(["resnext51"])
    assert "unknown model name 'resnext51'" in capsys.readouterr().err
