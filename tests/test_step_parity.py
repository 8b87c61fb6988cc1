"""Our train step computes PyTorch's update (benchmarks/step_parity.py).

Every part of the recipe (SGD + Nesterov with decay on all parameters, the
BatchNorm/bias exclusion, label smoothing, the step and warmup+cosine
schedules, plain momentum, AdamW, torchvision's EMA with Mixup or CutMix at
fixed values, timm's Lamb), built through train/optim.py, train/steps.py,
train/ema.py and train/mixing.py from a config, against torch.optim /
torch.optim.lr_scheduler / nn.CrossEntropyLoss / torch.optim.swa_utils.
AveragedModel / torchvision.transforms.v2 / timm.optim.Lamb on
torchvision's ResNet with the same weights and batches.

What is asserted, and why (docs/step_parity.md):

- float64, both sides: everything, step by step (our step from each of
  PyTorch's states) and free-running (each side its own trajectory; the
  final parameters, BatchNorm statistics and optimizer buffers). What is
  left is our float32 loss (``cross_entropy`` casts the logits) and
  learning rate: about 1e-7.
- float32 (``default_matmul_precision("highest")``): the forward quantities
  step by step (loss, learning rate, BatchNorm statistics). The gradient's
  are not asserted in float32: a ReLU input within rounding of zero falls on
  the other side of the kink in one framework now and then, which moves a
  row of a last-stage gradient by percents (measured: PyTorch's float32
  gradient then differs from its own float64 one as much as from ours).
- Controls: a reference with one convention changed (BatchNorm momentum not
  converted, Nesterov off, decay excluded, torch's unbiased running
  variance, AdamW decaying every parameter, no EMA reset during warmup,
  Mixup's weights swapped, Lamb adapting every tensor) differs by far more
  than the tolerance.
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import optim
from train.config_validation import validate_config
from train_helpers import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# benchmarks/ is not a package: the script is loaded from its path (it
# imports torch only in the functions that run the reference).
_SPEC = importlib.util.spec_from_file_location(
    "step_parity", ROOT / "benchmarks" / "step_parity.py")
step_parity = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("step_parity", step_parity)  # for its dataclasses
_SPEC.loader.exec_module(step_parity)

# Relative to each tensor's largest magnitude (benchmarks/step_parity.py).
LOSS_TOL = 1e-5
PARAM_TOL = 2e-5
STATE_TOL = 2e-5  # update, BatchNorm statistics, optimizer buffers
LR_TOL = 1e-6
TOLERANCES = dict(loss=LOSS_TOL, lr=LR_TOL, params=PARAM_TOL,
                  update=STATE_TOL, update_l2=STATE_TOL, bn_stats=STATE_TOL,
                  opt_state=STATE_TOL, ema=STATE_TOL)
# Parts whose fields another test also exercises (each part compiles a
# train step, so the suite runs the other one only; the benchmark runs
# all): the BatchNorm/bias exclusion through the same decay mask in j
# (SGD's add_decayed_weights), label smoothing in h, warmup + cosine in i,
# plain momentum in h, and d's step schedule (its only field) against
# PyTorch's schedulers by value, without a train step.
COVERED = {"b_no_decay_bn_bias": "j_lamb",
           "c_label_smoothing": "h_ema_mixup",
           "d_step_schedule": "test_schedule_matches_pytorch_s_by_value",
           "e_warmup_cosine": "i_ema_warmup_cutmix",
           "f_momentum_no_nesterov": "h_ema_mixup"}
TESTED_PARTS = [p for p in step_parity.PARTS if p not in COVERED]


@pytest.fixture(scope="module")
def shared():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    return step_parity.setup()


@pytest.fixture(scope="module")
def float64_part(shared):
    """``float64_part(name)``: that part's row and our runs in float64, run
    once per module (the controls reuse part a's)."""
    done = {}

    def get(name):
        if name not in done:
            done[name] = step_parity.run_part(name, shared, "float64")
        return done[name]

    return get


def _too_far(values: dict, tolerances: dict) -> dict:
    return {k: values[k] for k, tol in tolerances.items()
            if not values[k] <= tol}


# Each part compiles a train step: six in float64, one in float32.
@pytest.mark.slow
@pytest.mark.parametrize("part", TESTED_PARTS)
def test_part_matches_pytorch_in_float64(part, float64_part):
    row, _ = float64_part(part)
    assert row["steps"] >= 5
    tolerances = dict(TOLERANCES)
    if part in ("g_adamw", "j_lamb"):
        # Adam divides each first moment by the root of the second (plus
        # eps): an element whose moments are near 0 (the first 1e-7 of its
        # tensor's largest) still gets an update of a few lr * m / eps, from
        # a moment that agrees only to its tensor's tolerance. The update's
        # norm, both moments and the parameters keep the strict tolerance.
        tolerances["update"] = 1e-2
    assert not _too_far(row, tolerances), row["worst"]
    free = row["free_running"]
    assert not _too_far(free, {k: tolerances[k] for k in free}), free
    # The steps moved the parameters well beyond the tolerance (AdamW at
    # 3e-5 per step the least: 8e-4 in 6 steps; the update columns compare
    # the steps themselves).
    assert row["params_moved"] > 10 * PARAM_TOL


@pytest.mark.slow
def test_float32_forward_matches_pytorch_step_by_step(shared):
    row, _ = step_parity.run_part("a_paper", shared, "float32")
    forward = {k: TOLERANCES[k] for k in ("loss", "lr", "bn_stats")}
    assert not _too_far(row, forward), row["worst"]


def _schedules(part):
    """(ours, PyTorch's) learning rates of ``part``'s run, step by step,
    from the schedules alone: ours from the trainer's config, PyTorch's from
    the reference's schedulers stepped once per step."""
    torch = pytest.importorskip("torch")
    config = step_parity.recipe_config(**step_parity.PARTS[part])
    steps = step_parity.NUM_STEPS
    schedule = optim.create_learning_rate_schedule(
        config, step_parity.STEPS_PER_EPOCH, steps)
    recipe = step_parity.TorchRecipe.from_config(config)
    weight = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([weight], lr=recipe.lr)
    scheduler = step_parity.torch_scheduler(opt, recipe, steps)
    theirs = []
    for _ in range(steps):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return [float(schedule(step)) for step in range(steps)], theirs


@pytest.mark.parametrize("part", ["d_step_schedule", "e_warmup_cosine"])
def test_schedule_matches_pytorch_s_by_value(part):
    ours, theirs = _schedules(part)
    np.testing.assert_allclose(ours, theirs, rtol=LR_TOL, atol=1e-12)


@pytest.mark.slow
def test_schedules_have_the_intended_values(float64_part):
    """PyTorch's learning rates, which ours match above, are the intended
    ones: warmup from 0, drops at their steps counted from step 0, the
    cosine towards 0 after warmup."""
    peak = 0.1 * 8 / 256  # 0.1 per 256 images, batch 8
    step_lrs = _schedules("d_step_schedule")[1]
    np.testing.assert_allclose(
        step_lrs, [0, peak, peak / 10, peak / 10, peak / 100, peak / 100],
        rtol=1e-12, atol=1e-15)
    # Part i's schedule is part e's: 2 warmup steps, then cosine.
    cosine_lrs = float64_part("i_ema_warmup_cutmix")[0]["lrs_torch"]
    cosine = [peak * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)]
    np.testing.assert_allclose(cosine_lrs, [0, peak / 2] + cosine,
                               rtol=1e-12, atol=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize("control", list(step_parity.CONTROLS))
def test_a_changed_reference_is_caught(control, shared, float64_part):
    """The comparison can fail: PyTorch's reference with one convention
    changed differs from our part by far more than the tolerance."""
    part, changes = step_parity.CONTROLS[control]
    row, _ = step_parity.run_part(part, shared, "float64",
                                  torch_changes=changes,
                                  ours=float64_part(part)[1])
    free = row["free_running"]
    excess = {k: free[k] / TOLERANCES[k] for k in
              ("loss", "params", "update_l2", "bn_stats", "opt_state",
               "ema")}
    assert max(excess.values()) > 100, excess


# The optimizer choice (config.optimizer) itself; nothing here compiles a
# train step.

def _params():
    return {"bn1": {"scale": jnp.ones(3), "bias": jnp.ones(3)},
            "fc": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.ones(2)}}


