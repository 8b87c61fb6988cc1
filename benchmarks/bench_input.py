"""Input-pipeline throughput on real JPEGs: ours against torchvision's.

Makes an ImageNet-like folder of JPEGs (by default 2,000 images of 500x375
at quality 90 over 20 classes), then times, on those files and in the same
run, the train pipeline (random-resized crop, flip, normalize) and the eval
pipeline (resize 256, center crop 224, normalize: the library's
``Preprocessing``) of

* ours: the trainer's own ``DataSource`` on each installed engine
  (``config.data_engine``: tf.data, Grain), batches of normalized float32;
* torchvision: ``ImageFolder`` with ``transforms.v2`` in a ``DataLoader``
  with worker processes.

Each measurement runs in its own process restricted to the CPU cores it is
given (``os.sched_setaffinity``): "per core" is one core with one worker
(tf.data with one thread), "all" every core this process may use with each
engine's own parallelism. Images per second count after the first batch
(start-up, reported apart). Prints a table and writes JSON, whose top level
holds the per-core ratios of ours (the default engine) to torchvision, and
how many cores keep a train step of ``--step-img-s`` images per second fed.

    python benchmarks/bench_input.py
    python benchmarks/bench_input.py --data-dir /tmp/bench_jpegs  # kept
    python benchmarks/bench_input.py --smoke   # tiny, seconds: CI
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ResNeXt-50 32x4d train step, bfloat16, one NVIDIA H100 (docs/performance.md).
H100_STEP_IMG_S = 4396
ENGINES = ("tf", "grain", "torchvision")
# The engine label of an eval run with Pillow's resize instead of the
# native one (--pillow-resize-too).
PILLOW_RESIZE = "+pillow"


# ---------------------------------------------------------------------------
# The data: JPEGs with the size, entropy and file size of ImageNet photos.

def make_folder(root: pathlib.Path, images: int, classes: int, width: int,
                height: int, quality: int, seed: int = 0) -> dict:
    """``root/train/<class>/*.jpg`` and ``root/val``, the same files (a
    link): both pipelines read every image. Kept and reused when ``root``
    already holds this set."""
    import numpy as np
    from PIL import Image

    spec = dict(images=images, classes=classes, width=width, height=height,
                quality=quality, seed=seed)
    marker = root / "spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return _folder_stats(root, spec)
    rng = np.random.default_rng(seed)
    # Smooth colour fields plus grain noise: about the bytes per image of
    # ImageNet's JPEGs at this size, unlike flat colour or pure noise.
    noise = rng.normal(0, 12, (2 * height, 2 * width, 1)) + rng.normal(
        0, 6, (2 * height, 2 * width, 3))
    for i in range(images):
        folder = root / "train" / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (12, 16, 3), np.uint8)
        base = np.asarray(Image.fromarray(small).resize(
            (width, height), Image.BICUBIC), np.float32)
        y, x = rng.integers(0, height), rng.integers(0, width)
        pixels = np.clip(base + noise[y:y + height, x:x + width], 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(
            folder / f"{i:06d}.jpg", quality=quality)
    if not (root / "val").exists():
        os.symlink("train", root / "val")
    marker.write_text(json.dumps(spec))
    return _folder_stats(root, spec)


def _folder_stats(root: pathlib.Path, spec: dict) -> dict:
    sizes = [p.stat().st_size for p in (root / "train").rglob("*.jpg")]
    return dict(spec, path=str(root), mean_kib=sum(sizes) / len(sizes) / 1024)


# ---------------------------------------------------------------------------
# One measurement, in a child process.

def _pin(cores: int) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[:cores]
    os.sched_setaffinity(0, chosen)
    return chosen


def _time(batches, count_of, limit: int) -> dict:
    """First batch (start-up), then images per second over up to
    ``limit`` more."""
    start = time.perf_counter()
    iterator = iter(batches)
    count_of(next(iterator))
    first = time.perf_counter() - start
    images, start = 0, time.perf_counter()
    for n, batch in enumerate(iterator):
        images += count_of(batch)
        if n + 1 >= limit:
            break
    seconds = time.perf_counter() - start
    return dict(first_batch_s=first, images=images, seconds=seconds,
                img_s=images / seconds if seconds > 0 else None)


def _ours(job: dict) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from configs.base import get_base_config
    from train import data as data_lib

    per_core = job["cores"] == 1
    if job["engine"] == "tf":
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
        if per_core:
            tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.config.threading.set_intra_op_parallelism_threads(1)
            options = tf.data.Options()
            options.threading.private_threadpool_size = 1
            options.threading.max_intra_op_parallelism = 1
            iterate = tf.data.Dataset.as_numpy_iterator
            # The trainer's datasets are built inside the DataSource: each
            # is limited where it is iterated.
            tf.data.Dataset.as_numpy_iterator = (
                lambda ds: iterate(ds.with_options(options)))
    config = get_base_config()
    config.update(dict(
        dataset="folder", data_dir=job["data"], image_size=job["size"],
        batch_size=job["batch_size"], eval_batch_size=job["batch_size"],
        preprocess="imagenet", data_engine=job["engine"],
        data_workers=1 if per_core else -1, progress_bar=False))
    start = time.perf_counter()
    source = data_lib.create_data_source(config, 0, 1)
    setup = time.perf_counter() - start
    rows = []
    for pipeline in job["pipelines"]:
        if pipeline == "train":
            stream = source.train_batches(0)
            row = _time(stream, lambda b: len(b["label"]), job["batches"])
            stream.close()
        else:
            row = _time(source.eval_batches(), lambda b: int(b["mask"].sum()),
                        job["batches"])
        rows.append(dict(row, pipeline=pipeline, setup_s=setup))
    return rows


def _torchvision(job: dict) -> list[dict]:
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    torch.set_num_threads(1)  # The main process only collects batches.
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    size = job["size"]
    resize = round(size / 0.875)
    finish = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(mean, std)]
    transforms = {
        "train": v2.Compose([v2.RandomResizedCrop(size, antialias=True),
                             v2.RandomHorizontalFlip(), *finish]),
        "eval": v2.Compose([v2.Resize(resize, antialias=True),
                            v2.CenterCrop(size), *finish])}
    workers = 1 if job["cores"] == 1 else job["cores"]
    rows = []
    for pipeline in job["pipelines"]:
        start = time.perf_counter()
        folder = datasets.ImageFolder(os.path.join(job["data"], "train"),
                                      transforms[pipeline])
        loader = torch.utils.data.DataLoader(
            folder, batch_size=job["batch_size"],
            shuffle=pipeline == "train", drop_last=pipeline == "train",
            num_workers=workers,
            generator=torch.Generator().manual_seed(0))
        setup = time.perf_counter() - start

        def forever():
            while True:
                yield from loader
        stream = forever() if pipeline == "train" else loader
        row = _time(stream, lambda b: len(b[1]), job["batches"])
        rows.append(dict(row, pipeline=pipeline, setup_s=setup))
    return rows


def child(job: dict) -> None:
    cpus = _pin(job["cores"])
    rows = (_torchvision if job["engine"] == "torchvision" else _ours)(job)
    label = job["engine"] + ("" if job.get("native_resize", True)
                             else PILLOW_RESIZE)
    for row in rows:
        row.update(engine=label, cores=len(cpus),
                   framework=("torchvision" if job["engine"] == "torchvision"
                              else "ours"))
        row["img_s_per_core"] = (row["img_s"] / len(cpus)
                                 if row["img_s"] else None)
    print("RESULT " + json.dumps(rows), flush=True)


def run_child(job: dict, timeout: int) -> tuple[list[dict], str | None]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["JAX_PLATFORMS"] = "cpu"  # The data pipelines never use a device.
    if not job.get("native_resize", True):
        env["RESNEXT_JAX_NATIVE_RESIZE"] = "off"
    try:
        result = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(job)],
            capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [], f"{job['engine']} on {job['cores']} core(s): timed out"
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), None
    tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    return [], (f"{job['engine']} on {job['cores']} core(s) failed "
                f"(exit {result.returncode}): {' | '.join(tail)}")


# ---------------------------------------------------------------------------
# The report.

def system_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for dist in ("tensorflow", "tensorflow-cpu", "grain", "torch",
                 "torchvision", "pillow", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    from resnext_jax.inference import resample  # pylint: disable=import-outside-toplevel
    why_not = resample.unavailable_reason()
    return dict(cpu=cpu, logical_cpus=os.cpu_count(),
                affinity=len(os.sched_getaffinity(0)),
                python=platform.python_version(), versions=versions,
                # The eval spec's resize: native (resample.cc) or Pillow.
                eval_resize="native" if why_not is None
                else f"Pillow ({why_not})")


def default_engine() -> str | None:
    """What ``config.data_engine="auto"`` picks for an image folder here."""
    sys.path.insert(0, str(ROOT))
    from configs.base import get_base_config
    from train.data import engines

    config = get_base_config()
    config.dataset, config.data_dir = "folder", "."
    try:
        return engines.resolve_engine(config)
    except Exception:  # pylint: disable=broad-except
        return None


def summarize(rows: list[dict], engine: str | None,
              step_img_s: float) -> dict:
    """The per-core rates, ours (the default engine) over torchvision's,
    and the cores that keep a ``step_img_s`` train step fed."""
    per_core = {p: {r["engine"]: r["img_s_per_core"] for r in rows
                    if r["pipeline"] == p and r["cores"] == 1}
                for p in ("train", "eval")}

    def ratio(pipeline):
        ours, theirs = (per_core[pipeline].get(engine),
                        per_core[pipeline].get("torchvision"))
        return ours / theirs if ours and theirs else None

    def cores(rate):
        return math.ceil(step_img_s / rate) if rate else None

    pillow = (per_core["eval"].get(f"{engine}{PILLOW_RESIZE}"),
              per_core["eval"].get("torchvision"))
    return dict(
        default_engine=engine, per_core_img_s=per_core,
        ratio_train_per_core=ratio("train"),
        ratio_eval_per_core=ratio("eval"),
        # The same, with Pillow's resize (--pillow-resize-too).
        ratio_eval_per_core_pillow_resize=(
            pillow[0] / pillow[1] if all(pillow) else None),
        step_img_s=step_img_s,
        cores_to_feed_step={
            "ours": cores(per_core["train"].get(engine)),
            "torchvision": cores(per_core["train"].get("torchvision")),
            **{f"ours_{e}": cores(per_core["train"].get(e))
               for e in ("tf", "grain") if per_core["train"].get(e)}})


def format_table(rows: list[dict], summary: dict) -> str:
    header = (f"{'pipeline':<9} {'engine':<12} {'cores':>5} {'img/s':>9} "
              f"{'img/s/core':>11} {'first batch s':>14} {'setup s':>8}")
    lines = [header, "-" * len(header)]
    for r in sorted(rows, key=lambda r: (r["pipeline"] != "train",
                                         r["cores"], r["engine"])):
        rate = f"{r['img_s']:.1f}" if r["img_s"] else "-"
        per = f"{r['img_s_per_core']:.1f}" if r["img_s_per_core"] else "-"
        lines.append(f"{r['pipeline']:<9} {r['engine']:<12} {r['cores']:>5} "
                     f"{rate:>9} {per:>11} {r['first_batch_s']:>14.2f} "
                     f"{r['setup_s']:>8.2f}")

    def show(x, fmt):
        return "-" if x is None else format(x, fmt)

    feed = summary["cores_to_feed_step"]
    lines += [
        "",
        f"ours = the default engine ({summary['default_engine']}); per core "
        f"over torchvision: train {show(summary['ratio_train_per_core'], '.2f')}"
        f"x, eval {show(summary['ratio_eval_per_core'], '.2f')}x",
        f"cores to feed a {summary['step_img_s']:,.0f} img/s train step: "
        f"ours {show(feed['ours'], 'd')}, torchvision "
        f"{show(feed['torchvision'], 'd')}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default="",
                        help="where the JPEGs are made (kept and reused); "
                             "default: a temporary folder")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30,
                        help="batches timed after the first, per pipeline")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--pillow-resize-too", action="store_true",
                        help="also time the default engine's eval with "
                             "Pillow's resize (RESNEXT_JAX_NATIVE_RESIZE=off)")
    parser.add_argument("--cores", default="1,all",
                        help="core counts to measure: 1 (per core), all")
    parser.add_argument("--step-img-s", type=float, default=H100_STEP_IMG_S)
    parser.add_argument("--timeout", type=int, default=1800,
                        help="seconds per measurement process")
    parser.add_argument("--smoke", action="store_true",
                        help="24 small images, 2 batches of 4: CI")
    parser.add_argument("--json", default="benchmarks/results/input.json")
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    if args.smoke:
        args.images, args.classes, args.width, args.height = 24, 3, 64, 48
        args.image_size, args.batch_size, args.batches = 32, 4, 2
    available = len(os.sched_getaffinity(0))
    cores = sorted({available if c == "all" else int(c)
                    for c in args.cores.split(",") if c})
    if not cores or min(cores) < 1 or max(cores) > available:
        parser.error(f"--cores={args.cores!r} must list core counts from 1 to "
                     f"{available} (this process's), or 'all'.")
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"--engines: unknown {unknown}; known: {ENGINES}.")

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.data_dir or tmp).expanduser()
        start = time.perf_counter()
        data = make_folder(root, args.images, args.classes, args.width,
                           args.height, args.quality)
        print(f"{args.images} JPEGs {args.width}x{args.height} q"
              f"{args.quality} ({data['mean_kib']:.0f} KiB each) in "
              f"{root} ({time.perf_counter() - start:.1f} s)", flush=True)
        rows, errors = [], []

        def measure(engine, count, pipelines=("train", "eval"), **extra):
            job = dict(engine=engine, cores=count, data=str(root),
                       size=args.image_size, batch_size=args.batch_size,
                       batches=args.batches, pipelines=list(pipelines),
                       **extra)
            got, error = run_child(job, args.timeout)
            rows.extend(got)
            if error:
                errors.append(error)
                print(f"  {error}", flush=True)
            for r in got:
                print(f"  {r['pipeline']:<5} {r['engine']:<11} {count} "
                      f"core(s): {r['img_s'] or 0:.1f} img/s", flush=True)

        for count in cores:
            for engine in engines:
                measure(engine, count)
            if args.pillow_resize_too and default_engine() in engines:
                measure(default_engine(), count, ["eval"],
                        native_resize=False)

    summary = summarize(rows, default_engine(), args.step_img_s)
    print(format_table(rows, summary))
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(
            system=system_info(), args=vars(args), data=data, **summary,
            results=rows, errors=errors), indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
