"""Host memory over a long run: trains the default model (digits, small
ResNeXt) for many steps through the real training loop (metrics, eval every
epoch, checkpoints) and reports the resident set size (RSS) at intervals.

A flat RSS after the first interval (compilation, data loading) means no
host-side leak from metrics, the pipeline or checkpointing. Prints a table
and writes JSON.

    python benchmarks/memory_soak.py                  # 5,000 steps
    python benchmarks/memory_soak.py --steps 200 --every 50
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB (Linux)."""
    fields = {}
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


class Sampler(threading.Thread):
    """Samples RSS every ``period`` seconds until stopped."""

    def __init__(self, period: float):
        super().__init__(daemon=True)
        self.period, self.samples = period, []
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            self.samples.append((time.time(), *rss_mib()))
            self._done.wait(self.period)

    def stop(self):
        self._done.set()
        self.join()


def by_step(samples, records, every: int) -> list[dict]:
    """RSS at each ``every``-th step: the last sample before that step's
    train record was written (times from ``metrics.jsonl``)."""
    times = {r["step"]: r["time"] for r in records if r["split"] == "train"}
    rows = []
    for step in sorted(s for s in times if s % every == 0):
        before = [s for s in samples if s[0] <= times[step]] or samples[:1]
        _, rss, peak = before[-1]
        rows.append({"step": step, "rss_mib": round(rss, 1),
                     "peak_rss_mib": round(peak, 1)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--every", type=int, default=500,
                        help="report every this many steps")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"
                                             / "memory_soak.json"))
    args = parser.parse_args()
    if args.every % 10:
        parser.error(f"--every (={args.every}) must be a multiple of 10, "
                     "the default config's log interval.")

    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.
    from configs.default import get_config
    from train.loop import train_and_evaluate
    from train.metrics_io import read_metrics

    config = get_config()
    config.num_train_steps = args.steps
    config.progress_bar = False
    sampler = Sampler(period=0.2)
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="memory_soak_") as workdir:
        start = time.time()
        summary = train_and_evaluate(config, workdir)
        sampler.stop()
        rows = by_step(sampler.samples, read_metrics(workdir), args.every)
    first = rows[0]["rss_mib"] if rows else float("nan")
    growth = rows[-1]["rss_mib"] - first if rows else float("nan")
    print(f"{'step':>7} {'RSS MiB':>9} {'peak MiB':>9}")
    for row in rows:
        print(f"{row['step']:>7} {row['rss_mib']:>9.1f} "
              f"{row['peak_rss_mib']:>9.1f}")
    print(f"RSS growth from step {rows[0]['step'] if rows else '-'} to "
          f"{args.steps}: {growth:+.1f} MiB "
          f"({summary['wall_seconds']:.0f} s, test accuracy "
          f"{100 * summary['test_accuracy']:.2f}%)")
    result = {"steps": args.steps, "every": args.every, "rows": rows,
              "rss_growth_mib": round(growth, 1),
              "final_peak_rss_mib": round(rss_mib()[1], 1),
              "wall_seconds": round(time.time() - start, 1),
              "test_accuracy": summary["test_accuracy"]}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
