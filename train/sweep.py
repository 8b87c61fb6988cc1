"""``python -m train.sweep``: a grid of training runs, one after another.

  python -m train.sweep --config configs/default.py \\
      --set 'model_kwargs.cardinality=4,8' \\
      --set 'base_learning_rate=0.05,0.1' --seeds 3 --workdir ROOT \\
      [--config.num_epochs=20 ...] [--dry-run]

Every combination of the ``--set`` lists (their cartesian product), times
seeds ``0..N-1`` (``config.seed``), trains in its own workdir under ROOT,
named from what varies: ``ROOT/cardinality=4,base_learning_rate=0.05,seed=0``.
Seed 0 of every combination runs first, then seed 1, ...: a sweep stopped
halfway has every combination once. Each run is ``python -m train`` in a
subprocess (its output in ``<run>/train.log``, and on the terminal), so a run
that crashes is recorded as failed and the sweep goes on.

Values are parsed as ``--config.<field>=<value>`` on the trainer's command
line is (ml_collections: the field's type decides; tuples in parentheses:
``--set 'model_kwargs.stage_sizes=(1,1,1),(2,2,2)'``); a value holding a
comma outside parentheses is quoted: ``--set 'dataset="a,b",c'``. Other
``--config.<field>=<value>`` arguments apply to every run.

Before anything trains, every run's config is built and checked as the
trainer checks it: an unknown field or a bad value is refused in one
``error:`` line, and nothing is created. (Checks that need the data set,
e.g. an eval batch larger than the eval split, happen when that run starts;
it is then recorded as failed.)

``ROOT/sweep.json`` holds the grid, the runs and their status. Killed and
started again with the same command, the sweep skips the runs that finished
(their ``summary.json`` says ``"completed": true``), resumes the interrupted
one from its last checkpoint (the trainer's own resume) and runs the failed
ones again. A ROOT whose sweep.json describes another grid is refused.

SIGTERM or Ctrl-C is passed on to the running trainer, which saves a
checkpoint and exits; the sweep then exits too (143 or 130). A sweep killed
outright (SIGKILL) takes its trainer down with SIGTERM (Linux).

Exit status: 0 when every run completed; 1 when a run failed, or for a
refused config value, grid or ROOT; 2 for a bad command line (an unknown
field, a value that does not parse); 130/143 when interrupted.

Compare the runs with ``python -m train.compare ROOT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import json
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

_CHECKOUT = pathlib.Path(__file__).resolve().parent.parent
_DEFAULT_CONFIG = str(_CHECKOUT / "configs" / "default.py")
SWEEP_FILE = "sweep.json"
# A run's output, every attempt appended (beside what the trainer writes).
LOG_FILE = "train.log"
SWEEP_FORMAT = "resnext_jax.train.sweep"
SWEEP_VERSION = 1
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = 143
# How long a run waits for the trainer of a killed sweep (still saving its
# checkpoint after the SIGTERM it got) to release the run's workdir.
LOCK_WAIT_S = 300.0
# The value of JAX_PLATFORMS before the sweep kept itself off the
# accelerators (see _keep_off_accelerators): the trainers get the original.
_UNSET = object()
_ORIGINAL_JAX_PLATFORMS = _UNSET


class SweepError(Exception):
    """A sweep refused before anything ran: one line, and an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------
# The command line.

def split_values(text: str) -> list[str]:
    """``"4,8"`` -> ``["4", "8"]``; commas inside (), [], {} or quotes do
    not split: ``"(1,1),(2,2)"`` -> ``["(1,1)", "(2,2)"]``. A value that is
    entirely quoted loses its quotes."""
    pieces, current, depth, quote = [], [], 0, None
    for char in text:
        if quote:
            current.append(char)
            if char == quote:
                quote = None
            continue
        if char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    if quote or depth:
        raise ValueError("unbalanced quotes or brackets")
    pieces.append("".join(current))
    values = []
    for piece in pieces:
        piece = piece.strip()
        if len(piece) >= 2 and piece[0] == piece[-1] and piece[0] in "\"'":
            piece = piece[1:-1]
        elif not piece:
            raise ValueError("an empty value")
        values.append(piece)
    return values


