"""``resnext-serve``: top-5 labels per image from an exported model
(``resnext-export``), through `resnext_jax.inference.serving`.

::

    resnext-serve model.rxexport cat.jpg dog.jpg
"""

from __future__ import annotations

import sys

import numpy as np

from resnext_jax.commands.edges import command
from resnext_jax.inference.serving import load, top_k


@command
def main(argv=None) -> None:
    """``resnext-serve MODEL_FILE IMAGE...``: top-5 labels per image."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        sys.exit("usage: resnext-serve MODEL_FILE IMAGE [IMAGE ...]")
    try:
        model = load(argv[0])
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    images, answered, failed = [], [], []
    for path in argv[1:]:
        try:
            images.append(model.load_image(path))
            answered.append(path)
        except Exception as e:  # pylint: disable=broad-except
            # PIL's UnidentifiedImageError, OSError, a directory...: the
            # file is at fault, the others are still answered.
            failed.append(f"error: {path}: cannot be read as an image "
                          f"({type(e).__name__}: {e})")
    if images:
        probs, indices = top_k(model(np.stack(images)))
        names = model.class_names
        for path, p_row, i_row in zip(answered, probs, indices):
            print(path)
            for p, i in zip(p_row, i_row):
                label = names[i] if i < len(names) else f"class_{i}"
                print(f"  {p:.4f}  {label} ({i})")
    sys.stdout.flush()
    for line in failed:
        print(line, file=sys.stderr)
    if failed:
        sys.exit(f"error: {len(failed)} of {len(argv) - 1} image(s) could "
                 "not be read" + ("; the others were answered above."
                                  if images else "."))


if __name__ == "__main__":
    main()
