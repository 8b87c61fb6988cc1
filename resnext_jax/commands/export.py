"""``resnext-export``: serialize jit-compiled inference (``jax.export``,
symbolic batch) of published weights, a weights file, a bundle or a run.

::

    resnext-export --model resnext50_32x4d --pretrained model.rxexport
    resnext-export --workdir runs/my_run --platforms cpu,cuda model.rxexport
"""

from __future__ import annotations

import argparse
import os
import sys

from resnext_jax._files import same_file
from resnext_jax.commands.edges import command
from resnext_jax.commands.predict import add_model_arguments, load_model
from resnext_jax.inference.export import PLATFORMS, check_output, save_exported
from resnext_jax.runtime import prepare_process
from resnext_jax.weights import bundle


def _inputs(args) -> list[tuple[str, str]]:
    """``(option, path)`` of every file the command reads."""
    found = [(f"--{name}", getattr(args, name)) for name in
             ("weights", "labels") if getattr(args, name, None)]
    if args.workdir:
        for folder in (args.workdir,
                       os.path.join(args.workdir, bundle.WORKDIR_BUNDLE)):
            found += [("--workdir", os.path.join(folder, name))
                      for name in (bundle.CONFIG_FILE, bundle.WEIGHTS_FILE)]
    return found


@command
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="resnext-export",
        description="Serialize jit-compiled inference (jax.export, symbolic "
                    "batch) for serving with resnext_jax.inference.serving.")
    add_model_arguments(parser)
    parser.add_argument("--platforms", default="cpu",
                        help="comma-separated targets from "
                             f"{','.join(PLATFORMS)} (default: cpu)")
    parser.add_argument("--image-size", type=int,
                        help="input height and width (default: the "
                             "bundle's crop, or 224)")
    parser.add_argument("out", help="output file, e.g. model.rxexport")
    args = parser.parse_args(argv)
    for name, source in _inputs(args):
        if same_file(source, args.out):
            parser.error(f"the output {args.out!r} is the {name} input; "
                         "name another output file.")
    prepare_process()
    try:
        check_output(args.out)
        model, variables, class_names, preprocessing = load_model(
            args)
        meta = save_exported(args.out, model, variables,
                             platforms=args.platforms,
                             image_size=args.image_size,
                             preprocessing=preprocessing,
                             class_names=class_names)
        image_size = meta["image_size"]
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        sys.exit(f"error: {e}")
    size = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB): platforms "
          f"{','.join(meta['platforms'])}, input (batch, {image_size}, "
          f"{image_size}, 3) float32, {meta['num_classes']} classes")


if __name__ == "__main__":
    main()
