"""Both input engines (tf.data, Grain) behind one DataSource: batches that
are a pure function of the step, eval inputs that are the library's spec,
the choice of engine, and Grain's own image operations."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from train import data as data_lib
from train.config_validation import ConfigError, validate_config
from train.data import engines
from train_helpers import run_python, tiny_config

ENGINES = [
    pytest.param("tf", marks=pytest.mark.skipif(
        not engines.installed("tf"), reason="TensorFlow is not installed")),
    pytest.param("grain", marks=pytest.mark.skipif(
        not engines.installed("grain"), reason="grain is not installed")),
]


def _write_folder(root, per_class=6):
    """JPEGs and PNGs of three classes, two of them stored sideways with an
    EXIF orientation tag."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog", "fox")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (30 + 3 * i, 22 + 4 * c, 3),
                                  np.uint8)
            image = Image.fromarray(pixels)
            exif = image.getexif()
            if i in (1, 2):
                exif[0x0112] = 6 if i == 1 else 3
            ext = "png" if i % 2 else "jpg"
            image.save(root / name / f"{i}.{ext}", exif=exif)
    return root


def _config(root, engine, **overrides):
    return tiny_config(**{
        "dataset": "folder", "data_dir": str(root), "image_size": 16,
        "batch_size": 4, "eval_batch_size": 4, "folder_eval_fraction": 0.34,
        "data_engine": engine, "data_workers": 0, **overrides})


@pytest.mark.parametrize("engine", ENGINES)
def test_train_batches_are_a_function_of_the_step(tmp_path, engine):
    """What a resumed run sees at step k is what a run from 0 saw: across
    an epoch's end too."""
    source = data_lib.create_data_source(
        _config(_write_folder(tmp_path / "images"), engine))
    assert source.engine == engine
    per_epoch = source.steps_per_epoch
    assert per_epoch == 3  # 12 training images, 4 per batch.
    stream = source.train_batches(0)
    seen = [next(stream) for _ in range(per_epoch + 2)]
    stream.close()
    assert seen[0]["image"].shape == (4, 16, 16, 3)
    assert seen[0]["image"].dtype == np.float32
    for step in (1, per_epoch + 1):
        resumed = source.train_batches(step)
        for expected in seen[step:step + 1]:
            got = next(resumed)
            np.testing.assert_array_equal(got["image"], expected["image"])
            np.testing.assert_array_equal(got["label"], expected["label"])
        resumed.close()
    # Each epoch is another order and other crops.
    assert not np.array_equal(seen[0]["image"], seen[per_epoch]["image"])
    assert sorted(np.concatenate([b["label"] for b in seen[:per_epoch]])) == (
        [0] * 4 + [1] * 4 + [2] * 4)


@pytest.mark.parametrize("engine", ENGINES)
def test_eval_batches_are_the_library_preprocessing(tmp_path, engine):
    """The eval inputs are exactly what predict computes from the files
    (Preprocessing.load_image), EXIF orientation included."""
    root = tmp_path / "images"
    for split, per_class in (("train", 4), ("val", 3)):
        _write_folder(root / split, per_class=per_class)
    source = data_lib.create_data_source(_config(root, engine))
    files = sorted((root / "val").rglob("*.*"))
    images = np.concatenate([b["image"][b["mask"] > 0]
                             for b in source.eval_batches()])
    expected = np.stack([source.preprocessing.load_image(f) for f in files])
    np.testing.assert_array_equal(images, expected)
    labels = np.concatenate([b["label"][b["mask"] > 0]
                             for b in source.eval_batches()])
    assert labels.tolist() == [source.class_names.index(f.parent.name)
                               for f in files]


@pytest.mark.skipif(not engines.installed("grain"),
                    reason="grain is not installed")
def test_grain_workers_compute_the_same_batches(tmp_path):
    """Each batch is one worker's: the data do not depend on how many
    workers there are, so a run resumes exactly on another machine."""
    root = _write_folder(tmp_path / "images")
    alone = data_lib.create_data_source(_config(root, "grain"))
    two = data_lib.create_data_source(_config(root, "grain", data_workers=2))
    expected = alone.train_batches(2)
    got = two.train_batches(2)
    for _ in range(3):
        a, b = next(expected), next(got)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    got.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_hosts_partition_the_examples(tmp_path, engine):
    root = _write_folder(tmp_path / "images", per_class=8)
    config = _config(root, engine, augment=False)
    sources = [data_lib.create_data_source(config, i, 2) for i in range(2)]
    assert sources[0].steps_per_epoch == sources[1].steps_per_epoch
    images = [np.concatenate([b["image"][b["mask"] > 0]
                              for b in s.eval_batches()]) for s in sources]
    whole = np.concatenate([b["image"][b["mask"] > 0] for b in
                            data_lib.create_data_source(config, 0, 1)
                            .eval_batches()])
    assert len(images[0]) + len(images[1]) == len(whole)
    # Every eval image exactly once over the two hosts.
    assert sorted(map(bytes, np.concatenate(images))) == sorted(
        map(bytes, whole))


# --- Choosing the engine. ---

