"""Our train step against PyTorch's, step by step.

For each part of the training recipe, trains a small torchvision-compatible
ResNeXt (``resnext50_32x4d`` with one block per stage, 4 groups of width 4,
10 classes) on the same batches from the same weights twice:

- ours: the trainer's own code, built from a config as ``train/loop.py``
  builds it (``train.model_factory.build_model``,
  ``train.optim.create_learning_rate_schedule`` / ``create_optimizer``,
  ``train.steps.create_train_state`` / ``make_train_step`` run through
  ``train.mesh.data_parallel`` on one device);
- PyTorch's: torchvision's ``ResNet(Bottleneck, [1, 1, 1, 1], groups=4,
  width_per_group=4)`` loaded with the same weights
  (``resnext_jax.to_torch_state_dict``), ``torch.optim.SGD`` (momentum,
  nesterov, weight_decay; param groups for the BatchNorm/bias exclusion) or
  ``torch.optim.AdamW``, ``nn.CrossEntropyLoss(label_smoothing=...)``,
  ``torch.optim.lr_scheduler`` stepped once per step, BatchNorm momentum
  0.1 (ours 0.9: flax weighs the old statistic, torch the new one).

Compared, as the max relative difference ``max|ours - torch| / max|torch|``
per tensor (per step for losses and rates), the largest over the tensors
and steps:

- step by step: our step from each of PyTorch's states (parameters,
  BatchNorm statistics, optimizer buffers and step count loaded into our
  ``TrainState``), against PyTorch's next state: the loss, the learning rate,
  the parameters, the parameter update, the BatchNorm running statistics
  and the optimizer state (optax's ``trace`` vs torch's ``momentum_buffer``;
  for AdamW ``mu``/``nu`` vs ``exp_avg``/``exp_avg_sq``);
- free-running: each side its own steps from the start; the final state.

In float32 (``jax.default_matmul_precision("highest")``, no TF32 in torch)
and float64 (both sides; ours through ``jax.enable_x64`` and the model
cloned to float64). In float32 a ReLU input within rounding of 0 can take the
other side of the kink in one framework (the last stage here sees 8
positions per channel, 8 images at 1x1, so one such element moves a row of
the gradient by percents); float64 has no such ties. See
docs/step_parity.md.

Conventions that differ on purpose, where the reference is made to match
ours (docs/step_parity.md):

- BatchNorm's running variance: flax (and so ours) averages the biased
  batch variance, torch the unbiased one (x n/(n-1)). The reference removes
  torch's Bessel factor after each step (``bessel=True`` keeps it).
- Warmup starts at a learning rate of exactly 0 (step 0 trains nothing);
  ``LinearLR`` refuses a start factor of 0, so the reference's warmup is a
  ``LambdaLR``.
- Step-schedule boundaries (``lr_decay_epochs``) count from the start of
  training, warmup included; ``SequentialLR`` restarts the count of the
  scheduler after warmup, so the reference's ``MultiStepLR`` milestones are
  the boundaries minus the warmup steps.
- The cosine goes to 0 at the last step (optax's ``cosine_decay_schedule``,
  ``alpha=0``): ``CosineAnnealingLR(T_max=total - warmup, eta_min=0)``.
- Weight decay is masked (``weight_decay_bn``, ``weight_decay_bias``) for
  AdamW too; torch's AdamW decays every parameter of a group, so the
  reference puts the excluded ones in a group with ``weight_decay=0``.

    python benchmarks/step_parity.py --json step_parity.json
    python benchmarks/step_parity.py --parts a_paper,g_adamw --dtypes float64
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import pathlib
import sys
import time
import unittest.mock

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import resnext_jax as rx  # noqa: E402
from resnext_jax.layers.conv import resolve_conv_impl  # noqa: E402
from train import loop, mesh as mesh_lib, mixing, optim, steps  # noqa: E402
from train.model_factory import build_model  # noqa: E402

MODEL = "resnext50_32x4d"
MODEL_KWARGS = dict(stage_sizes=(1, 1, 1, 1), cardinality=4, base_width=4)
NUM_CLASSES = 10
BATCH_SIZE = 8
IMAGE_SIZE = 32
NUM_STEPS = 6
STEPS_PER_EPOCH = 2  # epoch-valued fields (warmup, drops) at this rate.
TORCH_BN_MOMENTUM = 0.1  # torch's for our 0.9
DTYPES = ("float32", "float64")

# The paper's recipe (Xie et al. 2017, as fb.resnet.torch ran it): SGD,
# Nesterov momentum 0.9, weight decay 1e-4 on every parameter, learning
# rate 0.1 per 256 images (linear scaling rule: 0.003125 for 8). Cosine
# here; the paper's step schedule is part d.
PAPER = dict(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=1e-4,
             weight_decay_bn=True, weight_decay_bias=True,
             label_smoothing=0.0, lr_schedule="cosine", warmup_epochs=0.0,
             lr_decay_epochs=(), lr_decay_factor=0.1,
             base_learning_rate=0.1, base_batch_size=256)

# Each part: the paper's recipe with a few fields changed.
PARTS = {
    "a_paper": dict(),
    "b_no_decay_bn_bias": dict(weight_decay_bn=False,
                               weight_decay_bias=False),
    "c_label_smoothing": dict(label_smoothing=0.1),
    # Drops at steps 2 and 4; with warmup, so that the boundaries' count
    # (from step 0, warmup included) is checked too.
    "d_step_schedule": dict(lr_schedule="step", warmup_epochs=0.5,
                            lr_decay_epochs=(1, 2), lr_decay_factor=0.1),
    "e_warmup_cosine": dict(lr_schedule="cosine", warmup_epochs=1.0),
    "f_momentum_no_nesterov": dict(nesterov=False),
    "g_adamw": dict(optimizer="adamw", base_learning_rate=1e-3,
                    weight_decay=0.05, weight_decay_bn=False,
                    weight_decay_bias=False, warmup_epochs=1.0),
    # torchvision V2's deterministic parts. EMA every 2 steps; a
    # model_ema_decay whose rescaled decay (batch 8, 2 steps, 3 epochs) is
    # 0.5, so that the average moves; Mixup with a fixed lambda (FIXED_MIX).
    "h_ema_mixup": dict(model_ema=True, model_ema_steps=2,
                        model_ema_decay=1 - 0.5 * 3 / 16, nesterov=False,
                        label_smoothing=0.1, weight_decay_bn=False),
    # EMA every step through a warmup epoch (torchvision resets the average
    # until warmup ends); CutMix with a fixed lambda and box (FIXED_MIX).
    "i_ema_warmup_cutmix": dict(model_ema=True, model_ema_steps=1,
                                model_ema_decay=1 - 0.5 * 3 / 8,
                                warmup_epochs=1.0),
    # timm's Lamb as ResNet Strikes Back uses it (its defaults: eps 1e-6,
    # gradients clipped to norm 1; decay 0.01 off BatchNorm and biases).
    # A higher rate than RSB's (5e-3 per 2,048), so that 6 steps move the
    # weights well beyond the tolerance.
    "j_lamb": dict(optimizer="lamb", base_learning_rate=0.05,
                   adam_eps=1e-6, weight_decay=0.01, weight_decay_bn=False,
                   weight_decay_bias=False, lamb_max_grad_norm=1.0,
                   warmup_epochs=1.0),
}

# The parts that mix their batches, with fixed values (torchvision draws
# them): ("mixup", lambda) or ("cutmix", lambda, box centre y, x).
FIXED_MIX = {"h_ema_mixup": ("mixup", 0.65),
             "i_ema_warmup_cutmix": ("cutmix", 0.6, 20, 9)}


def recipe_config(**overrides):
    """The trainer's config (configs/base.py fields) for one part."""
    from configs.base import get_base_config  # pylint: disable=import-outside-toplevel

    config = get_base_config()
    config.model = MODEL
    for key, value in MODEL_KWARGS.items():
        config.model_kwargs[key] = value
    config.batch_size = BATCH_SIZE
    config.image_size = IMAGE_SIZE
    config.num_train_steps = NUM_STEPS
    for key, value in dict(PAPER, **overrides).items():
        config[key] = value
    return config


