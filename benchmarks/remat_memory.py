"""What ``remat="block"`` saves: the bytes of activations the backward pass
keeps from the forward pass (the residuals ``jax.vjp`` holds), counted from
shapes with nothing computed, with and without remat.

  python benchmarks/remat_memory.py --model resnext101_32x8d --batch 32

Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import resnext_jax as rx
from resnext_jax.models.fields import REMAT_POLICIES


def residual_bytes(model, batch: int, image_size: int) -> tuple[int, int]:
    """``(bytes kept for the backward pass, bytes of the parameters)``."""
    variables = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3))))
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3),
                                  jnp.float32)

    def loss(params, stats, x):
        logits, _ = model.apply({"params": params, "batch_stats": stats}, x,
                                train=True, mutable=["batch_stats"])
        return jnp.sum(logits)

    kept = jax.eval_shape(
        lambda p, s, x: jax.vjp(lambda q: loss(q, s, x), p)[1],
        variables["params"], variables["batch_stats"], images)

    def nbytes(tree):
        return sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize
                   for a in jax.tree.leaves(tree))
    return nbytes(kept), nbytes(variables["params"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnext101_32x8d")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", default="benchmarks/results/remat.json")
    args = parser.parse_args(argv)
    rows = []
    for remat in REMAT_POLICIES:
        model = rx.create_model(args.model, remat=remat)
        kept, params = residual_bytes(model, args.batch, args.image_size)
        rows.append({"remat": remat, "kept_bytes": kept,
                     "activation_bytes": kept - params,
                     "param_bytes": params})
    print(f"{args.model}, float32, batch {args.batch} at {args.image_size}")
    print(f"{'remat':>6} | {'kept (GiB)':>10} | {'activations (GiB)':>17}")
    for row in rows:
        print(f"{row['remat']:>6} | {row['kept_bytes'] / 2**30:10.2f} | "
              f"{row['activation_bytes'] / 2**30:17.2f}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(args=vars(args), jax=jax.__version__, rows=rows),
                      f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
