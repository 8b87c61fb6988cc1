"""Image folders: the layout rules, the scan, the split and the check.

Shared by every engine (tf.data, Grain); imports neither. The scan is one
directory listing per folder and one open per file (the bad-image check
reads the EXIF orientation in the same open), so its work is linear in the
files: ``tests/test_folder_scan.py`` counts it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
from typing import NamedTuple

import numpy as np
from absl import logging

from train.data.image_check import BadImageError, check_images, display_path
from train.data.source import DataError

# What Pillow (eval, predict, the Grain engine) and TensorFlow (the tf.data
# engine) both decode; each engine adds what only it reads (WebP).
BASE_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class Files(NamedTuple):
    """One split of an image folder: paths, labels, EXIF orientations."""
    files: list[str]
    labels: list[int]
    orientations: list[int]


@dataclasses.dataclass
class FolderSplits:
    class_names: list[str]
    train: Files
    eval: Files


# Split folder names (compared lower-cased). The eval split is the first
# of EVAL_SPLITS present: val before validation before test, as when only
# those three were known; Roboflow's and Kaggle's valid, and eval, dev and
# testing, slot in beside them.
TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("val", "valid", "validation", "eval", "dev", "test", "testing")
SPLIT_NAMES = TRAIN_SPLITS + EVAL_SPLITS
_LAYOUT_RULE = (
    "An image folder is either <data_dir>/<class>/<images> (split by "
    "config.folder_eval_fraction) or <data_dir>/train/<class>/<images> with "
    "<data_dir>/val/<class>/<images> (train/ may be named "
    f"{' or '.join(n + '/' for n in TRAIN_SPLITS[1:])}, val/ "
    f"{', '.join(n + '/' for n in EVAL_SPLITS[1:-1])} or "
    f"{EVAL_SPLITS[-1]}/, in any letter case); no class folder may be named "
    "like a split.")


def _hidden(name: str) -> bool:
    """Names starting with '.' (.ipynb_checkpoints, .DS_Store, .git) are
    tool files, never classes or images."""
    return name.startswith(".")


def _subfolders(root: pathlib.Path) -> list[pathlib.Path]:
    """``root``'s folders that are not hidden, sorted by name."""
    return sorted((p for p in root.iterdir()
                   if not _hidden(p.name) and p.is_dir()),
                  key=lambda p: p.name)


def _class_folders(root: pathlib.Path) -> list[pathlib.Path]:
    """The class folders of ``root``; raises :class:`DataError` for names
    that are split names (a layout mistake) or not UTF-8 (class names go
    into the model bundle and onto the terminal)."""
    folders = _subfolders(root)
    splits = [p.name for p in folders if p.name.lower() in SPLIT_NAMES]
    if splits:
        nested = (" (a split folder inside a split folder: is the data nested "
                  "one level too deep?)" if root.name.lower() in SPLIT_NAMES
                  else "")
        raise DataError(
            f"{display_path(str(root))} has class folder(s) named like data "
            f"splits: {', '.join(map(repr, splits))}{nested}. "
            + _LAYOUT_RULE)
    for p in folders:
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"class folder {display_path(str(p))} has a name that is not "
                "valid UTF-8; rename it (the class names are the folder "
                "names).") from None
    return folders