def _x64(dtype: str):
    return jax.enable_x64(True) if dtype == "float64" else (
        contextlib.nullcontext())


# ---------------------------------------------------------------- inputs


def initial_variables(model, seed: int = 0) -> dict:
    """Random weights, BatchNorm scales, biases and running statistics (none
    at its init value, so that each one's update is seen): float32 values
    in float64 numpy arrays.
    Nothing is compiled (shapes from ``eval_shape``)."""
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0),
        np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)))
    rng = np.random.default_rng(seed)

    def sample(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)
        elif "'var'" in name or "'scale'" in name:
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        return _float32_values(value)

    return jax.tree_util.tree_map_with_path(sample, shapes)


def _float32_values(x) -> np.ndarray:
    """float64 holding float32 numbers: the same start in either dtype."""
    return np.asarray(x, np.float32).astype(np.float64)


def make_batches(seed: int = 1) -> list[dict]:
    """``NUM_STEPS`` batches: NHWC images (float32 values, float64 arrays),
    int32 labels."""
    rng = np.random.default_rng(seed)
    return [{"image": _float32_values(rng.normal(
                 size=(BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3))),
             "label": rng.integers(0, NUM_CLASSES, BATCH_SIZE).astype(
                 np.int32)}
            for _ in range(NUM_STEPS)]


def _cast(tree, dtype: str):
    return jax.tree.map(lambda x: np.asarray(x, dtype)
                        if np.issubdtype(np.asarray(x).dtype, np.floating)
                        else np.asarray(x), tree)


