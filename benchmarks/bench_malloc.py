"""Train-step time and memory under each malloc setting, in alternating
fresh processes (``resnext_jax/malloc.py``).

Settings: ``arena`` (``resnext_jax.runtime.malloc.configure_malloc()``: one arena that keeps freed
memory, what our entry points set), ``huge`` (transparent huge pages for
malloc, ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc 2.35 or newer)
and ``default`` (glibc's defaults). Each process times
``--steps`` train steps after one warm-up and reports the median, the minor
page faults per step and its peak resident memory (``ru_maxrss``, which
includes the compile). Alternating the settings round by round spreads
this shared machine's drift over all of them. Prints a table and writes
JSON.

    python benchmarks/bench_malloc.py                      # 3 rounds, ~12 min
    python benchmarks/bench_malloc.py --rounds 1 --batch-size 2 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
SETTINGS = ("arena", "huge", "default")
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def worker(args) -> dict:
    """One process: the train step under the malloc this process has."""
    import resource  # pylint: disable=import-outside-toplevel
    import time  # pylint: disable=import-outside-toplevel

    import resnext_jax as rx  # pylint: disable=import-outside-toplevel
    if args.worker == "arena":
        from resnext_jax.runtime.malloc import configure_malloc  # pylint: disable=import-outside-toplevel
        configure_malloc()
    from bench_throughput import sgd_train_step, synthetic_inputs  # pylint: disable=import-outside-toplevel

    from resnext_jax.runtime.compilation_cache import enable_compilation_cache  # pylint: disable=import-outside-toplevel
    enable_compilation_cache()
    model = rx.create_model(args.model)
    images, labels, variables = synthetic_inputs(
        model, args.image_size, args.batch_size)
    step, state = sgd_train_step(model, variables)
    seconds, faults = [], []
    for i in range(args.steps + 1):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        state, loss = step(state, images, labels)
        loss.block_until_ready()
        if i:  # The first call compiles.
            seconds.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                          - before)
    return dict(setting=args.worker,
                huge_pages=HUGE_PAGES_TUNABLE in os.environ.get(
                    "GLIBC_TUNABLES", "").split(":"),
                step_s=statistics.median(seconds), steps_s=seconds,
                faults_per_step=statistics.median(faults),
                peak_rss_gib=resource.getrusage(
                    resource.RUSAGE_SELF).ru_maxrss / 2**20)


def run_worker(setting: str, args) -> dict:
    env = dict(os.environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":")
                if t and t != HUGE_PAGES_TUNABLE]
    if setting == "huge":
        tunables.append(HUGE_PAGES_TUNABLE)
    env["GLIBC_TUNABLES"] = ":".join(tunables)
    command = [sys.executable, __file__, "--worker", setting,
               "--model", args.model, "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size),
               "--steps", str(args.steps)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{setting} worker failed:\n{proc.stderr[-3000:]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--json", default="benchmarks/results/malloc.json")
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    settings = [s for s in args.settings.split(",") if s]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"--settings: unknown {unknown}; choose from {SETTINGS}")
    runs = []
    for round_ in range(args.rounds):
        for setting in settings:
            r = run_worker(setting, args)
            runs.append(dict(r, round=round_))
            print(f"  round {round_} {setting:<8}{r['step_s']:7.2f} s/step "
                  f"{r['faults_per_step']:>9,.0f} faults/step  peak RSS "
                  f"{r['peak_rss_gib']:.2f} GiB", flush=True)
    print(f"\n  {'setting':<9}{'median s/step':>14}{'range':>14}"
          f"{'peak RSS GiB':>16}")
    for setting in settings:
        mine = [r for r in runs if r["setting"] == setting]
        steps = [r["step_s"] for r in mine]
        rss = [r["peak_rss_gib"] for r in mine]
        print(f"  {setting:<9}{statistics.median(steps):14.2f}"
              f"{min(steps):7.2f}-{max(steps):<6.2f}"
              f"{min(rss):9.2f}-{max(rss):.2f}")
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(args=vars(args), runs=runs), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
