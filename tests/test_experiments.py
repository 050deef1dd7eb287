"""The command-line entry points, run as subprocesses: experiments.train, evaluate and diagnose.

They read real MNIST from $RAM_JAX_MNIST_DIR (else ``../shared/data/mnist`` next to the repo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mnist_paths import HAVE_MNIST, MNIST_DIR, NO_MNIST, REPO_ROOT, needs_mnist

TIMEOUT_S = 600

# A run of a few seconds: one epoch of a small network on 2,000 images.
TINY_OVERRIDES = (
    "--config.train_subset=2000",
    "--config.validation_size=500",
    "--config.num_epochs=1",
    "--config.warmup_epochs=0",
    "--config.patch_hidden=32",
    "--config.location_hidden=32",
    "--config.glimpse_features=32",
    "--config.core_hidden=32",
    "--config.mc_samples=2",
    "--config.eval_batch_size=500",
    "--config.data_backend=numpy",
)


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAM_JAX_MNIST_DIR=str(MNIST_DIR.resolve()))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    return (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
        f"--- stderr\n{proc.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """experiments.train run once with the ``glimpses=3`` config argument."""
    if not HAVE_MNIST:
        pytest.skip(NO_MNIST)
    workdir = tmp_path_factory.mktemp("cli") / "run"
    proc = run_module(
        "experiments.train",
        "--config=experiments/configs/mnist28.py:glimpses=3",
        f"--workdir={workdir}",
        *TINY_OVERRIDES,
    )
    return workdir, proc


@needs_mnist
def test_train_cli_writes_results(tiny_run):
    workdir, proc = tiny_run
    assert proc.returncode == 0, describe(proc)
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "mnist28"
    assert results["epochs"] == 1
    assert results["mc_samples"] == 2
    for name in ("val_error_pct", "test_error_pct", "test_error_mc_pct"):
        assert 0.0 <= results[name] <= 100.0, name
    # Overrides reach the run's config.
    assert results["config"]["train_subset"] == 2000
    assert results["config"]["core_hidden"] == 32
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
    assert (workdir / "best_params.msgpack").is_file()
    assert "done: best epoch 1" in proc.stdout


@needs_mnist
def test_config_argument_sets_num_glimpses(tiny_run):
    workdir, proc = tiny_run
    assert proc.returncode == 0, describe(proc)
    config = json.loads((workdir / "config.json").read_text())
    assert config["num_glimpses"] == 3
    assert json.loads((workdir / "results.json").read_text())["num_glimpses"] == 3


@needs_mnist
def test_evaluate_cli_prints_json_last_line(tiny_run):
    workdir, train_proc = tiny_run
    assert train_proc.returncode == 0, describe(train_proc)
    proc = run_module("experiments.evaluate", f"--workdir={workdir}", "--mc_samples=2")
    assert proc.returncode == 0, describe(proc)
    last = proc.stdout.strip().splitlines()[-1]
    report = json.loads(last)
    assert isinstance(report, dict)
    results = json.loads((workdir / "results.json").read_text())
    assert report["task"] == "mnist28"
    assert report["num_glimpses"] == 3
    assert report["mc_samples"] == 2
    for name in ("val_error_pct", "test_error_pct", "test_error_mc_pct"):
        assert 0.0 <= report[name] <= 100.0, name
    # Same parameters, same evaluation key and batch size: the numbers training reported.
    assert report["test_error_pct"] == results["test_error_pct"]
    assert report["val_error_pct"] == results["val_error_pct"]
    assert report["test_error_mc_pct"] == results["test_error_mc_pct"]


@needs_mnist
def test_diagnose_cli_scores_the_rollouts_training_scored(tiny_run):
    workdir, train_proc = tiny_run
    assert train_proc.returncode == 0, describe(train_proc)
    proc = run_module("experiments.diagnose", f"--workdir={workdir}", "--radii=2,20")
    assert proc.returncode == 0, describe(proc)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = json.loads((workdir / "results.json").read_text())
    assert report["task"] == "mnist28" and report["split"] == "validation"
    assert report["images"] == 500
    assert report["error_pct"] == pytest.approx(results["val_error_pct"], abs=1e-6)
    assert len(report["mean_distance_px"]) == 3  # the glimpses=3 row
    # On 28x28 the first glimpse is the centre, which is the digit's centre; every digit too.
    assert report["mean_distance_px"][0] == 0.0
    assert report["by_offset"] == [
        {"from_px": 0, "to_px": 4, "images": 500, "error_pct": report["error_pct"]}
    ]
    # A glimpse centre on a 28x28 canvas is never more than 14 px from its centre.
    assert report["near"][1]["images_pct"] == 100.0
    # Every 28x28 digit sits at the centre, so nothing can follow it.
    assert report["tracking"] == [{"slope": [None, None], "corr": [None, None]}] * 3
    # Averaging the run's two sampled rollouts, drawn with its validation MC key, gives its MC
    # figure; one rollout alone is counted per draw.
    averaging = report["averaging"]
    assert averaging["mc_std_scale"] == 1.0 and len(averaging["averaged_pct"]) == 2
    assert averaging["averaged_pct"][-1] == pytest.approx(results["val_error_mc_pct"], abs=1e-6)
    assert 0.0 <= averaging["single_pct"] <= 100.0
    assert "one sampled rollout (std x 1)" in proc.stdout


def test_unknown_override_is_rejected(tmp_path):
    workdir = tmp_path / "run"
    proc = run_module(
        "experiments.train",
        "--config=experiments/configs/mnist28.py",
        f"--workdir={workdir}",
        "--config.not_a_field=1",
    )
    assert proc.returncode != 0, describe(proc)
    assert "not_a_field" in proc.stderr, describe(proc)
    assert not (workdir / "config.json").exists()


def test_empty_workdir_is_rejected():
    # --workdir=$UNSET would otherwise train into the current folder (the repository here).
    proc = run_module("experiments.train", "--config=experiments/configs/mnist28.py", "--workdir=")
    assert proc.returncode != 0, describe(proc)
    assert "--workdir must not be empty" in proc.stderr, describe(proc)
    assert not (REPO_ROOT / "config.json").exists()


SHIPPED = sorted(p.parent for p in (REPO_ROOT / "checkpoints").glob("*/results.json"))


@needs_mnist
@pytest.mark.parametrize("workdir", SHIPPED, ids=lambda p: p.name)
def test_shipped_checkpoint_reproduces_its_results(workdir):
    import jax

    from ram_jax.train import evaluate_workdir

    results = json.loads((workdir / "results.json").read_text())
    report = evaluate_workdir(workdir, mc_samples=results["mc_samples"], data_dir=str(MNIST_DIR))
    assert report["task"] == workdir.name
    # Exactly the same errors on the kind of device that trained it (older results files kept
    # unrounded floats, 0.5700000000000001). A GPU computes float32 products as TF32, so its
    # model evaluated on a CPU may put a few of 10,000 images in another class.
    same_platform = results["device"].split(":")[0] == jax.default_backend()
    tolerance = 1e-9 if same_platform else 0.1
    for name in ("val_error_pct", "val_error_mc_pct", "test_error_pct", "test_error_mc_pct"):
        assert report[name] == pytest.approx(results[name], abs=tolerance), name