def parse_set(spec: str) -> tuple[str, list[str]]:
    """``"model_kwargs.cardinality=4,8"`` -> ``("model_kwargs.cardinality",
    ["4", "8"])``."""
    field, sep, values = spec.partition("=")
    field = field.strip()
    if field.startswith("config."):
        field = field[len("config."):]
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", field):
        raise SweepError(f"--set {spec!r}: expected FIELD=VALUE,VALUE,... "
                         "(e.g. --set 'model_kwargs.cardinality=4,8').",
                         EXIT_USAGE)
    try:
        return field, split_values(values)
    except ValueError as e:
        raise SweepError(f"--set {spec!r}: {e}.", EXIT_USAGE) from None


_OVERRIDE = re.compile(r"^--?(no)?config\.")


def override_field(arg: str) -> str:
    """``"--config.model_kwargs.cardinality=4"`` ->
    ``"model_kwargs.cardinality"``."""
    return _OVERRIDE.sub("", arg.split("=", 1)[0])


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(the sweep's own arguments, the --config.<field> overrides)``; an
    override given as ``--config.x VALUE`` becomes ``--config.x=VALUE``."""
    own, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if _OVERRIDE.match(arg):
            if ("=" not in arg and not arg.startswith(("--no", "-no"))
                    and i + 1 < len(argv)
                    and not argv[i + 1].startswith("-")):
                arg = f"{arg}={argv[i + 1]}"
                i += 1
            overrides.append(arg)
        else:
            own.append(arg)
        i += 1
    return own, overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.sweep", allow_abbrev=False,
        description="Train every combination of --set values (times "
        "--seeds seeds), one run after another, each in its own workdir "
        "under --workdir. Other --config.<field>=<value> arguments apply to "
        "every run. Run the same command again to resume.",
        epilog="Compare the runs with: python -m train.compare ROOT")
    parser.add_argument("--config", default=_DEFAULT_CONFIG,
                        help="training config file (default: %(default)s)")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="FIELD=V1,V2,...",
                        help="a config field and its values; repeat for "
                        "more fields (their cartesian product runs)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="train each combination with config.seed = 0, "
                        "..., N-1 (default: 1)")
    parser.add_argument("--workdir", required=True, metavar="ROOT",
                        help="the sweep's folder: sweep.json and one "
                        "workdir per run")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every run's config, print the runs and "
                        "their commands, and stop (nothing is written)")
    return parser


# ---------------------------------------------------------------------------
# Configs: built and checked as the trainer builds and checks them.

def build_config(config_file: str, overrides: list[str]):
    """The config ``python -m train --config config_file <overrides>``
    trains, parsed by the same ml_collections flag (its own flag set)."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

    argv = ["train", "--config", config_file] + list(overrides)
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", config_file, flag_values=values, sys_argv=argv,
        lock_config=True)
    values(argv)
    config = holder.value
    config.get("dataset")  # A file that failed to load raises here.
    return config


def _flat_keys(config, prefix="") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if hasattr(value, "items"):
            keys += _flat_keys(value, f"{prefix}{key}.")
    return keys


