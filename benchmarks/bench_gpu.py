"""The accelerator path measured against PyTorch, in one run on one device.

Parts (``--parts``, all by default):

* ``sanity``: devices, versions, the device's two ceilings (a large bfloat16
  matmul in TFLOP/s, an elementwise read+write in GB/s).
* ``conv``: the grouped 3x3 of each ResNeXt-50 stage (stride 1, 32 groups),
  forward and forward+backward, for every lowering: XLA's
  ``feature_group_count`` and the block-diagonal ``dense`` lowering at each
  chunk size; against ``torch.nn.Conv2d(groups=32)`` in
  channels_last (autocast for bfloat16).
* ``model``: the whole ResNeXt-50 32x4d train step (forward, backward, SGD
  momentum, BatchNorm statistics) and inference, per lowering and compute
  dtype and batch size: img/s and peak device memory; against torchvision's
  ``resnext50_32x4d`` in channels_last with AMP (eager, and
  ``torch.compile`` as a second row).
* ``check``: correctness on the device: our logits against torchvision's with
  the same converted weights (float32, full precision), and every lowering's
  logits and gradients against ``xla``'s.

Each measurement compiles and warms up, then reports the median over
``--repeats`` timings of ``--iters`` back-to-back calls, synchronized
(``block_until_ready`` / ``torch.cuda.synchronize``) at both ends. Peak
memory: XLA's compiled memory analysis of each program (arguments + outputs
+ temporaries - donated), and ``torch.cuda.max_memory_allocated`` after a
reset. The JSON is rewritten after every row, so a run cut short keeps what
it measured. Prints a table per part.

    # On a machine with an NVIDIA GPU (each line well under 10 minutes):
    python benchmarks/bench_gpu.py --parts sanity,conv,check --json gpu_a.json
    python benchmarks/bench_gpu.py --parts model --json gpu_b.json
    python benchmarks/bench_gpu.py --parts model --batch-sizes 256 \
        --dtypes bfloat16 --json gpu_c.json
    # Anywhere, tiny sizes (what CI runs):
    python benchmarks/bench_gpu.py --smoke --json /tmp/gpu_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax

import resnext_jax as rx

# ResNeXt-50 32x4d's grouped 3x3s (the stride-1 blocks): (name, size, width).
STAGES = [("stage1", 56, 128), ("stage2", 28, 256), ("stage3", 14, 512),
          ("stage4", 7, 1024)]
GROUPS = 32
# The block-diagonal "dense" lowering multiplies the grouped 3x3's work by
# the chunk size: a CPU lowering, timed on the model only when asked for.
MODEL_IMPLS = ("xla",)
ALL_PARTS = ("sanity", "conv", "model", "check")


# ---------------------------------------------------------------------------
# Timing.

def _median_time(run, sync, iters: int, repeats: int, warmup: int) -> float:
    """Median seconds per call of ``run`` (``sync`` waits for the device)."""
    for _ in range(warmup):
        sync(run())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(iters):
            out = run()
        sync(out)
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def _jax_sync(out):
    jax.block_until_ready(out)


def _compiled_peak_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries - aliased, from XLA's analysis."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes
                   + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # pylint: disable=broad-except
        return None  # Not every backend reports it.


def _torch():
    try:
        import torch  # pylint: disable=import-outside-toplevel
        import torchvision  # pylint: disable=import-outside-toplevel
        return torch, torchvision
    except ImportError:
        return None, None


def _torch_device(torch):
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_sync(torch):
    if torch.cuda.is_available():
        return lambda _: torch.cuda.synchronize()
    return lambda _: None


# ---------------------------------------------------------------------------
# Results.

class Results:
    """Rows per part, rewritten to JSON after every row."""

    def __init__(self, path: str | None, args):
        self.path = path
        self.data = dict(args=vars(args), system={}, conv=[], model=[],
                         check=[], errors=[])

    def add(self, part: str, row: dict):
        self.data[part].append(row)
        self.flush()

    def flush(self):
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def _guarded(results: Results, what: str, fn, *args, **kwargs):
    """Runs one measurement; records an error instead of ending the run."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
        message = f"{what}: {type(e).__name__}: {str(e)[:500]}"
        print("  FAILED " + message, flush=True)
        results.data["errors"].append(
            dict(what=what, error=message,
                 traceback=traceback.format_exc()[-3000:]))
        results.flush()
        return None


