"""``python -m train.compare``: a table of training runs grouped by config.

  python -m train.compare ROOT/* [--out DIR]
  python -m train.compare ROOT            # a sweep's folder: its runs

Reads each workdir's ``config.json``, ``summary.json`` and ``metrics.jsonl``
and groups the runs by the config values that differ between them, except
the seed (and the switches of one invocation: ``progress_bar``, ...). Per
group: the number of seeds, the final and best eval accuracy and loss as
mean ± standard deviation over the seeds (the sample standard deviation,
n - 1; none for one seed), the parameters, the multiply-adds of one image,
and the throughput and wall time.

- final: the eval at the end of the run (``summary.json``: test_accuracy,
  test_loss);
- best: the best eval accuracy of the run (``summary.json``:
  best_test_accuracy) and the lowest eval loss of ``metrics.jsonl``;
- img/s and wall s: ``summary.json``'s examples_per_second and
  wall_seconds. Both describe the trainer invocation that finished the run:
  of a resumed run, only its last part;
- params: ``summary.json``'s num_params; MACs are counted on the model the
  config builds (train/model_factory.py), at the config's image size, with
  the data set's class count (``dataset.json``).

Runs that did not complete (interrupted, failed, or still running) are
listed as such and left out of the means.

Writes ``compare.csv`` (a row per group), ``compare.json`` (the groups and
every run, with the values averaged) and ``curves.png`` (eval accuracy and
train loss against step, a colour per group: the mean over seeds, and a
band from their min to their max) to ``--out`` (default: the current
directory).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import socket
import sys

from train.sweep import SWEEP_FILE, flatten, format_value, short_names

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
DATASET_FILE = "dataset.json"
# (key, what it is, scale for printing, format)
METRICS = (("final_accuracy", "final acc %", 100.0, ".2f"),
           ("best_accuracy", "best acc %", 100.0, ".2f"),
           ("final_loss", "final loss", 1.0, ".4f"),
           ("best_loss", "best loss", 1.0, ".4f"))


class CompareError(Exception):
    """Nothing to compare (no workdir among the paths)."""


def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_workdirs(paths: list[str]) -> tuple[list[pathlib.Path], list[str]]:
    """The training workdirs among ``paths`` (a sweep's folder stands for
    its runs); and what was skipped, with why."""
    found, skipped = [], []
    for text in paths:
        path = pathlib.Path(text)
        if not path.exists():
            skipped.append(f"{path}: does not exist")
        elif not path.is_dir():
            if path.name not in (SWEEP_FILE, "lock", "sweep.json.tmp"):
                skipped.append(f"{path}: not a folder")
        elif (path / CONFIG_FILE).is_file():
            found.append(path)
        else:
            inner = sorted(p for p in path.iterdir()
                           if p.is_dir() and (p / CONFIG_FILE).is_file())
            if inner:
                found += inner
            elif (path / SWEEP_FILE).is_file():
                skipped.append(f"{path}: a sweep none of whose runs has "
                               "started")
            else:
                skipped.append(f"{path}: not a training workdir (no "
                               f"{CONFIG_FILE})")
    unique = []
    for path in found:
        if path.resolve() not in [p.resolve() for p in unique]:
            unique.append(path)
    return unique, skipped


def _sweep_record(workdir: pathlib.Path) -> dict | None:
    """The run's record in its sweep's ``sweep.json``, if any."""
    sweep = _read_json(workdir.parent / SWEEP_FILE)
    if not isinstance(sweep, dict):
        return None
    for record in sweep.get("runs", []):
        if record.get("workdir") == workdir.name:
            return record
    return None


def _running(workdir: pathlib.Path) -> bool:
    holder = _read_json(workdir / "lock")
    if not isinstance(holder, dict) or holder.get("host") != (
            socket.gethostname()):
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _metrics(workdir: pathlib.Path) -> list[dict]:
    from train.metrics_io import read_metrics  # pylint: disable=import-outside-toplevel
    try:
        return read_metrics(workdir)
    except FileNotFoundError:
        return []


def read_run(workdir: pathlib.Path) -> dict:
    """What compare needs of one workdir."""
    config = _read_json(workdir / CONFIG_FILE) or {}
    summary = _read_json(workdir / SUMMARY_FILE)
    records = _metrics(workdir)
    evals = [r for r in records if r["split"] == "eval"]
    trains = [r for r in records if r["split"] == "train"]
    run = {"workdir": str(workdir), "name": workdir.name,
           "seed": config.get("seed"), "config": config,
           "eval_curve": [(r["step"], r["accuracy"]) for r in evals],
           "train_loss_curve": [(r["step"], r["loss"]) for r in trains]}
    if isinstance(summary, dict) and summary.get("completed"):
        best_accuracy = summary.get("best_test_accuracy")
        if best_accuracy is None and evals:
            best_accuracy = max(r["accuracy"] for r in evals)
        run.update(
            status="completed",
            final_accuracy=summary.get("test_accuracy"),
            final_loss=summary.get("test_loss"),
            best_accuracy=best_accuracy,
            best_loss=(min(r["loss"] for r in evals) if evals
                       else summary.get("test_loss")),
            params=summary.get("num_params"),
            examples_per_second=summary.get("examples_per_second"),
            wall_seconds=summary.get("wall_seconds"),
            steps=summary.get("steps"),
            total_steps=summary.get("total_steps"),
            attempts=_attempts(workdir))
        return run
    record = _sweep_record(workdir) or {}
    last_step = max((r["step"] for r in records), default=0)
    if _running(workdir):
        run["status"] = "running"
    elif record.get("status") == "failed":
        run["status"] = "failed"
        run["error"] = record.get("error")
    else:
        run["status"] = "incomplete"
    run["steps"] = last_step
    return run


def _attempts(workdir: pathlib.Path) -> int | None:
    """How many times a sweep started the run's trainer (None outside a
    sweep)."""
    record = _sweep_record(workdir)
    return record.get("attempts") if record else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def _sort_key(value):
    if isinstance(value, bool) or value is None:
        return (2, str(value))
    if isinstance(value, (int, float)):
        return (0, float(value))
    return (1, json.dumps(value, sort_keys=True))


def group_runs(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """``(the fields that differ between runs, the groups)``; runs whose
    configs agree but for the seed share a group."""
    from train.workdir import _SWITCHES  # pylint: disable=import-outside-toplevel

    # Not what a run is: the seed, and the switches of one invocation.
    ignored = ("seed",) + tuple(_SWITCHES)
    flats = [{k: v for k, v in flatten(run["config"]).items()
              if k.split(".", 1)[0] not in ignored}
             for run in runs]
    keys = sorted(set().union(*flats)) if flats else []
    varying = [k for k in keys
               if len({json.dumps(f.get(k), sort_keys=True)
                       for f in flats}) > 1]
    groups = {}
    for run, flat in zip(runs, flats):
        values = {k: flat.get(k) for k in varying}
        key = json.dumps(values, sort_keys=True)
        groups.setdefault(key, {"values": values, "runs": []})
        groups[key]["runs"].append(run)
    shorts = short_names(varying)
    ordered = sorted(groups.values(), key=lambda g: [
        _sort_key(g["values"][k]) for k in varying])
    for group in ordered:
        group["name"] = ",".join(
            f"{shorts[k]}={format_value(group['values'][k])}"
            for k in varying) or "all"
        group["runs"].sort(key=lambda r: _sort_key(r.get("seed")))
    return varying, ordered


def _model_costs(config: dict, workdir: pathlib.Path) -> tuple:
    """``(params, MACs)`` of the model ``config`` builds (shapes only)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel
    import resnext_jax as rx  # pylint: disable=import-outside-toplevel
    from train.model_factory import build_model  # pylint: disable=import-outside-toplevel

    info = _read_json(workdir / DATASET_FILE) or {}
    num_classes = len(info.get("class_names") or []) or None
    if num_classes is None:
        return None, None
    cfg = ml_collections.ConfigDict(config)
    model = build_model(cfg, num_classes, axis_name=None)
    size = int(cfg.image_size)
    variables = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))
    return (rx.models.count_params(variables),
            rx.models.count_macs(model, image_size=size))


