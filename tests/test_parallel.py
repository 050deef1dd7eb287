"""Data parallelism: sharded training equals unsharded training for the same keys.

Eight CPU devices are faked with ``--xla_force_host_platform_device_count=8``, which JAX reads
only when it starts, so the check runs in a fresh process (``tests/parallel_script.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from mnist_paths import REPO_ROOT

from ram_jax import parallel


def run_script(task: str) -> dict:
    env = dict(os.environ)
    # Only the device count: flags another test left in this process's environment (Eigen's
    # products, say) would otherwise change the run with the order tests happen to run in.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "parallel_script.py"), task],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["mnist28", "cluttered60", "mnist28_temporal_ensemble"])
def report(request):
    return run_script(request.param)


def test_mesh_spans_all_eight_devices(report):
    assert report["devices"] == 8
    assert report["mesh_devices"] == 8


def test_sharded_training_matches_single_device(report):
    np.testing.assert_allclose(report["loss_sharded"], report["loss_single"], rtol=1e-5)
    assert report["max_param_diff"] < 1e-5
    if report["task"] == "mnist28_temporal_ensemble":
        assert report["soft_targets_filled"]
        assert report["max_soft_target_diff"] < 1e-5
    else:
        assert report["max_soft_target_diff"] is None


def test_gradients_are_all_reduced_and_parameters_replicated(report):
    # Without the batch split XLA would run the step on one device and need no all-reduce.
    assert report["all_reduce_in_hlo"]
    assert report["params_replicated"]
    assert report["param_devices"] == 8


def test_full_run_on_eight_devices(report):
    # train_and_evaluate itself, not only a span: every epoch trained and recorded, on 8 devices.
    assert report["full_run_epochs"] == report["num_epochs"]
    assert report["full_run_metric_lines"] == report["num_epochs"]
    assert report["full_run_device"].endswith("x8"), report["full_run_device"]


def test_batch_not_divisible_by_devices_is_refused():
    mesh = parallel.data_mesh(jax.devices()[:1])
    parallel.check_divisible(7, mesh)  # one device takes any batch
    fake = type("FakeMesh", (), {"devices": np.empty(8)})()
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        parallel.check_divisible(12, fake)
