"""The CPU report: ours against torchvision, each figure from a fresh process.

One command measures, on this machine and in one run:

* ``step``: inference and train-step img/s of one model and batch, ours
  (``auto``, i.e. the ``dense`` lowering and fused BatchNorm on CPU) and
  torchvision channels_last, with peak resident memory of each process
  during the timed steps (after compiling and warming up: the
  resident high-water mark, reset with ``/proc/self/clear_refs``).
  torchvision runs twice: with glibc's default malloc, as a user
  runs it, and with the malloc settings our entry points apply
  (``resnext_jax.runtime.malloc``), so that the comparison can be read
  either way.
* ``components``: where the train step's time goes, ours and torchvision's:
  forward+backward of every convolution, BatchNorm(+ReLU)(+add) and
  max-pool of the model at their real shapes (each unique shape timed, then
  multiplied by how often it occurs), and the optimizer update.
* ``first_step``: time to the first train step (initialization, tracing and
  lowering, XLA's compile, the first run) with an empty compilation cache,
  then again with the cache the first run filled.
* ``curve``: img/s at several batch sizes, inference and training.
* ``models``: train-step ratios of further models (``name:size:batch``).

Every jax process has JAX's persistent compilation cache on (in
``RESNEXT_JAX_CACHE_DIR`` or ``~/.cache/resnext_jax/xla``), except
``first_step``'s, which use a fresh one. Prints tables and writes JSON.

    python benchmarks/bench_cpu.py                    # step, components, first_step
    python benchmarks/bench_cpu.py --parts curve,models
    python benchmarks/bench_cpu.py --smoke            # seconds: tiny sizes
    python benchmarks/bench_cpu.py --cpu-lowering onednn  # the oneDNN kernel
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS = ("step", "components", "first_step", "curve", "models")


# ---------------------------------------------------------------------------
# Workers: each runs in its own process and prints one JSON line.

def _peak_rss_gib() -> float:
    """Peak resident memory (VmHWM) since the last :func:`_reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    import resource  # pylint: disable=import-outside-toplevel
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _reset_peak_rss() -> None:
    """Restarts the peak at the current resident memory, so that the peak
    measured is the steady state's, not the compiler's or the warm-up's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _timed_steady(fn, runs: int, warmup: int) -> tuple[float, float, float]:
    """(first call's seconds, median seconds, peak GiB of the timed calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    _reset_peak_rss()
    _, sec = _timed(fn, runs, 0)
    return first, sec, _peak_rss_gib()


def _timed(fn, runs: int, warmup: int) -> tuple[float, float]:
    """(first call's seconds, median seconds of ``runs`` later calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def _jax_model(spec):
    import resnext_jax as rx  # pylint: disable=import-outside-toplevel
    return rx.create_model(spec["model"], **spec.get("model_kwargs", {}))


def worker_jax_step(spec):
    import jax  # pylint: disable=import-outside-toplevel
    import resnext_jax as rx  # pylint: disable=import-outside-toplevel
    # The same step bench_throughput times (this script's folder is on
    # sys.path when it runs).
    from bench_throughput import sgd_train_step, synthetic_inputs  # pylint: disable=import-outside-toplevel

    model = _jax_model(spec)
    batch, size = spec["batch"], spec["size"]
    images, labels, variables = synthetic_inputs(model, size, batch)
    params, stats = variables["params"], variables["batch_stats"]
    out = dict(framework="jax",
               lowering=rx.layers.resolve_conv_impl(model.conv_impl))
    if spec["mode"] == "infer":
        infer = jax.jit(lambda p, s, x: model.apply(
            {"params": p, "batch_stats": s}, x, train=False))
        first, sec = _timed(
            lambda: infer(params, stats, images).block_until_ready(),
            spec["runs"], spec["warmup"])
    else:
        step, state = sgd_train_step(model, variables)
        state = [state]
        compiled = step.lower(state[0], images, labels).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**30
        out["xla_temp_gib"] = temp

        def run():
            state[0], loss = compiled(state[0], images, labels)
            loss.block_until_ready()

        first, sec, peak = _timed_steady(run, spec["runs"], spec["warmup"])
        out.update(img_s=batch / sec, first_s=first, peak_rss_gib=peak)
        return out
    out.update(img_s=batch / sec, first_s=first, peak_rss_gib=_peak_rss_gib())
    return out


def _torch_cifar_resnext29(cardinality, base_width, num_classes):
    """The CIFAR ResNeXt-29 (paper Table 7) from torchvision's pieces: a
    3x3 stem without max-pool and three stages of three bottlenecks."""
    import torch  # pylint: disable=import-outside-toplevel
    from torchvision.models import resnet  # pylint: disable=import-outside-toplevel
    net = resnet.ResNet(resnet.Bottleneck, [3, 3, 3, 1],
                        groups=cardinality, width_per_group=base_width)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    net.layer4 = torch.nn.Identity()
    net.fc = torch.nn.Linear(1024, num_classes)
    return net


def _torch_model(spec):
    import torchvision  # pylint: disable=import-outside-toplevel
    import resnext_jax as rx  # pylint: disable=import-outside-toplevel
    name = spec["model"]
    if hasattr(torchvision.models, name) and not spec.get("model_kwargs"):
        return getattr(torchvision.models, name)(), 1000
    config = rx.models.model_config(name)
    if config.get("stem") == "cifar" and not spec.get("model_kwargs"):
        return _torch_cifar_resnext29(
            config["cardinality"], config["base_width"],
            config["num_classes"]), config["num_classes"]
    raise ValueError(f"no torch counterpart of {name}")


def worker_torch_step(spec):
    import torch  # pylint: disable=import-outside-toplevel
    model, classes = _torch_model(spec)
    model = model.to(memory_format=torch.channels_last)
    batch, size = spec["batch"], spec["size"]
    x = torch.randn(batch, 3, size, size).to(
        memory_format=torch.channels_last)
    y = torch.arange(batch) % classes
    if spec["mode"] == "infer":
        model.eval()

        def run():
            with torch.no_grad():
                model(x)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def run():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    first, sec, peak = _timed_steady(run, spec["runs"], spec["warmup"])
    return dict(framework="torch", torch=torch.__version__, img_s=batch / sec,
                first_s=first, peak_rss_gib=peak)


def _record_layers(model, batch, size):
    """Every conv, BatchNorm and max-pool call of a train-mode forward, as
    (kind, signature) with input shapes, from an abstract trace."""
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from resnext_jax.layers import conv
    from resnext_jax.models import resnext as models  # pylint: disable=import-outside-toplevel
    from resnext_jax.layers.batchnorm import BatchNorm  # pylint: disable=import-outside-toplevel

    layers = []

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__":
            shape = tuple(args[0].shape)
            if isinstance(m, conv.GroupedConv):
                kind = ("conv_grouped" if m.feature_group_count > 1 else
                        "conv_1x1" if tuple(m.kernel_size) == (1, 1)
                        else "conv_kxk")
                layers.append((kind, dict(
                    shape=shape, features=m.features,
                    kernel=tuple(m.kernel_size), strides=tuple(m.strides),
                    padding=m.padding, groups=m.feature_group_count)))
            elif isinstance(m, BatchNorm):
                layers.append(("bn", dict(
                    shape=shape, relu=m.activation == "relu",
                    residual=kwargs.get("residual") is not None)))
        return next_fun(*args, **kwargs)

    real_pool = models.max_pool

    def pool(x, *a, **k):
        layers.append(("max_pool", dict(shape=tuple(x.shape))))
        return real_pool(x, *a, **k)

    variables = jax.eval_shape(
        lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    models.max_pool = pool
    try:
        with nn.intercept_methods(interceptor):
            jax.eval_shape(lambda v, x: model.apply(
                v, x, train=True, mutable=["batch_stats"]), variables,
                jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    finally:
        models.max_pool = real_pool
    unique = {}
    for kind, sig in layers:
        key = json.dumps([kind, sig], sort_keys=True, default=list)
        unique.setdefault(key, [kind, sig, 0])[2] += 1
    return list(unique.values())


def worker_jax_components(spec):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    import resnext_jax as rx  # pylint: disable=import-outside-toplevel
    from resnext_jax.layers import conv  # pylint: disable=import-outside-toplevel
    from resnext_jax.layers.batchnorm import BatchNorm  # pylint: disable=import-outside-toplevel

    model = _jax_model(spec)
    layers = _record_layers(model, spec["batch"], spec["size"])
    if spec.get("one_per_kind"):  # --smoke: each code path once.
        first = {}
        for kind, sig, count in layers:
            first.setdefault(kind, [kind, sig, count])
        layers = list(first.values())
    key = jax.random.PRNGKey(0)
    rows = []
    for kind, sig, count in layers:
        x = jax.random.normal(key, sig["shape"])
        if kind.startswith("conv"):
            module = conv.GroupedConv(
                sig["features"], sig["kernel"], strides=sig["strides"],
                padding=sig["padding"], feature_group_count=sig["groups"])
            params = module.init(key, x)

            def loss(p, x, r, module=module):
                return jnp.vdot(module.apply(p, x), r)
            out = jax.eval_shape(module.apply, params, x)
            args = (params, x, jax.random.normal(key, out.shape))
            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        elif kind == "bn":
            module = BatchNorm(use_running_average=False, momentum=0.9,
                               activation="relu" if sig["relu"] else None)
            variables = module.init(key, x)
            residual = x * 0.5 if sig["residual"] else None

            def loss(p, x, r, module=module, variables=variables,
                     residual=residual):
                y, _ = module.apply(
                    {"params": p, "batch_stats": variables["batch_stats"]},
                    x, residual=residual, mutable=["batch_stats"])
                return jnp.vdot(y, r)
            args = (variables["params"], x, jax.random.normal(key, x.shape))
            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        else:  # max_pool
            out = jax.eval_shape(lambda x: conv.max_pool(x, 3, 2, 1), x)
            args = (x, jax.random.normal(key, out.shape))
            grad = jax.jit(jax.grad(
                lambda x, r: jnp.vdot(conv.max_pool(x, 3, 2, 1), r)))
        _, sec = _timed(lambda: jax.block_until_ready(grad(*args)),
                        spec["runs"], 1)
        rows.append(dict(kind=kind, sig=sig, count=count, ms=sec * 1e3))
    # The optimizer: SGD with momentum over every parameter.
    params = rx.init_variables(model, 0, spec["size"])["params"]
    tx = optax.sgd(0.1, momentum=0.9)
    grads = jax.tree.map(jnp.ones_like, params)

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update = jax.jit(update, donate_argnums=(0, 1))
    state = [params, tx.init(params)]

    def run():
        state[0], state[1] = update(state[0], state[1], grads)
        jax.block_until_ready(state[0])

    _, sec = _timed(run, spec["runs"], 1)
    rows.append(dict(kind="optimizer", sig={}, count=1, ms=sec * 1e3))
    return dict(framework="jax", rows=rows,
                param_shapes=[list(p.shape) for p in jax.tree.leaves(params)])


def worker_torch_components(spec):
    import torch  # pylint: disable=import-outside-toplevel
    rows = []
    cl = torch.channels_last
    for kind, sig, count in spec["layers"]:
        n, h, w, c = sig["shape"]
        x = torch.randn(n, c, h, w).to(memory_format=cl).requires_grad_()
        if kind.startswith("conv"):
            pad = sig["padding"]
            pad = (pad[0][0], pad[1][0]) if not isinstance(pad, str) else 0
            module = torch.nn.Conv2d(c, sig["features"], sig["kernel"],
                                     sig["strides"], pad,
                                     groups=sig["groups"], bias=False)

            def fwd(x, module=module):
                return module(x)
        elif kind == "bn":
            module = torch.nn.BatchNorm2d(c)
            residual = (torch.randn(n, c, h, w).to(memory_format=cl)
                        if sig["residual"] else None)

            def fwd(x, module=module, residual=residual, relu=sig["relu"]):
                y = module(x)
                if residual is not None:
                    y = y + residual
                return torch.relu(y) if relu else y
        else:
            module = torch.nn.MaxPool2d(3, 2, 1)

            def fwd(x, module=module):
                return module(x)
        module = module.to(memory_format=cl)
        g = torch.randn_like(fwd(x))

        def run(fwd=fwd, x=x, g=g):
            fwd(x).backward(g)
        _, sec = _timed(run, spec["runs"], 1)
        rows.append(dict(kind=kind, sig=sig, count=count, ms=sec * 1e3))
    # The same parameter shapes as ours.
    params = [torch.nn.Parameter(torch.randn(*shape))
              for shape in spec["param_shapes"]]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    _, sec = _timed(opt.step, spec["runs"], 1)
    rows.append(dict(kind="optimizer", sig={}, count=1, ms=sec * 1e3))
    return dict(framework="torch", rows=rows)


def worker_jax_first_step(spec):
    """Time to the first train step, each phase separately."""
    t_start = time.perf_counter()
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import resnext_jax as rx  # pylint: disable=import-outside-toplevel
    from bench_throughput import sgd_train_step  # pylint: disable=import-outside-toplevel
    t_import = time.perf_counter()
    model = _jax_model(spec)
    batch, size = spec["batch"], spec["size"]
    images = jnp.zeros((batch, size, size, 3))
    labels = jnp.zeros((batch,), jnp.int32)
    variables = jax.block_until_ready(rx.init_variables(model, 0, size))
    t_init = time.perf_counter()
    step, state = sgd_train_step(model, variables)
    lowered = step.lower(state, images, labels)
    t_lower = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter()
    _, loss = compiled(state, images, labels)
    loss.block_until_ready()
    t_run = time.perf_counter()
    return dict(framework="jax", import_s=t_import - t_start,
                init_s=t_init - t_import, trace_lower_s=t_lower - t_init,
                compile_s=t_compile - t_lower, run_s=t_run - t_compile,
                to_first_step_s=t_compile - t_import)


def worker_torch_first_step(spec):
    t_start = time.perf_counter()
    import torch  # pylint: disable=import-outside-toplevel
    t_import = time.perf_counter()
    model, classes = _torch_model(spec)
    model = model.to(memory_format=torch.channels_last)
    t_init = time.perf_counter()
    x = torch.zeros(spec["batch"], 3, spec["size"], spec["size"]).to(
        memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.nn.functional.cross_entropy(
        model(x), torch.zeros(spec["batch"], dtype=torch.long)).backward()
    opt.step()
    t_run = time.perf_counter()
    return dict(framework="torch", import_s=t_import - t_start,
                init_s=t_init - t_import, run_s=t_run - t_init,
                to_first_step_s=t_init - t_import)


WORKERS = {
    ("jax", "step"): worker_jax_step,
    ("torch", "step"): worker_torch_step,
    ("jax", "components"): worker_jax_components,
    ("torch", "components"): worker_torch_components,
    ("jax", "first_step"): worker_jax_first_step,
    ("torch", "first_step"): worker_torch_first_step,
}


def worker_main(spec: dict) -> None:
    if spec.get("malloc", True):
        # Before jax or torch start their threads.
        from resnext_jax.runtime.malloc import configure_malloc  # pylint: disable=import-outside-toplevel
        configure_malloc()
    if spec["framework"] == "jax":
        from resnext_jax.runtime.compilation_cache import enable_compilation_cache  # pylint: disable=import-outside-toplevel
        enable_compilation_cache(spec.get("cache_dir"))
        if spec.get("cpu_lowering"):
            # What auto compiles to on CPU, as if the library's switch
            # (AUTO_LOWERINGS["cpu"]) said so: the whole model, components
            # included.
            from resnext_jax.layers import conv  # pylint: disable=import-outside-toplevel
            conv.AUTO_LOWERINGS["cpu"] = spec["cpu_lowering"]
    result = WORKERS[(spec["framework"], spec["task"])](spec)
    print("RESULT " + json.dumps(dict(spec=spec, **result)), flush=True)


# ---------------------------------------------------------------------------
# The parent: runs workers, prints tables, writes JSON.

def run_worker(spec: dict, env: dict | None = None) -> dict | None:
    """The worker's result; None for torch when it is not installed or
    has no counterpart of the model (field overrides)."""
    if spec["framework"] == "torch" and (
            not torch_available() or
            (spec.get("model_kwargs") and spec["task"] != "components")):
        return None
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True, cwd=REPO,
        env=dict(os.environ, **(env or {})))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")


def torch_available() -> bool:
    try:
        import torchvision  # pylint: disable=import-outside-toplevel,unused-import
        return True
    except ImportError:
        return False


def _spec(framework, task, args, **kw):
    spec = dict(framework=framework, task=task, model=args.model,
                size=args.image_size, batch=args.batch_size, runs=args.runs,
                warmup=args.warmup, model_kwargs=args.model_kwargs,
                cpu_lowering=args.cpu_lowering)
    spec.update(kw)
    return spec


def part_step(args, report):
    rows = []
    for mode in ("infer", "train"):
        for framework, malloc in (("jax", True), ("jax", False),
                                  ("torch", False), ("torch", True)):
            r = run_worker(_spec(framework, "step", args, mode=mode,
                                 malloc=malloc))
            if r:
                rows.append(r)
                print(f"  {mode:<6}{framework:<6} malloc "
                      f"{'ours' if malloc else 'default':<8}"
                      f"{r['img_s']:8.2f} img/s  peak RSS "
                      f"{r['peak_rss_gib']:.2f} GiB", flush=True)
    report["step"] = rows


def _sum_by_kind(rows):
    out = {}
    for r in rows:
        out[r["kind"]] = out.get(r["kind"], 0.0) + r["ms"] * r["count"]
    return out


def part_components(args, report):
    ours = run_worker(_spec("jax", "components", args,
                            one_per_kind=args.smoke))
    layers = [[r["kind"], r["sig"], r["count"]] for r in ours["rows"]
              if r["kind"] != "optimizer"]
    theirs = run_worker(_spec("torch", "components", args, layers=layers,
                              param_shapes=ours["param_shapes"],
                              malloc=False))
    report["components"] = dict(jax=ours["rows"],
                                torch=theirs["rows"] if theirs else None)
    a = _sum_by_kind(ours["rows"])
    b = _sum_by_kind(theirs["rows"]) if theirs else {}
    print(f"\n  {'component (fwd+bwd, all layers)':<34}{'ours ms':>10}"
          f"{'torch ms':>10}{'torch/ours':>12}")
    for kind in a:
        t = b.get(kind)
        print(f"  {kind:<34}{a[kind]:10.1f}"
              + (f"{t:10.1f}{t / a[kind]:11.2f}x" if t else ""))
    print(f"  {'sum':<34}{sum(a.values()):10.1f}"
          + (f"{sum(b.values()):10.1f}" if b else ""))


def part_first_step(args, report):
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold cache", "warm cache"):
            # The environment wins over any cache folder already set.
            r = run_worker(_spec("jax", "first_step", args,
                                 batch=args.first_step_batch,
                                 cache_dir=cache),
                           env={"JAX_COMPILATION_CACHE_DIR": cache})
            r["cache"] = label
            rows.append(r)
            print(f"  jax {label}: init {r['init_s']:.1f} s, trace+lower "
                  f"{r['trace_lower_s']:.1f} s, compile {r['compile_s']:.1f}"
                  f" s, to the first step {r['to_first_step_s']:.1f} s "
                  f"(first step runs {r['run_s']:.1f} s)", flush=True)
    r = run_worker(_spec("torch", "first_step", args,
                         batch=args.first_step_batch, malloc=False))
    if r:
        rows.append(r)
        print(f"  torch: model {r['init_s']:.1f} s, first step "
              f"{r['run_s']:.1f} s", flush=True)
    report["first_step"] = rows


def part_curve(args, report):
    rows = []
    for mode, batches in (("infer", args.infer_batches),
                          ("train", args.train_batches)):
        for batch in batches:
            for framework in ("jax", "torch"):
                r = run_worker(_spec(framework, "step", args, mode=mode,
                                     batch=batch,
                                     malloc=framework == "jax"))
                if r:
                    rows.append(r)
                    print(f"  {mode:<6}batch {batch:<4}{framework:<6}"
                          f"{r['img_s']:8.2f} img/s", flush=True)
    report["curve"] = rows


def part_models(args, report):
    rows = []
    for item in args.models:
        name, size, batch = item.split(":")
        spec = dict(model=name, size=int(size), batch=int(batch),
                    runs=args.runs, warmup=args.warmup, model_kwargs={},
                    task="step", mode="train",
                    cpu_lowering=args.cpu_lowering)
        for framework in ("jax", "torch"):
            r = run_worker(dict(spec, framework=framework,
                                malloc=framework == "jax"))
            if r:
                rows.append(r)
                print(f"  train {name} {size}px batch {batch} {framework}: "
                      f"{r['img_s']:.2f} img/s", flush=True)
    report["models"] = rows


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--parts", default="step,components,first_step",
                        help=f"comma list of {','.join(PARTS)}")
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help="JSON of field overrides (ours only)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--first-step-batch", type=int, default=8)
    parser.add_argument("--infer-batches", type=_ints, default=[1, 4, 16, 64])
    parser.add_argument("--train-batches", type=_ints, default=[4, 16, 32])
    parser.add_argument("--models", default=(
        "resnext29_8x64d:32:64,resnext101_32x8d:224:8"),
        type=lambda s: [m for m in s.split(",") if m])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cpu-lowering", choices=["dense", "onednn"],
                        help="what our auto lowering compiles to on CPU "
                        "(default: the library's choice); onednn needs the "
                        "resnext_jax[onednn] extra")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: checks that every part runs")
    parser.add_argument("--json", default="benchmarks/results/cpu.json")
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {PARTS}")
    if args.smoke:
        args.model, args.image_size, args.batch_size = (
            "resnext29_8x64d", 16, 2)
        args.model_kwargs = {"stage_sizes": [1, 1, 1], "base_width": 4}
        args.first_step_batch, args.runs, args.warmup = 2, 1, 0
        args.infer_batches, args.train_batches = [1], [2]
        args.models = []
    report = dict(args={k: v for k, v in vars(args).items()
                        if k != "worker"},
                  cpu_count=os.cpu_count())
    for part in parts:
        print(f"[{part}]", flush=True)
        globals()[f"part_{part}"](args, report)
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
