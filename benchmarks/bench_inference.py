"""Inference throughput of an exported model (jax.export, symbolic batch).

Exports a model with random weights through ``resnext_jax.save_exported``,
reloads it with the standalone ``resnext_jax/serving.py`` loader (as a server
would), and for each batch size measures the first call (compile + one run)
and the median of timed calls. Prints a table and writes JSON.

    python benchmarks/bench_inference.py --model resnext50_32x4d
    python benchmarks/bench_inference.py --batch-sizes 1,8,32 --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

import resnext_jax as rx
from resnext_jax.inference import export as rx_export
from resnext_jax.inference import serving
from resnext_jax.models.registry import parse_model_kwargs


def system_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return dict(cpu=cpu, logical_cpus=os.cpu_count(),
                affinity=len(os.sched_getaffinity(0)), jax=jax.__version__,
                backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()])


def random_variables(model, seed: int = 0) -> dict:
    """He-scaled random weights, unit BN statistics; nothing is compiled."""
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32)))
    rng = np.random.default_rng(seed)

    def sample(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)).astype(
                leaf.dtype)
        if "'var'" in name or "'scale'" in name:
            return np.ones(leaf.shape, leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(sample, shapes)


def time_batch(loaded, batch: int, size: int, runs: int,
               warmup: int) -> dict:
    images = np.random.default_rng(batch).normal(
        size=(batch, size, size, 3)).astype(np.float32)
    start = time.perf_counter()
    jax.block_until_ready(loaded(images))
    first = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(loaded(images))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(loaded(images))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return dict(batch_size=batch, first_call_s=first, median_s=median,
                images_per_s=batch / median)


def format_table(model: str, rows: list[dict]) -> str:
    header = (f"{'model':<20} {'batch':>5} {'first call (s)':>15} "
              f"{'ms/batch':>10} {'img/s':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{model:<20} {row['batch_size']:>5} {row['first_call_s']:>15.2f} "
            f"{1e3 * row['median_s']:>10.2f} {row['images_per_s']:>10.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--model-kwargs", default="{}",
                        help="JSON of ResNeXt field overrides")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--platforms", default="cpu",
                        help="export targets; the run uses this machine's")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json",
                        default="benchmarks/results/inference.json")
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if not batch_sizes or min(batch_sizes) < 1:
        parser.error(f"--batch-sizes={args.batch_sizes!r} must list positive "
                     "integers.")

    model = rx.create_model(args.model, **parse_model_kwargs(
        args.model_kwargs))
    variables = random_variables(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.rxexport")
        start = time.perf_counter()
        rx_export.save_exported(path, model, variables, platforms=args.platforms,
                                  image_size=args.image_size)
        export_s = time.perf_counter() - start
        file_mib = os.path.getsize(path) / 2**20
        start = time.perf_counter()
        loaded = serving.load(path)
        load_s = time.perf_counter() - start
    rows = [time_batch(loaded, b, args.image_size, args.runs, args.warmup)
            for b in batch_sizes]

    print(f"export {export_s:.2f} s, file {file_mib:.1f} MiB, load "
          f"{load_s:.2f} s; image {args.image_size}, backend "
          f"{jax.default_backend()}")
    print(format_table(args.model, rows))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(system=system_info(), args=vars(args),
                           model=args.model, export_s=export_s,
                           load_s=load_s, file_mib=file_mib, results=rows),
                      f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