def summarize(runs: list[dict]) -> dict:
    """The groups with their statistics, and the runs."""
    varying, groups = group_runs(runs)
    out_groups = []
    for group in groups:
        done = [r for r in group["runs"] if r["status"] == "completed"]
        stats = {}
        for key, *_ in METRICS:
            mean, std = _mean_std([r.get(key) for r in done])
            stats[key] = {"mean": mean, "std": std,
                          "values": [r.get(key) for r in done]}
        for key in ("examples_per_second", "wall_seconds"):
            mean, std = _mean_std([r.get(key) for r in done])
            stats[key] = {"mean": mean, "std": std,
                          "values": [r.get(key) for r in done]}
        first = (done or group["runs"])[0]
        params = first.get("params")
        macs = None
        try:
            counted_params, macs = _model_costs(
                first["config"], pathlib.Path(first["workdir"]))
            params = params if params is not None else counted_params
        except Exception as e:  # pylint: disable=broad-except
            print(f"WARNING: {group['name']}: could not count MACs: {e}",
                  file=sys.stderr)
        out_groups.append({
            "group": group["name"], "values": group["values"],
            "n": len(done), "seeds": [r.get("seed") for r in done],
            "params": params, "macs": macs, "stats": stats,
            "not_completed": [{"workdir": r["workdir"],
                               "status": r["status"],
                               "steps": r.get("steps"),
                               "error": r.get("error")}
                              for r in group["runs"]
                              if r["status"] != "completed"],
            "workdirs": [r["workdir"] for r in done]})
    return {"varying": varying, "groups": out_groups, "runs": [
        {k: v for k, v in r.items()
         if k not in ("config", "eval_curve", "train_loss_curve")}
        for r in runs], "_curves": groups}


