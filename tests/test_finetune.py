"""Fine-tuning from the command line: config.init_from, head, trainable.

A tiny CIFAR-stem ResNeXt (torchvision's tensor names) fine-tuned on a
folder of 3 classes the tests draw; a few steps at 16x16.
"""

import hashlib
import json
import shutil

import jax
import numpy as np
import pytest
from conftest import block_torch_import, random_variables
from PIL import Image
from safetensors.numpy import load_file

import resnext_jax as rx
from configs.finetune_folder import get_config
from resnext_jax.weights import pretrained as pretrained_cfg
from train import init_from, loop
from train.model_factory import build_model
from train.workdir import ConfigMismatchError
from train_helpers import short_run

CLASSES = ["cat", "dog", "fox"]
MODEL = dict(stage_sizes=(1, 1, 1), stem="cifar", cardinality=4,
             base_width=2)
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes of 6 images, each class with its own dominant colour."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 255, (20, 24, 3), np.uint8)
            pixels[..., c] = 250
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _model(num_classes):
    return rx.ResNeXt(num_classes=num_classes, **MODEL)


def _source(path, num_classes=5, seed=1, **fields):
    """A torchvision-named .safetensors file of random weights (random BN
    statistics too, so that nothing is a no-op)."""
    model = _model(num_classes).clone(**fields)
    rx.weights.save_safetensors(random_variables(model, seed=seed), model, path)
    return path


def _config(folder, source, **overrides):
    """configs/finetune_folder.py with the tiny model, 16x16, 3 steps."""
    config = get_config()
    config.model = "custom"
    for key, value in MODEL.items():
        config.model_kwargs[key] = value
    config.init_from = str(source)
    config.data_dir = str(folder)
    config.folder_eval_fraction = 0.34  # 12 training images, 6 eval.
    config.image_size = 16
    config.batch_size = 4
    config.eval_batch_size = 6
    config.num_train_steps = 3
    config.warmup_epochs = 0.0
    config.base_learning_rate = 0.1  # Steps that visibly move the weights.
    config.base_batch_size = 4
    config.shuffle_buffer_size = 16
    return short_run(config, **overrides)


def _bundle_weights(workdir):
    return load_file(str(workdir / "model" / "weights.safetensors"))


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def probed(folder, tmp_path_factory):
    """A completed linear probe (trainable="head") of a 5-class source:
    (workdir, source). The tests share it: each new train step compiles
    for a while on a small CPU."""
    root = tmp_path_factory.mktemp("probed")
    source = _source(root / "source.safetensors")
    loop.train_and_evaluate(_config(folder, source, trainable="head"),
                            root / "run")
    return root / "run", source


def test_finetune_from_safetensors_then_predict(probed, folder, capsys):
    from resnext_jax.commands import predict as predict_command

    workdir, source = probed
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 3
    record = summary["init_from"]
    assert record["sha256"] == _sha256(source)
    assert record["kind"] == "weights" and record["head"] == "reinit"
    assert record["source_num_classes"] == 5
    assert json.loads((workdir / "init_from.json").read_text()) == record
    history = [json.loads(line) for line in
               (workdir / "config_history.jsonl").read_text().splitlines()]
    assert history[0]["init_from"]["sha256"] == record["sha256"]
    assert history[0]["config"]["init_from"] == str(source)

    capsys.readouterr()
    images = sorted(str(p) for p in folder.rglob("*.png"))[::5]
    predict_command.main(["--workdir", str(workdir), "--json", "--top-k", "3",
                  *images])
    results = json.loads(capsys.readouterr().out)
    assert len(results) == len(images)
    for result in results:
        assert sorted(p["label"] for p in result["predictions"]) == CLASSES


def test_learning_rate_zero_exports_the_source_params_bit_for_bit(
        folder, tmp_path):
    source = _source(tmp_path / "source.safetensors", num_classes=3)
    loop.train_and_evaluate(
        _config(folder, source, base_learning_rate=0.0, weight_decay=0.0),
        tmp_path / "run")
    before, after = load_file(str(source)), _bundle_weights(tmp_path / "run")
    assert set(after) == set(before)
    params = [k for k in before if not k.endswith(BN_STATS)]
    assert "fc.weight" in params  # head="auto", 3 classes: kept.
    for key in params:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    # Training mode still moves BatchNorm's running statistics (they are
    # not parameters): only trainable="head" freezes them.
    assert any(not np.array_equal(after[k], before[k]) for k in before
               if k.endswith("running_var"))