def test_auto_takes_the_first_installed_engine(monkeypatch):
    config = _config("/nowhere", "auto")
    monkeypatch.setattr(engines, "installed", lambda e, family="": True)
    assert engines.resolve_engine(config) == engines.AUTO_ORDER["folder"][0]
    monkeypatch.setattr(engines, "installed",
                        lambda e, family="": e == "grain")
    assert engines.resolve_engine(config) == "grain"
    assert not data_lib.needs_tensorflow(config)
    # What only tf.data applies makes "auto" choose it, and Grain refuse.
    config.random_erase = 0.25
    with pytest.raises(data_lib.DataError, match=r"random_erase=0\.25 "
                       r"need\(s\) the tf\.data engine, which is not "
                       r"installed: pip install"):
        engines.resolve_engine(config)
    config.data_engine = "grain"
    with pytest.raises(ConfigError, match=r"config\.data_engine \(='grain'\) "
                       r"does not apply config\.random_erase=0\.25"):
        engines.resolve_engine(config)


def test_an_engine_that_is_not_installed_is_named_with_the_fix(
        monkeypatch):
    monkeypatch.setattr(engines, "installed", lambda e, family="": False)
    with pytest.raises(data_lib.DataError, match=(
            r"config\.data_engine \(='grain'\) needs grain, which this "
            r"Python cannot import: pip install grain")):
        data_lib.create_data_source(_config("/nowhere", "grain"))
    with pytest.raises(data_lib.DataError, match=r"no input pipeline .* is "
                       r"installed"):
        data_lib.create_data_source(_config("/nowhere", "auto"))
    # The digits need neither.
    assert data_lib.create_data_source(tiny_config()).num_classes == 10


@pytest.mark.parametrize("field,value,rule", [
    ("data_engine", "spark", r"must be one of \('auto', 'tf', 'grain'\)"),
    ("data_workers", -2, r"must be -1 \(one worker process per CPU core\)"),
])
def test_bad_engine_settings_are_refused(field, value, rule):
    with pytest.raises(ConfigError,
                       match=rf"config\.{field} \(={value!r}\) {rule}"):
        validate_config(tiny_config(**{field: value}))


# --- Grain's image operations. ---

@pytest.mark.parametrize("orientation", range(1, 9))
def test_grain_turns_images_upright_as_pil(tmp_path, orientation):
    from train.data import grain_pipelines as gp

    pixels = np.random.default_rng(orientation).integers(
        0, 256, (5, 7, 3), np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    image.save(path, exif=exif)
    with Image.open(path) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored))
    turned = gp.upright(pixels, orientation)
    np.testing.assert_array_equal(turned, expected)
    # The stored window of an upright box is the region turned into it.
    rng = np.random.default_rng(orientation)
    for _ in range(10):
        top, left = rng.integers(0, turned.shape[0]), rng.integers(
            0, turned.shape[1])
        rows = rng.integers(1, turned.shape[0] - top + 1)
        cols = rng.integers(1, turned.shape[1] - left + 1)
        y, x, h, w = gp.stored_window(top, left, rows, cols, 5, 7,
                                      orientation)
        np.testing.assert_array_equal(
            gp.upright(pixels[y:y + h, x:x + w], orientation),
            turned[top:top + rows, left:left + cols])


def test_grain_crop_boxes_follow_the_inception_rule():
    from train.data import grain_pipelines as gp

    rng = np.random.default_rng(0)
    areas = []
    for height, width in ((375, 500), (500, 333), (40, 400)):
        for _ in range(300):
            top, left, rows, cols = gp.sample_crop_box(height, width, rng)
            assert 0 <= top and top + rows <= height
            assert 0 <= left and left + cols <= width
            area = rows * cols / (height * width)
            if (rows, cols) != (height, width):  # Not the fallback.
                assert 0.1 <= area <= 1.0
                assert 3 / 4 - 0.05 < cols / rows < 4 / 3 + 0.05
            areas.append(area)
    assert 0.3 < np.mean(areas) < 0.8  # Spread over the range.


def test_grain_decodes_large_jpegs_at_a_smaller_scale(tmp_path):
    """A crop four times the output is decoded at 1/2 or 1/4 scale: the
    result is close to the full decode's, not another region."""
    from train.data import grain_pipelines as gp

    y, x = np.mgrid[0:600, 0:800]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    png = tmp_path / "big.png"
    with Image.open(path) as decoded:
        decoded.save(png)
    for seed in range(5):
        small = gp.inception_crop(str(path), 1, np.random.default_rng(seed),
                                  64).astype(int)
        full = gp.inception_crop(str(png), 1, np.random.default_rng(seed),
                                 64).astype(int)
        assert small.shape == full.shape == (64, 64, 3)
        assert np.mean(np.abs(small - full)) < 12


# --- Without TensorFlow. ---

_BLOCK_TENSORFLOW = """
import sys

class Hidden:
    # Every module finder, blind to TensorFlow: as where it is not
    # installed (import fails, importlib.util.find_spec gives None).
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)

sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
"""


