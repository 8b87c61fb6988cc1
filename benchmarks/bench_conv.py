"""Grouped 3x3 convolution alone, at ResNeXt-50 32x4d's four stage shapes.

For each stage shape, times forward and forward+backward (gradients of input
and kernel) of every lowering, and of the ``dense`` lowering at several chunk
sizes (groups per block-diagonal convolution), to show where the default
chunk choice sits. Prints a table and writes JSON.

    python benchmarks/bench_conv.py --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from resnext_jax.layers import conv as conv_lib
from resnext_jax.layers import onednn

# (height, channels) of the grouped 3x3 in each stage of ResNeXt-50 32x4d.
STAGES = [(56, 128), (28, 256), (14, 512), (7, 1024)]


def median_seconds(fn, *args, runs: int) -> float:
    """Median wall time of ``fn(*args)`` over ``runs`` calls after one
    (compiling) call."""
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(batch, height, channels, groups, dtype, impl, chunk, runs,
            backward=True):
    kx, kk = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (batch, height, height, channels), dtype)
    kernel = jax.random.normal(kk, (3, 3, channels // groups, channels),
                               dtype) * 0.1

    def conv(x, kernel):
        if impl == "dense" and chunk is not None:
            return conv_lib._blockdiag_conv(x, kernel, (1, 1),
                                            ((1, 1), (1, 1)), groups, chunk)
        return conv_lib.grouped_conv(x, kernel, padding=((1, 1), (1, 1)),
                                     groups=groups, impl=impl)

    fwd = median_seconds(jax.jit(conv), x, kernel, runs=runs)
    bwd = None
    if backward:
        grad = jax.jit(jax.grad(
            lambda x, k: jnp.sum(conv(x, k).astype(jnp.float32) ** 2),
            argnums=(0, 1)))
        bwd = median_seconds(grad, x, kernel, runs=runs)
    return fwd, bwd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "bfloat16"])
    parser.add_argument("--chunks", default="1,2,4,8",
                        help="extra chunk sizes of the dense lowering to time")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-xla-backward", action="store_true",
                        help="the xla backward takes seconds per call on CPU")
    parser.add_argument("--json", default="benchmarks/results/conv.json")
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    print(f"jax {jax.__version__} on {jax.default_backend()}, "
          f"{len(os.sched_getaffinity(0))} CPUs usable; batch "
          f"{args.batch_size}, {args.groups} groups, {args.dtype}")
    unavailable = onednn.unavailable_reason()
    if unavailable:
        print(f"onednn kernel unavailable ({unavailable}): its rows time the "
              "dense lowering")
    header = (f"{'stage':<7}{'shape':<16}{'lowering':<16}{'chunk':>6}"
              f"{'fwd ms':>10}{'fwd+bwd ms':>12}")
    print(header)
    rows = []
    for stage, (height, channels) in enumerate(STAGES, start=1):
        cin_g = channels // args.groups
        default_chunk = conv_lib.default_chunk_groups(args.groups, cin_g,
                                                      cin_g)
        configs = [("xla", None), ("dense", None), ("onednn", None)]
        configs += [("dense", int(c)) for c in args.chunks.split(",")
                    if c and args.groups % int(c) == 0]
        for impl, chunk in configs:
            fwd, bwd = measure(
                args.batch_size, height, channels, args.groups, dtype, impl,
                chunk, args.runs,
                backward=not (impl == "xla" and args.skip_xla_backward))
            label = impl if chunk is None else f"dense(chunk)"
            shown_chunk = default_chunk if (impl, chunk) == ("dense", None) \
                else chunk
            row = dict(stage=stage, height=height, channels=channels,
                       lowering=impl, chunk=shown_chunk,
                       default=(impl == "dense" and chunk is None),
                       fwd_ms=fwd * 1e3,
                       fwd_bwd_ms=None if bwd is None else bwd * 1e3)
            rows.append(row)
            shape = f"{args.batch_size}x{height}x{height}x{channels}"
            print(f"{stage:<7}{shape:<16}{label:<16}"
                  f"{'' if shown_chunk is None else shown_chunk:>6}"
                  f"{row['fwd_ms']:>10.2f}"
                  f"{'-' if bwd is None else f'{bwd * 1e3:.2f}':>12}",
                  flush=True)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), jax=jax.__version__, rows=rows),
                      f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
