"""The benchmark scripts run end to end (tiny settings; no timing checked)."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(script, *args):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script),
                             *args], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_bench_inference_writes_json(tmp_path):
    out = tmp_path / "inference.json"
    stdout = _run("bench_inference.py", "--model", "resnext50_32x4d",
                  "--model-kwargs", '{"stage_sizes": [1, 1, 1, 1], '
                  '"cardinality": 4, "base_width": 4, "num_classes": 7}',
                  "--image-size", "32", "--batch-sizes", "1,2", "--runs", "1",
                  "--json", str(out))
    assert "img/s" in stdout
    rows = json.loads(out.read_text())
    assert rows  # one entry per batch size, whatever the layout


@pytest.mark.slow
def test_bench_throughput_writes_json(tmp_path):
    out = tmp_path / "throughput.json"
    # One block per stage: the benchmark's code path at a third of the
    # compile time.
    stdout = _run("bench_throughput.py", "--model", "resnext29_32x4d",
                  "--model-kwargs", '{"stage_sizes": [1, 1, 1]}',
                  "--image-size", "16", "--batch-size", "2",
                  "--impls", "auto,torchvision", "--runs", "1",
                  "--warmup", "1", "--json", str(out))
    assert "torchvision: skipped, --model-kwargs" in stdout
    assert "train img/s" in stdout
    data = json.loads(out.read_text())
    assert data["results"][0]["resolved_impl"] == "onednn"
    assert data["results"][0]["train_img_s"] > 0


@pytest.mark.slow
def test_bench_gpu_smoke_runs_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    stdout = _run("bench_gpu.py", "--smoke", "--json", str(out))
    assert "grouped 3x3" in stdout and "img/s" in stdout
    data = json.loads(out.read_text())
    assert data["errors"] == []
    assert data["system"]["bf16_matmul_tflops"] > 0
    lowerings = {r["lowering"] for r in data["conv"]}
    assert {"xla", "dense/c4"} <= lowerings
    modes = {(r["framework"], r["mode"]) for r in data["model"]}
    assert {("jax", "train"), ("jax", "infer")} <= modes
    for row in data["model"]:
        assert row["img_s"] > 0
    # Every lowering computes the same function on this device.
    for row in data["check"]:
        if "logits_rel_err" in row:
            assert row["logits_rel_err"] < 1e-3, row
        else:
            assert row["rel_err"] < 1e-4, row


@pytest.mark.slow
def test_bench_cpu_smoke_runs_every_part(tmp_path):
    out = tmp_path / "cpu.json"
    stdout = _run("bench_cpu.py", "--smoke", "--parts",
                  "step,components,first_step,curve", "--json", str(out))
    assert "component" in stdout and "to the first step" in stdout
    data = json.loads(out.read_text())
    ours = [r for r in data["step"] if r["framework"] == "jax"]
    assert {r["spec"]["mode"] for r in ours} == {"infer", "train"}
    assert all(r["img_s"] > 0 and r["peak_rss_gib"] > 0 for r in ours)
    kinds = {r["kind"] for r in data["components"]["jax"]}
    assert {"conv_1x1", "conv_grouped", "conv_kxk", "bn",
            "optimizer"} <= kinds
    torch_rows = data["components"]["torch"]
    if torch_rows is not None:  # The same layers, timed in torch.
        assert [(r["kind"], r["count"]) for r in torch_rows] == [
            (r["kind"], r["count"]) for r in data["components"]["jax"]]
    cold, warm = data["first_step"][:2]
    assert (cold["cache"], warm["cache"]) == ("cold cache", "warm cache")
    # The persistent cache works: the second process compiles nothing.
    assert warm["compile_s"] < cold["compile_s"] / 2
    assert {r["spec"]["mode"] for r in data["curve"]} == {"infer", "train"}


def test_bench_kernel_grad_smoke(tmp_path):
    out = tmp_path / "kernel_grad.json"
    stdout = _run("bench_kernel_grad.py", "--smoke", "--json", str(out))
    assert "patches" in stdout
    rows = json.loads(out.read_text())["rows"]
    # Both ways compute the same gradient; the strided one uses patches.
    assert all(r["max_rel_diff"] < 1e-5 for r in rows)
    assert [r["used"] for r in rows] == ["XLA", "patches"]


def test_bench_pointwise_smoke(tmp_path):
    from resnext_jax.layers import onednn  # pylint: disable=import-outside-toplevel
    reason = onednn.unavailable_reason()
    if reason:
        pytest.skip(f"the oneDNN kernel is not available: {reason}")
    out = tmp_path / "pointwise.json"
    stdout = _run("bench_pointwise.py", "--smoke", "--json", str(out))
    assert "XLA/oneDNN" in stdout
    report = json.loads(out.read_text())
    assert [r["stride"] for r in report["rows"]] == [1, 2]
    assert all(r["xla_gemm_ms"] > 0 and r["onednn_ms"] > 0
               for r in report["rows"])
    assert report["pointwise_min_rows"] == onednn.POINTWISE_MIN_ROWS


def test_profile_step_sums_the_traced_operations_by_kind(tmp_path):
    out, trace = tmp_path / "profile.json", tmp_path / "trace"
    stdout = _run("profile_step.py", "--model", "resnext29_8x64d",
                  "--model-kwargs", '{"stage_sizes": [1, 1, 1], '
                  '"base_width": 4}', "--image-size", "16",
                  "--batch-size", "2", "--steps", "1",
                  "--trace-dir", str(trace), "--json", str(out))
    assert "sum of operations" in stdout
    report = json.loads(out.read_text())
    by_kind = report["ms_per_step"]
    assert by_kind["convolution / GEMM"] > 0
    assert report["ops_per_step"]["convolution / GEMM"] >= 10  # 3 blocks.
    assert abs(sum(by_kind.values()) - report["total_ms_per_step"]) < 1e-6
    assert list(trace.rglob("*.trace.json.gz"))  # Kept for TensorBoard.


def test_profile_step_kinds_of_operations():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from profile_step import kind_of  # pylint: disable=import-outside-toplevel
    assert kind_of("ynn_fusion.29") == "convolution / GEMM"
    assert kind_of("dot_general.3") == "convolution / GEMM"
    assert kind_of("convolution-base-dilated") == "convolution / GEMM"
    assert kind_of("copy.187") == "transpose / copy"
    assert kind_of("transpose_copy_fusion") == "transpose / copy"
    assert kind_of("slice_concatenate_fusion") == "concatenate / slice"
    assert kind_of("multiply_add_fusion") == "other fusion (elementwise, BN)"
    assert kind_of("select-and-scatter.1") == "reduce / reduce-window"
    # The runtime's wrappers and loops: their time is in what they contain.
    for name in ("ThunkExecutor::Execute", "$profiler", "end: ynn_fusion",
                 "Handle inputs", "while.2"):
        assert kind_of(name) is None, name


@pytest.mark.slow
def test_bench_input_smoke_measures_every_engine(tmp_path):
    out = tmp_path / "input.json"
    # Per core only: "all" is the same code at another core count, and
    # each measurement is a process that loads its framework.
    stdout = _run("bench_input.py", "--smoke", "--cores", "1", "--data-dir",
                  str(tmp_path / "jpegs"), "--pillow-resize-too", "--json",
                  str(out))
    assert "img/s/core" in stdout and "cores to feed" in stdout
    data = json.loads(out.read_text())
    for key in ("ratio_train_per_core", "ratio_eval_per_core",
                "cores_to_feed_step", "step_img_s", "default_engine",
                "system", "data", "results", "errors"):
        assert key in data, key
    assert data["errors"] == []
    engines = {r["engine"] for r in data["results"]}
    assert {"tf", "torchvision"} <= engines
    for row in data["results"]:
        assert row["img_s"] > 0 and row["images"] > 0, row
    assert {(r["pipeline"], r["cores"]) for r in data["results"]} >= {
        ("train", 1), ("eval", 1)}
    assert data["ratio_train_per_core"] > 0
    assert data["cores_to_feed_step"]["torchvision"] >= 1
    assert data["data"]["images"] == 24
    assert len(list((tmp_path / "jpegs" / "train").rglob("*.jpg"))) == 24
    assert data["system"]["eval_resize"] == "native" or data["system"][
        "eval_resize"].startswith("Pillow (")
    # The default engine's eval again, with Pillow's resize.
    pillow = [r for r in data["results"] if r["engine"].endswith("+pillow")]
    assert [r["pipeline"] for r in pillow] == ["eval"], pillow
    assert data["ratio_eval_per_core_pillow_resize"] > 0


def test_bench_input_summary_and_table():
    """The ratios and core counts from the measured rows (no process)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_input  # pylint: disable=import-outside-toplevel

    def row(pipeline, engine, cores, img_s):
        return dict(pipeline=pipeline, engine=engine, cores=cores,
                    img_s=img_s, img_s_per_core=img_s / cores,
                    first_batch_s=1.0, setup_s=0.5, images=100)

    rows = [row("train", "tf", 1, 600.0), row("train", "torchvision", 1,
                                               300.0),
            row("eval", "tf", 1, 400.0), row("eval", "torchvision", 1, 500.0),
            row("train", "tf", 8, 4000.0)]
    summary = bench_input.summarize(rows, "tf", 4396)
    assert summary["ratio_train_per_core"] == 2.0
    assert summary["ratio_eval_per_core"] == 0.8
    assert summary["ratio_eval_per_core_pillow_resize"] is None
    with_pillow = bench_input.summarize(
        rows + [row("eval", "tf+pillow", 1, 250.0)], "tf", 4396)
    assert with_pillow["ratio_eval_per_core_pillow_resize"] == 0.5
    assert summary["cores_to_feed_step"]["ours"] == 8  # ceil(4396 / 600)
    assert summary["cores_to_feed_step"]["torchvision"] == 15
    table = bench_input.format_table(rows, summary)
    assert "train     tf" in table and "img/s/core" in table
    assert "per core over torchvision: train 2.00x, eval 0.80x" in table
    assert "ours 8, torchvision 15" in table
    # An engine that was not measured gives no ratio rather than an error.
    summary = bench_input.summarize(rows, "grain", 4396)
    assert summary["ratio_train_per_core"] is None
    assert "ours -" in bench_input.format_table(rows, summary)
