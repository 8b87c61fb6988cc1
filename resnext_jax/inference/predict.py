"""Top-k predictions for image files, in fixed-size jit-compiled batches
(a batch size compiles once); a file that is not an image gets an error
entry and the others are still answered."""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from resnext_jax.inference import serving
from resnext_jax.inference.preprocessing import Preprocessing
from resnext_jax.layers.conv import resolve_conv_impl


def predict_files(model, variables, paths: Sequence[str],
                  class_names: Sequence[str], *, top_k: int = 5,
                  batch_size: int = 32,
                  preprocessing: Preprocessing = Preprocessing()
                  ) -> list[dict]:
    """Top-k predictions per image file.

    Returns one ``{"image": path, "predictions": [{"index", "label",
    "probability"}, ...]}`` per path, predictions sorted by probability. A
    file that cannot be read as an image (missing, a directory, truncated,
    not an image) gets ``{"image": path, "error": reason}`` instead, and the
    others are still answered.
    """
    if model.num_classes == 0:
        raise ValueError("the model has no classifier (num_classes=0).")
    if top_k < 1:
        raise ValueError(f"top_k (={top_k}) must be at least 1.")
    if batch_size < 1:
        raise ValueError(f"batch_size (={batch_size}) must be at least 1.")
    # Compiled for this process's devices only: "auto" is resolved to their
    # lowering, so the program holds no per-platform conditional.
    if hasattr(model, "conv_impl"):
        model = model.clone(conv_impl=resolve_conv_impl(model.conv_impl))
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
    loaded, results = {}, {}
    for path in paths:
        try:
            loaded[str(path)] = preprocessing.load_image(path)
        except Exception as e:  # pylint: disable=broad-except
            # PIL raises many types (OSError, UnidentifiedImageError,
            # DecompressionBombError, ...); one bad file must not cost the
            # answers for the others.
            results[str(path)] = {"image": str(path),
                                  "error": _image_error(path, e)}
    good = list(loaded)
    batch_size = max(1, min(batch_size, len(good)))
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        images = np.stack([loaded[p] for p in chunk])
        # Pad the last batch so every call has the compiled shape.
        pad = batch_size - len(chunk)
        if pad:
            images = np.concatenate(
                [images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        logits = np.asarray(infer(variables, images))[:len(chunk)]
        probs, indices = serving.top_k(logits, top_k)
        for path, p_row, i_row in zip(chunk, probs, indices):
            results[path] = {"image": path, "predictions": [
                {"index": int(i), "label": class_names[i],
                 "probability": float(p)} for p, i in zip(p_row, i_row)]}
    return [results[str(p)] for p in paths]


def _image_error(path, error: Exception) -> str:
    if os.path.isdir(path):
        return "is a directory, not an image file"
    if not os.path.exists(path):
        return "no such file"
    return f"cannot be read as an image ({type(error).__name__}: {error})"
