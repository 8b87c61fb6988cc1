"""More faults: bad numbers in the config, late SIGTERM, restarts of a
workdir that lost its checkpoints, resumes with another config, two runs on
one workdir, a full disk, bad command lines, torn metric files and dead
image-folder classes."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from train import loop
from train.config_validation import validate_config
from train.nonfinite import NonFiniteError
from train_helpers import REPO, tiny_config


def _checkpoint_steps(workdir, kind="checkpoints"):
    return sorted(int(p.name) for p in (workdir / kind).iterdir()
                  if p.name.isdigit())


def _saved_state(workdir, step, kind="checkpoints"):
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as reader:
        return reader.restore((workdir / kind / str(step) /
                               "state").absolute())


# --- Non-finite hyperparameters. ---

@pytest.mark.parametrize("field", ["base_learning_rate", "momentum",
                                   "weight_decay", "warmup_epochs"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_number_is_refused_naming_the_field(field, value):
    config = tiny_config()
    config[field] = value
    with pytest.raises(ValueError,
                       match=rf"config\.{field} \(={value}\) must be a "
                             "finite number"):
        validate_config(config)


def test_nonfinite_state_is_never_applied_or_saved(tmp_path, monkeypatch):
    # Past validation (as a NaN from elsewhere would be): the gradients of
    # step 1 are finite, its update is not.
    monkeypatch.setattr(loop, "validate_config", lambda *a, **k: None)
    config = tiny_config(num_train_steps=8, momentum=math.nan,
                         checkpoint_every_steps=2,
                         max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteError, match=r"3 consecutive .*step 3\)"):
        loop.train_and_evaluate(config, tmp_path)
    assert _checkpoint_steps(tmp_path) == [2]
    state = _saved_state(tmp_path, 2)
    for part in ("params", "batch_stats", "opt_state"):
        for leaf in jax.tree.leaves(state[part]):
            assert np.isfinite(leaf).all(), part