def test_linear_probing_trains_the_head_alone(probed):
    workdir, source = probed
    before, after = load_file(str(source)), _bundle_weights(workdir)
    backbone = [k for k in before if not k.startswith("fc.")]
    for key in backbone:  # BN statistics included.
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    # The classifier moved from its fresh start (head="auto": 5 != 3).
    fresh = rx.load_torch_state_dict(before, _model(3), head="reinit",
                                     rng=get_config().seed)["params"]["fc"]
    assert after["fc.weight"].shape == (3, before["fc.weight"].shape[1])
    assert not np.allclose(after["fc.weight"], np.asarray(fresh["kernel"]).T)


def _load(folder, source, num_classes=3, **overrides):
    """``init_from.load`` as the loop calls it: (variables, record)."""
    config = _config(folder, source, **overrides)
    model = build_model(config, num_classes, axis_name=None)
    return init_from.load(init_from.find_source(config), config, model,
                          num_classes)


@pytest.mark.parametrize("head,source_classes,expected", [
    ("auto", 3, "keep"), ("auto", 5, "reinit"),
    ("keep", 3, "keep"), ("reinit", 3, "reinit")])
def test_head_policies(folder, tmp_path, head, source_classes, expected):
    source = _source(tmp_path / "s.safetensors", num_classes=source_classes)
    variables, record = _load(folder, source, head=head)
    assert record["head"] == expected
    state = load_file(str(source))
    fc = np.asarray(variables["params"]["fc"]["kernel"]).T
    assert fc.shape == (3, state["fc.weight"].shape[1])
    if expected == "keep":
        np.testing.assert_array_equal(fc, state["fc.weight"])
    elif source_classes == 3:
        assert not np.allclose(fc, state["fc.weight"])
    loaded = rx.to_torch_state_dict(variables, _model(3))
    for key in state:
        if not key.startswith("fc."):
            np.testing.assert_array_equal(loaded[key], state[key])


def test_pth_source_loads_as_its_safetensors(folder, tmp_path):
    torch = pytest.importorskip("torch")
    source = _source(tmp_path / "s.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in
                load_file(str(source)).items()}, tmp_path / "s.pth")
    from_safetensors, _ = _load(folder, source)
    from_pth, record = _load(folder, tmp_path / "s.pth")
    assert record["kind"] == "weights"
    jax.tree.map(np.testing.assert_array_equal, from_pth, from_safetensors)


