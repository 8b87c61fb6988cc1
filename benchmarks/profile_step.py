"""Where a train step's time goes inside XLA: one profiled run, summed by
kind of operation.

Runs the train step of ``--model`` (the same step ``bench_throughput`` and
``bench_cpu`` time: forward, backward, SGD with momentum, BatchNorm
statistics) ``--steps`` times under ``jax.profiler``, reads the trace
(Perfetto JSON) back and sums the time of every XLA operation the runtime
reports, by kind: convolutions and GEMMs, fusions (elementwise work,
BatchNorm), reductions, transposes and copies (layout changes),
concatenations and slices, and the rest. Prints a table and writes JSON; the
trace stays in ``--trace-dir`` for TensorBoard or Perfetto.

    python benchmarks/profile_step.py                        # ResNeXt-50, b16
    python benchmarks/profile_step.py --model resnext29_8x64d --image-size 32 \
        --batch-size 64
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

# The kind of an XLA operation, from the name the runtime traces it under
# (the HLO instruction's name: "ynn_fusion.12", "dot_general.3",
# "slice_concatenate_fusion", ...). First match wins.
KINDS = (
    ("convolution / GEMM", re.compile(
        r"^(ynn_fusion|onednn|custom-call|dot|conv)")),
    ("transpose / copy", re.compile(r"^(transpose|copy)|transpose")),
    ("concatenate / slice", re.compile(r"^(slice|dynamic)|concatenate")),
    ("reduce / reduce-window", re.compile(r"^(reduce|select-and-scatter)")),
    ("other fusion (elementwise, BN)", re.compile(r"fusion|^wrapped_")),
)
OTHER = "other"
# What the runtime traces around the operations (the program, argument
# handling, thread pools: "ThunkExecutor::Execute", "$profiler", "end: x")
# has capitals, spaces, colons or "$"; an HLO instruction's name has none.
_HLO_NAME = re.compile(r"^[a-z][a-z0-9_\-]*(\.\d+)?$")
# Control flow: a loop's time is that of the operations in its body.
_CONTROL_FLOW = re.compile(r"^(while|call|conditional)\b")


def kind_of(name: str) -> str | None:
    """The kind of the operation traced as ``name``; None for the
    runtime's own events, whose time is in the operations they wrap."""
    if not _HLO_NAME.match(name) or _CONTROL_FLOW.match(name):
        return None
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return OTHER


def _trace_events(trace_dir: pathlib.Path) -> list[dict]:
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)["traceEvents"]


def summarize(events: list[dict], steps: int) -> dict:
    """ms per step by kind, and the ten costliest operations."""
    by_kind = collections.Counter()
    by_name = collections.Counter()
    counts = collections.Counter()
    for event in events:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        name = event.get("name", "")
        kind = kind_of(name)
        if kind is None:
            continue
        ms = event["dur"] / 1e3 / steps  # Trace durations are in us.
        by_kind[kind] += ms
        by_name[name] += ms
        counts[kind] += 1
    total = sum(by_kind.values())
    return dict(
        ms_per_step=dict(by_kind.most_common()),
        ops_per_step={k: v / steps for k, v in counts.items()},
        total_ms_per_step=total,
        top_ops=[dict(name=n, ms_per_step=ms)
                 for n, ms in by_name.most_common(10)])


def profile(args) -> dict:
    import jax  # pylint: disable=import-outside-toplevel

    import resnext_jax as rx  # pylint: disable=import-outside-toplevel
    from resnext_jax.runtime import prepare_process  # pylint: disable=import-outside-toplevel
    from bench_throughput import sgd_train_step, synthetic_inputs  # pylint: disable=import-outside-toplevel

    prepare_process()
    model = rx.create_model(args.model, **args.model_kwargs)
    images, labels, variables = synthetic_inputs(
        model, args.image_size, args.batch_size)
    step, state = sgd_train_step(model, variables)
    for _ in range(2):  # Compile, then one step outside the trace.
        state, loss = step(state, images, labels)
        loss.block_until_ready()
    trace_dir = pathlib.Path(args.trace_dir or tempfile.mkdtemp())
    start = time.perf_counter()
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(args.steps):
            state, loss = step(state, images, labels)
            loss.block_until_ready()
    step_ms = (time.perf_counter() - start) * 1e3 / args.steps
    summary = summarize(_trace_events(trace_dir), args.steps)
    return dict(args=vars(args), lowering=rx.layers.resolve_conv_impl("auto"),
                step_ms_traced=step_ms, trace_dir=str(trace_dir), **summary)


def print_table(report: dict) -> None:
    total = report["total_ms_per_step"]
    print(f"\n  {'kind of operation':<34}{'ms/step':>10}{'share':>8}"
          f"{'ops/step':>10}")
    for kind, ms in report["ms_per_step"].items():
        print(f"  {kind:<34}{ms:10.1f}{ms / total:8.1%}"
              f"{report['ops_per_step'][kind]:10.0f}")
    print(f"  {'sum of operations':<34}{total:10.1f}")
    print(f"  {'step (wall, under the profiler)':<34}"
          f"{report['step_ms_traced']:10.1f}")
    print("\n  costliest operations (ms/step):")
    for op in report["top_ops"]:
        print(f"    {op['ms_per_step']:9.1f}  {op['name']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help="JSON of field overrides")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--trace-dir", default="",
                        help="where the trace goes (default: a temp folder)")
    parser.add_argument("--json", default="benchmarks/results/profile.json")
    args = parser.parse_args(argv)
    report = profile(args)
    print_table(report)
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    sys.exit(main())
