"""ResNeXt throughput, ours against torchvision, measured in one run.

Measures inference img/s and full train-step img/s (forward, backward, SGD
momentum update, BatchNorm statistics) of a model at 224x224 for:

  (a) our ``auto`` grouped-convolution lowering,
  (b) XLA's plain ``feature_group_count`` lowering (``xla``),
  (c) torchvision in channels_last, when torch/torchvision are installed.

Each measurement warms up (compile), then reports the median of several
timed runs. Prints a table and writes JSON.

    python benchmarks/bench_throughput.py --batch-size 16
    python benchmarks/bench_throughput.py --impls auto --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import resnext_jax as rx
from resnext_jax.runtime import prepare_process

TORCH_MODELS = {"resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                "resnet50", "resnet101", "resnet152"}


def cpu_description() -> dict:
    name = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(cpu=name, logical_cpus=os.cpu_count(),
                affinity=len(os.sched_getaffinity(0)),
                jax=jax.__version__, backend=jax.default_backend())


def _median_seconds(fn, runs: int, warmup: int) -> tuple[float, float]:
    """(compile+first-run seconds, median seconds of `runs` timed calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def jitted_train_step(model, tx):
    """``step(state, x, y) -> (state, loss)``: forward, backward, ``tx``'s
    update and the BatchNorm statistics; ``state = (params, batch_stats,
    opt_state)``, donated."""

    def train_step(state, x, y):
        params, stats, opt_state = state

        def loss_fn(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": stats}, x, train=True,
                mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), y).mean()
            return loss, updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats,
                opt_state), loss

    return jax.jit(train_step, donate_argnums=0)


def synthetic_inputs(model, size: int, batch: int):
    """``(images, labels, variables)``: random images, labels for them and
    the model's ``init_variables``."""
    images = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3))
    labels = jnp.arange(batch) % model.num_classes
    return images, labels, rx.init_variables(model, 0, size)


def sgd_train_step(model, variables):
    """``(step, state)``: :func:`jitted_train_step` with SGD and momentum,
    and its state ``(params, batch_stats, opt_state)`` from ``variables``."""
    tx = optax.sgd(0.1, momentum=0.9)
    params = variables["params"]
    return jitted_train_step(model, tx), (
        params, variables["batch_stats"], tx.init(params))


def bench_jax(name: str, impl: str, batch: int, size: int, dtype: str,
              runs: int, train_runs: int, warmup: int,
              do_train: bool, model_kwargs: dict | None = None) -> dict:
    model = rx.create_model(name, conv_impl=impl,
                            dtype=jnp.dtype(dtype), **(model_kwargs or {}))
    images, labels, variables = synthetic_inputs(model, size, batch)
    params, stats = variables["params"], variables["batch_stats"]

    infer = jax.jit(lambda p, s, x: model.apply(
        {"params": p, "batch_stats": s}, x, train=False))
    first, sec = _median_seconds(
        lambda: infer(params, stats, images).block_until_ready(), runs,
        warmup)
    result = dict(framework="jax", model=name, impl=impl,
                  resolved_impl=rx.layers.resolve_conv_impl(impl), dtype=dtype,
                  batch=batch, infer_img_s=batch / sec,
                  infer_compile_s=first)
    if not do_train:
        return result

    step, state = sgd_train_step(model, variables)
    state = [state]

    def run_step():
        state[0], loss = step(state[0], images, labels)
        loss.block_until_ready()

    first, sec = _median_seconds(run_step, train_runs,
                                 max(1, min(warmup, train_runs)))
    result.update(train_img_s=batch / sec, train_compile_s=first)
    return result