def _walk_files(folder: str) -> list[str]:
    """The files under ``folder`` (recursively) that are not hidden, and
    broken symbolic links (reported later with the unusable images).

    One ``os.scandir`` per directory and no system call per regular file
    (the directory entry says what it is); links are looked at one by one.
    Subfolders that are links are not entered, as ``os.walk``."""
    found, stack = [], [folder]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue  # Unreadable, as os.walk: its files are not listed.
        with entries:
            for entry in entries:
                if _hidden(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file() or (entry.is_symlink()
                                         and not os.path.exists(entry.path)):
                    found.append(entry.path)  # Not sockets, pipes, devices.
    return found


def _folder_files(classes: list[pathlib.Path], extensions: tuple[str, ...]):
    """Image files and labels of the class folders ``classes``, and
    ``(label, path)`` of the files of other types. Hidden files and folders
    are left out; a broken symbolic link with an image's extension is kept,
    to be reported with the unusable images. Linear in the files."""
    files, labels, skipped = [], [], []
    for label, folder in enumerate(classes):
        # Path order, as sorted(rglob()) was: by components.
        for path in sorted(_walk_files(str(folder)),
                           key=lambda p: p.split(os.sep)):
            if os.path.splitext(path)[1].lower() in extensions:
                files.append(path)
                labels.append(label)
            else:
                skipped.append((label, path))
    return files, labels, skipped


def _report_skipped(skipped: list[tuple[int, str]],
                    extensions: tuple[str, ...]) -> None:
    if not skipped:
        return
    shown = [f"  {display_path(path)}" for _, path in skipped[:20]]
    if len(skipped) > 20:
        shown.append(f"  ... and {len(skipped) - 20} more")
    message = (f"skipping {len(skipped)} file(s) of unsupported types "
               f"(supported: {' '.join(extensions)}):\n"
               + "\n".join(shown))
    logging.warning(message)
    print(f"WARNING: {message}", flush=True)


def _check_every_class_trains(classes, found, skipped, train_l, eval_l,
                              extensions):
    """Raises :class:`BadImageError` naming each class left with no
    training image, and why: a class nobody can learn is never trained."""
    trains, evals = collections.Counter(train_l), collections.Counter(eval_l)
    unsupported = collections.defaultdict(collections.Counter)
    for label, path in skipped:
        unsupported[label][pathlib.Path(path).suffix.lower() or
                           "no extension"] += 1
    problems = []
    for label, name in enumerate(classes):
        if trains[label]:
            continue
        why = []
        if unsupported[label]:
            types = ", ".join(f"{n} {ext}" for ext, n in
                              sorted(unsupported[label].items()))
            why.append(f"unsupported file types ({types})")
        unusable = found[label] - evals[label]  # Dropped as bad images.
        if unusable:
            why.append(f"{unusable} unusable image(s), listed above")
        if evals[label]:
            why.append(f"{evals[label]} image(s), all in the eval split")
        problems.append(f"class {name!r}: "
                        + ("; ".join(why) or "no files"))
    if problems:
        raise BadImageError(
            "no training image for " + " | ".join(problems)
            + f". Supported types: {' '.join(extensions)}; convert "
            "or add images, or remove the class folder.")


def _split_folders(root: pathlib.Path):
    """``(train folder, eval folder)`` of a folder laid out by split, or
    None when ``root``'s folders are the classes."""
    folders = _subfolders(root)
    trains = [p for p in folders if p.name.lower() in TRAIN_SPLITS]
    evals = [p for p in folders if p.name.lower() in EVAL_SPLITS]
    if not trains or not evals:
        return None  # Split names among classes: _class_folders refuses.
    rank = min(EVAL_SPLITS.index(p.name.lower()) for p in evals)
    chosen = [p for p in evals if EVAL_SPLITS.index(p.name.lower()) == rank]
    for role, named in (("training", trains), ("eval", chosen)):
        if len(named) > 1:  # train/ and Training/, val/ and Val/: which?
            raise DataError(
                f"{display_path(str(root))} has {len(named)} {role} folders "
                f"({', '.join(repr(display_path(p.name)) for p in named)}); "
                "keep one. " + _LAYOUT_RULE)
    if len(evals) > 1:
        logging.info("image folder %s: %s is the eval split (%s unused)",
                     display_path(str(root)), chosen[0].name,
                     ", ".join(p.name for p in evals if p is not chosen[0]))
    return trains[0], chosen[0]


def _check_class_count(where: pathlib.Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise DataError(
            f"{display_path(str(where))} holds {len(classes)} class "
            f"folder(s){' ' + repr(classes) if classes else ''}: "
            "classification needs at least 2 classes, one subfolder of "
            "images per class.")


def scan_folder(config, extensions: tuple[str, ...]) -> FolderSplits:
    """The class names and the train and eval :class:`Files` of the image
    folder ``config.data_dir``, keeping files whose extension (lower-cased)
    is one of ``extensions``; bad images as ``config.bad_images`` says.

    A ``train`` folder beside a ``val`` one (see TRAIN_SPLITS and
    EVAL_SPLITS for the other names) is used as given; otherwise each
    class is split by ``config.folder_eval_fraction`` with a fixed
    permutation. Layout mistakes are refused before any image is decoded.
    """
    root = pathlib.Path(config.data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"config.data_dir (={config.data_dir!r}) is not a directory; "
            "give a folder with one subfolder of images per class.")
    split = _split_folders(root)
    if split:
        train_dir, eval_dir = split
        class_dirs, eval_dirs = _class_folders(train_dir), _class_folders(
            eval_dir)
        classes = [p.name for p in class_dirs]
        eval_classes = [p.name for p in eval_dirs]
        if eval_classes != classes:
            only_train = sorted(set(classes) - set(eval_classes))
            only_eval = sorted(set(eval_classes) - set(classes))
            raise DataError(
                f"the training folder {display_path(str(train_dir))} and the "
                f"eval folder {display_path(str(eval_dir))} must hold the "
                "same class folders, but "
                + "; ".join(f"{names} only in {folder.name}/" for names, folder
                            in ((only_train, train_dir),
                                (only_eval, eval_dir)) if names)
                + ".")
        _check_class_count(train_dir, classes)
        train_f, train_l, skipped = _folder_files(class_dirs, extensions)
        eval_f, eval_l, eval_skipped = _folder_files(eval_dirs, extensions)
        skipped += eval_skipped
    else:
        class_dirs = _class_folders(root)
        classes = [p.name for p in class_dirs]
        _check_class_count(root, classes)
        files, labels, skipped = _folder_files(class_dirs, extensions)
        by_class = [[] for _ in classes]
        for file, label in zip(files, labels):
            by_class[label].append(file)
        train_f, train_l, eval_f, eval_l = [], [], [], []
        rng = np.random.default_rng(0)  # The split never depends on seed.
        for label, mine in enumerate(by_class):
            order = rng.permutation(len(mine))
            n_eval = max(1, int(round(len(mine) * config.folder_eval_fraction)))
            for rank, i in enumerate(order):
                target = (eval_f, eval_l) if rank < n_eval else (train_f,
                                                                 train_l)
                target[0].append(mine[i])
                target[1].append(label)
    _report_skipped(skipped, extensions)
    found = collections.Counter(train_l + eval_l)
    train_f, train_l, train_o = check_images(train_f, train_l,
                                             config.bad_images)
    eval_f, eval_l, eval_o = check_images(eval_f, eval_l, config.bad_images)
    _check_every_class_trains(classes, found, skipped, train_l, eval_l,
                              extensions)
    if not train_f or not eval_f:
        raise DataError(f"config.data_dir (={config.data_dir!r}) has no "
                        f"{'training' if not train_f else 'eval'} images "
                        f"with extensions {' '.join(extensions)}.")
    return FolderSplits(classes, Files(train_f, train_l, train_o),
                        Files(eval_f, eval_l, eval_o))