class TorchNames:
    """Our variables <-> torchvision's state-dict names and layouts.

    Built once from ``resnext_jax.to_torch_state_dict`` applied to element
    numbers: each torch tensor is then a gather from our flattened leaves
    (and loading one a scatter), in numpy, with no XLA program per
    conversion.
    """

    def __init__(self, model, variables: dict):
        leaves, self.treedef = jax.tree_util.tree_flatten(variables)
        self.shapes = [np.shape(leaf) for leaf in leaves]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.cumsum([0] + sizes)
        numbers = [np.arange(start, start + size, dtype=np.float64).reshape(
            shape) for start, size, shape in zip(self.offsets, sizes,
                                                 self.shapes)]
        tagged = rx.to_torch_state_dict(
            jax.tree_util.tree_unflatten(self.treedef, numbers), model,
            num_batches_tracked=False)
        self.index = {k: np.asarray(v).astype(np.int64)
                      for k, v in tagged.items()}
        used = np.sort(np.concatenate([i.ravel()
                                       for i in self.index.values()]))
        if not np.array_equal(used, np.arange(self.offsets[-1])):
            raise AssertionError("to_torch_state_dict does not use each "
                                 "variable element exactly once")

    def to_torch(self, variables: dict) -> dict:
        flat = np.concatenate([np.ravel(np.asarray(leaf, np.float64))
                               for leaf in jax.tree.leaves(variables)])
        return {k: flat[i] for k, i in self.index.items()}

    def from_torch(self, state: dict) -> dict:
        flat = np.empty(self.offsets[-1], np.float64)
        for key, i in self.index.items():
            flat[i] = state[key]
        leaves = [flat[a:b].reshape(shape) for a, b, shape in zip(
            self.offsets[:-1], self.offsets[1:], self.shapes)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


@dataclasses.dataclass
class Snapshot:
    """A training state in torchvision's names and layouts (float64)."""
    params: dict  # name -> array
    bn_stats: dict  # "<bn>.running_mean" / ".running_var" -> array
    opt_state: dict  # "<param>.<buffer>" -> array (torch's buffer names)
    # The moving average's parameters and statistics (torch's names), and
    # its n_averaged; empty without one.
    ema: dict = dataclasses.field(default_factory=dict)
    ema_count: int = 0


@dataclasses.dataclass
class Run:
    """A run over the batches: ``states[t]`` before step t (``states[0]``
    the start, ``states[-1]`` the end), the loss and learning rate of each
    step."""
    losses: list
    lrs: list
    states: list


def _is_bn_stat(key: str) -> bool:
    return key.endswith((".running_mean", ".running_var"))


def _split(state: dict) -> tuple[dict, dict]:
    return ({k: v for k, v in state.items() if not _is_bn_stat(k)},
            {k: v for k, v in state.items() if _is_bn_stat(k)})


# ---------------------------------------------------------------- ours

# optax's state for each of torch's optimizer buffers.
BUFFERS = {"sgd": (("trace", "momentum_buffer"),),
           "adamw": (("mu", "exp_avg"), ("nu", "exp_avg_sq")),
           "lamb": (("mu", "exp_avg"), ("nu", "exp_avg_sq"))}
_OPTAX_STATES = (optax.TraceState, optax.ScaleByAdamState,
                 optax.ScaleByScheduleState)


def _is_optax_state(node) -> bool:
    return isinstance(node, _OPTAX_STATES)


def snapshot(state, names: TorchNames, optimizer: str) -> Snapshot:
    """Our ``TrainState`` in torch's names."""
    state = jax.device_get(state)
    params, bn_stats = _split(names.to_torch(
        {"params": state.params, "batch_stats": state.batch_stats}))
    opt_state = {}
    for node in jax.tree.leaves(state.opt_state, is_leaf=_is_optax_state):
        for ours_name, torch_name in BUFFERS[optimizer]:
            if _is_optax_state(node) and ours_name in node._fields:
                buffers, _ = _split(names.to_torch(
                    {"params": getattr(node, ours_name),
                     "batch_stats": state.batch_stats}))
                opt_state.update({f"{k}.{torch_name}": v
                                  for k, v in buffers.items()})
    ema, ema_count = {}, 0
    if state.ema:
        ema = names.to_torch({"params": state.ema.params,
                              "batch_stats": state.ema.batch_stats})
        ema_count = int(state.ema.count)
    return Snapshot(params=params, bn_stats=bn_stats, opt_state=opt_state,
                    ema=ema, ema_count=ema_count)


def from_snapshot(template, snap: Snapshot, step: int, names: TorchNames,
                  optimizer: str, dtype: str):
    """``template`` (a ``TrainState``) holding ``snap`` at step ``step``:
    parameters, statistics, optimizer buffers and step counts. Buffers torch
    has not created yet (before its first step) are zeros, as in optax."""
    variables = names.from_torch({**snap.params, **snap.bn_stats})
    buffers = {}
    for ours_name, torch_name in BUFFERS[optimizer]:
        named = {k: snap.opt_state.get(f"{k}.{torch_name}", np.zeros_like(v))
                 for k, v in snap.params.items()}
        buffers[ours_name] = names.from_torch(
            {**named, **snap.bn_stats})["params"]

    def replace(node):
        if not _is_optax_state(node):
            return node
        fields = {name: buffers[name] for name in node._fields
                  if name in buffers}
        if "count" in node._fields:
            fields["count"] = np.asarray(step, np.int32)
        return node._replace(**fields)

    state = template.replace(
        step=np.asarray(step, np.int32), params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=jax.tree.map(replace, template.opt_state,
                               is_leaf=_is_optax_state))
    if template.ema:
        averaged = names.from_torch(snap.ema)
        state = state.replace(ema=template.ema.replace(
            params=averaged["params"], batch_stats=averaged["batch_stats"],
            count=np.asarray(snap.ema_count, np.int32)))
    # numpy -> one fresh device buffer per leaf (the step donates them).
    return jax.device_put(_cast(state, dtype))


@dataclasses.dataclass
class Stepped:
    """Our step from each of a reference's states: the loss and learning
    rate of each step, and ``compare_states`` of each resulting state
    against the reference's next one."""
    losses: list
    lrs: list
    diffs: list


def fixed_mix(spec: tuple | None):
    """Our mixing (train/mixing.py) with the fixed values of a
    :data:`FIXED_MIX` entry, in place of ``make_mix``'s random ones."""
    if spec is None:
        return None
    if spec[0] == "mixup":
        return lambda rng, x, y: mixing.mixup(x, y, spec[1])
    _, lam, center_y, center_x = spec
    return lambda rng, x, y: mixing.cutmix(x, y, lam, center_y, center_x)


def run_ours(config, variables, batches, names: TorchNames, dtype: str,
             forced: Run | None = None,
             mix_spec: tuple | None = None) -> tuple[Run, Stepped | None]:
    """The trainer's train step, built as train/loop.py builds it, over
    ``batches``: free-running from ``variables`` (a ``Run`` whose states are
    the first and the last), and, with ``forced`` (a reference run), one step
    from each of its states, compared with its next state. ``mix_spec``: a
    :data:`FIXED_MIX` entry."""
    mix = fixed_mix(mix_spec)
    kind = config.optimizer
    with _x64(dtype), jax.default_matmul_precision("highest"):
        model = build_model(config, NUM_CLASSES)
        model = model.clone(conv_impl=resolve_conv_impl(model.conv_impl))
        if dtype == "float64":  # build_model makes float32 parameters.
            model = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
        schedule = optim.create_learning_rate_schedule(
            config, STEPS_PER_EPOCH, len(batches))
        tx = optim.create_optimizer(config, schedule)
        mesh = mesh_lib.make_mesh(jax.devices()[:1])
        init = jax.jit(functools.partial(
            steps.create_train_state, model, tx, image_size=IMAGE_SIZE,
            with_ema=config.model_ema),
            out_shardings=mesh_lib.replicated(mesh))
        state = init(jax.random.PRNGKey(0),
                     variables=_cast(variables, dtype))
        # A copy: the first step donates the buffers of ``state``.
        template = jax.tree.map(np.array, jax.device_get(state))
        train_step = mesh_lib.data_parallel(
            steps.make_train_step(
                model, tx, schedule, label_smoothing=config.label_smoothing,
                grad_accum_steps=config.grad_accum_steps, mix=mix,
                update_ema=loop.ema_updater(config, STEPS_PER_EPOCH,
                                            len(batches))),
            mesh, donate=True, has_state_output=True)

        def step(state, batch, run):
            state, metrics = train_step(state, mesh_lib.to_global_batch(
                _cast(batch, dtype), mesh))
            metrics = jax.device_get(metrics)
            if metrics["nonfinite"]:
                raise RuntimeError("a step was skipped as non-finite")
            run.losses.append(float(metrics["loss"]))
            run.lrs.append(float(metrics["learning_rate"]))
            return state

        free = Run(losses=[], lrs=[], states=[snapshot(state, names, kind)])
        for batch in batches:
            state = step(state, batch, free)
        free.states.append(snapshot(state, names, kind))
        if forced is None:
            return free, None
        stepped = Stepped(losses=[], lrs=[], diffs=[])
        for t, batch in enumerate(batches):
            state = step(from_snapshot(template, forced.states[t], t, names,
                                       kind, dtype), batch, stepped)
            stepped.diffs.append(compare_states(
                snapshot(state, names, kind), forced.states[t + 1],
                forced.states[t]))
    return free, stepped


# ---------------------------------------------------------------- PyTorch


@dataclasses.dataclass
class TorchRecipe:
    """The reference's settings, in PyTorch's terms. ``from_config`` reads
    them off a config; the last fields are the conventions that differ
    (defaults: made to match ours)."""
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    decay_bn: bool
    decay_bias: bool
    label_smoothing: float
    schedule: str
    warmup_steps: int
    decay_steps: tuple  # step-schedule drops, counted from step 0
    lr_decay_factor: float
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # timm's Lamb
    always_adapt: bool = False  # timm's Lamb: trust ratio on every tensor
    # torchvision's --model-ema, --model-ema-steps, --model-ema-decay.
    model_ema: bool = False
    model_ema_steps: int = 32
    model_ema_decay: float = 0.99998
    warmup_epochs: float = 0.0
    mix: tuple | None = None  # a FIXED_MIX entry
    bn_momentum: float = TORCH_BN_MOMENTUM
    bessel: bool = False  # True: torch's own unbiased running variance

    @classmethod
    def from_config(cls, config, **changes):
        recipe = cls(
            optimizer=config.optimizer,
            # The linear scaling rule, written out again.
            lr=config.base_learning_rate * config.batch_size
            / config.base_batch_size,
            momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            decay_bn=config.weight_decay_bn,
            decay_bias=config.weight_decay_bias,
            label_smoothing=config.label_smoothing,
            schedule=config.lr_schedule,
            warmup_steps=round(config.warmup_epochs * STEPS_PER_EPOCH),
            decay_steps=tuple(round(e * STEPS_PER_EPOCH)
                              for e in config.lr_decay_epochs),
            lr_decay_factor=config.lr_decay_factor,
            betas=(config.adam_b1, config.adam_b2), eps=config.adam_eps,
            max_grad_norm=config.lamb_max_grad_norm,
            model_ema=config.model_ema,
            model_ema_steps=config.model_ema_steps,
            model_ema_decay=config.model_ema_decay,
            warmup_epochs=config.warmup_epochs)
        return dataclasses.replace(recipe, **changes)


def torch_model():
    from torchvision.models.resnet import Bottleneck, ResNet  # pylint: disable=import-outside-toplevel

    return ResNet(Bottleneck, [1, 1, 1, 1],
                  groups=MODEL_KWARGS["cardinality"],
                  width_per_group=MODEL_KWARGS["base_width"],
                  num_classes=NUM_CLASSES)


class _BesselFactorRemover:
    """Makes torch's running variance flax's: a training-mode forward adds
    ``m * var * n / (n - 1)`` to ``(1 - m) * running_var``, ours adds
    ``m * var`` (the biased batch variance). A forward hook records
    ``m * var / (n - 1)`` per BatchNorm; ``apply`` subtracts it after the
    backward pass (which still reads the buffer)."""

    def __init__(self):
        self.pending = []

    def hook(self, module, inputs, output):
        del output
        import torch  # pylint: disable=import-outside-toplevel

        if not module.training:
            return
        x = inputs[0].detach()
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            var = x.var(dim=(0, 2, 3), unbiased=False)
            self.pending.append((module, module.momentum * var / (n - 1)))

    def apply(self):
        import torch  # pylint: disable=import-outside-toplevel

        with torch.no_grad():
            for module, excess in self.pending:
                module.running_var.sub_(excess)
        self.pending.clear()


def torch_scheduler(opt, recipe: TorchRecipe, total_steps: int):
    """Our schedule from torch.optim.lr_scheduler, stepped once per step."""
    from torch.optim import lr_scheduler  # pylint: disable=import-outside-toplevel

    warmup = recipe.warmup_steps
    if recipe.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(total_steps - warmup, 1), eta_min=0.0)
    elif recipe.schedule == "step":
        # SequentialLR restarts the count after warmup; our boundaries
        # count from step 0.
        main = lr_scheduler.MultiStepLR(
            opt, milestones=[s - warmup for s in recipe.decay_steps],
            gamma=recipe.lr_decay_factor)
    else:
        raise ValueError(recipe.schedule)
    if not warmup:
        return main
    # From exactly 0 (LinearLR refuses start_factor=0).
    ramp = lr_scheduler.LambdaLR(opt, lambda step: step / warmup)
    return lr_scheduler.SequentialLR(opt, [ramp, main], milestones=[warmup])


