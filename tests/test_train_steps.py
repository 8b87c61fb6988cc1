"""The pure train/eval steps and their data-parallel form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import mesh as mesh_lib, optim, steps
from train.model_factory import build_model
from train_helpers import run_python, tiny_config

IMAGE = 8


def _setup(config, num_classes=10):
    model = build_model(config, num_classes)
    schedule = optim.create_learning_rate_schedule(config, 10, 100)
    tx = optim.create_optimizer(config, schedule)
    mesh = mesh_lib.make_mesh()
    state = jax.jit(lambda r: steps.create_train_state(model, tx, r, IMAGE),
                    out_shardings=mesh_lib.replicated(mesh))(
        jax.random.PRNGKey(0))
    return model, tx, schedule, mesh, state


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, IMAGE, IMAGE, 3)).astype(np.float32),
            "label": rng.integers(0, 10, n).astype(np.int32)}


@pytest.fixture(scope="module")
def float32_parts():
    """Model, compiled init, train and eval steps, shared by the tests."""
    config = tiny_config()
    model = build_model(config, 10)
    schedule = optim.create_learning_rate_schedule(config, 10, 100)
    tx = optim.create_optimizer(config, schedule)
    mesh = mesh_lib.make_mesh()
    init = jax.jit(lambda r: steps.create_train_state(model, tx, r, IMAGE),
                   out_shardings=mesh_lib.replicated(mesh))
    train_step = mesh_lib.data_parallel(
        steps.make_train_step(model, tx, schedule), mesh, donate=True,
        has_state_output=True)
    eval_step = mesh_lib.data_parallel(steps.make_eval_step(model), mesh,
                                    donate=False, has_state_output=False)
    return model, lambda: init(jax.random.PRNGKey(0)), train_step, eval_step


def test_train_step_lowers_loss_and_changes_params(float32_parts):
    _, init, step, _ = float32_parts
    state = init()
    before = jax.device_get(state.params)
    batch = _batch()
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    after = jax.device_get(state.params)
    assert int(state.step) == 4
    assert losses[-1] < losses[0], losses
    # Zero-initialized last BN scales make some changes tiny: compare exactly.
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before,
                           after)
    unchanged = [jax.tree_util.keystr(p) for p, c in
                 jax.tree_util.tree_flatten_with_path(changed)[0] if not c]
    assert not unchanged
    assert metrics["learning_rate"] > 0


def test_eval_step_counts_only_masked_examples(float32_parts):
    model, init, _, eval_step = float32_parts
    state = init()
    batch = _batch(8)
    full = eval_step(state, dict(batch, mask=np.ones(8, np.float32)))
    half_mask = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    half = eval_step(state, dict(batch, mask=half_mask))
    assert float(full["count"]) == 8 and float(half["count"]) == 4
    logits = jax.jit(model.apply)({"params": state.params,
                                   "batch_stats": state.batch_stats},
                                  batch["image"][:4])
    loss = steps.cross_entropy(logits, batch["label"][:4])
    np.testing.assert_allclose(float(half["loss_sum"]), float(loss.sum()),
                               rtol=1e-5)


def test_label_smoothing_by_value():
    logits = jnp.array([[2.0, 0.0, 0.0, 0.0]])
    labels = jnp.array([0])
    log_p = jax.nn.log_softmax(logits)[0]
    expected = -(0.925 * log_p[0] + 0.025 * log_p[1:].sum())
    np.testing.assert_allclose(steps.cross_entropy(logits, labels, 0.1)[0],
                               expected, rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_stats():
    config = tiny_config(compute_dtype="bfloat16", grad_accum_steps=2)
    model, tx, schedule, mesh, state = _setup(config)
    step = mesh_lib.data_parallel(
        steps.make_train_step(model, tx, schedule, grad_accum_steps=2,
                              label_smoothing=0.1),
        mesh, donate=True, has_state_output=True)
    state, metrics = step(state, _batch())
    dtypes = {x.dtype for x in jax.tree.leaves(
        (state.params, state.batch_stats))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == jnp.float32
    assert np.isfinite(float(metrics["loss"]))


# One subprocess with 8 CPU devices: the same training run (through the real
# loop) and the compiled step's HLO.
_EIGHT_DEVICES = r"""
import json, sys, tempfile
import jax, numpy as np
from train import loop, mesh as mesh_lib, optim, steps
from train.checkpoint import restore_for_inference
from train.model_factory import build_model
from train_helpers import tiny_config
assert jax.device_count() == 8
workdir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
config = tiny_config(num_train_steps=3)
loop.train_and_evaluate(config, workdir)
_, variables, _ = restore_for_inference(workdir, "latest")
np.savez(workdir + "/params.npz", **{
    jax.tree_util.keystr(p): np.asarray(v) for p, v in
    jax.tree_util.tree_flatten_with_path(variables)[0]})

