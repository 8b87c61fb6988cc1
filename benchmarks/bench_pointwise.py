"""1x1 convolutions alone on CPU: XLA's GEMM against oneDNN's kernel.

Times forward+backward (gradients of input and kernel) of representative
1x1 convolutions of ResNeXt-50 32x4d (each stage's reduce and expand, two
downsamples), with the ``dense`` lowering (one GEMM over all
pixels, XLA's) and with oneDNN's kernel called directly. This is the
measurement behind ``resnext_jax.layers.onednn.POINTWISE_MIN_ROWS``.
Prints a table and writes JSON.

    python benchmarks/bench_pointwise.py --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

from resnext_jax.layers import conv as conv_lib
from resnext_jax.layers import onednn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv import median_seconds  # noqa: E402

# (name, input height, in channels, out channels, stride) of ResNeXt-50
# 32x4d's 1x1 convolutions.
SHAPES = [
    ("stage1 reduce", 56, 256, 128, 1),
    ("stage1 expand", 56, 128, 256, 1),
    ("stage2 reduce", 28, 512, 256, 1),
    ("stage2 expand", 28, 256, 512, 1),
    ("stage2 downsample", 56, 256, 512, 2),
    ("stage3 reduce", 14, 1024, 512, 1),
    ("stage3 expand", 14, 512, 1024, 1),
    ("stage4 reduce", 7, 2048, 1024, 1),
    ("stage4 expand", 7, 1024, 2048, 1),
    ("stage4 downsample", 14, 1024, 2048, 2),
]


def forward_backward_ms(conv, batch, height, cin, cout, stride, runs):
    kx, kk, kr = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (batch, height, height, cin))
    kernel = jax.random.normal(kk, (1, 1, cin, cout)) / cin ** 0.5
    out = jax.eval_shape(lambda x, k: conv(x, k, stride), x, kernel)
    cotangent = jax.random.normal(kr, out.shape)
    grad = jax.jit(jax.grad(lambda x, k: jnp.vdot(conv(x, k, stride),
                                                  cotangent),
                            argnums=(0, 1)))
    return median_seconds(grad, x, kernel, runs=runs) * 1e3


def xla_gemm(x, kernel, stride):
    return conv_lib._pointwise_matmul(x, kernel, (stride, stride))


def onednn_kernel(x, kernel, stride):
    return onednn.grouped_conv(x, kernel, (stride, stride),
                               ((0, 0), (0, 0)), 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true",
                        help="batch 1, two shapes, one run: checks it runs")
    parser.add_argument("--json", default="benchmarks/results/pointwise.json")
    args = parser.parse_args(argv)
    shapes = SHAPES
    if args.smoke:
        args.batch_size, args.runs = 1, 1
        shapes = [SHAPES[0], SHAPES[4]]
    reason = onednn.unavailable_reason()
    if reason:
        parser.error(f"the oneDNN kernel is not available: {reason}")
    rows = []
    print(f"{'1x1 convolution':20s} {'out px':>7s} {'XLA GEMM ms':>12s} "
          f"{'oneDNN ms':>10s} {'XLA/oneDNN':>11s}")
    for name, height, cin, cout, stride in shapes:
        pixels = (-(-height // stride)) ** 2
        xla_ms, dnn_ms = (forward_backward_ms(fn, args.batch_size, height,
                                              cin, cout, stride, args.runs)
                          for fn in (xla_gemm, onednn_kernel))
        rows.append(dict(name=name, height=height, cin=cin, cout=cout,
                         stride=stride, output_pixels=pixels,
                         xla_gemm_ms=xla_ms, onednn_ms=dnn_ms,
                         speedup=xla_ms / dnn_ms))
        print(f"{name:20s} {pixels:7d} {xla_ms:12.1f} {dnn_ms:10.1f} "
              f"{xla_ms / dnn_ms:10.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(args=vars(args), batch_size=args.batch_size,
                       devices=str(jax.devices()),
                       pointwise_min_rows=onednn.POINTWISE_MIN_ROWS,
                       rows=rows), f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
