"""Shared test helpers."""

# Load torch's side before any test loads TensorFlow: the CUDA builds of
# torch bring triton, whose LLVM crashes the process (segmentation fault)
# when it is loaded after TensorFlow's, the other order being fine. The
# training tests use TensorFlow, the parity tests torchvision and timm.
try:
    import torchvision.models  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Without the [torch] extra the parity tests skip.
    pass

import atexit
import os
import shutil
import tempfile

# One persistent compilation cache for the whole test session, private to
# it: the user's cache never sees the tests' programs, and the many runs of
# the same tiny training program (in this process and in the subprocesses
# the fault, resume and benchmark tests start, which inherit the variable)
# compile it once. Set before jax is imported, which reads it then.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="resnext_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The tests check what programs compute, not how fast they run: XLA:CPU's
# LLVM backend at optimization level 0 compiles their many small programs
# about 3x faster. The HLO, and so the function computed, is the same.
# Subprocesses inherit the flag.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
# The commands turn on the user's cache unless jax already has one (above);
# "off" keeps them from creating ~/.cache/resnext_jax if it is unset.
os.environ.setdefault("RESNEXT_JAX_CACHE_DIR", "off")

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
import pytest

import resnext_jax as rx


def pytest_collection_modifyitems(config, items):
    """The tests marked slow run first: with several workers (``-n 2``), a
    long test left for the end would keep one worker busy alone. (A module
    fixture that slow and quick tests share is session-scoped, so this
    order does not build it twice.)"""
    del config
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def tiny_model(**overrides):
    """A ResNeXt with the ImageNet stem, one block per stage: cheap to run."""
    config = dict(stage_sizes=(1, 1, 1, 1), cardinality=4, base_width=4,
                  num_classes=7)
    config.update(overrides)
    return rx.ResNeXt(**config)


def small_cifar_model(**overrides):
    """A ResNeXt with the CIFAR stem, one block per stage, 4 groups."""
    config = dict(stage_sizes=(1, 1, 1), stem="cifar", cardinality=4,
                  base_width=2, num_classes=7)
    config.update(overrides)
    return rx.ResNeXt(**config)


def random_variables(model, image_size=16, seed=0):
    """Random variables from a shape-only init: nothing is compiled."""
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3))))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return randomize(zeros, seed)


def randomize(variables, seed=0):
    """Random values for every leaf, BN statistics included (variances > 0).

    Zero-initialized BN scales would otherwise hide whole branches from an
    equivalence test. Uses numpy so that no XLA program is compiled.
    """
    rng = np.random.default_rng(seed)

    def sample(path, leaf):
        path = jax.tree_util.keystr(path)
        shape, dtype = leaf.shape, leaf.dtype
        if "'var'" in path or "'scale'" in path:
            value = rng.uniform(0.5, 1.5, shape)
        elif "kernel" in path:
            value = rng.normal(size=shape) * np.sqrt(
                2.0 / np.prod(shape[:-1]))
        else:
            value = 0.1 * rng.normal(size=shape)
        return jnp.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(sample, variables)


@pytest.fixture
def images():
    return jax.random.normal(jax.random.PRNGKey(42), (2, 32, 32, 3),
                             jnp.float32)


def randomize_batchnorm(net, torch, seed, image_size=224):
    """Random BN affine parameters and running statistics, none a no-op.

    Statistics drawn from nothing would let activations grow block by block
    to logits in the thousands, where float32 rounding alone exceeds the
    tolerance. So the statistics are measured on a random batch first (as
    training would) and then perturbed at random.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [(name, m) for name, m in net.named_modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for name, norm in norms:
            n = norm.num_features
            # Residual branches end in small scales, as in trained networks;
            # otherwise 33 blocks of ResNeXt-101 add up to logits over 100.
            low, high = (0.1, 0.5) if name.endswith("bn3") else (0.5, 1.5)
            norm.weight.copy_(low + (high - low) * torch.rand(
                n, generator=generator))
            norm.bias.copy_(0.1 * torch.randn(n, generator=generator))
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average: stats of this batch
        net.train()
        net(torch.randn(2, 3, image_size, image_size,
                        generator=generator))
        for _, norm in norms:
            n = norm.num_features
            norm.running_mean.add_(norm.running_var.sqrt() * 0.2 * torch.randn(
                n, generator=generator))
            norm.running_var.mul_(0.7 + 0.6 * torch.rand(n,
                                                          generator=generator))
            norm.momentum = 0.1
            # Not carried over (we have no step counter); written back as 0.
            norm.num_batches_tracked.zero_()
    return net.eval()


def block_torch_import(monkeypatch):
    """Makes ``import torch`` fail for the rest of the test, as where torch
    is not installed (after the test itself has used it to write files)."""
    import builtins
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