@pytest.mark.slow
@pytest.mark.skipif(not engines.installed("grain"),
                    reason="grain is not installed")
def test_the_trainer_runs_from_a_folder_without_tensorflow(tmp_path):
    """With TensorFlow unimportable, "auto" reads the folder with Grain, the
    run trains, evaluates and writes its bundle, and TensorFlow is never
    loaded."""
    root = _write_folder(tmp_path / "images")
    out = run_python(_BLOCK_TENSORFLOW + f"""
import sys
from train import loop
from train.__main__ import setup_process
from train_helpers import tiny_config

config = tiny_config(dataset="folder", data_dir={str(root)!r}, image_size=16,
                     batch_size=4, eval_batch_size=4, num_train_steps=2,
                     folder_eval_fraction=0.34, data_workers=1)
setup_process(config)
summary = loop.train_and_evaluate(config, {str(tmp_path / "run")!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in (
    "tensorflow", "tensorflow_datasets"))
print("RESULT", summary["steps"], int(summary["test_examples"]), loaded)
""")
    assert "RESULT 2 6 []" in out, out[-2000:]
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    from train.workdir import load_dataset_info
    assert load_dataset_info(tmp_path / "run")["data_engine"] == "grain"


def test_a_run_resumes_with_the_engine_it_started_with(tmp_path,
                                                       monkeypatch):
    """The engines crop differently: "auto" resolving to another engine
    (one installed since) would silently change a resumed run's data."""
    from train import workdir as workdir_lib

    config = _config(tmp_path, "tf")
    info = {"dataset": "folder", "class_names": ["a", "b"],
            "data_engine": "tf"}
    workdir_lib.save_run_files(tmp_path / "run", config, info)
    monkeypatch.setattr(engines, "installed", lambda e, family="": True)
    workdir_lib.check_resumable(tmp_path / "run", config, 5)
    with pytest.raises(workdir_lib.ConfigMismatchError, match=(
            r"at step 5 with another data order .*input engine: 'tf' -> "
            r"'grain', whose random crops differ")):
        workdir_lib.check_resumable(tmp_path / "run",
                                    _config(tmp_path, "grain"), 5)
    # A workdir from before the choice: its run read with tf.data.
    del info["data_engine"]
    workdir_lib.save_run_files(tmp_path / "old", config, info)
    monkeypatch.setattr(engines, "installed",
                        lambda e, family="": e == "grain")
    with pytest.raises(workdir_lib.ConfigMismatchError, match="'tf' -> "
                       "'grain'"):
        workdir_lib.check_resumable(tmp_path / "old",
                                    _config(tmp_path, "auto"), 5)
    workdir_lib.check_resumable(tmp_path / "old", _config(
        tmp_path, "auto", allow_config_change=True), 5)


@pytest.mark.skipif(not (engines.installed("tf")
                         and engines.installed("grain", "tfds")),
                    reason="needs grain, TensorFlow and TFDS")
@pytest.mark.parametrize("name,eval_split", [("cifar10", "test"),
                                             ("imagenette", "validation")])
def test_grain_reads_tfds_data_sets(tmp_path, name, eval_split):
    """TFDS's random-access (ArrayRecord) source: decoded arrays (CIFAR)
    and encoded JPEGs (Imagenette), mocked."""
    import tensorflow_datasets as tfds

    config = tiny_config(dataset=name, data_dir=str(tmp_path), image_size=8,
                         batch_size=4, eval_batch_size=4, data_workers=0,
                         data_engine="grain", eval_split=eval_split)
    with tfds.testing.mock_data(num_examples=12):
        source = data_lib.create_data_source(config)
        assert source.num_classes == 10 and source.steps_per_epoch == 3
        batch = next(source.train_batches(4))
        assert batch["image"].shape == (4, 8, 8, 3)
        np.testing.assert_array_equal(
            next(source.train_batches(4))["image"], batch["image"])
        assert sum(b["mask"].sum() for b in source.eval_batches()) == 12


@pytest.mark.parametrize("engine", ENGINES)
def test_normalization_gives_the_formula_s_bits(engine):
    """The pipelines normalize against mean and std spread to the image's
    shape, for speed; the values are those of the broadcast formula, bit for
    bit (tf.data: ``(x / 255 - mean) / std``; Grain's train crop:
    ``x * scale + offset``)."""
    mean = np.float32([0.485, 0.456, 0.406])
    std = np.float32([0.229, 0.224, 0.225])
    rng = np.random.default_rng(0)
    for shape in [(7, 5, 3), (224, 224, 3), (7, 5, 3)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        if engine == "tf":
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            from train.data import tf_pipelines  # pylint: disable=import-outside-toplevel
            got = tf_pipelines._normalize(tf.constant(pixels), tuple(mean),
                                          tuple(std)).numpy()
            want = (pixels.astype(np.float32) / np.float32(255) - mean) / std
        else:
            from train.data.grain_pipelines import Normalize  # pylint: disable=import-outside-toplevel
            normalize = Normalize(mean, std)
            got = normalize(pixels)
            want = pixels.astype(np.float32) * normalize.scale \
                + normalize.offset
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
