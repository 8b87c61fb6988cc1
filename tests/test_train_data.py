"""Input pipelines end to end: digits, TFDS (mocked) and an image folder."""

import importlib

import numpy as np
import pytest

from train import data as data_lib
from train import loop
from train_helpers import short_run, tiny_config

tfds = pytest.importorskip("tensorflow_datasets")


def _shrink(config, **overrides):
    """A real config file's config with a tiny model and tiny images."""
    config.model = "custom"
    config.model_kwargs = tiny_config().model_kwargs
    config.image_size = 8
    config.batch_size = 4
    config.eval_batch_size = 8
    config.num_train_steps = 3
    config.compute_dtype = "float32"
    config.shuffle_buffer_size = 16
    return short_run(config, **overrides)


def _config(name, **overrides):
    return _shrink(importlib.import_module(f"configs.{name}").get_config(),
                   **overrides)


def test_digits_eval_counts_every_example_once():
    source = data_lib.create_data_source(tiny_config(eval_batch_size=64))
    batches = list(source.eval_batches())
    assert len(batches) == source.num_eval_steps == 6  # 360 / 64 -> 6.
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == source.num_eval_examples == 360
    assert all(b["image"].shape == (64, 8, 8, 3) for b in batches)


def test_digits_train_batches_resume_at_any_step():
    source = data_lib.create_data_source(tiny_config())
    stream = source.train_batches(0)
    first = [next(stream) for _ in range(source.steps_per_epoch + 3)]
    resumed = source.train_batches(source.steps_per_epoch + 1)
    for expected in first[source.steps_per_epoch + 1:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["label"], expected["label"])
    # A new epoch is a new order.
    assert not np.array_equal(first[0]["label"],
                              first[source.steps_per_epoch]["label"])


def test_per_host_shards_partition_the_global_batch():
    config = tiny_config()
    whole = next(data_lib.create_data_source(config, 0, 1).train_batches(5))
    halves = [next(data_lib.create_data_source(config, i, 2).train_batches(5))
              for i in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([h["label"] for h in halves]), whole["label"])


@pytest.mark.slow
def test_cifar10_pipeline_with_mock_data(tmp_path):
    config = _config("cifar10_resnext29_8x64d", data_dir=str(tmp_path / "d"))
    with tfds.testing.mock_data(num_examples=20):
        source = data_lib.create_data_source(config)
        assert source.num_classes == 10
        assert source.steps_per_epoch == 5
        batches = source.train_batches(0)
        first = [next(batches) for _ in range(7)]
        assert first[0]["image"].shape == (4, 8, 8, 3)
        assert first[0]["image"].dtype == np.float32
        # Deterministic: step 6 rebuilt from scratch is the same batch.
        again = next(source.train_batches(6))
        np.testing.assert_array_equal(again["image"], first[6]["image"])
        evals = list(source.eval_batches())
        assert sum(b["mask"].sum() for b in evals) == 20
        summary = loop.train_and_evaluate(config, tmp_path / "run")
    assert summary["steps"] == 3
    assert summary["test_examples"] == 20
    assert np.isfinite(summary["test_loss"])


def test_cifar100_has_100_classes(tmp_path):
    config = _config("cifar100_resnext29_16x64d",
                     data_dir=str(tmp_path / "d"))
    with tfds.testing.mock_data(num_examples=8):
        assert data_lib.create_data_source(config).num_classes == 100


@pytest.mark.slow
def test_imagenet_pipeline_with_mock_data(tmp_path):
    config = _config("imagenet_resnext50_32x4d", data_dir=str(tmp_path / "d"))
    with tfds.testing.mock_data(num_examples=12):
        source = data_lib.create_data_source(config)
        assert source.num_classes == 1000
        assert source.class_names[0] == "n01440764"
        batch = next(source.train_batches(0))
        assert batch["image"].shape == (4, 8, 8, 3)
        # Random sizes, decoded from JPEG, cropped, normalized.
        assert abs(float(batch["image"].mean())) < 3
        summary = loop.train_and_evaluate(config, tmp_path / "run")
    assert summary["steps"] == 3 and summary["test_examples"] == 12