def _cell(stat: dict, scale: float, fmt: str) -> str:
    if stat["mean"] is None:
        return "-"
    text = format(stat["mean"] * scale, fmt)
    if stat["std"] is not None:
        text += " ± " + format(stat["std"] * scale, fmt)
    return text


def _count(value, unit="") -> str:
    if value is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.2f}{suffix}{unit}"
    return f"{value}{unit}"


def table(result: dict) -> str:
    head = (["group", "n"] + [label for _, label, _, _ in METRICS]
            + ["params", "MACs", "img/s", "wall s"])
    rows = []
    for group in result["groups"]:
        stats = group["stats"]
        ips = stats["examples_per_second"]["mean"]
        wall = stats["wall_seconds"]["mean"]
        rows.append([group["group"], str(group["n"])]
                    + [_cell(stats[key], scale, fmt)
                       for key, _, scale, fmt in METRICS]
                    + [_count(group["params"]), _count(group["macs"]),
                       "-" if ips is None else f"{ips:.0f}",
                       "-" if wall is None else f"{wall:.1f}"])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths)))
             for row in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for group in result["groups"]:
        for run in group["not_completed"]:
            line = (f"{run['status']}: {run['workdir']} (step "
                    f"{run['steps']}; not averaged)")
            if run.get("error"):
                line += f": {run['error']}"
            lines.append(line)
    resumed = [r["name"] for r in result["runs"]
               if r["status"] == "completed" and (r.get("attempts") or 1) > 1]
    if resumed:
        lines.append(f"resumed: {', '.join(resumed)}: their img/s and wall s "
                     "are of the last part only (summary.json).")
    return "\n".join(lines)


def write_csv(result: dict, path: pathlib.Path) -> None:
    varying = result["varying"]
    keys = [key for key, *_ in METRICS] + ["examples_per_second",
                                          "wall_seconds"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["group"] + varying + ["n"]
                        + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
                        + ["params", "macs", "not_completed"])
        for group in result["groups"]:
            stats = group["stats"]
            writer.writerow(
                [group["group"]]
                + [json.dumps(group["values"][k]) for k in varying]
                + [group["n"]]
                + ["" if stats[k][s] is None else repr(stats[k][s])
                   for k in keys for s in ("mean", "std")]
                + ["" if group["params"] is None else group["params"],
                   "" if group["macs"] is None else group["macs"],
                   len(group["not_completed"])])


