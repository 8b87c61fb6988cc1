"""Prints a model's per-stage parameter and multiply-add counts.

    python -m resnext_jax.commands.summary resnext50_32x4d --image-size 224
    python -m resnext_jax.commands.summary resnet50 --model-kwargs \
        '{"cardinality": 32, "base_width": 4}'
    python -m resnext_jax.commands.summary --list
"""

from __future__ import annotations

import argparse
import json
import sys

from resnext_jax.models.registry import parse_model_kwargs
from resnext_jax.models.counting import format_summary, summarize
from resnext_jax.models.registry import create_model, list_models
from resnext_jax.commands.edges import command


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnext_jax.commands.summary",
        description="Per-stage parameter and multiply-add counts.")
    parser.add_argument("model", nargs="?", help="model name, see --list")
    parser.add_argument("--list", action="store_true",
                        help="list the model names and exit")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input height = width (default 224, CIFAR 32)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--model-kwargs", default=None,
                        help="JSON of ResNeXt field overrides, e.g. "
                             "'{\"cardinality\": 32, \"base_width\": 4}'")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(list_models()))
        return 0
    if args.model is None:
        parser.error("give a model name (see --list)")
    overrides = {}
    if args.model_kwargs is not None:
        try:
            overrides = parse_model_kwargs(args.model_kwargs)
        except ValueError as e:
            parser.error(f"--model-kwargs: {e}")
    if args.num_classes is not None:
        if overrides.get("num_classes", args.num_classes) != args.num_classes:
            parser.error(
                f"--num-classes (={args.num_classes}) and --model-kwargs' "
                f"num_classes (={overrides['num_classes']!r}) disagree; give "
                "it once.")
        overrides["num_classes"] = args.num_classes
    try:
        model = create_model(args.model, **overrides)
    except ValueError as e:
        parser.error(str(e))
    except TypeError as e:
        # A field of the wrong kind, e.g. {"stage_sizes": 3}: Python's own
        # message ("'int' object is not iterable") needs the overrides named.
        parser.error(f"--model-kwargs {args.model_kwargs}: {e}")
    image_size = args.image_size
    if image_size is None:
        image_size = 32 if model.stem == "cifar" else 224
    if image_size < 1:
        parser.error(f"--image-size (={image_size}) must be a positive "
                     "integer.")
    # The table's title and the JSON name the overrides as they were given.
    given = json.loads(args.model_kwargs) if args.model_kwargs else {}
    title = args.model + (f" {json.dumps(given)}" if given else "")
    try:
        # The blocks check their own fields again as the trace builds them.
        if args.json:
            rows = summarize(model, image_size)
            result = dict(model=args.model, image_size=image_size,
                          params=sum(r["params"] for r in rows),
                          macs=sum(r["macs"] for r in rows), stages=rows)
            if given:
                result["model_kwargs"] = given
            text = json.dumps(result)
        else:
            text = format_summary(title, model, image_size)
    except ValueError as e:
        parser.error(str(e))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
