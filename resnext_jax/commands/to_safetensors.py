"""Check a torchvision/timm checkpoint against a model; write .safetensors.

::

    python -m resnext_jax.commands.to_safetensors --model resnext50_32x4d \\
        resnext50_32x4d-1a0047aa.pth resnext50_32x4d.safetensors

The ``.pth`` is read without torch (tensors only, no code executed); the
``.safetensors`` written is smaller to ship and faster to read.
"""

from __future__ import annotations

import argparse
import sys

from resnext_jax.models.registry import create_model, parse_model_kwargs
from resnext_jax.weights.state_dict import (load_torch_state_dict,
                                            read_state_dict, save_safetensors)
from resnext_jax.commands.edges import command
from resnext_jax._files import same_file


def convert_file(model_name: str, src: str, dst: str,
                 model_kwargs: dict | None = None):
    """Loads ``src`` into the named model (strictly) and writes ``dst``.

    The classifier size is read from the checkpoint. Returns the model.
    """
    state = read_state_dict(src)
    kwargs = {"num_classes": (state["fc.weight"].shape[0]
                              if "fc.weight" in state else 0)}
    kwargs.update(model_kwargs or {})
    model = create_model(model_name, **kwargs)
    variables = load_torch_state_dict(
        state, model, head="keep" if model.num_classes else "drop")
    save_safetensors(variables, model, dst)
    return model


@command
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m resnext_jax.commands.to_safetensors",
        description="Check a torchvision/timm checkpoint against a model and "
                    "write it as .safetensors (readable without torch).")
    parser.add_argument("--model", required=True,
                        help="model name, e.g. resnext50_32x4d")
    parser.add_argument("--model-kwargs", default="{}",
                        help="JSON of ResNeXt field overrides")
    parser.add_argument("src", help="checkpoint: .pth/.pt/.bin or "
                                    ".safetensors")
    parser.add_argument("dst", help="output .safetensors file")
    args = parser.parse_args(argv)
    if not args.dst.endswith(".safetensors"):
        parser.error(f"dst={args.dst!r} must end with .safetensors")
    if same_file(args.src, args.dst):
        parser.error(f"dst={args.dst!r} is the input src; name another "
                     "output file.")
    try:
        model = convert_file(args.model, args.src, args.dst,
                             parse_model_kwargs(args.model_kwargs))
    except (ValueError, ImportError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.dst}: {args.model}, {model.num_classes} classes")


if __name__ == "__main__":
    main()