def bench_torch(name: str, batch: int, size: int, dtype: str, runs: int,
                train_runs: int, warmup: int, do_train: bool) -> dict | None:
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    torch_dtype = {"float32": torch.float32,
                   "bfloat16": torch.bfloat16}[dtype]
    model = getattr(torchvision.models, name)()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).to(
        memory_format=torch.channels_last)
    y = torch.arange(batch) % 1000
    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast(
                "cpu", dtype=torch_dtype, enabled=dtype != "float32"):
            model(x)

    first, sec = _median_seconds(infer, runs, warmup)
    result = dict(framework="torch", model=name, impl="torchvision",
                  resolved_impl="channels_last", dtype=dtype, batch=batch,
                  infer_img_s=batch / sec, infer_compile_s=first,
                  torch=torch.__version__, torch_threads=torch.get_num_threads())
    if not do_train:
        return result
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch_dtype,
                            enabled=dtype != "float32"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    first, sec = _median_seconds(step, train_runs,
                                 max(1, min(warmup, train_runs)))
    result.update(train_img_s=batch / sec, train_compile_s=first)
    return result


def format_table(results: list[dict]) -> str:
    lines = [f"{'framework':<10}{'lowering':<28}{'dtype':<10}{'batch':>6}"
             f"{'infer img/s':>13}{'train img/s':>13}"]
    for r in results:
        train = r.get("train_img_s")
        lines.append(
            f"{r['framework']:<10}{r['impl'] + ' (' + r['resolved_impl'] + ')':<28}"
            f"{r['dtype']:<10}{r['batch']:>6}{r['infer_img_s']:>13.2f}"
            f"{(f'{train:.3f}' if train else '-'):>13}")
    return "\n".join(lines)


def ratios(results: list[dict]) -> dict:
    by = {(r["impl"]): r for r in results}
    out = {}
    ours, ref, xla = by.get("auto"), by.get("torchvision"), by.get("xla")
    for key in ("infer_img_s", "train_img_s"):
        if ours and ref and key in ours and key in ref:
            out[f"auto_vs_torchvision_{key}"] = ours[key] / ref[key]
        if ours and xla and key in ours and key in xla:
            out[f"auto_vs_xla_{key}"] = ours[key] / xla[key]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help="JSON of ResNeXt field overrides for our model "
                        "(e.g. '{\"stage_sizes\": [1, 1, 1]}'); leaves out "
                        "torchvision, which has no such variant")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "bfloat16"])
    parser.add_argument("--impls", default="auto,xla,torchvision",
                        help="comma list of auto, blockdiag, xla, torchvision")
    parser.add_argument("--runs", type=int, default=5,
                        help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--xla-train-runs", type=int, default=1,
                        help="timed train steps for the xla lowering, which "
                        "takes minutes per step on CPU")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--json", default="benchmarks/results/throughput.json")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size (={args.batch_size}) must be >= 1")

    # As the library's entry points run: malloc that reuses XLA:CPU's step
    # buffers (torchvision, in this process, gets it too) and the
    # persistent compilation cache.
    prepare_process()
    info = cpu_description()
    print(f"CPU: {info['cpu']}; {info['affinity']} usable of "
          f"{info['logical_cpus']} logical CPUs; jax {info['jax']} "
          f"({info['backend']})")
    results = []
    for impl in args.impls.split(","):
        impl = impl.strip()
        if impl == "torchvision":
            if args.model_kwargs:
                print("torchvision: skipped, --model-kwargs changes the "
                      "architecture")
                continue
            if args.model not in TORCH_MODELS:
                print(f"torchvision: skipped, no torchvision {args.model}")
                continue
            r = bench_torch(args.model, args.batch_size, args.image_size,
                            args.dtype, args.runs, args.runs, args.warmup,
                            not args.no_train)
            if r is None:
                print("torchvision: skipped (torch/torchvision not installed;"
                      " pip install torch torchvision)")
                continue
        else:
            train_runs = args.xla_train_runs if impl == "xla" else args.runs
            r = bench_jax(args.model, impl, args.batch_size, args.image_size,
                          args.dtype, args.runs, train_runs, args.warmup,
                          not args.no_train, args.model_kwargs)
        results.append(r)
        print(f"  measured {r['impl']}: infer {r['infer_img_s']:.2f} img/s"
              + (f", train {r['train_img_s']:.3f} img/s"
                 if "train_img_s" in r else ""), flush=True)
    print()
    print(format_table(results))
    rel = ratios(results)
    for key, value in rel.items():
        print(f"{key}: {value:.2f}x")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(system=info, args=vars(args), results=results,
                           ratios=rel), f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
