"""The XLA_FLAGS workaround for two replicates hanging on the CPU (ram_jax.xla_workarounds)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import jax.numpy as jnp
import pytest

from ram_jax import parallel, xla_workarounds
from ram_jax.config import default_config
from ram_jax.train import train_and_evaluate

FLAG = xla_workarounds.SCHEDULER_FLAG


@pytest.fixture
def xla_not_started(monkeypatch):
    monkeypatch.setattr(xla_workarounds, "xla_started", lambda: False)


@pytest.mark.parametrize(
    "before, after",
    [(None, FLAG), ("", FLAG), ("--xla_force_host_platform_device_count=8", None)],
)
def test_flag_is_appended_before_xla_starts(xla_not_started, monkeypatch, before, after):
    if before is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", before)
    expected = after or f"{before} {FLAG}"
    assert xla_workarounds.avoid_replicate_deadlock()
    assert os.environ["XLA_FLAGS"] == expected


@pytest.mark.parametrize(
    "users, in_effect",
    [(f"--{xla_workarounds.SCHEDULER_FIELD}=true", False), (FLAG, True)],
)
def test_the_users_own_setting_is_kept(xla_not_started, monkeypatch, users, in_effect):
    monkeypatch.setenv("XLA_FLAGS", users)
    assert xla_workarounds.avoid_replicate_deadlock() is in_effect
    assert os.environ["XLA_FLAGS"] == users


def test_nothing_changes_once_xla_has_started(monkeypatch):
    jnp.zeros(1).block_until_ready()
    assert xla_workarounds.xla_started()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    assert not xla_workarounds.avoid_replicate_deadlock()
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"


class _StopAfterTheCheck(Exception):
    pass


def _stop(*args, **kwargs):
    raise _StopAfterTheCheck


def test_train_and_evaluate_warns_when_the_flag_comes_too_late(monkeypatch, tmp_path):
    jnp.zeros(1).block_until_ready()  # XLA has started in this process, without the flag
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(parallel, "data_mesh", _stop)
    config = default_config()
    config.num_seeds = 2
    with pytest.warns(RuntimeWarning, match="XLA_FLAGS=--xla_cpu_enable_concurrency"):
        with pytest.raises(_StopAfterTheCheck):
            train_and_evaluate(config, tmp_path)
    config.num_seeds = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # one replicate: nothing to warn about
        with pytest.raises(_StopAfterTheCheck):
            train_and_evaluate(config, tmp_path)


# Two replicates of cluttered60's initialisation in a fresh process. Vmapped (as `train` did
# before `init_replicates`), it hangs on a 2-core CPU with jaxlib 0.10.2 unless the scheduler
# flag is set first; one replicate at a time it finishes with the scheduler on. About 6 s each.
_TWO_REPLICATE_INIT = textwrap.dedent(
    """
    import sys
    from ram_jax import xla_workarounds
    how = sys.argv[1]
    if how == "vmap_with_flag":
        assert xla_workarounds.avoid_replicate_deadlock()
    else:
        assert not xla_workarounds.avoid_replicate_deadlock()  # XLA_FLAGS keeps the scheduler
    import jax
    from experiments.configs import cluttered60
    from ram_jax.tasks import get_task
    from ram_jax.train import (build_model, init_replicates, init_train_state, make_optimizer,
                               over_replicates, replicate_keys, rollout_spec)
    config = cluttered60.get_config()
    model, spec = build_model(config), rollout_spec(config)
    optimizer = make_optimizer(config, 781)
    shape = get_task(config.task).image_shape
    keys = replicate_keys(0, 2).init
    if how == "vmap_with_flag":
        one = lambda k: init_train_state(model, spec, optimizer, k, shape)
        state = jax.jit(over_replicates(one, 2, (0,)))(keys)
    else:
        state = init_replicates(model, spec, optimizer, keys, shape)
    state = jax.block_until_ready(state)
    print("initialised", jax.tree.leaves(state.params)[0].shape[0])
    """
)


@pytest.mark.parametrize(
    "how, xla_flags",
    [
        ("vmap_with_flag", ""),
        ("one_at_a_time", f"--{xla_workarounds.SCHEDULER_FIELD}=true"),
    ],
)
def test_two_replicates_of_a_60x60_config_initialise(how, xla_flags):
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    done = subprocess.run(
        [sys.executable, "-c", _TWO_REPLICATE_INIT, how],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["initialised", "2"]