def test_bundle_source_sets_the_run_preprocessing(folder, tmp_path):
    model = _model(3)
    variables = random_variables(model, seed=3)
    spec = rx.Preprocessing(resize_size=40, crop_size=32,
                            interpolation="bicubic", mean=(0.5, 0.4, 0.3),
                            std=(0.2, 0.3, 0.4))
    rx.save_pretrained(tmp_path / "bundle", model, variables,
                       class_names=CLASSES, preprocessing=spec)
    summary = loop.train_and_evaluate(
        _config(folder, tmp_path / "bundle", base_learning_rate=0.0,
                weight_decay=0.0), tmp_path / "run")
    assert summary["init_from"]["kind"] == "bundle"
    assert summary["init_from"]["head"] == "keep"
    recorded = rx.load_pretrained(tmp_path / "run").preprocessing
    assert recorded == rx.Preprocessing(
        resize_size=20, crop_size=16, interpolation="bicubic",
        mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    after = _bundle_weights(tmp_path / "run")
    np.testing.assert_array_equal(
        after["conv1.weight"],
        rx.to_torch_state_dict(variables, model)["conv1.weight"])
    # The config overrides the source: preprocess names the spec.
    config = _config(folder, tmp_path / "bundle", preprocess="imagenet")
    assert init_from.run_preprocessing(config, spec) is None


def test_workdir_source_is_its_model_bundle(probed, folder):
    workdir, _ = probed
    variables, record = _load(folder, workdir)
    assert record["kind"] == "workdir" and record["head"] == "keep"
    assert record["path"] == str((workdir / "model" /
                                  "weights.safetensors").resolve())
    bundle = rx.load_pretrained(workdir)
    jax.tree.map(np.testing.assert_array_equal, variables, bundle.variables)
    source = init_from.find_source(_config(folder, workdir))
    assert source.preprocessing == bundle.preprocessing


def test_registry_weights_take_the_publishers_preprocessing(folder,
                                                            tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"")  # Not read until the model is built.
    for name, interpolation, resize in (("seresnext101d_32x8d", "bicubic",
                                         236),
                                        ("resnext50_32x4d", "bilinear", 256)):
        config = _config(folder, path, model=name, image_size=224)
        source = init_from.find_source(config)
        spec = init_from.run_preprocessing(config, source.preprocessing)
        assert (spec.interpolation, spec.resize_size, spec.crop_size) == (
            interpolation, resize, 224)


def test_timm_table_matches_timm():
    timm_models = pytest.importorskip("timm.models")
    for name, (interpolation, crop_pct) in (
            pretrained_cfg.TIMM_PREPROCESSING.items()):
        cfg = timm_models.get_pretrained_cfg(name)
        assert (cfg.interpolation, cfg.crop_pct) == (interpolation, crop_pct)
        assert tuple(cfg.mean) == rx.Preprocessing().mean
    assert rx.weights.pretrained.pretrained_preprocessing("resnext29_8x64d") is None
    assert set(pretrained_cfg.TIMM_PREPROCESSING).isdisjoint(
        pretrained_cfg.TORCHVISION_NAMES)


def _bad_source(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "nowhere.safetensors", {}
    if kind == "unknown type":
        (tmp_path / "w.npz").write_bytes(b"x")
        return tmp_path / "w.npz", {}
    if kind == "empty directory":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", {}
    if kind == "damaged":
        (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file")
        return tmp_path / "w.safetensors", {}
    if kind == "architecture":
        return _source(tmp_path / "s.safetensors", cardinality=2), {}
    if kind == "keep":
        return _source(tmp_path / "s.safetensors"), {"head": "keep"}
    raise ValueError(kind)


@pytest.mark.parametrize("kind,message", [
    ("missing", r"nowhere\.safetensors'\) does not exist; give a "
                r"\.safetensors or \.pth/\.pt weights file"),
    ("unknown type", r"is a file of unknown type \(\.npz\)"),
    ("empty directory", r"is a directory without a model bundle"),
    ("damaged", r"w\.safetensors'\) could not be read: ValueError: .*"
                r"not a readable \.safetensors file"),
    ("architecture", r"does not fit config\.model \(='custom'.*"
                     r"wrong-shaped tensor\(s\) \(layer1\.0\."),
    ("keep", r"config\.head \(='keep'\) needs .* has 5 classes, the data "
             r"set 3"),
])
def test_bad_sources_fail_before_the_run_starts(folder, tmp_path, kind,
                                                message):
    source, overrides = _bad_source(tmp_path, kind)
    with pytest.raises(init_from.InitFromError, match=message) as error:
        loop.train_and_evaluate(_config(folder, source, **overrides),
                                tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # Nothing compiled or written.


def test_a_pth_fine_tunes_without_torch(folder, tmp_path, monkeypatch):
    """A .pth source is read without torch: the same variables as the
    .safetensors it was saved from; a damaged one is one clear error."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file
    safetensors = _source(tmp_path / "w.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in
                load_file(safetensors).items()}, tmp_path / "w.pth")
    block_torch_import(monkeypatch)
    expected, _ = _load(folder, safetensors)
    variables, _ = _load(folder, tmp_path / "w.pth")
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.pth").write_bytes(b"x")
    with pytest.raises(init_from.InitFromError,
                       match=r"bad\.pth'\) could not be read: ValueError"):
        _load(folder, tmp_path / "bad.pth")


def test_resume_never_reads_init_from(probed, folder, tmp_path, capsys):
    """Stopped at step 2 and restarted with the source gone, the run
    continues from its checkpoint to the uninterrupted run's weights."""
    reference, original = probed
    source = tmp_path / "source.safetensors"
    shutil.copy(original, source)
    config = _config(folder, source, trainable="head")
    loop.train_and_evaluate(config, tmp_path / "run", stop_at_step=2)
    source.unlink()
    capsys.readouterr()
    summary = loop.train_and_evaluate(config, tmp_path / "run")
    assert "config.init_from is not read again" in capsys.readouterr().out
    assert summary["steps"] == 3
    assert summary["init_from"]["sha256"] == _sha256(original)
    resumed, uninterrupted = (_bundle_weights(tmp_path / "run"),
                              _bundle_weights(reference))
    for key in uninterrupted:  # The head, trained on from step 2.
        np.testing.assert_array_equal(resumed[key], uninterrupted[key],
                                      err_msg=key)


@pytest.mark.parametrize("change", [{"trainable": "all"},
                                    {"momentum": 0.0},
                                    {"trainable": "all",
                                     "allow_config_change": True}])
def test_resume_with_another_optimizer_state_names_the_fix(probed, folder,
                                                           change):
    """A linear probe's checkpoints hold no momentum for the backbone:
    they cannot resume a full fine-tune (or momentum-free SGD), and the
    error says what to do instead, before anything compiles or moves."""
    workdir, source = probed
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    config = _config(folder, source, trainable="head")
    config.update(change)
    with pytest.raises(ConfigMismatchError) as error:
        loop.train_and_evaluate(config, workdir)
    message = str(error.value)
    changed = "trainable: 'head' -> 'all'" if "trainable" in change else (
        "momentum: 'used' -> 'none'")
    assert changed in message
    assert f"--config.init_from={workdir}" in message
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
