"""Prints a model's per-stage parameter and multiply-add counts.

    python -m resnext_jax.summary resnext50_32x4d --image-size 224
    python -m resnext_jax.summary --list
"""

from __future__ import annotations

import argparse
import json
import sys

from resnext_jax.counting import format_summary, summarize
from resnext_jax.models import create_model, list_models
from resnext_jax.cli import command


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnext_jax.summary",
        description="Per-stage parameter and multiply-add counts.")
    parser.add_argument("model", nargs="?", help="model name, see --list")
    parser.add_argument("--list", action="store_true",
                        help="list the model names and exit")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input height = width (default 224, CIFAR 32)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(list_models()))
        return 0
    if args.model is None:
        parser.error("give a model name (see --list)")
    overrides = {}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    try:
        model = create_model(args.model, **overrides)
    except ValueError as e:
        parser.error(str(e))
    image_size = args.image_size
    if image_size is None:
        image_size = 32 if model.stem == "cifar" else 224
    if image_size < 1:
        parser.error(f"--image-size (={image_size}) must be a positive "
                     "integer.")
    if args.json:
        rows = summarize(model, image_size)
        print(json.dumps(dict(
            model=args.model, image_size=image_size,
            params=sum(r["params"] for r in rows),
            macs=sum(r["macs"] for r in rows), stages=rows)))
    else:
        print(format_summary(args.model, model, image_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
