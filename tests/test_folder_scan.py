"""The image-folder scan does a constant amount of file-system work per file:
counted (system calls through the os module and opens), never timed."""

import builtins
import collections
import io
import os

import numpy as np
import pytest

from train.data import folders
from train_helpers import tiny_config

pytest.importorskip("PIL")

CLASSES, PER_CLASS = 200, 50


def _png_bytes() -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 3, 3), 7, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _write(root, classes, per_class):
    data = _png_bytes()
    for c in range(classes):
        folder = root / f"class{c:03d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"{i}.png").write_bytes(data)
    return root


def _counted_scan(monkeypatch, root):
    """Scans ``root``; returns how often each file-system call was made."""
    calls = collections.Counter()

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    for name in ("scandir", "stat", "lstat", "listdir", "open", "walk"):
        monkeypatch.setattr(os, name, counting(name, getattr(os, name)))
    # PIL opens files through builtins.open; io.open is the same function.
    monkeypatch.setattr(builtins, "open", counting("file open", builtins.open))
    config = tiny_config(dataset="folder", data_dir=str(root),
                         folder_eval_fraction=0.2)
    split = folders.scan_folder(config, folders.BASE_IMAGE_EXTENSIONS)
    monkeypatch.undo()
    return split, calls


def test_the_scan_does_constant_work_per_file(tmp_path, monkeypatch):
    root = _write(tmp_path / "images", CLASSES, PER_CLASS)
    split, calls = _counted_scan(monkeypatch, root)
    files = CLASSES * PER_CLASS
    assert len(split.train.files) + len(split.eval.files) == files
    assert len(split.class_names) == CLASSES
    # One open per file, for the bad-image check and EXIF orientation.
    assert calls["file open"] == files, calls
    # A directory listing per folder; no stat of any single file: what
    # is left is a bounded number per class folder (is it a folder?).
    assert calls["scandir"] <= CLASSES + 2, calls
    assert calls["stat"] + calls["lstat"] <= 3 * CLASSES + 10, calls
    per_file = sum(calls.values()) / files
    assert per_file <= 1.2, (per_file, calls)


def test_work_grows_with_the_files_not_classes_times_files(tmp_path,
                                                           monkeypatch):
    """Ten times the files in ten times the classes: ten times the work
    (an O(classes x files) scan would do a hundred times)."""
    small = _counted_scan(monkeypatch, _write(tmp_path / "s", 20, 5))[1]
    large = _counted_scan(monkeypatch, _write(tmp_path / "l", 200, 5))[1]
    for name in ("file open", "scandir"):
        assert large[name] == 10 * small[name], (name, small, large)
    assert sum(large.values()) <= 10 * sum(small.values()) + 10


def test_the_scan_order_and_split_are_unchanged_by_how_files_are_listed(
        tmp_path, monkeypatch):
    """Files come in path order whatever order the directory lists them:
    the split (and so every batch) does not depend on the file system."""
    root = _write(tmp_path / "images", 3, 7)
    (root / "class001" / "sub").mkdir()
    (root / "class001" / "sub" / "0.png").write_bytes(_png_bytes())
    config = tiny_config(dataset="folder", data_dir=str(root),
                         folder_eval_fraction=0.3)
    first = folders.scan_folder(config, folders.BASE_IMAGE_EXTENSIONS)
    scandir = os.scandir

    class Reversed:
        def __init__(self, path):
            with scandir(path) as entries:
                self.entries = sorted(entries, key=lambda e: e.name,
                                      reverse=True)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def __iter__(self):
            return iter(self.entries)

    monkeypatch.setattr(os, "scandir", Reversed)
    again = folders.scan_folder(config, folders.BASE_IMAGE_EXTENSIONS)
    assert again == first
    expected = sorted(str(p) for p in root.rglob("*.png"))
    assert sorted(first.train.files + first.eval.files) == expected
    # Path order, as sorted(rglob()) gave before the scan was rewritten.
    listed, _, _ = folders._folder_files([root / "class001"],
                                         folders.BASE_IMAGE_EXTENSIONS)
    assert listed == [str(p) for p in sorted((root / "class001").rglob("*"))
                      if p.is_file()]
