"""Metric files of a workdir: TensorBoard events and ``metrics.jsonl``.

A run killed mid-write leaves a partial last line in ``metrics.jsonl``: the
writer cuts it off before appending, and the reader skips lines that are
not JSON (with a warning), so neither a plot nor a resumed run breaks.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import logging

from train.workdir import METRICS_FILE, TENSORBOARD_DIR


def repair_metrics(path: str | pathlib.Path) -> int:
    """Cuts a partial last line (no newline) off ``path``; returns the
    number of bytes removed."""
    path = pathlib.Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        # Look back for the last newline, a block at a time.
        end = size
        while end > 0:
            start = max(0, end - 4096)
            f.seek(start)
            block = f.read(end - start)
            if end == size and block.endswith(b"\n"):
                return 0
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        f.truncate(keep)
    removed = size - keep
    message = (f"{path}: removed a partial last line ({removed} bytes) left "
               "by an interrupted write.")
    logging.warning(message)
    print(f"WARNING: {message}", flush=True)
    return removed


def _summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without torch.

    tensorboardX imports torch whenever it is installed, only to accept
    torch tensors, which this module never passes: 3 s and a few hundred MB
    in every run of an environment that also has PyTorch. Marking torch
    missing for the duration of the import keeps it out; a torch the
    process already imported is left alone.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError.
    try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Writes scalars to TensorBoard (``<workdir>/tensorboard``) and appends
    one JSON object per call to ``<workdir>/metrics.jsonl``.

    Only the writing process (process 0 in a multi-host run) should own one.
    """

    def __init__(self, workdir: str | pathlib.Path):
        summary_writer = _summary_writer_class()
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._tb = summary_writer(str(workdir / TENSORBOARD_DIR))
        repair_metrics(workdir / METRICS_FILE)
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
    bad = []
    for number, line in enumerate(
            path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            latest[(record["split"], record["step"])] = record
        except (ValueError, KeyError, TypeError):  # Torn by a kill.
            bad.append(number)
    if bad:
        message = (f"{path}: skipped {len(bad)} line(s) that are not whole "
                   f"records (line {', '.join(map(str, bad[:5]))}"
                   f"{', ...' if len(bad) > 5 else ''}), left by an "
                   "interrupted write.")
        logging.warning(message)
        print(f"WARNING: {message}", flush=True)
    return sorted(latest.values(), key=lambda r: (r["split"], r["step"]))
