"""Finding image-folder files that would break the input pipeline.

Every file is decoded once with Pillow before training, so that a corrupt,
truncated or degenerate image is reported with its path up front instead of
stopping tf.data mid-epoch.
"""

from __future__ import annotations

import os

from absl import logging


class BadImageError(ValueError):
    """An image folder holds files that are not usable images."""


def display_path(path: str) -> str:
    """``path`` as it can be printed: the bytes of a name that is not UTF-8
    (which Python keeps as lone surrogates, and printing or logging them
    raises) appear as ``\\xNN`` escapes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def problem(path: str) -> str | None:
    """Why ``path`` is not a usable image, or None."""
    return inspect(path)[0]


def inspect(path: str) -> tuple[str | None, int]:
    """``(why path is not a usable image or None, its EXIF orientation)``.

    One open of the file gives both: a folder of a million images is read
    once before training, not once per question."""
    from PIL import Image

    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        # Pillow would read it, but tf.data cannot take the name (and its
        # error names no file): refused here, by name.
        return ("has a file name that is not valid UTF-8, which TensorFlow "
                "cannot open; rename it"), 1
    try:
        with Image.open(path) as image:
            orientation = _orientation_of(image)
            image.load()  # Decodes every pixel: catches truncated files.
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
            bands = len(image.getbands())
    except Exception as e:  # Pillow raises many types for bad files.
        # Links are looked at only when the open failed: a check of every
        # file would add system calls per file to the folder scan.
        if (isinstance(e, OSError) and os.path.islink(path)
                and not os.path.exists(path)):
            return (f"is a broken symbolic link (to "
                    f"{display_path(os.readlink(path))})"), 1
        return f"cannot be decoded ({type(e).__name__}: {e})", 1
    if width < 1 or height < 1:
        return f"has shape {height}x{width}", orientation
    if frames != 1:
        return f"has {frames} frames, not one", orientation
    if bands not in (1, 2, 3, 4):
        return f"has {bands} channels", orientation
    return None, orientation


def exif_orientation(path: str) -> int:
    """The EXIF orientation of an image file (1 to 8; 1, upright, when it
    has none or it cannot be read). Reads the header only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _orientation_of(image)
    except Exception:  # pylint: disable=broad-except
        return 1  # Unreadable files are reported by problem().


def _orientation_of(image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # pylint: disable=broad-except
        return 1  # A damaged EXIF block: the pixels may still be fine.
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


_EXIF_ORIENTATION = 0x0112


def filter_images(files: list[str], labels: list[int], policy: str
                  ) -> tuple[list[str], list[int]]:
    """``files`` and ``labels`` without the bad images.

    ``policy="skip"`` reports each bad file and drops it; ``"fail"`` raises
    :class:`BadImageError` listing them.
    """
    files, labels, _ = check_images(files, labels, policy)
    return files, labels


def check_images(files: list[str], labels: list[int], policy: str
                 ) -> tuple[list[str], list[int], list[int]]:
    """As :func:`filter_images`, with the EXIF orientation of each kept
    file (read in the same open)."""
    looks = [inspect(f) for f in files]
    bad = [(f, why) for f, (why, _) in zip(files, looks) if why is not None]
    if not bad:
        return files, labels, [o for _, o in looks]
    lines = [f"  {display_path(path)}: {why}" for path, why in bad]
    if policy == "fail":
        raise BadImageError(
            f"{len(bad)} unusable image(s) (config.bad_images='fail'):\n"
            + "\n".join(lines))
    message = (f"skipping {len(bad)} unusable image(s) "
               "(config.bad_images='skip'):\n" + "\n".join(lines))
    logging.warning(message)
    print(f"WARNING: {message}", flush=True)
    kept = [(f, l, o) for f, l, (why, o) in zip(files, labels, looks)
            if why is None]
    return ([f for f, _, _ in kept], [l for _, l, _ in kept],
            [o for _, _, o in kept])