def run_torch(recipe: TorchRecipe, state_dict: dict, batches,
              dtype: str = "float32") -> Run:
    """PyTorch's training loop over ``batches`` from ``state_dict``, with a
    snapshot of its state before each step and at the end."""
    import torch  # pylint: disable=import-outside-toplevel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch_dtype = getattr(torch, dtype)
    net = torch_model().to(torch_dtype)
    net.load_state_dict({k: torch.from_numpy(np.array(v))
                         for k, v in state_dict.items()}, strict=True)
    bn_params, bessel = set(), _BesselFactorRemover()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = recipe.bn_momentum
            bn_params.update(id(p) for p in module.parameters())
            if not recipe.bessel:
                module.register_forward_hook(bessel.hook)
    net.train()

    decayed, excluded = [], []
    for name, p in net.named_parameters():
        if id(p) in bn_params:
            decays = recipe.decay_bn
        elif name.endswith(".bias"):
            decays = recipe.decay_bias
        else:
            decays = True
        (decayed if decays else excluded).append(p)
    groups = [{"params": decayed, "weight_decay": recipe.weight_decay},
              {"params": excluded, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas,
                                eps=recipe.eps,
                                weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "lamb":
        from timm.optim import Lamb  # pylint: disable=import-outside-toplevel

        opt = Lamb(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                   weight_decay=recipe.weight_decay,
                   max_grad_norm=recipe.max_grad_norm or None,
                   always_adapt=recipe.always_adapt)
    else:
        opt = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                              nesterov=recipe.nesterov,
                              weight_decay=recipe.weight_decay)
    scheduler = torch_scheduler(opt, recipe, len(batches))
    criterion = torch.nn.CrossEntropyLoss(
        label_smoothing=recipe.label_smoothing)
    names = {id(p): name for name, p in net.named_parameters()}
    ema = torchvision_ema(net, recipe, len(batches))

    def tensors(module) -> dict:
        return {k: v.detach().double().numpy().copy()
                for k, v in module.state_dict().items()
                if not k.endswith("num_batches_tracked")}

    def snap() -> Snapshot:
        params, bn_stats = _split(tensors(net))
        opt_state = {f"{names[id(p)]}.{key}":
                     value.detach().double().numpy().copy()
                     for p, buffers in opt.state.items()
                     for key, value in buffers.items() if key != "step"}
        return Snapshot(params=params, bn_stats=bn_stats,
                        opt_state=opt_state,
                        ema=tensors(ema.module) if ema else {},
                        ema_count=int(ema.n_averaged) if ema else 0)

    mix = torchvision_mix(recipe.mix)
    run = Run(losses=[], lrs=[], states=[snap()])
    for i, batch in enumerate(batches):
        images = torch.from_numpy(
            batch["image"].transpose(0, 3, 1, 2).copy()).to(torch_dtype)
        labels = torch.from_numpy(batch["label"].astype(np.int64))
        if mix:
            images, labels = mix(images, labels)
            labels = labels.to(torch_dtype)
        run.lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad(set_to_none=True)
        loss = criterion(net(images), labels)
        loss.backward()
        bessel.apply()
        opt.step()
        scheduler.step()
        if ema:  # torchvision's train_one_epoch, after the optimizer step.
            epoch, index = divmod(i, STEPS_PER_EPOCH)
            if index % recipe.model_ema_steps == 0:
                ema.update_parameters(net)
                if epoch < recipe.warmup_epochs:
                    ema.n_averaged.fill_(0)
        run.losses.append(loss.item())
        run.states.append(snap())
    return run


def torchvision_ema(net, recipe: TorchRecipe, total_steps: int):
    """torchvision's ``ExponentialMovingAverage`` (references/
    classification/utils.py: an ``AveragedModel`` over parameters and
    buffers) with train.py's decay adjustment, or None."""
    if not recipe.model_ema:
        return None
    from torch.optim.swa_utils import AveragedModel  # pylint: disable=import-outside-toplevel

    epochs = total_steps / STEPS_PER_EPOCH
    adjust = BATCH_SIZE * recipe.model_ema_steps / epochs
    alpha = min(1.0, (1.0 - recipe.model_ema_decay) * adjust)
    decay = 1.0 - alpha

    def ema_avg(avg_model_param, model_param, num_averaged):
        del num_averaged
        return decay * avg_model_param + (1 - decay) * model_param

    return AveragedModel(net, avg_fn=ema_avg, use_buffers=True)


def torchvision_mix(spec: tuple | None):
    """``torchvision.transforms.v2.MixUp`` or ``CutMix`` with the fixed
    values of a :data:`FIXED_MIX` entry: the Beta draw replaced by the
    lambda, ``torch.randint`` (the box centre) by the centre."""
    if spec is None:
        return None
    import torch  # pylint: disable=import-outside-toplevel
    from torchvision.transforms import v2  # pylint: disable=import-outside-toplevel

    class Fixed:
        def __init__(self, value):
            self.value = value

        def sample(self, shape=()):
            return torch.full(shape, self.value, dtype=torch.float32)

    kind, lam = spec[0], spec[1]
    transform = (v2.MixUp if kind == "mixup" else v2.CutMix)(
        alpha=1.0, num_classes=NUM_CLASSES)
    transform._dist = Fixed(lam)  # pylint: disable=protected-access

    def apply(images, labels):
        if kind == "mixup":
            return transform(images, labels)
        # CutMix draws the centre as randint(W) then randint(H).
        centre = iter([torch.tensor([spec[3]]), torch.tensor([spec[2]])])
        with unittest.mock.patch.object(torch, "randint",
                                        lambda *a, **k: next(centre)):
            return transform(images, labels)

    return apply


# ---------------------------------------------------------------- compare


def max_rel_diff(ours: dict, ref: dict) -> tuple[float, str]:
    """``max|a - b| / max|b|`` per tensor; the largest, and its name."""
    if set(ours) != set(ref):
        raise KeyError(f"different tensors: only ours "
                       f"{sorted(set(ours) - set(ref))[:5]}, only torch's "
                       f"{sorted(set(ref) - set(ours))[:5]}")
    worst, where = 0.0, ""
    for key, b in ref.items():
        a = np.asarray(ours[key], np.float64)
        b = np.asarray(b, np.float64)
        scale = np.max(np.abs(b))
        diff = float(np.max(np.abs(a - b)) / scale if scale
                     else np.max(np.abs(a - b)))
        if diff >= worst:
            worst, where = diff, key
    return worst, where


def _seq_rel_diff(ours, ref) -> float:
    return max(abs(a - b) / abs(b) if b else abs(a - b)
               for a, b in zip(ours, ref))


def _delta(after: dict, before: dict) -> dict:
    return {k: np.asarray(v, np.float64) - before[k]
            for k, v in after.items()}


def max_rel_l2_diff(ours: dict, ref: dict) -> tuple[float, str]:
    """``||a - b|| / ||b||`` per tensor; the largest, and its name."""
    worst, where = 0.0, ""
    for key, b in ref.items():
        a = np.asarray(ours[key], np.float64)
        b = np.asarray(b, np.float64)
        scale = np.linalg.norm(b)
        diff = float(np.linalg.norm(a - b) / scale if scale
                     else np.linalg.norm(a - b))
        if diff >= worst:
            worst, where = diff, key
    return worst, where


def compare_states(ours: Snapshot, ref: Snapshot, before: Snapshot) -> dict:
    """``(difference, worst tensor)`` of one state, and of its parameter
    update from ``before`` (also in the L2 norm: Adam's update amplifies
    the rounding of elements whose gradient is near 0, one element at a
    time, which the largest element shows and the norm does not)."""
    ours_update = _delta(ours.params, before.params)
    ref_update = _delta(ref.params, before.params)
    diffs = dict(
        params=max_rel_diff(ours.params, ref.params),
        update=max_rel_diff(ours_update, ref_update),
        update_l2=max_rel_l2_diff(ours_update, ref_update),
        bn_stats=max_rel_diff(ours.bn_stats, ref.bn_stats),
        opt_state=max_rel_diff(ours.opt_state, ref.opt_state),
        ema=max_rel_diff(ours.ema, ref.ema) if ref.ema else (0.0, ""))
    if ours.ema_count != ref.ema_count:
        diffs["ema"] = (float("inf"), f"n_averaged {ours.ema_count} != "
                        f"{ref.ema_count}")
    return diffs


def compare(stepped: Stepped | None, free: Run, ref: Run) -> dict:
    """The row of one part.

    Step by step (``stepped``: our step from each of torch's states): the
    largest difference over the steps of the loss, the learning rate, the
    parameters, the parameter update, the BatchNorm statistics and the
    optimizer state after the step. Free-running (``free``: our own
    trajectory): the losses, the final state.
    """
    row = dict(steps=len(ref.losses), worst={}, per_step=[])
    if stepped is None:  # a control: free-running only
        row.update({key: float("nan") for key, _ in COLUMNS})
    else:
        row.update(loss=_seq_rel_diff(stepped.losses, ref.losses),
                   lr=_seq_rel_diff(stepped.lrs, ref.lrs))
    for t, diffs in enumerate(stepped.diffs if stepped else ()):
        row["per_step"].append({k: v for k, (v, _) in diffs.items()})
        for key, (value, where) in diffs.items():
            if value >= row.get(key, -1.0):
                row[key] = value
                row["worst"][key] = f"step {t}: {where}"
    final = compare_states(free.states[-1], ref.states[-1], ref.states[0])
    row["free_running"] = dict(
        loss=_seq_rel_diff(free.losses, ref.losses),
        **{key: value for key, (value, _) in final.items()})
    # How far the steps moved the parameters: the differences above are
    # small against it, not hidden by a no-op.
    row["params_moved"] = max_rel_diff(ref.states[-1].params,
                                       ref.states[0].params)[0]
    row["losses_torch"] = ref.losses
    row["lrs_torch"] = ref.lrs
    return row


# ---------------------------------------------------------------- parts


@dataclasses.dataclass
class Setup:
    """The shared start: our variables, torch's state dict, the batches,
    the name mapping."""
    variables: dict
    state_dict: dict
    batches: list
    names: TorchNames


def setup(seed: int = 0) -> Setup:
    config = recipe_config()
    model = build_model(config, NUM_CLASSES)
    variables = initial_variables(model, seed)
    state_dict = rx.to_torch_state_dict(variables, model)
    return Setup(variables, state_dict, make_batches(seed + 1),
                 TorchNames(model, variables))


def run_part(name: str, shared: Setup, dtype: str = "float32", *,
             torch_changes: dict | None = None,
             ours: tuple | None = None) -> tuple[dict, tuple]:
    """One part in one dtype: PyTorch's run, then ours (free-running and
    step by step from torch's states). Returns the row and our runs.

    ``torch_changes`` alter the reference (``TorchRecipe`` fields): the
    controls, showing that a real difference is caught; only the
    free-running columns are compared then. ``ours`` (our runs of that
    part, the second value returned) skips our compile.
    """
    config = recipe_config(**PARTS[name])
    start = time.perf_counter()
    recipe = TorchRecipe.from_config(
        config, **{"mix": FIXED_MIX.get(name), **(torch_changes or {})})
    ref = run_torch(recipe, shared.state_dict, shared.batches, dtype)
    torch_s = time.perf_counter() - start
    start = time.perf_counter()
    if ours is None:
        ours = run_ours(config, shared.variables, shared.batches,
                        shared.names, dtype, forced=ref,
                        mix_spec=FIXED_MIX.get(name))
    free, stepped = ours
    if torch_changes:  # our step-by-step runs followed the unchanged one
        stepped = None
    row = compare(stepped, free, ref)
    row.update(part=name, dtype=dtype, torch_s=torch_s,
               ours_s=time.perf_counter() - start,
               torch_changes=torch_changes or {})
    return row, ours


# Controls: PyTorch's reference changed in one way (``TorchRecipe`` fields),
# against one of our parts, free-running. Each must differ by far more than
# the tolerance.
CONTROLS = {
    # Copying torch's 0.1 into bn_momentum (ours would weigh the new batch
    # 0.9): the same statistics as torch with momentum 0.9.
    "bn_momentum_not_converted": ("a_paper", dict(bn_momentum=0.9)),
    "nesterov_off_in_torch": ("a_paper", dict(nesterov=False)),
    "bn_bias_decay_excluded_in_torch": ("a_paper", dict(decay_bn=False,
                                                        decay_bias=False)),
    "torch_unbiased_running_var": ("a_paper", dict(bessel=True)),
    # torch.optim.AdamW's own convention: every parameter decayed.
    "adamw_decays_bn_bias_in_torch": ("g_adamw", dict(decay_bn=True,
                                                      decay_bias=True)),
    # The average not reset during warmup (torchvision's rule dropped).
    "ema_warmup_reset_missing_in_torch": ("i_ema_warmup_cutmix",
                                          dict(warmup_epochs=0.0)),
    # Mixup's weights the other way round (lambda on the rolled batch).
    "mixup_weights_swapped_in_torch": ("h_ema_mixup",
                                       dict(mix=("mixup", 0.35))),
    # timm's Lamb with the trust ratio on BatchNorm and biases too.
    "lamb_adapts_every_tensor_in_torch": ("j_lamb",
                                          dict(always_adapt=True)),
}


def system_info() -> dict:
    """bench_inference's machine facts, with optax's and torch's versions."""
    import torch  # pylint: disable=import-outside-toplevel
    from bench_inference import system_info as machine  # pylint: disable=import-outside-toplevel

    return dict(machine(), optax=optax.__version__, torch=torch.__version__)


COLUMNS = (("loss", "loss"), ("lr", "lr"), ("params", "params"),
           ("update", "update"), ("update_l2", "upd (L2)"),
           ("bn_stats", "BN stats"), ("opt_state", "opt state"),
           ("ema", "EMA"))
FREE_COLUMNS = (("loss", "loss"), ("params", "params"),
                ("update_l2", "upd (L2)"), ("bn_stats", "BN stats"),
                ("opt_state", "opt state"), ("ema", "EMA"))


def format_table(rows: list[dict]) -> str:
    head = (f"{'part':<24} {'dtype':<7} {'steps':>5} " + " ".join(
        f"{label:>9}" for _, label in COLUMNS))
    lines = ["step by step: max relative difference over the steps, our "
             "step vs PyTorch's from the same state", head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['part']:<24} {row['dtype']:<7} "
                     f"{row['steps']:>5} " + " ".join(
                         f"{row[key]:>9.1e}" for key, _ in COLUMNS))
    return "\n".join(lines)