def _band(curves: list[list[tuple]]):
    """Steps every curve has, with the mean, min and max there."""
    if not curves:
        return [], [], [], []
    common = set(step for step, _ in curves[0])
    for curve in curves[1:]:
        common &= set(step for step, _ in curve)
    steps = sorted(common)
    by_step = [dict(curve) for curve in curves]
    values = [[c[s] for c in by_step] for s in steps]
    return (steps, [sum(v) / len(v) for v in values],
            [min(v) for v in values], [max(v) for v in values])


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    import matplotlib.ticker  # pylint: disable=import-outside-toplevel

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab10")
    losses = []
    for index, group in enumerate(result["_curves"]):
        colour = colours(index % 10)
        done = [r for r in group["runs"] if r["status"] == "completed"]
        label = f"{group['name']} (n={len(done)})"
        for ax, key, scale in ((ax_acc, "eval_curve", 100.0),
                               (ax_loss, "train_loss_curve", 1.0)):
            steps, mean, low, high = _band([r[key] for r in done])
            if not steps:
                continue
            if key == "train_loss_curve":
                losses += low + high
            ax.plot(steps, [scale * v for v in mean], "-", color=colour,
                    label=label, markersize=3, marker=(
                        "o" if key == "eval_curve" or len(steps) < 3
                        else None))
            if len(done) > 1:
                ax.fill_between(steps, [scale * v for v in low],
                                [scale * v for v in high], color=colour,
                                alpha=0.2, linewidth=0)
    ax_acc.set(xlabel="step", ylabel="eval accuracy (%)",
               title="eval accuracy (mean, min-max over seeds)")
    ax_loss.set(xlabel="step", ylabel="train loss",
                title="train loss (mean, min-max over seeds)")
    positive = [v for v in losses if v > 0]
    if positive and max(positive) > 10 * min(positive):  # Decades: log.
        ax_loss.set_yscale("log")
        for axis_formatter in (ax_loss.yaxis.set_major_formatter,
                               ax_loss.yaxis.set_minor_formatter):
            axis_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    # One legend for both, below them: group names can be long.
    handles, labels = max((ax.get_legend_handles_labels()
                           for ax in (ax_acc, ax_loss)),
                          key=lambda hl: len(hl[1]))
    if handles:
        fig.legend(handles, labels, loc="upper center", fontsize="small",
                   bbox_to_anchor=(0.5, 0.0), frameon=False,
                   ncol=1 if max(map(len, labels)) > 40 else min(
                       4, len(labels)))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def compare(paths: list[str], out: str | pathlib.Path = ".") -> dict:
    """Reads the runs, writes compare.csv, compare.json and curves.png to
    ``out``; returns the result (see compare.json)."""
    workdirs, skipped = find_workdirs(paths)
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    if not workdirs:
        raise CompareError("no training workdir (a folder with "
                           f"{CONFIG_FILE}) among {' '.join(paths)}.")
    runs = [read_run(w) for w in workdirs]
    result = summarize(runs)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = result.pop("_curves")
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    write_csv(result, out / "compare.csv")
    result["_curves"] = curves
    plot(result, out / "curves.png")
    result.pop("_curves")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.compare",
        description="Group training runs by the config values that differ "
        "(but the seed) and compare them: mean ± std over seeds.")
    parser.add_argument("paths", nargs="+", metavar="WORKDIR",
                        help="training workdirs, or a sweep's folder")
    parser.add_argument("--out", default=".",
                        help="folder for compare.csv, compare.json and "
                        "curves.png (default: the current directory)")
    args = parser.parse_args(argv)
    # Shapes only: no need for (or to take memory on) an accelerator.
    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        result = compare(args.paths, args.out)
    except (CompareError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table(result))
    out = pathlib.Path(args.out)
    print(f"Wrote {out / 'compare.csv'}, {out / 'compare.json'}, "
          f"{out / 'curves.png'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
