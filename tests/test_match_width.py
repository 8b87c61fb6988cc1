"""rx.match_width, the closed-form counts it searches with, and
resnext-summary --model-kwargs."""

import json

import numpy as np
import pytest

import resnext_jax as rx
from resnext_jax.commands import summary
from resnext_jax.models.counting import (_trace_layer_costs, analytic_macs,
                                  analytic_params)


def _traced(model, image_size):
    """(count_params, count_macs) from one shape-only trace."""
    costs, variables = _trace_layer_costs(model, image_size)
    return rx.models.count_params(variables), sum(c.macs for c in costs)


# Paper Table 2: ResNeXt-50 settings that keep ResNet-50's ~25M parameters.
TABLE2 = {1: 64, 2: 40, 4: 24, 8: 14, 32: 4}


def test_table2_exactly_by_params():
    got = {c: rx.match_width(c) for c in TABLE2}
    assert got == TABLE2
    assert all(type(d) is int for d in got.values())
    # The defaults spelled out, and numpy integers as cardinality.
    assert rx.match_width(np.int64(32), like="resnet50", by="params") == 4


def test_table2_widths_are_the_registry_models():
    for c, d in TABLE2.items():
        name = "resnet50" if c == 1 else f"resnext50_{c}x{d}d"
        config = rx.models.model_config(name)
        assert (config["cardinality"], config["base_width"]) == (c, d)


@pytest.mark.parametrize("like", ["resnet50", "resnext29_8x64d",
                                  "seresnext26t_32x4d"])
@pytest.mark.parametrize("by", ["params", "macs"])
def test_match_is_the_closest_candidate(like, by):
    reference = rx.create_model(like)
    size = 32 if reference.stem == "cifar" else 224
    count = analytic_params if by == "params" else (
        lambda m: analytic_macs(m, size))
    target = count(reference)
    for c in (1, 2, 3, 4, 8, 16, 32, 64):
        d = rx.match_width(c, like=like, by=by)
        gaps = {w: abs(count(reference.clone(cardinality=c, base_width=w))
                       - target) for w in range(1, 2 * d + 64)}
        best = min(gaps.values())
        # The closest width, the smaller one on a tie.
        assert d == min(w for w, g in gaps.items() if g == best), (c, d)
        for planes in (64, 128, 256, 512):  # blocks accept the width
            rx.Bottleneck(planes=planes, cardinality=c, base_width=d)


def test_by_macs_against_resnet50_traced():
    # By multiply-adds at 224 the widths are 64, 40, 24, 13, 4: C = 8 differs
    # from Table 2's 14, which matches parameters, not multiply-adds.
    assert [rx.match_width(c, by="macs") for c in TABLE2] == [
        64, 40, 24, 13, 4]
    reference = rx.create_model("resnet50")
    target = rx.models.count_macs(reference, 224)
    assert target == analytic_macs(reference, 224) == 4_089_184_256
    gaps = {}
    for d in (12, 13, 14):  # chosen and its neighbours, traced
        model = reference.clone(cardinality=8, base_width=d)
        macs = rx.models.count_macs(model, 224)
        assert macs == analytic_macs(model, 224)
        gaps[d] = abs(macs - target)
    assert gaps[13] < gaps[14] < gaps[12]


def test_image_size_option():
    # At 32 px the stem and the max-pool leave 1x1 maps in the last stage;
    # the answer is still the closest by the counts at that size.
    reference = rx.create_model("resnet50")
    d = rx.match_width(8, by="macs", image_size=32)
    target = analytic_macs(reference, 32)
    gap = lambda w: abs(analytic_macs(  # noqa: E731
        reference.clone(cardinality=8, base_width=w), 32) - target)
    assert gap(d) <= gap(d - 1) and gap(d) <= gap(d + 1)


# torchvision's published counts and the paper's CIFAR models, no trace.
@pytest.mark.parametrize("name, params", [
    ("resnet50", 25_557_032), ("resnext50_32x4d", 25_028_904),
    ("resnext101_32x8d", 88_791_336), ("resnext101_64x4d", 83_455_272),
    ("resnext29_8x64d", 34_426_698), ("resnext29_32x4d", 4_775_754),
])
def test_closed_form_params_match_published(name, params):
    assert analytic_params(rx.create_model(name)) == params