def format_free_table(rows: list[dict], title: str) -> str:
    head = (f"{'part':<36} {'dtype':<7} " + " ".join(
        f"{label:>9}" for _, label in FREE_COLUMNS) + f" {'moved':>9}")
    lines = [title, head, "-" * len(head)]
    for row in rows:
        free = row["free_running"]
        lines.append(f"{row['part']:<36} {row['dtype']:<7} " + " ".join(
            f"{free[key]:>9.1e}" for key, _ in FREE_COLUMNS)
            + f" {row['params_moved']:>9.1e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help="comma-separated: float32, float64")
    parser.add_argument("--no-controls", action="store_true",
                        help="skip the controls (PyTorch's reference "
                             "changed on purpose)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    names = [p for p in args.parts.split(",") if p]
    dtypes = [d for d in args.dtypes.split(",") if d]
    if [p for p in names if p not in PARTS]:
        parser.error(f"--parts: choose from {list(PARTS)}")
    if [d for d in dtypes if d not in DTYPES]:
        parser.error(f"--dtypes: choose from {list(DTYPES)}")

    start = time.perf_counter()
    shared = setup()
    rows, ours = [], {}
    for dtype in dtypes:
        for name in names:
            row, ours[name, dtype] = run_part(name, shared, dtype)
            rows.append(row)
    print(format_table(rows))
    print()
    print(format_free_table(
        rows, f"free-running: each side its own {NUM_STEPS} steps; losses "
        "and final state ('moved': how far the parameters went)"))
    controls = []
    if not args.no_controls:
        for dtype in dtypes:
            for control, (name, changes) in CONTROLS.items():
                row, ours[name, dtype] = run_part(
                    name, shared, dtype, torch_changes=changes,
                    ours=ours.get((name, dtype)))
                row["part"] = f"{control} ({name[0]})"
                controls.append(row)
        print()
        print(format_free_table(
            controls, "controls: PyTorch's reference changed on purpose, "
            "vs one of our parts, free-running (must differ)"))
    elapsed = time.perf_counter() - start
    print(f"\n{len(rows)} runs, {len(controls)} controls, {elapsed:.1f} s")
    if args.json:
        report = dict(system=system_info(), model=MODEL,
                      model_kwargs=MODEL_KWARGS, num_classes=NUM_CLASSES,
                      batch_size=BATCH_SIZE, image_size=IMAGE_SIZE,
                      steps=NUM_STEPS, steps_per_epoch=STEPS_PER_EPOCH,
                      paper=PAPER, parts=PARTS, results=rows,
                      controls=controls, seconds=elapsed)
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1,
                                                      default=list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