def test_sgd_is_the_default_and_builds_the_same_optimizer():
    """optimizer="sgd" builds the chain train/optim.py always built: the
    same state structure (so checkpoints restore) and the same updates."""
    config = tiny_config(weight_decay=0.01)
    assert config.optimizer == "sgd"
    schedule = optax.constant_schedule(0.1)
    tx = optim.create_optimizer(config, schedule)
    mask = lambda p: optim.weight_decay_mask(  # noqa: E731
        p, config.weight_decay_bn, config.weight_decay_bias)
    before = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=mask),
        optax.sgd(schedule, momentum=config.momentum,
                  nesterov=config.nesterov))
    params = _params()
    grads = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)
    state, state_before = tx.init(params), before.init(params)
    assert (jax.tree.structure(state)
            == jax.tree.structure(state_before))
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        expected, state_before = before.update(grads, state_before, params)
        jax.tree.map(np.testing.assert_array_equal, updates, expected)


def test_adamw_decays_only_where_the_mask_says():
    config = tiny_config(optimizer="adamw", weight_decay=0.5)
    tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
    params = _params()
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Zero gradients: Adam's part is 0, the decay -lr * wd * param.
    np.testing.assert_allclose(updates["fc"]["kernel"], -0.1 * 0.5 * 0.5)
    np.testing.assert_allclose(updates["fc"]["bias"], 0.0)
    np.testing.assert_allclose(updates["bn1"]["scale"], 0.0)