# The XLA lowering of grouped convs is what the SPMD partitioner mishandles.
config.model_kwargs.conv_impl = "xla"
model = build_model(config, 10)
schedule = optim.create_learning_rate_schedule(config, 10, 100)
tx = optim.create_optimizer(config, schedule)
mesh = mesh_lib.make_mesh()
state = jax.eval_shape(lambda: steps.create_train_state(
    model, tx, jax.random.PRNGKey(0), 8))
batch = {"image": jax.ShapeDtypeStruct((16, 8, 8, 3), np.float32),
         "label": jax.ShapeDtypeStruct((16,), np.int32)}
step = mesh_lib.data_parallel(steps.make_train_step(model, tx, schedule), mesh,
                           donate=True, has_state_output=True)
hlo = step.lower(state, batch).compile().as_text()
print(json.dumps({"workdir": workdir,
                  "all_gather": hlo.count("all-gather"),
                  "all_reduce": hlo.count("all-reduce"),
                  "convolution": hlo.count("convolution(")}))
"""


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    import json
    workdir = tmp_path_factory.mktemp("eight")
    out = run_python(_EIGHT_DEVICES.replace(
        "sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()",
        repr(str(workdir))), devices=8)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_data_parallel_step_has_no_all_gather(eight_devices):
    assert eight_devices["convolution"] > 0
    assert eight_devices["all_reduce"] > 0  # gradients and BN statistics.
    assert eight_devices["all_gather"] == 0


@pytest.mark.slow
def test_one_device_equals_eight_devices(eight_devices, tmp_path):
    from train import loop
    from train.checkpoint import restore_for_inference

    assert jax.device_count() == 1
    loop.train_and_evaluate(tiny_config(num_train_steps=3), tmp_path)
    _, variables, _ = restore_for_inference(tmp_path, "latest")
    one = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
           jax.tree_util.tree_flatten_with_path(variables)[0]}
    eight = np.load(f"{eight_devices['workdir']}/params.npz")
    assert set(one) == set(eight.files)
    for key, value in one.items():
        np.testing.assert_allclose(value, eight[key], rtol=2e-4, atol=2e-5,
                                   err_msg=key)


def test_head_only_step_computes_no_backbone_backward():
    # Linear probing: the classifier's gradient alone, through an eval-mode
    # backbone. XLA's lowering makes every convolution one op to count.
    config = tiny_config(trainable="head")
    config.model_kwargs.conv_impl = "xla"
    model, tx, schedule, mesh, state = _setup(config)

    def head_only_step(head_only):
        return mesh_lib.data_parallel(
            steps.make_train_step(model, tx, schedule, head_only=head_only),
            mesh, donate=False, has_state_output=True)

    def count_convolutions(head_only):
        text = head_only_step(head_only).lower(state, _batch()).as_text()
        return text.count("stablehlo.convolution")

    forward_only = jax.jit(lambda v, x: model.apply(v, x)).lower(
        {"params": state.params, "batch_stats": state.batch_stats},
        _batch()["image"]).as_text().count("stablehlo.convolution")
    assert count_convolutions(head_only=True) == forward_only
    assert count_convolutions(head_only=False) > 2 * forward_only

    new_state, _ = head_only_step(True)(state, _batch())
    # The classifier moves by its gradient through the eval-mode model;
    # nothing else changes.
    def head_loss(fc):
        logits = model.apply({"params": dict(state.params, fc=fc),
                              "batch_stats": state.batch_stats},
                             _batch()["image"])
        return steps.cross_entropy(logits, _batch()["label"]).mean()
    grads = jax.tree.map(jnp.zeros_like, state.params)
    grads["fc"] = jax.grad(head_loss)(state.params["fc"])
    updates, _ = tx.update(grads, tx.init(state.params), state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-7),
                 new_state.params["fc"],
                 optax.apply_updates(state.params, updates)["fc"])
    for name in state.params:
        if name != "fc":
            jax.tree.map(np.testing.assert_array_equal, new_state.params[name],
                         state.params[name])
    jax.tree.map(np.testing.assert_array_equal, new_state.batch_stats,
                 state.batch_stats)