def test_missing_tfds_data_says_where_and_how(tmp_path):
    config = _config("cifar10_resnext29_8x64d", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        data_lib.create_data_source(config)
    message = str(error.value)
    assert str(tmp_path) in message and "tfds build cifar10" in message
    config = _config("imagenet_resnext50_32x4d", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        data_lib.create_data_source(config)


def _write_folder(root, classes=("cat", "dog", "fox"), per_class=6):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (12 + i, 10 + c, 3), np.uint8)
            pixels[..., c] = 250  # Each class has its own dominant colour.
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / name / f"{i}.{ext}")


@pytest.mark.slow
def test_image_folder_run(tmp_path):
    from train.checkpoint import restore_for_inference

    _write_folder(tmp_path / "images")
    config = _shrink(tiny_config(), dataset="folder",
                     data_dir=str(tmp_path / "images"),
                     folder_eval_fraction=0.34, eval_batch_size=4)
    source = data_lib.create_data_source(config)
    assert source.class_names == ["cat", "dog", "fox"]
    assert source.num_eval_examples == 6 and source.num_train_examples == 12
    summary = loop.train_and_evaluate(config, tmp_path / "run")
    assert summary["steps"] == 3 and summary["test_examples"] == 6
    _, _, names = restore_for_inference(tmp_path / "run")
    assert names == ["cat", "dog", "fox"]


@pytest.mark.slow
def test_predict_reproduces_the_eval_of_an_image_folder_run(tmp_path,
                                                            capsys):
    """The trainer's eval and predict --workdir see the same pixels and so
    give the same answers: the run's eval accuracy, recounted by predict."""
    import json
    from resnext_jax.commands import predict as predict_command

    root = tmp_path / "images"
    for split, per_class in (("train", 8), ("val", 5)):
        _write_folder(root / split, per_class=per_class)
    config = _shrink(tiny_config(), dataset="folder", data_dir=str(root),
                     image_size=16, num_train_steps=6, eval_batch_size=5,
                     eval_every_steps=3)
    source = data_lib.create_data_source(config)
    files = sorted((root / "val").rglob("*.*"))
    labels = [source.class_names.index(f.parent.name) for f in files]
    # Eval batches hold exactly what the library's spec computes.
    images = np.concatenate([b["image"][b["mask"] > 0]
                             for b in source.eval_batches()])
    expected = np.stack([source.preprocessing.load_image(f) for f in files])
    np.testing.assert_array_equal(images, expected)

    summary = loop.train_and_evaluate(config, tmp_path / "run")
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    capsys.readouterr()  # The run's own output.
    predict_command.main(["--workdir", str(tmp_path / "run"), "--json", "--top-k",
                  "1", *map(str, files)])
    results = json.loads(capsys.readouterr().out)
    answers = [r["predictions"][0]["index"] for r in results]
    correct = sum(a == label for a, label in zip(answers, labels))
    assert summary["test_examples"] == len(files) == 15
    assert correct == round(summary["test_accuracy"] * len(files))
    # Answer by answer: the final state on the trainer's eval inputs.
    from train.checkpoint import restore_for_inference
    model, variables, _ = restore_for_inference(tmp_path / "run", "latest")
    logits = model.apply(variables, images, train=False)
    assert answers == np.argmax(logits, -1).tolist()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_training_turns_images_upright_as_the_eval_spec(tmp_path,
                                                        orientation):
    """Training decodes with TensorFlow, which ignores EXIF; the orientation
    read from the file turns the pixels as PIL's exif_transpose does."""
    import tensorflow as tf
    from PIL import Image, ImageOps

    from train.data import tf_pipelines
    from train.data.image_check import exif_orientation

    pixels = np.random.default_rng(orientation).integers(
        0, 256, (5, 7, 3), np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"  # Lossless: PIL and TF decode alike.
    image.save(path, exif=exif)
    assert exif_orientation(str(path)) == orientation
    with Image.open(path) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored))
    decoded = tf_pipelines._decode(tf.io.read_file(str(path)))
    turned = tf_pipelines.upright(decoded, tf.constant(orientation))
    np.testing.assert_array_equal(turned.numpy(), expected)
