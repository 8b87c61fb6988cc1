"""Kernel gradient of the ``dense`` lowering's 3x3 convolutions, two ways.

For every distinct 3x3 convolution of ResNeXt-50 32x4d, ResNet-50 and
ResNeXt-29 8x64d (grouped or not, stride 1 or 2), times the gradient with
respect to the kernel alone, computed by XLA (the gradient of the dense or
block-diagonal chunk convolutions) and as one batched GEMM over image
patches, and says which of the two the ``dense`` lowering uses
(``resnext_jax.layers.conv._patches_kernel_grad_is_faster``). Prints a table and
writes JSON.

    python benchmarks/bench_kernel_grad.py --batch-size 16
    python benchmarks/bench_kernel_grad.py --smoke     # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

from bench_conv import median_seconds  # this folder, on sys.path as a script
from resnext_jax.layers import conv as conv_lib
from resnext_jax.runtime.malloc import configure_malloc

# (model, height, channels, groups, stride) of each distinct 3x3 conv.
SHAPES = [
    ("resnext50_32x4d", 56, 128, 32, 1), ("resnext50_32x4d", 56, 256, 32, 2),
    ("resnext50_32x4d", 28, 256, 32, 1), ("resnext50_32x4d", 28, 512, 32, 2),
    ("resnext50_32x4d", 14, 512, 32, 1), ("resnext50_32x4d", 14, 1024, 32, 2),
    ("resnext50_32x4d", 7, 1024, 32, 1),
    ("resnet50", 56, 64, 1, 1), ("resnet50", 56, 128, 1, 2),
    ("resnet50", 28, 128, 1, 1), ("resnet50", 28, 256, 1, 2),
    ("resnet50", 14, 256, 1, 1), ("resnet50", 14, 512, 1, 2),
    ("resnet50", 7, 512, 1, 1),
    ("resnext29_8x64d", 32, 512, 8, 1), ("resnext29_8x64d", 32, 1024, 8, 2),
    ("resnext29_8x64d", 16, 1024, 8, 1), ("resnext29_8x64d", 16, 2048, 8, 2),
    ("resnext29_8x64d", 8, 2048, 8, 1),
]
SMOKE_SHAPES = [("tiny", 8, 32, 8, 1), ("tiny", 8, 64, 1, 2)]


def measure(batch, height, channels, groups, stride, runs):
    """(XLA's ms, patches ms, max relative difference, input channels
    per dense convolution) for one shape."""
    kx, kk, kd = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (batch, height, height, channels))
    kernel = jax.random.normal(kk, (3, 3, channels // groups, channels)) / 30
    strides, padding = (stride, stride), ((1, 1), (1, 1))
    chunk = conv_lib.default_chunk_groups(groups, channels // groups,
                                          channels // groups)
    out = jax.eval_shape(lambda x, k: conv_lib._blockdiag_conv(
        x, k, strides, padding, groups, chunk), x, kernel)
    dy = jax.random.normal(kd, out.shape)

    @jax.jit
    def xla(x, kernel, dy):
        _, vjp = jax.vjp(lambda k: conv_lib._blockdiag_conv(
            x, k, strides, padding, groups, chunk), kernel)
        return vjp(dy)[0]

    @jax.jit
    def patches(x, kernel, dy):
        return conv_lib._chunk_patches_kernel_grad(
            x, dy, kernel.shape, strides, padding, groups, chunk)

    a, b = xla(x, kernel, dy), patches(x, kernel, dy)
    diff = float(jnp.abs(a - b).max() / jnp.abs(a).max())
    return (median_seconds(xla, x, kernel, dy, runs=runs) * 1e3,
            median_seconds(patches, x, kernel, dy, runs=runs) * 1e3, diff,
            chunk * channels // groups)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json",
                        default="benchmarks/results/kernel_grad.json")
    args = parser.parse_args(argv)
    configure_malloc()
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    batch, runs = (2, 1) if args.smoke else (args.batch_size, args.runs)
    print(f"jax {jax.__version__} on {jax.default_backend()}, "
          f"{len(os.sched_getaffinity(0))} CPUs usable; batch {batch}, "
          "float32, kernel gradient alone (ms)")
    print(f"{'model':<17}{'input':<14}{'groups':>7}{'stride':>7}"
          f"{'chunk in':>9}{'XLA':>9}{'patches':>9}{'used':>9}")
    rows = []
    for model, height, channels, groups, stride in shapes:
        xla_ms, patches_ms, diff, chunk_in = measure(
            batch, height, channels, groups, stride, runs)
        used = ("patches" if conv_lib._patches_kernel_grad_is_faster(
            chunk_in, (stride, stride)) else "XLA")
        rows.append(dict(model=model, height=height, channels=channels,
                         groups=groups, stride=stride, chunk_in=chunk_in,
                         xla_ms=xla_ms, patches_ms=patches_ms, used=used,
                         max_rel_diff=diff))
        print(f"{model:<17}{f'{height}x{height}x{channels}':<14}{groups:>7}"
              f"{stride:>7}{chunk_in:>9}{xla_ms:>9.1f}{patches_ms:>9.1f}"
              f"{used:>9}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(args=vars(args), jax=jax.__version__, batch=batch,
                           rows=rows), f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