def _has_field(config, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def _unknown_field(config, field: str, where: str) -> SweepError:
    hint = difflib.get_close_matches(field, _flat_keys(config), n=1)
    return SweepError(
        f"{where}: the config has no field {field!r}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; every field is listed in {_CHECKOUT / 'configs' / 'base.py'}.",
        EXIT_USAGE)


def _load_base(config_file: str):
    try:
        return build_config(config_file, [])
    except Exception as e:  # pylint: disable=broad-except
        if not pathlib.Path(config_file.split(":", 1)[0]).is_file():
            raise SweepError(f"--config {config_file}: no such file; the "
                             f"configs are in {_CHECKOUT / 'configs'}.",
                             EXIT_USAGE) from None
        cause = e
        while cause.__cause__ or cause.__context__:
            cause = cause.__cause__ or cause.__context__
        raise SweepError(f"--config {config_file} failed to load: "
                         f"{type(cause).__name__}: "
                         f"{' '.join(str(cause).split())}",
                         EXIT_USAGE) from None


def _json(value):
    """``value`` as JSON holds it (tuples become lists)."""
    return json.loads(json.dumps(value))


def _config_value(config, path: str):
    node = config
    for part in path.split("."):
        node = node[part]
    return _json(node.to_dict() if hasattr(node, "to_dict") else node)


def format_value(value) -> str:
    """A value as a folder name shows it: ``0.05``, ``True``, ``1-1-1`` for
    ``(1, 1, 1)``; characters other than letters, digits and ``.+-_`` become
    ``_``."""
    if isinstance(value, (list, tuple)):
        text = "-".join(format_value(v) for v in value) or "empty"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return re.sub(r"[^\w.+-]", "_", text)


def short_names(fields: list[str]) -> dict[str, str]:
    """Each field's last component (``cardinality``), or its whole path
    where two fields share that last component."""
    last = [f.rsplit(".", 1)[-1] for f in fields]
    return {f: (s if last.count(s) == 1 else f) for f, s in zip(fields, last)}


@dataclasses.dataclass
class Run:
    name: str
    values: dict  # field -> value (parsed), for the fields that vary.
    seed: int
    overrides: list  # The run's --config.<field>=<value> arguments.


@dataclasses.dataclass
class Plan:
    config_file: str
    root: pathlib.Path
    grid: dict
    common: list  # --config overrides of every run.
    runs: list
    dry_run: bool = False


def plan(argv: list[str]) -> Plan:
    """The sweep a command line describes, every run's config built and
    checked; raises :class:`SweepError` (nothing is written)."""
    own, common = split_overrides(argv)
    parser = _parser()
    args = parser.parse_args(own)
    if args.seeds < 1:
        raise SweepError(f"--seeds {args.seeds}: must be at least 1.",
                         EXIT_USAGE)
    sets = [parse_set(spec) for spec in args.sets]
    base = _load_base(args.config)

    fields = [field for field, _ in sets]
    for field in set(fields):
        if fields.count(field) > 1:
            raise SweepError(f"--set {field}=... is given twice: list all "
                             "its values in one --set.", EXIT_USAGE)
    common_fields = [override_field(arg) for arg in common]
    for field, arg in zip(common_fields, common):
        if not _has_field(base, field):
            raise _unknown_field(base, field, arg)
    for field in fields:
        if not _has_field(base, field):
            raise _unknown_field(base, field, f"--set {field}=...")
        if field in common_fields:
            raise SweepError(f"--set {field}=... and --config.{field} both "
                             "set it: give it once.", EXIT_USAGE)
        if field == "seed":
            raise SweepError("--set seed=...: the seeds are 0..N-1 with "
                             "--seeds N.", EXIT_USAGE)
    if "seed" in common_fields:
        raise SweepError("--config.seed: the seeds of a sweep are 0..N-1 "
                         "with --seeds N.", EXIT_USAGE)

    try:
        common_config = build_config(args.config, common)
    except Exception as e:  # pylint: disable=broad-except
        raise _bad_override(e, "the --config overrides") from None

    # Each --set value, parsed as the trainer parses it (the field's type).
    parsed = []
    for field, raws in sets:
        values = []
        for raw in raws:
            arg = f"--config.{field}={raw}"
            try:
                value = _config_value(build_config(args.config,
                                                   common + [arg]), field)
            except Exception as e:  # pylint: disable=broad-except
                raise _bad_override(e, f"--set {field}={raw}") from None
            if value in [v for _, v in values]:
                raise SweepError(f"--set {field}=...: {raw!r} is listed "
                                 "twice (as the same value).", EXIT_USAGE)
            values.append((raw, value))
        parsed.append((field, values))

    varying = [f for f, values in parsed if len(values) > 1]
    shorts = short_names(varying)
    runs, names = [], {}
    from train.config_validation import ConfigError, validate_config  # pylint: disable=import-outside-toplevel

    combos = list(itertools.product(*[values for _, values in parsed]))
    for seed in range(args.seeds):
        for combo in combos:
            overrides = list(common) + [
                f"--config.{field}={raw}"
                for (field, _), (raw, _) in zip(parsed, combo)] + [
                    f"--config.seed={seed}"]
            values = {field: value for (field, _), (_, value)
                      in zip(parsed, combo)}
            name = ",".join(
                [f"{shorts[f]}={format_value(values[f])}" for f in varying]
                + [f"seed={seed}"])
            if name in names:
                raise SweepError(f"two runs would share the workdir {name!r} "
                                 f"({names[name]} and {values}): give the "
                                 "values distinct spellings.", EXIT_USAGE)
            if len(name.encode()) > 255:
                raise SweepError(f"the workdir name {name[:60]}... is longer "
                                 "than a file name may be: vary fewer fields "
                                 "per sweep, or use shorter values.",
                                 EXIT_USAGE)
            names[name] = values
            try:
                config = build_config(args.config, overrides)
                validate_config(config)
            except ConfigError as e:
                raise SweepError(f"run {name}: {e}") from None
            except Exception as e:  # pylint: disable=broad-except
                raise _bad_override(e, f"run {name}") from None
            runs.append(Run(name=name, values=values, seed=seed,
                            overrides=overrides))

    grid = {"set": [[field, [value for _, value in values]]
                    for field, values in parsed],
            "seeds": args.seeds,
            "overrides": list(common),
            "base_config": _comparable(common_config)}
    return Plan(config_file=args.config,
                root=pathlib.Path(args.workdir), grid=_json(grid),
                common=list(common), runs=runs, dry_run=args.dry_run)


def _bad_override(error: Exception, where: str) -> SweepError:
    """A value ml_collections could not parse or set, in one line."""
    text = " ".join(str(error).split())
    if isinstance(error, (AttributeError, KeyError)):
        return SweepError(f"{where}: the config has no field {text}.",
                          EXIT_USAGE)
    return SweepError(f"{where}: {text}", EXIT_USAGE)


def _comparable(config) -> dict:
    """The config as JSON, without the switches of one invocation (which may
    differ between the starts of one sweep)."""
    from train.workdir import _SWITCHES  # pylint: disable=import-outside-toplevel

    value = json.loads(config.to_json_best_effort())
    return {k: v for k, v in value.items() if k not in _SWITCHES}


def flatten(value, prefix="") -> dict:
    """A nested dict as one level, keys joined with dots."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def grid_differences(saved: dict, new: dict) -> list[str]:
    """``"what: saved -> new"`` for each way two grids differ."""
    diffs = []
    saved_set, new_set = saved.get("set", []), new.get("set", [])
    if saved_set != new_set:
        saved_fields = {f: v for f, v in saved_set}
        new_fields = {f: v for f, v in new_set}
        for field in list(saved_fields) + [f for f in new_fields
                                           if f not in saved_fields]:
            if saved_fields.get(field) != new_fields.get(field):
                diffs.append(f"--set {field}: {saved_fields.get(field)} -> "
                             f"{new_fields.get(field)}")
        if not diffs:
            diffs.append(f"--set order: {list(saved_fields)} -> "
                         f"{list(new_fields)}")
    if saved.get("seeds") != new.get("seeds"):
        diffs.append(f"--seeds: {saved.get('seeds')} -> {new.get('seeds')}")
    old = flatten(saved.get("base_config", {}))
    cur = flatten(new.get("base_config", {}))
    for key in sorted(set(old) | set(cur)):
        if old.get(key) != cur.get(key):
            diffs.append(f"{key}: {old.get(key)!r} -> {cur.get(key)!r}")
    return diffs


# ---------------------------------------------------------------------------
# Running.

def run_completed(workdir: pathlib.Path) -> dict | None:
    """The summary of a run that completed (the trainer writes
    ``summary.json`` with ``"completed": true`` at its end), else None."""
    path = workdir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("completed") else None


def trainer_command(plan_: Plan, run: Run) -> list[str]:
    return [sys.executable, "-m", "train", "--config", plan_.config_file,
            "--workdir", str(plan_.root / run.name)] + run.overrides


def _child_env() -> dict:
    env = dict(os.environ)
    if _ORIGINAL_JAX_PLATFORMS is not _UNSET:
        if _ORIGINAL_JAX_PLATFORMS is None:
            env.pop("JAX_PLATFORMS", None)
        else:
            env["JAX_PLATFORMS"] = _ORIGINAL_JAX_PLATFORMS
    # `python -m train` finds this checkout's train/ wherever it runs.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_CHECKOUT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                            else []))
    env["PYTHONUNBUFFERED"] = "1"  # The log follows the run live.
    return env


def _die_with_parent(parent_pid: int):
    """A ``preexec_fn``: the trainer gets SIGTERM (saves a checkpoint and
    exits) when the sweep dies, even of SIGKILL (Linux only)."""
    def preexec():
        try:
            import ctypes  # pylint: disable=import-outside-toplevel
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # The sweep died before prctl.
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec if sys.platform.startswith("linux") else None


def _wait_for_lock(workdir: pathlib.Path, stop=lambda: False,
                   timeout: float = LOCK_WAIT_S):
    """Waits while a live process of this host (the trainer of a sweep that
    was killed, still saving) holds ``workdir``'s lock."""
    path = workdir / "lock"
    announced, deadline = False, time.time() + timeout
    while time.time() < deadline and not stop():
        try:
            holder = json.loads(path.read_text())
            pid, host = int(holder["pid"]), holder["host"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        if host != socket.gethostname():
            return  # The trainer will say who holds it.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if not announced:
            print(f"Waiting for process {pid} to release {workdir} (a run "
                  "of an earlier start of this sweep, saving its "
                  "checkpoint).", flush=True)
            announced = True
        time.sleep(0.2)


def _last_error(log: pathlib.Path, start: int) -> str | None:
    """The trainer's ``error:`` line in the attempt's output (from byte
    ``start``), else its last line."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)
             if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    line = errors[-1] if errors else (lines[-1] if lines else None)
    return line[:500] if line else None


class _Signals:
    """SIGINT/SIGTERM of the sweep: passed on to the running trainer (which
    saves a checkpoint and exits: a second Ctrl-C aborts it at once); the
    sweep stops after it."""

    def __init__(self):
        self.received = None
        self.child = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # Not the main thread.
                pass
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum, frame):
        del frame
        self.received = self.received or signal.Signals(signum).name
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.send_signal(signum)
            except ProcessLookupError:
                pass


def _write_json(path: pathlib.Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


class Sweep:
    """Runs a :class:`Plan`, keeping ``ROOT/sweep.json`` up to date."""

    def __init__(self, plan_: Plan, command: list[str]):
        self.plan = plan_
        self.root = plan_.root
        self.path = self.root / SWEEP_FILE
        self.command = command
        saved = self._read_saved()
        if saved is not None:
            diffs = grid_differences(saved.get("grid", {}), plan_.grid)
            if diffs:
                raise SweepError(
                    f"{self.path} describes another grid ("
                    + "; ".join(diffs[:4])
                    + ("; ..." if len(diffs) > 4 else "")
                    + "): run that sweep's own command, or use another "
                    "--workdir.")
        old = {r["name"]: r for r in (saved or {}).get("runs", [])}
        self.records = []
        for run in plan_.runs:
            record = {"name": run.name, "workdir": run.name,
                      "values": _json(run.values), "seed": run.seed,
                      "command": shlex.join(trainer_command(plan_, run)),
                      "status": "pending", "attempts": 0,
                      "returncode": None, "error": None,
                      "seconds": 0.0}
            for key in ("status", "attempts", "returncode", "error",
                        "seconds", "started", "finished"):
                if key in old.get(run.name, {}):
                    record[key] = old[run.name][key]
            if run_completed(self.root / run.name):
                record["status"] = "completed"
            elif record["status"] in ("running", "completed"):
                record["status"] = "interrupted"  # Killed with the sweep.
            self.records.append(record)
        self.created = (saved or {}).get("created", time.time())

    def _read_saved(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise SweepError(f"{self.path} is not readable JSON ({e}): use "
                             "another --workdir.") from None
        if saved.get("format") != SWEEP_FORMAT:
            raise SweepError(f"{self.path} is not a sweep's file: use "
                             "another --workdir.")
        return saved

    def save(self) -> None:
        counts = {}
        for record in self.records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        _write_json(self.path, {
            "format": SWEEP_FORMAT, "version": SWEEP_VERSION,
            "config_file": self.plan.config_file,
            "command": self.command,
            "grid": self.plan.grid,
            "created": self.created, "updated": time.time(),
            "counts": counts,
            "runs": self.records})

    def run(self) -> int:
        from train.workdir import WorkdirError, WorkdirLock  # pylint: disable=import-outside-toplevel

        self.root.mkdir(parents=True, exist_ok=True)
        try:
            lock = WorkdirLock(self.root)
            lock.__enter__()
        except WorkdirError as e:
            raise SweepError(f"the sweep {e}") from None
        try:
            self.save()
            with _Signals() as signals:
                status = self._run_all(signals)
        finally:
            lock.__exit__(None, None, None)
        return status

    def _run_all(self, signals: _Signals) -> int:
        total = len(self.records)
        for index, (run, record) in enumerate(
                zip(self.plan.runs, self.records), 1):
            prefix = f"[{index}/{total}] {run.name}"
            if record["status"] == "completed":
                summary = run_completed(self.root / run.name) or {}
                accuracy = summary.get("test_accuracy")
                print(f"{prefix}: already finished" + (
                    f" (test accuracy {100 * accuracy:.2f}%)"
                    if isinstance(accuracy, (int, float)) else "")
                    + ".", flush=True)
                continue
            if signals.received:
                break
            self._train(prefix, run, record, signals)
            self.save()
            if signals.received or record["status"] == "interrupted":
                break
        return self._report(signals)

    def _train(self, prefix: str, run: Run, record: dict,
               signals: _Signals) -> None:
        workdir = self.root / run.name
        workdir.mkdir(parents=True, exist_ok=True)
        _wait_for_lock(workdir, stop=lambda: signals.received)
        if signals.received:
            return
        command = trainer_command(self.plan, run)
        resuming = (workdir / "checkpoints").is_dir()
        print(f"{prefix}: {'resuming' if resuming else 'training'}: "
              f"{shlex.join(command[1:])}", flush=True)
        record.update(status="running", attempts=record["attempts"] + 1,
                      started=time.time(), returncode=None, error=None)
        self.save()
        log_path = workdir / LOG_FILE
        started = time.time()
        with open(log_path, "ab") as log:
            log.write(f"=== sweep attempt {record['attempts']} of {run.name}"
                      f" at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{shlex.join(command)}\n".encode())
            log.flush()
            start = log.tell()
            child = subprocess.Popen(
                command, env=_child_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()))
        signals.child = child
        try:
            self._follow(child, log_path, start)
        finally:
            signals.child = None
        code = child.returncode
        record["seconds"] = record.get("seconds", 0.0) + (time.time() - started)
        record.update(returncode=code, finished=time.time())
        if run_completed(workdir):
            record["status"] = "completed"
            print(f"{prefix}: completed.", flush=True)
        elif signals.received or code in (EXIT_INTERRUPTED, EXIT_PREEMPTED):
            record["status"] = "interrupted"
            print(f"{prefix}: interrupted (exit {code}); run the same "
                  "command to resume it.", flush=True)
        else:
            record["status"] = "failed"
            what = (f"killed by {signal.Signals(-code).name}" if code < 0
                    else f"exit {code}")
            record["error"] = _last_error(log_path, start) or what
            print(f"{prefix}: FAILED ({what}): {record['error']} "
                  f"(log: {log_path})", flush=True)

    @staticmethod
    def _follow(child: subprocess.Popen, log_path: pathlib.Path,
                start: int) -> None:
        """Waits for ``child``, copying its output to stdout as it comes."""
        out = getattr(sys.stdout, "buffer", None)
        with open(log_path, "rb") as log:
            log.seek(start)
            while True:
                done = child.poll() is not None
                chunk = log.read()
                if chunk and out is not None:
                    out.write(chunk)
                    out.flush()
                if done:
                    return
                time.sleep(0.2)

    def _report(self, signals: _Signals) -> int:
        counts = {}
        for record in self.records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        text = ", ".join(f"{n} {status}" for status, n in sorted(
            counts.items()))
        print(f"Sweep {self.root}: {len(self.records)} runs: {text}.",
              flush=True)
        for record in self.records:
            if record["status"] == "failed":
                print(f"  failed: {record['name']}: {record['error']}",
                      flush=True)
        if signals.received or counts.get("interrupted"):
            how = signals.received or "the trainer's exit"
            print(f"Stopped ({how}): run the same command to resume.",
                  flush=True)
            return (EXIT_INTERRUPTED if signals.received == "SIGINT"
                    else EXIT_PREEMPTED)
        print(f"Compare: python -m train.compare {shlex.quote(str(self.root))}",
              flush=True)
        return EXIT_FAILED if counts.get("failed") else 0


def _keep_off_accelerators() -> None:
    """The sweep only builds configs: it must not take the GPU memory its
    trainers need (JAX reserves most of it on first use). The trainers get
    the environment as it was."""
    global _ORIGINAL_JAX_PLATFORMS  # pylint: disable=global-statement
    if "jax" in sys.modules:
        return
    _ORIGINAL_JAX_PLATFORMS = os.environ.get("JAX_PLATFORMS")
    os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        plan_ = plan(argv)
        sweep = Sweep(plan_, ["python", "-m", "train.sweep"] + argv)
        if plan_.dry_run:
            for index, run in enumerate(plan_.runs, 1):
                print(f"[{index}/{len(plan_.runs)}] {run.name}: "
                      f"{shlex.join(trainer_command(plan_, run)[1:])}")
            print(f"{len(plan_.runs)} runs; every config is valid.")
            return 0
        return sweep.run()
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.status


if __name__ == "__main__":
    _keep_off_accelerators()
    sys.exit(main())
