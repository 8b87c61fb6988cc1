"""Metric files of a workdir: TensorBoard events and ``metrics.jsonl``."""

from __future__ import annotations

import json
import pathlib
import time

from train.workdir import METRICS_FILE, TENSORBOARD_DIR


class MetricWriter:
    """Writes scalars to TensorBoard (``<workdir>/tensorboard``) and appends
    one JSON object per call to ``<workdir>/metrics.jsonl``.

    Only the writing process (process 0 in a multi-host run) should own one.
    """

    def __init__(self, workdir: str | pathlib.Path):
        from tensorboardX import SummaryWriter

        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._tb = SummaryWriter(str(workdir / TENSORBOARD_DIR))
        self._jsonl = open(workdir / METRICS_FILE, "a", encoding="utf-8")

    def write(self, step: int, split: str, metrics: dict) -> None:
        """``split`` ("train" or "eval") prefixes the TensorBoard tags."""
        values = {k: float(v) for k, v in metrics.items()}
        for name, value in values.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)
        record = {"step": int(step), "split": split, "time": time.time(),
                  **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        self._tb.close()
        self._jsonl.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """The records of ``metrics.jsonl``; later records of a step win (a
    resumed run rewrites the steps after its checkpoint)."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: nothing to plot.")
    latest = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[(record["split"], record["step"])] = record
    return sorted(latest.values(), key=lambda r: (r["split"], r["step"]))
