"""Mistakes in a config or an image folder are refused before anything
compiles, with one error naming the value and the rule (which
``python -m train`` prints as one ``error:`` line, exit status 1)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from train import data as data_lib
from train import loop
from train.config_validation import ConfigError, validate_config
from train.data import DataError
from train.data.image_check import BadImageError
from train_helpers import REPO, tiny_config

pytest.importorskip("tensorflow")


@pytest.fixture
def nothing_compiles(monkeypatch):
    """Fails the test if the run gets as far as building the model for
    training (the refusal must come before: no waiting for a compile)."""
    def build_model(*args, **kwargs):
        raise AssertionError("the run built its model: refused too late")
    monkeypatch.setattr(loop, "build_model", build_model)


def _images(folder, count, start=0):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), np.uint8)).save(
            folder / f"{i}.png")


def _tree(root, layout):
    """``layout``: relative folder -> number of PNG images in it."""
    for folder, count in layout.items():
        _images(root / folder, count)
    return str(root)


def _config(data_dir, **overrides):
    return tiny_config(**{"dataset": "folder", "data_dir": str(data_dir),
                          "batch_size": 4, "eval_batch_size": 2,
                          "folder_eval_fraction": 0.25, **overrides})


# --- Split folders: train/ + valid/ (Roboflow, Kaggle) and the others. ---

@pytest.mark.parametrize("splits,eval_split", [
    (("train", "valid"), "valid"),
    (("Training", "Validation"), "Validation"),
    (("train", "dev"), "dev"),
    (("train", "eval"), "eval"),
    (("TRAIN", "testing"), "testing"),
    # As before these names: val before validation before test.
    (("train", "val", "validation", "test"), "val"),
    (("train", "validation", "test"), "validation"),
    (("train", "valid", "test"), "valid"),
])
def test_split_folders_of_any_common_name_are_the_splits(tmp_path, splits,
                                                         eval_split):
    for i, split in enumerate(splits):
        _tree(tmp_path, {f"{split}/cat": 4 + i, f"{split}/dog": 4 + i})
    source = data_lib.create_data_source(_config(tmp_path))
    assert source.class_names == ["cat", "dog"]
    assert source.num_train_examples == 8
    assert source.num_eval_examples == 2 * (4 + splits.index(eval_split))


@pytest.mark.parametrize("layout,named", [
    # A class folder named like a split beside the classes.
    ({"train": 3, "cat": 3, "dog": 3}, r"'train'"),
    ({"cat": 3, "dog": 3, "valid": 3}, r"'valid'"),
    # train/ without an eval folder: its classes would be one, 'train'.
    ({"train/cat": 3, "train/dog": 3}, r"'train'"),
    # Nested one level too deep.
    ({"train/train/cat": 3, "train/train/dog": 3, "valid/valid/cat": 3,
      "valid/valid/dog": 3}, r"'train' \(a split folder inside a split "
     r"folder: is the data nested one level too deep\?\)"),
])
def test_class_folders_named_like_splits_are_refused(tmp_path, layout,
                                                     named):
    _tree(tmp_path, layout)
    with pytest.raises(DataError, match=rf"has class folder\(s\) named like "
                       rf"data splits: {named}\. An image folder is either"):
        data_lib.create_data_source(_config(tmp_path))


def test_two_folders_of_one_split_are_refused(tmp_path):
    _tree(tmp_path, {"train/cat": 2, "train/dog": 2, "val/cat": 1,
                     "val/dog": 1, "Val/cat": 1, "Val/dog": 1})
    with pytest.raises(DataError, match=r"has 2 eval folders \('Val', "
                       r"'val'\); keep one"):
        data_lib.create_data_source(_config(tmp_path))


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    _tree(tmp_path, {"cat": 4, "dog": 4, ".ipynb_checkpoints": 2,
                     "cat/.ipynb_checkpoints": 2, "dog/sub": 1})
    (tmp_path / "dog" / ".thumb.png").write_bytes(
        (tmp_path / "cat" / "0.png").read_bytes())
    source = data_lib.create_data_source(_config(tmp_path))
    assert source.class_names == ["cat", "dog"]
    # cat: 4; dog: 4 and sub/0.png.
    assert source.num_train_examples + source.num_eval_examples == 9


def test_broken_symlink_is_listed_as_unusable(tmp_path, capsys):
    _tree(tmp_path, {"cat": 4, "dog": 4})
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dog" / "gone.png")
    with pytest.raises(BadImageError, match=r"gone\.png: is a broken "
                       r"symbolic link \(to .*nowhere\.png\)"):
        data_lib.create_data_source(_config(tmp_path, bad_images="fail"))
    source = data_lib.create_data_source(_config(tmp_path))
    assert source.num_train_examples + source.num_eval_examples == 8
    assert "gone.png: is a broken symbolic link" in capsys.readouterr().out


# --- Values that used to escape as tracebacks. ---

def test_batch_larger_than_the_folder_is_refused(tmp_path,
                                                 nothing_compiles):
    _tree(tmp_path, {"cat": 5, "dog": 5})  # 4 + 4 train, 1 + 1 eval.
    with pytest.raises(ConfigError, match=(
            r"config\.batch_size \(=64\) is larger than the 8 training "
            r"images of the image folder .*: every step takes a full batch, "
            r"so it must be at most 8")):
        loop.train_and_evaluate(_config(tmp_path, batch_size=64),
                                tmp_path / "run")


def test_batch_larger_than_the_digits_is_refused(tmp_path,
                                                 nothing_compiles):
    with pytest.raises(ConfigError, match=(
            r"config\.batch_size \(=2048\) is larger than the 1437 training "
            r"images of 'digits'.* at most 1437")):
        loop.train_and_evaluate(tiny_config(batch_size=2048),
                                tmp_path / "run")


def test_one_class_folder_is_refused(tmp_path, nothing_compiles):
    _tree(tmp_path, {"cat": 6})
    with pytest.raises(DataError, match=r"holds 1 class folder\(s\) "
                       r"\['cat'\]: classification needs at least 2 classes"):
        loop.train_and_evaluate(_config(tmp_path), tmp_path / "run")


@pytest.mark.parametrize("field,value,rule", [
    ("cardinality", 0, r"cardinality \(=0\) must be a positive integer"),
    ("base_width", -4, r"base_width \(=-4\) must be a positive integer"),
])
def test_bad_model_kwargs_are_refused(tmp_path, nothing_compiles, field,
                                      value, rule):
    config = tiny_config()
    config.model_kwargs[field] = value
    with pytest.raises(ConfigError, match=rf"config\.model_kwargs \(=.*"
                       rf"'{field}': {value}.*\) do not make a valid "
                       rf"'custom' model: {rule}"):
        validate_config(config)
    with pytest.raises(ConfigError, match=rule):
        loop.train_and_evaluate(config, tmp_path / "run")


def test_digits_at_a_size_not_a_multiple_of_8_are_refused(tmp_path,
                                                           nothing_compiles):
    with pytest.raises(ConfigError, match=r"config\.image_size \(=12\) must "
                       r"be a multiple of 8 for the 8x8 digits"):
        validate_config(tiny_config(image_size=12))
    with pytest.raises(ConfigError, match=r"config\.image_size \(=12\)"):
        loop.train_and_evaluate(tiny_config(image_size=12), tmp_path / "run")
    validate_config(tiny_config(image_size=16))


def test_train_and_val_with_other_classes_are_refused(tmp_path,
                                                      nothing_compiles):
    _tree(tmp_path / "data", {"train/cat": 4, "train/dog": 4, "val/cat": 2,
                              "val/fox": 2})
    with pytest.raises(DataError, match=(
            r"must hold the same class folders, but \['dog'\] only in "
            r"train/; \['fox'\] only in val/\.")):
        loop.train_and_evaluate(_config(tmp_path / "data"), tmp_path / "run")


def _non_utf8_name(tmp_path):
    """A cat image renamed to b'caf\\xe9.png' (Latin-1), or a skip where the
    file system takes UTF-8 names only (macOS)."""
    _tree(tmp_path, {"cat": 5, "dog": 5})
    name = os.fsdecode(os.fsencode(tmp_path / "cat") + b"/caf\xe9.png")
    try:
        os.rename(tmp_path / "cat" / "0.png", name)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")


def test_file_name_not_utf8_is_named(tmp_path, capsys):
    _non_utf8_name(tmp_path)
    with pytest.raises(BadImageError, match=(
            r"cat/caf\\xe9\.png: has a file name that is not valid UTF-8, "
            r"which TensorFlow cannot open; rename it")):
        data_lib.create_data_source(_config(tmp_path, bad_images="fail"))
    source = data_lib.create_data_source(_config(tmp_path))  # "skip".
    assert source.num_train_examples + source.num_eval_examples == 9
    assert "caf\\xe9.png: has a file name that is not valid UTF-8" in (
        capsys.readouterr().out)
    next(source.train_batches(0))  # tf.data reads every name it holds.


def test_command_line_prints_one_error_line(tmp_path):
    """configs/finetune_folder.py (batch size 64) on 16 training images."""
    _tree(tmp_path / "images", {"cat": 10, "dog": 10})
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "train", "--config",
         "configs/finetune_folder.py",
         f"--config.data_dir={tmp_path / 'images'}",
         "--workdir", str(tmp_path / "run")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert ("config.batch_size (=64) is larger than the 16 training images"
            in errors[0] and "at most 16" in errors[0]), errors[0]
    assert not (tmp_path / "run").exists()