# ---------------------------------------------------------------------------
# sanity

def part_sanity(args, results: Results):
    device = jax.devices()[0]
    torch, torchvision = _torch()
    system = dict(
        jax=jax.__version__, backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        device_kind=getattr(device, "device_kind", "?"),
        torch=getattr(torch, "__version__", None),
        torchvision=getattr(torchvision, "__version__", None),
        torch_device=(torch.cuda.get_device_name(0)
                      if torch is not None and torch.cuda.is_available()
                      else None))
    n = args.matmul_size
    # Random operands: zeros or ones can run faster than real data.
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: a @ b)
    sec = _median_time(lambda: matmul(a, a), _jax_sync, args.iters,
                       args.repeats, args.warmup)
    system["bf16_matmul_tflops"] = 2 * n ** 3 / sec / 1e12
    x = jax.random.normal(jax.random.PRNGKey(1),
                          (args.copy_mib * 2 ** 20 // 2,), jnp.bfloat16)
    bump = jax.jit(lambda x: x + 1)
    sec = _median_time(lambda: bump(x), _jax_sync, args.iters, args.repeats,
                       args.warmup)
    system["read_write_gb_s"] = 2 * x.nbytes / sec / 1e9
    results.data["system"] = system
    results.flush()
    print(f"device: {system['device_kind']} ({system['backend']}); jax "
          f"{system['jax']}, torch {system['torch']}")
    print(f"bf16 matmul {n}^3: {system['bf16_matmul_tflops']:.1f} TFLOP/s; "
          f"read+write: {system['read_write_gb_s']:.0f} GB/s", flush=True)


# ---------------------------------------------------------------------------
# conv

def _conv_variants(chunks: list[int]) -> list[tuple]:
    """(label, impl, chunk_groups) for every lowering worth timing."""
    variants = [("xla", "xla", None)]
    variants += [(f"dense/c{c}", "dense", c) for c in chunks]
    return variants


def _time_jax_conv(x, kernel, cot, impl, chunk, backward, args):
    def forward(x, k):
        return rx.layers.grouped_conv(x, k, padding=((1, 1), (1, 1)), groups=GROUPS,
                               impl=impl, chunk_groups=chunk)

    if backward:
        fn = jax.jit(jax.grad(lambda x, k: jnp.vdot(
            forward(x, k).astype(jnp.float32), cot), argnums=(0, 1)))
    else:
        fn = jax.jit(forward)
    compiled = fn.lower(x, kernel).compile()
    return _median_time(lambda: compiled(x, kernel), _jax_sync, args.iters,
                        args.repeats, args.warmup)


def _time_torch_conv(torch, batch, size, width, dtype, backward, args):
    device = _torch_device(torch)
    conv = torch.nn.Conv2d(width, width, 3, padding=1, groups=GROUPS,
                           bias=False).to(device).to(
                               memory_format=torch.channels_last)
    x = torch.randn(batch, width, size, size, device=device).to(
        memory_format=torch.channels_last).requires_grad_(backward)
    cot = torch.randn(batch, width, size, size, device=device).to(
        memory_format=torch.channels_last)
    use_amp = dtype == "bfloat16"

    def run():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=use_amp):
            y = conv(x)
        if not backward:
            return y
        x.grad = None
        conv.weight.grad = None
        (y.float() * cot).sum().backward()
        return x.grad

    if not backward:
        with torch.no_grad():
            return _median_time(run, _torch_sync(torch), args.iters,
                                args.repeats, args.warmup)
    return _median_time(run, _torch_sync(torch), args.iters, args.repeats,
                        args.warmup)


def part_conv(args, results: Results):
    torch, _ = _torch()
    rng = np.random.default_rng(0)
    for stage, size, width in STAGES:
        if stage not in args.stages:
            continue
        size = max(1, size // args.spatial_divisor)
        width = max(GROUPS, width // args.width_divisor)
        for dtype in args.dtypes:
            jdt = jnp.dtype(dtype)
            x = jnp.asarray(rng.normal(size=(args.conv_batch, size, size,
                                             width)), jdt)
            kernel = jnp.asarray(rng.normal(size=(3, 3, width // GROUPS,
                                                  width)) * 0.1, jdt)
            cot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
            flops = 2 * args.conv_batch * size * size * width * (
                width // GROUPS) * 9
            for backward in (False, True):
                mode = "fwd+bwd" if backward else "fwd"
                useful = flops * (3 if backward else 1)
                for label, impl, chunk in _conv_variants(args.chunks):
                    if chunk is not None and GROUPS % chunk:
                        continue
                    sec = _guarded(results, f"conv {stage} {dtype} {mode} "
                                   f"{label}", _time_jax_conv, x, kernel,
                                   cot, impl, chunk, backward, args)
                    if sec is not None:
                        _conv_row(results, stage, dtype, mode, "jax", label,
                                  sec, useful)
                if torch is not None:
                    sec = _guarded(results, f"conv {stage} {dtype} {mode} "
                                   "torch", _time_torch_conv, torch,
                                   args.conv_batch, size, width, dtype,
                                   backward, args)
                    if sec is not None:
                        _conv_row(results, stage, dtype, mode, "torch",
                                  "Conv2d(groups=32) NHWC", sec, useful)
    _print_conv_table(results.data["conv"])


def _conv_row(results, stage, dtype, mode, framework, label, sec, flops):
    row = dict(stage=stage, dtype=dtype, mode=mode, framework=framework,
               lowering=label, ms=sec * 1e3, useful_tflops=flops / sec / 1e12)
    results.add("conv", row)
    print(f"  conv {stage} {dtype:<8} {mode:<7} {label:<24} "
          f"{row['ms']:9.3f} ms", flush=True)


def _print_conv_table(rows):
    print("\ngrouped 3x3 (ms; best jax lowering per row marked *)")
    keys = sorted({(r["stage"], r["dtype"], r["mode"]) for r in rows},
                  key=lambda k: (k[1], k[2], k[0]))
    for key in keys:
        group = [r for r in rows if (r["stage"], r["dtype"], r["mode"]) == key]
        jax_rows = [r for r in group if r["framework"] == "jax"]
        best = min(jax_rows, key=lambda r: r["ms"]) if jax_rows else None
        torch_row = next((r for r in group if r["framework"] == "torch"),
                         None)
        xla = next((r for r in jax_rows if r["lowering"] == "xla"), None)
        cells = [f"{r['lowering']}={r['ms']:.3f}"
                 + ("*" if r is best else "") for r in jax_rows]
        summary = ""
        if best and torch_row:
            summary = (f" | torch {torch_row['ms']:.3f}; best/torch "
                       f"{torch_row['ms'] / best['ms']:.2f}x")
        if best and xla:
            summary += f"; best/xla {xla['ms'] / best['ms']:.2f}x"
        print(f"{key[0]} {key[1]} {key[2]}: " + ", ".join(cells) + summary)


# ---------------------------------------------------------------------------
# model

def _make_model(args, impl, dtype, num_classes=1000):
    return rx.create_model(args.model, conv_impl=impl, dtype=jnp.dtype(dtype),
                           num_classes=num_classes, **args.model_kwargs)


def _train_step_fn(model, tx):
    def train_step(state, images, labels):
        params, stats, opt_state = state

        def loss_fn(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": stats}, images, train=True,
                mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels).mean()
            return loss, updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats,
                opt_state), loss
    return train_step


_INITIAL_VARIABLES = {}


def _initial_variables(args, model):
    """The model's initial variables, computed once: they depend on neither
    the lowering nor the compute dtype. Returns a copy (train steps donate)."""
    if "variables" not in _INITIAL_VARIABLES:
        _INITIAL_VARIABLES["variables"] = rx.init_variables(
            model, 0, args.image_size)
    return jax.tree.map(jnp.copy, _INITIAL_VARIABLES["variables"])


def _bench_jax_model(args, impl, dtype, batch, mode):
    model = _make_model(args, impl, dtype)
    variables = _initial_variables(args, model)
    params, stats = variables["params"], variables["batch_stats"]
    images = jax.random.normal(jax.random.PRNGKey(0),
                               (batch, args.image_size, args.image_size, 3))
    labels = jnp.arange(batch) % model.num_classes
    t0 = time.perf_counter()
    if mode == "infer":
        fn = jax.jit(lambda p, s, x: model.apply(
            {"params": p, "batch_stats": s}, x, train=False))
        compiled = fn.lower(params, stats, images).compile()
        compile_s = time.perf_counter() - t0
        sec = _median_time(lambda: compiled(params, stats, images),
                           _jax_sync, args.iters, args.repeats, args.warmup)
    else:
        tx = optax.sgd(0.1, momentum=0.9)
        state = [(params, stats, tx.init(params))]
        fn = jax.jit(_train_step_fn(model, tx), donate_argnums=0)
        compiled = fn.lower(state[0], images, labels).compile()
        compile_s = time.perf_counter() - t0

        def run():
            state[0], loss = compiled(state[0], images, labels)
            return loss

        sec = _median_time(run, _jax_sync, args.train_iters, args.repeats,
                           args.warmup)
    stats_now = jax.devices()[0].memory_stats() or {}
    return dict(img_s=batch / sec, ms=sec * 1e3, compile_s=compile_s,
                peak_bytes=_compiled_peak_bytes(compiled),
                process_peak_bytes=stats_now.get("peak_bytes_in_use"))


def _torchvision_model(torch, torchvision, args):
    """torchvision's model of the same architecture (smoke sizes too)."""
    from torchvision.models import resnet  # pylint: disable=import-outside-toplevel
    config = rx.models.model_config(args.model)
    config.update(args.model_kwargs)
    return resnet.ResNet(
        resnet.Bottleneck, list(config["stage_sizes"]),
        groups=config["cardinality"],
        width_per_group=config["base_width"], num_classes=1000)


def _bench_torch_model(args, batch, mode, compiled_mode):
    torch, torchvision = _torch()
    device = _torch_device(torch)
    net = _torchvision_model(torch, torchvision, args).to(device).to(
        memory_format=torch.channels_last)
    x = torch.randn(batch, 3, args.image_size, args.image_size,
                    device=device).to(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % 1000
    run_net = torch.compile(net) if compiled_mode else net
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if mode == "infer":
        net.eval()

        def run():
            with torch.no_grad(), torch.autocast(device,
                                                 dtype=torch.bfloat16):
                return run_net(x)
        iters = args.iters
    else:
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

        def run():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(run_net(x), y)
            loss.backward()
            opt.step()
            return loss
        iters = args.train_iters
    run()
    _torch_sync(torch)(None)
    compile_s = time.perf_counter() - t0
    sec = _median_time(run, _torch_sync(torch), iters, args.repeats,
                       args.warmup)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else None)
    return dict(img_s=batch / sec, ms=sec * 1e3, compile_s=compile_s,
                peak_bytes=peak)


def part_model(args, results: Results):
    torch, _ = _torch()
    for batch in args.batch_sizes:
        for mode in args.modes:
            for dtype in args.dtypes:
                for impl in args.model_impls:
                    what = f"model {mode} {impl} {dtype} batch {batch}"
                    r = _guarded(results, what, _bench_jax_model, args, impl,
                                 dtype, batch, mode)
                    if r:
                        _model_row(results, "jax", impl, dtype, batch, mode,
                                   r)
            if torch is None:
                continue
            for compiled_mode in (False, True) if args.torch_compile else (
                    False,):
                label = ("torch.compile" if compiled_mode else "eager") + \
                    " NHWC AMP"
                r = _guarded(results, f"model {mode} torch {label} batch "
                             f"{batch}", _bench_torch_model, args, batch,
                             mode, compiled_mode)
                if r:
                    _model_row(results, "torch", label, "bfloat16", batch,
                               mode, r)
    _print_model_table(results.data["model"])


def _model_row(results, framework, impl, dtype, batch, mode, r):
    row = dict(framework=framework, lowering=impl, dtype=dtype, batch=batch,
               mode=mode, **r)
    results.add("model", row)
    peak = r.get("peak_bytes")
    print(f"  {mode:<5} {framework:<5} {impl:<24} {dtype:<8} b{batch:<4} "
          f"{r['img_s']:10.1f} img/s  compile {r['compile_s']:.1f} s  peak "
          f"{(peak / 2**30) if peak else float('nan'):.2f} GiB", flush=True)


def _print_model_table(rows):
    print(f"\n{'mode':<6}{'framework':<10}{'lowering':<26}{'dtype':<10}"
          f"{'batch':>6}{'img/s':>10}{'vs torch':>10}{'peak GiB':>10}")
    for r in rows:
        ref = next((t for t in rows if t["framework"] == "torch"
                    and t["lowering"].startswith("eager")
                    and t["batch"] == r["batch"] and t["mode"] == r["mode"]),
                   None)
        ratio = f"{r['img_s'] / ref['img_s']:.2f}x" if ref else "-"
        peak = r.get("peak_bytes")
        print(f"{r['mode']:<6}{r['framework']:<10}{r['lowering']:<26}"
              f"{r['dtype']:<10}{r['batch']:>6}{r['img_s']:>10.1f}"
              f"{ratio:>10}{(f'{peak / 2**30:.2f}' if peak else '-'):>10}")


# ---------------------------------------------------------------------------
# check

def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def part_check(args, results: Results):
    batch, size = args.check_batch, args.image_size
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        model = _make_model(args, "xla", "float32")
        variables = _initial_variables(args, model)
        torch, torchvision = _torch()
        if torch is not None:
            net = _torchvision_model(torch, torchvision, args).eval()
            with torch.no_grad():  # Non-trivial BN statistics.
                for m in net.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.uniform_(-0.1, 0.1)
                        m.running_var.uniform_(0.5, 1.5)
                        m.weight.uniform_(0.5, 1.5)
            variables = rx.load_torch_state_dict(net.state_dict(), model)
            device = _torch_device(torch)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            net = net.to(device)
            with torch.no_grad():
                ref = net(torch.from_numpy(images).permute(0, 3, 1, 2).to(
                    device)).cpu().numpy()
            ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(
                variables, images)
            row = dict(what="logits vs torchvision (float32, highest)",
                       rel_err=_rel_err(ours, ref))
            results.add("check", row)
            print(f"  {row['what']}: {row['rel_err']:.2e}", flush=True)
        labels = jnp.arange(batch) % model.num_classes

        def loss_and_grads(impl):
            m = model.clone(conv_impl=impl)

            def loss_fn(p):
                logits, _ = m.apply({**variables, "params": p}, images,
                                    train=True, mutable=["batch_stats"])
                return optax.softmax_cross_entropy_with_integer_labels(
                    logits, labels).mean(), logits
            (_, logits), grads = jax.jit(jax.value_and_grad(
                loss_fn, has_aux=True))(variables["params"])
            return logits, grads

        ref_logits, ref_grads = loss_and_grads("xla")
        for impl in args.check_impls:
            if impl == "xla":
                continue
            logits, grads = _guarded(results, f"check {impl}",
                                     loss_and_grads, impl) or (None, None)
            if logits is None:
                continue
            grad_err = max(_rel_err(g, r) for g, r in zip(
                jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
            row = dict(what=f"{impl} vs xla (train mode)",
                       logits_rel_err=_rel_err(logits, ref_logits),
                       max_grad_rel_err=grad_err)
            results.add("check", row)
            print(f"  {row['what']}: logits {row['logits_rel_err']:.2e}, "
                  f"gradients {grad_err:.2e}", flush=True)


# ---------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=_str_list, default=list(ALL_PARTS),
                        help="comma list of " + ",".join(ALL_PARTS))
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and a one-block model (CPU, CI)")
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help="JSON of ResNeXt field overrides")
    parser.add_argument("--model-impls", type=_str_list,
                        default=list(MODEL_IMPLS),
                        help="lowerings for the model and check parts")
    parser.add_argument("--dtypes", type=_str_list,
                        default=["bfloat16", "float32"])
    parser.add_argument("--batch-sizes", type=_int_list, default=[128],
                        help="model part; e.g. 128,256 (each adds minutes)")
    parser.add_argument("--modes", type=_str_list, default=["train", "infer"],
                        help="model part: train and/or infer")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--conv-batch", type=int, default=128)
    parser.add_argument("--stages", type=_str_list,
                        default=[name for name, _, _ in STAGES],
                        help="conv part: which ResNeXt-50 stages")
    parser.add_argument("--chunks", type=_int_list, default=[1, 2, 4, 8, 16,
                                                             32],
                        help="groups per dense convolution to try")
    parser.add_argument("--spatial-divisor", type=int, default=1,
                        help="divide the stage sizes (smoke runs)")
    parser.add_argument("--width-divisor", type=int, default=1,
                        help="divide the stage widths (smoke runs)")
    parser.add_argument("--check-batch", type=int, default=8)
    parser.add_argument("--check-impls", type=_str_list,
                        default=list(rx.layers.CONV_IMPLS),
                        help="lowerings compared with xla in the check part")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--train-iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--copy-mib", type=int, default=1024)
    parser.add_argument("--no-torch-compile", dest="torch_compile",
                        action="store_false")
    parser.add_argument("--json", default="benchmarks/results/gpu.json")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(ALL_PARTS))
    if unknown:
        parser.error(f"--parts {unknown} unknown; choose from {ALL_PARTS}")
    if not args.modes or set(args.modes) - {"train", "infer"}:
        parser.error(f"--modes {args.modes} must be train and/or infer")
    for impl in args.model_impls + args.check_impls:
        if impl not in rx.layers.CONV_IMPLS:
            parser.error(f"lowering {impl!r} is not one of "
                         f"{rx.layers.CONV_IMPLS}")
    if args.smoke:
        args.model_kwargs = {"stage_sizes": [1, 1, 1, 1], "cardinality": 8,
                             "base_width": 2, **args.model_kwargs}
        args.batch_sizes, args.image_size = [2], 32
        args.conv_batch, args.spatial_divisor, args.width_divisor = 1, 8, 4
        args.chunks, args.check_batch = [4], 2
        args.dtypes = ["float32"]
        args.model_impls = ["xla"]
        args.check_impls = ["auto", "dense"]
        args.stages = ["stage1"]
        args.iters, args.train_iters, args.repeats, args.warmup = 1, 1, 1, 1
        args.matmul_size, args.copy_mib = 256, 4
        args.torch_compile = False
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = Results(args.json, args)
    parts = {"sanity": part_sanity, "conv": part_conv, "model": part_model,
             "check": part_check}
    for name in ALL_PARTS:
        if name in args.parts:
            print(f"\n== {name}", flush=True)
            _guarded(results, name, parts[name], args, results)
    if args.json:
        print(f"\nwrote {args.json}")
    if results.data["errors"]:
        print(f"{len(results.data['errors'])} measurement(s) failed; see "
              "'errors' in the JSON", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