@pytest.mark.parametrize("name, overrides, size", [
    ("resnext50_32x4d", {}, 224),
    ("resnext50_32x4d", {"num_classes": 0}, 65),  # odd sizes round up
    ("resnext29_32x4d", {}, 32),
    ("resnext29_8x64d", {"cardinality": 2, "base_width": 8,
                         "block_form": "B", "num_classes": 100}, 33),
    ("resnext50d_32x4d", {}, 97),  # deep stem, average-pool shortcut
    ("seresnext26t_32x4d", {}, 64),  # tiered stem, SE
    ("ecaresnext26t_32x4d", {}, 64),  # ECA
    ("resnet50", {"cardinality": 8, "base_width": 14,
                  "stage_widths": (64, 128, 264, 512)}, 50),
])
def test_closed_form_matches_traced_counts(name, overrides, size):
    model = rx.create_model(name, **overrides)
    assert _traced(model, size) == (analytic_params(model),
                                    analytic_macs(model, size))


def test_closed_form_follows_expansion():
    model = rx.create_model("resnext29_32x4d", expansion=2)
    size = 32
    assert _traced(model, size) == (analytic_params(model),
                                    analytic_macs(model, size))


def test_closed_form_follows_output_stride():
    model = rx.create_model("resnext50_32x4d", output_stride=8)
    size = 64
    assert _traced(model, size) == (analytic_params(model),
                                    analytic_macs(model, size))


def test_closed_form_refuses_custom_blocks():
    class Custom(rx.Bottleneck):
        pass

    model = rx.create_model("resnext29_32x4d", block_cls=Custom)
    with pytest.raises(ValueError, match="use count_params and count_macs"):
        analytic_params(model)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(cardinality=0), r"cardinality \(=0\) must be a positive integer"),
    (dict(cardinality=-4), r"cardinality \(=-4\) must be a positive"),
    (dict(cardinality=2.0), r"cardinality \(=2.0\) must be a positive"),
    (dict(cardinality=True), r"cardinality \(=True\) must be a positive"),
    (dict(cardinality="32"), r"cardinality \(='32'\) must be a positive"),
    (dict(cardinality=32, like="resnet5"),
     r"unknown model name 'resnet5'\. Did you mean 'resnet50'"),
    (dict(cardinality=32, like=None), r"like \(=None\) must be a model name"),
    (dict(cardinality=32, by="flops"),
     r"by='flops' is not a complexity measure; choose one of "
     r"\('params', 'macs'\)"),
    (dict(cardinality=32, by="macs", image_size=0),
     r"image_size \(=0\) must be a positive integer"),
])
def test_bad_arguments_refused(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        rx.match_width(**kwargs)


# ---------------------------------------------------------------------------
# resnext-summary --model-kwargs

def test_summary_model_kwargs_json(capsys):
    kwargs = {"cardinality": 32, "base_width": 4}
    assert summary.main(["resnet50", "--model-kwargs", json.dumps(kwargs),
                         "--image-size", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = rx.create_model("resnet50", **kwargs)
    assert (out["params"], out["macs"]) == _traced(model, 64)
    assert out["params"] == 25_028_904  # resnext50_32x4d, not resnet50
    assert out["model_kwargs"] == kwargs


def test_summary_model_kwargs_table(capsys):
    assert summary.main(["resnext29_8x64d", "--model-kwargs",
                         '{"cardinality": 4, "attn_layer": "se"}',
                         "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    model = rx.create_model("resnext29_8x64d", cardinality=4,
                            attn_layer="se", num_classes=100)
    assert out.splitlines()[0].startswith(
        'resnext29_8x64d {"cardinality": 4, "attn_layer": "se"}')
    assert f"{analytic_params(model):,}" in out
    assert f"{analytic_macs(model, 32) / 1e9:.3f}" in out


@pytest.mark.parametrize("text, message", [
    ('{"cardinality": 32', "--model-kwargs: model kwargs "
                           "'{\"cardinality\": 32' are not JSON"),
    ("[1, 2]", "must be a JSON object of ResNeXt field overrides"),
    ('{"cardinalty": 32}', "unknown override(s) ['cardinalty']"),
    ('{"cardinality": 0}', "cardinality (=0) must be a positive integer"),
    ('{"stage_sizes": 3}', '--model-kwargs {"stage_sizes": 3}: '
                           "'int' object is not iterable"),
    ('{"num_classes": 5}', "--num-classes (=10) and --model-kwargs' "
                           "num_classes (=5) disagree"),
])
def test_summary_model_kwargs_refused_in_one_line(capsys, text, message):
    with pytest.raises(SystemExit) as info:
        summary.main(["resnet50", "--model-kwargs", text,
                      "--num-classes", "10"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m resnext_jax.commands.summary: error: ")
    assert message in last