def test_lamb_adapts_only_the_decayed_tensors():
    """timm's rule: the trust ratio scales each decayed tensor's update to
    lr x its norm; BatchNorm and biases (not decayed) take Adam's step."""
    config = tiny_config(optimizer="lamb", weight_decay=0.5, adam_eps=1e-6)
    tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
    params = _params()
    grads = jax.tree.map(lambda x: 10 * jnp.ones_like(x), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(jnp.linalg.norm(updates["fc"]["kernel"]),
                               0.1 * jnp.linalg.norm(params["fc"]["kernel"]),
                               rtol=1e-6)
    # Adam's first step is the gradient's sign (up to eps / |g|).
    np.testing.assert_allclose(updates["bn1"]["scale"], -0.1, rtol=1e-4)
    np.testing.assert_allclose(updates["fc"]["bias"], -0.1, rtol=1e-4)


def test_adamw_defaults_are_pytorchs():
    config = tiny_config()
    assert (config.adam_b1, config.adam_b2, config.adam_eps) == (
        0.9, 0.999, 1e-8)  # torch.optim.AdamW's betas and eps


@pytest.mark.parametrize("field,value", [
    ("optimizer", "adam"), ("adam_b1", 1.0), ("adam_b2", -0.1),
    ("adam_eps", 0.0)])
def test_bad_optimizer_field_is_refused(field, value):
    config = tiny_config()
    config[field] = value
    with pytest.raises(ValueError, match=rf"config\.{field} \("):
        validate_config(config)


def test_unknown_optimizer_is_refused_where_it_is_built():
    with pytest.raises(ValueError, match=r"config\.optimizer"):
        optim.create_optimizer(tiny_config(optimizer="adagrad"),
                               optax.constant_schedule(0.1))
