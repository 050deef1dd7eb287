"""Integration tests for ram_jax.train: end-to-end training on real MNIST, resuming, refusal of
a changed config, non-finite halting, compile-once spans, key determinism, dispatch splitting,
the progress line and the atomic files of ram_jax.checkpoint.

Real MNIST is read from $RAM_JAX_MNIST_DIR, else ``../shared/data/mnist`` next to the repo.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mnist_paths import HAVE_MNIST, MNIST_DIR, NO_MNIST

from ram_jax import checkpoint, progress
from ram_jax import train as train_module
from ram_jax.config import default_config
from ram_jax.data import load_mnist
from ram_jax.train import (
    Dataset,
    Datasets,
    LoopCarry,
    build_model,
    init_train_state,
    loss_weights,
    make_optimizer,
    make_train_chunk,
    make_train_step,
    rollout_spec,
    run_keys,
    scale_subtree,
    train_and_evaluate,
)

# Per-epoch record fields that measure wall time, not the computation.
TIMING_FIELDS = ("train_seconds", "train_images_per_s")


# --------------------------------------------------------------------------------------------
# Helpers and fixtures


def small_config(**overrides):
    """A fast config: a small network, few epochs, two MC samples."""
    config = default_config()
    config.patch_hidden = 32
    config.location_hidden = 32
    config.glimpse_features = 64
    config.core_hidden = 64
    config.num_epochs = 3
    config.mc_samples = 2
    config.eval_batch_size = 250
    for name, value in overrides.items():
        config[name] = value
    return config


def make_dataset(images, labels) -> Dataset:
    return Dataset(jnp.asarray(images), jnp.asarray(np.asarray(labels, np.int32)))


@pytest.fixture(scope="module")
def mnist():
    if not HAVE_MNIST:
        pytest.skip(NO_MNIST)
    return load_mnist(MNIST_DIR, backend="numpy")


def mnist_datasets(mnist, n_train: int, n_val: int | None, n_test: int) -> Datasets:
    """Train: the first ``n_train`` images; validation: the last ``n_val`` of the 60,000 (as
    ``split_train_validation`` carves it), or none; test: the first ``n_test`` test images."""
    train = make_dataset(mnist.train_images[:n_train], mnist.train_labels[:n_train])
    validation = None
    if n_val:
        validation = make_dataset(mnist.train_images[-n_val:], mnist.train_labels[-n_val:])
    test = make_dataset(mnist.test_images[:n_test], mnist.test_labels[:n_test])
    return Datasets(train, validation, test)


@pytest.fixture(scope="module")
def small_data(mnist) -> Datasets:
    # 1,280 / 64 = 20 steps per epoch.
    return mnist_datasets(mnist, 1280, 500, 500)


def params_template(config, data: Datasets):
    model, spec = build_model(config), rollout_spec(config)
    return init_train_state(
        model, spec, optax.identity(), run_keys(config.seed).init, data.train.images.shape[1:]
    ).params


def state_template(config, data: Datasets):
    model, spec = build_model(config), rollout_spec(config)
    steps_per_epoch = len(data.train.labels) // config.batch_size
    # Through the module, so that a test's patched optimiser shapes the template too.
    optimizer = train_module.make_optimizer(config, steps_per_epoch)
    state = init_train_state(
        model, spec, optimizer, run_keys(config.seed).init, data.train.images.shape[1:]
    )
    # Checkpoints hold the state of every replicate (seed) stacked on a leading axis.
    return jax.tree.map(lambda x: jnp.stack([x] * config.num_seeds), state)


def restore_checkpoint(workdir, epoch, template):
    store = checkpoint.CheckpointStore(pathlib.Path(workdir) / "checkpoints")
    try:
        return store.restore(epoch, template)
    finally:
        store.close()


def assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def trees_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def all_finite(tree) -> bool:
    return all(
        bool(np.all(np.isfinite(np.asarray(x))))
        for x in jax.tree.leaves(tree)
        if np.issubdtype(np.asarray(x).dtype, np.floating)
    )


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


# --------------------------------------------------------------------------------------------
# End to end on real MNIST

E2E_EPOCHS = 8


@pytest.fixture(scope="module")
def e2e_run(mnist, tmp_path_factory):
    """The default network trained 8 epochs on 6,000 MNIST images (1,000 val, 1,000 test)."""
    data = mnist_datasets(mnist, 6000, 1000, 1000)
    config = default_config()
    config.num_epochs = E2E_EPOCHS
    config.batch_size = 64
    config.mc_samples = 2
    config.eval_batch_size = 500
    workdir = tmp_path_factory.mktemp("e2e")
    results = train_and_evaluate(config, workdir, datasets=data)
    return config, data, workdir, results


def test_end_to_end_training_beats_chance(e2e_run):
    # Measured on CPU for seeds 0/1/2: test error 24.6/23.7/30.3% (MC2 18.9/19.5/26.0%);
    # chance is 90%, and an untrained or non-learning network stays near it.
    _, _, _, results = e2e_run
    assert results["test_error_pct"] < 50.0, results
    assert results["test_error_mc_pct"] < 50.0, results
    assert results["val_error_pct"] < 50.0, results


def test_end_to_end_results_json(e2e_run):
    config, _, workdir, results = e2e_run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    documented = {
        "task", "num_glimpses", "seed", "val_error_pct", "test_error_pct", "test_error_mc_pct",
        "mc_samples", "train_seconds", "device", "commit", "config",
    }  # fmt: skip
    assert documented <= set(on_disk), documented - set(on_disk)
    assert on_disk["task"] == "mnist28"
    assert on_disk["num_glimpses"] == config.num_glimpses == 6
    assert on_disk["seed"] == 0
    assert on_disk["mc_samples"] == 2
    assert on_disk["epochs"] == E2E_EPOCHS
    assert on_disk["config"] == config.to_dict()
    assert on_disk["config"] == json.loads((workdir / "config.json").read_text())
    assert isinstance(on_disk["device"], str) and on_disk["device"]
    assert isinstance(on_disk["commit"], str) and on_disk["commit"]
    for name in ("val_error_pct", "test_error_pct", "test_error_mc_pct", "val_error_mc_pct"):
        assert 0.0 <= on_disk[name] <= 100.0, name
    records = checkpoint.read_jsonl(workdir / "metrics.jsonl")
    assert on_disk["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in records))
    assert on_disk["train_seconds"] > 0
    # Throughput over the epochs after the first (which compiles): images / their seconds.
    timed = records[1:]
    expected = sum(r["train_images_per_s"] * r["train_seconds"] for r in timed) / sum(
        r["train_seconds"] for r in timed
    )
    assert on_disk["train_images_per_s"] == pytest.approx(expected, rel=1e-6)


def test_end_to_end_accounts_for_the_process_wall_time(e2e_run):
    _, _, workdir, _ = e2e_run
    on_disk = json.loads((workdir / "results.json").read_text())
    phases = on_disk["seconds_this_process"]
    assert set(phases) == set(train_module.PHASES)
    assert all(v >= 0 for v in phases.values()), phases
    records = checkpoint.read_jsonl(workdir / "metrics.jsonl")
    # The training spans are the epochs' own timings; the first epoch's is one of them.
    assert phases["train"] == pytest.approx(on_disk["train_seconds"], abs=0.01)
    assert phases["first_epoch_train"] == pytest.approx(records[0]["train_seconds"], abs=0.01)
    # Validation ran every epoch and the final evaluation once (MC included): neither is free.
    assert phases["validate"] > 0 and phases["final_evaluation"] > 0
    parts = sum(v for k, v in phases.items() if k != "first_epoch_train")
    assert parts == pytest.approx(on_disk["wall_seconds_this_process"], abs=0.01)


def test_end_to_end_metrics_and_best_epoch(e2e_run):
    config, data, workdir, results = e2e_run
    records = checkpoint.read_jsonl(workdir / "metrics.jsonl")
    steps_per_epoch = len(data.train.labels) // config.batch_size
    assert [r["epoch"] for r in records] == list(range(1, E2E_EPOCHS + 1))
    assert [r["step"] for r in records] == [e * steps_per_epoch for e in range(1, E2E_EPOCHS + 1)]
    for r in records:
        for name in ("loss", "classification", "reinforce", "baseline", "accuracy",
                     "grad_norm", "val_error_pct"):  # fmt: skip
            assert np.isfinite(r[name]), (name, r)
    # Training is actually learning: the last epoch's loss is below the first one's.
    assert records[-1]["classification"] < records[0]["classification"]

    val_errors = [r["val_error_pct"] for r in records]
    assert (workdir / "best_params.msgpack").is_file()
    assert results["best_epoch"] == int(np.argmin(val_errors)) + 1
    # The final report evaluates the best epoch's parameters: its deterministic validation
    # error is the one logged for that epoch.
    assert results["val_error_pct"] == min(val_errors)


def test_evaluate_workdir_reproduces_results(e2e_run):
    config, data, workdir, results = e2e_run
    report = train_module.evaluate_workdir(workdir, mc_samples=2, datasets=data)
    assert report["task"] == "mnist28"
    assert report["num_glimpses"] == config.num_glimpses
    assert report["mc_samples"] == 2
    for name in ("val_error_pct", "test_error_pct", "val_error_mc_pct", "test_error_mc_pct"):
        assert report[name] == results[name], name


def test_evaluate_workdir_of_an_older_run_without_newer_fields(e2e_run, tmp_path):
    # A workdir written before a config field existed is evaluated with that field's default.
    _, data, workdir, results = e2e_run
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    saved = json.loads((old / "config.json").read_text())
    del saved["train_shift"]
    (old / "config.json").write_text(json.dumps(saved))
    report = train_module.evaluate_workdir(old, mc_samples=2, datasets=data)
    assert report["test_error_pct"] == results["test_error_pct"]


def test_evaluate_workdir_without_config_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        train_module.evaluate_workdir(tmp_path)


# --------------------------------------------------------------------------------------------
# Resuming


@pytest.fixture(scope="module")
def uninterrupted_run(small_data, tmp_path_factory):
    config = small_config()
    workdir = tmp_path_factory.mktemp("run_a")
    results = train_and_evaluate(config, workdir, datasets=small_data)
    return config, workdir, results


def test_resume_after_kill_matches_uninterrupted_run(
    uninterrupted_run, small_data, tmp_path, monkeypatch, capsys
):
    config, workdir_a, results_a = uninterrupted_run
    workdir_b = tmp_path / "run_b"

    # Kill run B during epoch 3, after its metrics line is written but before its checkpoint.
    original_save = checkpoint.CheckpointStore.save
    calls = []

    def save_then_die(self, epoch, state, meta):
        calls.append(epoch)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return original_save(self, epoch, state, meta)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.CheckpointStore, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(small_config(), workdir_b, datasets=small_data)
    assert calls == [1, 2, 3]
    # The state a kill leaves behind: epoch 3 logged but not checkpointed, no results.
    killed_records = checkpoint.read_jsonl(workdir_b / "metrics.jsonl")
    assert [r["epoch"] for r in killed_records] == [1, 2, 3]
    assert not (workdir_b / "results.json").exists()
    store = checkpoint.CheckpointStore(workdir_b / "checkpoints")
    assert store.latest_epoch() == 2
    store.close()

    capsys.readouterr()
    results_b = train_and_evaluate(small_config(), workdir_b, datasets=small_data)
    assert "resuming" in capsys.readouterr().out

    records_a = checkpoint.read_jsonl(workdir_a / "metrics.jsonl")
    records_b = checkpoint.read_jsonl(workdir_b / "metrics.jsonl")
    assert [r["epoch"] for r in records_b] == [1, 2, 3]  # no duplicated epoch 3
    assert without_timing(records_b) == without_timing(records_a)

    template = state_template(config, small_data)
    state_a, meta_a = restore_checkpoint(workdir_a, 3, template)
    state_b, meta_b = restore_checkpoint(workdir_b, 3, template)
    assert int(state_b.step[0]) == int(state_a.step[0]) == 3 * 20
    assert_trees_equal(state_b, state_a)  # parameters and optimiser state, bit for bit
    assert meta_b["best_epoch"] == meta_a["best_epoch"]
    assert meta_b["best_val_error_pct"] == meta_a["best_val_error_pct"]
    assert (workdir_b / "best_params.msgpack").read_bytes() == (
        workdir_a / "best_params.msgpack"
    ).read_bytes()
    for name in ("epochs", "best_epoch", "val_error_pct", "test_error_pct",
                 "test_error_mc_pct", "val_error_mc_pct"):  # fmt: skip
        assert results_b[name] == results_a[name], name


def test_sparse_checkpoints_write_best_params_with_them_and_resume_exactly(
    uninterrupted_run, small_data, tmp_path, monkeypatch
):
    config, workdir_a, results_a = uninterrupted_run
    workdir_b = tmp_path / "run_b"
    sparse = small_config(checkpoint_every_s=1e9)  # only the last epoch's checkpoint is due

    # Kill run B at its only checkpoint: three epochs logged, nothing saved. The best
    # parameters wait for the checkpoint: every file write comes after the last epoch's log line.
    calls, params_writes = [], []
    original_save_params = checkpoint.save_params

    def die(self, epoch, state, meta):
        calls.append(epoch)
        raise KeyboardInterrupt("simulated kill")

    def logged_save_params(workdir, params, name=checkpoint.BEST_PARAMS):
        params_writes.append(len(checkpoint.read_jsonl(workdir_b / "metrics.jsonl")))
        return original_save_params(workdir, params, name)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.CheckpointStore, "save", die)
        patch.setattr(checkpoint, "save_params", logged_save_params)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(sparse, workdir_b, datasets=small_data)
    assert calls == [config.num_epochs]
    assert params_writes == [config.num_epochs]
    assert len(checkpoint.read_jsonl(workdir_b / "metrics.jsonl")) == config.num_epochs
    store = checkpoint.CheckpointStore(workdir_b / "checkpoints")
    assert store.latest_epoch() is None
    store.close()

    results_b = train_and_evaluate(sparse, workdir_b, datasets=small_data)
    records_a = checkpoint.read_jsonl(workdir_a / "metrics.jsonl")
    records_b = checkpoint.read_jsonl(workdir_b / "metrics.jsonl")
    assert without_timing(records_b) == without_timing(records_a)
    store = checkpoint.CheckpointStore(workdir_b / "checkpoints")
    assert store.epochs() == [config.num_epochs]
    store.close()
    assert (workdir_b / "best_params.msgpack").read_bytes() == (
        workdir_a / "best_params.msgpack"
    ).read_bytes()
    for name in ("best_epoch", "val_error_pct", "test_error_pct", "test_error_mc_pct"):
        assert results_b[name] == results_a[name], name


def test_temporal_ensemble_averages_are_checkpointed_and_resume_exactly(
    small_data, tmp_path, monkeypatch
):
    # The per-image averages live in the checkpointed state: a run killed after epoch 1's
    # checkpoint resumes to the uninterrupted run's records and state, averages included.
    config = small_config(
        num_epochs=2, mean_episode_fraction=0.25, temporal_ensemble_weight=1.0, mc_samples=1
    )
    results_a = train_and_evaluate(config, tmp_path / "a", datasets=small_data)
    original_save = checkpoint.CheckpointStore.save

    def save_then_die(self, epoch, state, meta):
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        return original_save(self, epoch, state, meta)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.CheckpointStore, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(config, tmp_path / "b", datasets=small_data)
    results_b = train_and_evaluate(config, tmp_path / "b", datasets=small_data)

    records = [checkpoint.read_jsonl(tmp_path / w / "metrics.jsonl") for w in ("a", "b")]
    assert without_timing(records[1]) == without_timing(records[0])
    assert records[0][1]["temporal_ensemble"] > 0  # epoch 2 taught against epoch 1's averages
    template = state_template(config, small_data)
    rows = (1, len(small_data.train.labels), config.num_classes + 1)
    template = template.replace(soft_targets=jnp.zeros(rows, jnp.float32))
    state_a, _ = restore_checkpoint(tmp_path / "a", 2, template)
    state_b, _ = restore_checkpoint(tmp_path / "b", 2, template)
    assert_trees_equal(state_b, state_a)
    table = np.asarray(state_a.soft_targets[0])
    # Each image was visited twice, each time by a sampled episode or a mean one (which leaves
    # the row alone): its weight is 0 (two mean episodes), 0.2 (one sampled) or 0.36 (two).
    weights = np.array([0.0, 0.2, 0.36])
    nearest = np.abs(table[:, -1:] - weights).argmin(1)
    np.testing.assert_allclose(table[:, -1], weights[nearest], atol=1e-6)
    assert set(nearest) == {0, 1, 2}
    np.testing.assert_allclose(table[:, :-1].sum(1), table[:, -1], rtol=1e-5)
    assert results_b["test_error_pct"] == results_a["test_error_pct"]


def test_validate_every_validates_and_selects_among_those_epochs_only(
    uninterrupted_run, small_data, tmp_path
):
    # Every second epoch and the last (3 epochs: 2 and 3). Training is untouched: the records
    # are run A's without epoch 1's validation, and the best epoch is the better of 2 and 3.
    _, workdir_a, _ = uninterrupted_run
    results = train_and_evaluate(small_config(validate_every=2), tmp_path, datasets=small_data)
    records_a = without_timing(checkpoint.read_jsonl(workdir_a / "metrics.jsonl"))
    records = without_timing(checkpoint.read_jsonl(tmp_path / "metrics.jsonl"))
    assert "val_error_pct" not in records[0]
    assert records[0] == {k: v for k, v in records_a[0].items() if k != "val_error_pct"}
    assert records[1:] == records_a[1:]
    errors = {r["epoch"]: r["val_error_pct"] for r in records_a[1:]}
    best = min(errors, key=lambda e: (errors[e], e))
    assert results["best_epoch"] == best
    assert results["val_error_pct"] == errors[best]


def test_changed_config_in_existing_workdir_is_refused(uninterrupted_run, small_data, tmp_path):
    _, workdir_a, _ = uninterrupted_run
    workdir = tmp_path / "copy"
    shutil.copytree(workdir_a, workdir)
    before = (workdir / "config.json").read_text()
    changed = small_config(core_hidden=48, eval_batch_size=100)
    with pytest.raises(ValueError, match="core_hidden") as info:
        train_and_evaluate(changed, workdir, datasets=small_data)
    assert "eval_batch_size" not in str(info.value)  # a resumable field is not reported
    assert (workdir / "config.json").read_text() == before  # nothing was overwritten


def test_resumable_field_may_change(uninterrupted_run, small_data, tmp_path):
    _, workdir_a, results_a = uninterrupted_run
    workdir = tmp_path / "copy"
    shutil.copytree(workdir_a, workdir)
    records_before = checkpoint.read_jsonl(workdir / "metrics.jsonl")
    results = train_and_evaluate(
        small_config(eval_batch_size=100, steps_per_dispatch=7), workdir, datasets=small_data
    )
    # The run was finished: nothing is retrained, the same best parameters are evaluated.
    assert results["epochs"] == 3
    assert results["best_epoch"] == results_a["best_epoch"]
    assert checkpoint.read_jsonl(workdir / "metrics.jsonl") == records_before
    # Deterministic errors do not depend on the evaluation batch size (up to float ties).
    assert abs(results["test_error_pct"] - results_a["test_error_pct"]) <= 0.4
    assert json.loads((workdir / "config.json").read_text())["eval_batch_size"] == 100


# --------------------------------------------------------------------------------------------
# Non-finite losses


def test_non_finite_loss_stops_the_run(small_data, tmp_path, monkeypatch):
    # The optimiser behaves for the first epoch, then scales its updates by 1e30: the parameters
    # blow up and the next loss is non-finite, in epoch 2.
    config = small_config(num_epochs=3)
    steps_per_epoch = len(small_data.train.labels) // config.batch_size
    original = train_module.make_optimizer

    def exploding_optimizer(config, steps_per_epoch):
        scale = optax.scale_by_schedule(lambda count: jnp.where(count < steps_per_epoch, 1.0, 1e30))
        return optax.chain(original(config, steps_per_epoch), scale)

    monkeypatch.setattr(train_module, "make_optimizer", exploding_optimizer)
    with pytest.raises(FloatingPointError, match=r"at step \d+") as info:
        train_and_evaluate(config, tmp_path, datasets=small_data)
    step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert steps_per_epoch <= step < 2 * steps_per_epoch, str(info.value)
    assert "epoch 2" in str(info.value)

    template = params_template(config, small_data)
    last_good = checkpoint.load_params(tmp_path, template, "last_good_params.msgpack")
    assert all_finite(last_good)
    assert not (tmp_path / "results.json").exists()
    assert [r["epoch"] for r in checkpoint.read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    # Checkpoints on disk hold only finite states.
    store = checkpoint.CheckpointStore(tmp_path / "checkpoints")
    assert store.latest_epoch() == 1
    store.close()
    state, meta = restore_checkpoint(tmp_path, 1, state_template(config, small_data))
    assert meta["epoch"] == 1
    assert all_finite(state)
    assert all_finite(checkpoint.load_params(tmp_path, template))


@pytest.fixture(scope="module")
def step_setup():
    config = small_config(warmup_epochs=0, lr_schedule="constant")
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    optimizer = make_optimizer(config, steps_per_epoch=10)
    state = init_train_state(model, spec, optimizer, jax.random.key(0), (28, 28))
    step = jax.jit(make_train_step(model, spec, weights, optimizer))
    return state, step


def test_train_step_non_finite_loss_halts(step_setup):
    state, train_step = step_setup
    rng = np.random.default_rng(0)
    good = jnp.asarray(rng.integers(0, 256, (8, 28, 28), dtype=np.uint8))
    nan = jnp.full((8, 28, 28), jnp.nan, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
    key = jax.random.key(1)
    fresh = LoopCarry(state, jnp.array(-1, jnp.int32))

    # Control: a finite step applies an update.
    carry, metrics = train_step(fresh, good, labels, key, jnp.int32(16))
    assert int(carry.halted_at) == -1
    assert int(carry.state.step) == 1
    assert not trees_equal(carry.state.params, state.params)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])

    # A non-finite loss leaves the state untouched and records the global step.
    carry, metrics = train_step(fresh, nan, labels, key, jnp.int32(17))
    assert not np.isfinite(metrics["loss"])
    assert int(carry.halted_at) == 17
    assert carry.halted_at.dtype == jnp.int32
    assert_trees_equal(carry.state, state)

    # Once halted, a finite step is a no-op and the first bad step stays recorded.
    carry, _ = train_step(carry, good, labels, key, jnp.int32(18))
    assert int(carry.halted_at) == 17
    assert_trees_equal(carry.state, state)


def one_step_setup(config):
    """Model pieces, a fresh state and one batch of 8 random 28x28 images for a single step."""
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    optimizer = make_optimizer(config, steps_per_epoch=10)
    state = init_train_state(model, spec, optimizer, jax.random.key(0), (28, 28))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (8, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
    return model, spec, weights, optimizer, state, images, labels


def test_train_step_dropout_changes_the_update_and_stays_keyed():
    config = small_config(warmup_epochs=0, lr_schedule="constant")
    model, spec, weights, optimizer, state, images, labels = one_step_setup(config)
    carry = LoopCarry(state, jnp.array(-1, jnp.int32))

    def one_step(rate, key):
        step = jax.jit(make_train_step(model, spec, weights, optimizer, dropout_rate=rate))
        return step(carry, images, labels, jax.random.key(key), jnp.int32(0))

    plain, _ = one_step(0.0, 1)
    dropped, metrics = one_step(0.5, 1)
    assert np.isfinite(metrics["loss"])
    assert not trees_equal(plain.state.params, dropped.state.params)
    assert_trees_equal(dropped, one_step(0.5, 1)[0])
    assert not trees_equal(dropped.state.params, one_step(0.5, 2)[0].state.params)


def test_params_ema_hand_values():
    # decay 0.5. First entry from 1: updates +2 then -4 give params 3 then -1, so the ema is
    # 0.5 * 1 + 0.5 * 3 = 2, then 0.5 * 2 + 0.5 * (-1) = 0.5. Second entry from 10: updates 0
    # then +2 give 10 then 12, ema 10 then 11. Updates pass unchanged.
    ema = train_module.params_ema(0.5)
    params = {"w": jnp.array([1.0, 10.0])}
    state = ema.init(params)
    np.testing.assert_array_equal(state.ema["w"], [1.0, 10.0])
    out, state = ema.update({"w": jnp.array([2.0, 0.0])}, state, params)
    np.testing.assert_array_equal(out["w"], [2.0, 0.0])
    params = optax.apply_updates(params, out)
    out, state = ema.update({"w": jnp.array([-4.0, 2.0])}, state, params)
    np.testing.assert_allclose(state.ema["w"], [0.5, 11.0])


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_params_ema_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match=r"EMA decay must be in \[0, 1\)"):
        train_module.params_ema(decay)


def test_params_ema_needs_params():
    ema = train_module.params_ema(0.9)
    state = ema.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="needs the parameters"):
        ema.update({"w": jnp.ones(2)}, state)


def test_ema_decay_keeps_the_trajectory_and_selects_the_average():
    """With ``ema_decay`` the parameters follow exactly the same path; ``selected_params``
    returns ``d^2 p0 + d (1 - d) p1 + (1 - d) p2`` after two steps, and ``params`` without it."""
    decay = 0.75
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (8, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)

    def two_steps(ema_decay):
        config = small_config(warmup_epochs=0, lr_schedule="constant", ema_decay=ema_decay)
        model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
        optimizer = make_optimizer(config, steps_per_epoch=10)
        state = init_train_state(model, spec, optimizer, jax.random.key(0), (28, 28))
        step = jax.jit(make_train_step(model, spec, weights, optimizer))
        carry = LoopCarry(state, jnp.array(-1, jnp.int32))
        path = [state]
        for i in range(2):
            carry, _ = step(carry, images, labels, jax.random.key(i), jnp.int32(i))
            path.append(carry.state)
        return path

    plain, averaged = two_steps(0.0), two_steps(decay)
    for a, b in zip(plain, averaged, strict=True):
        assert_trees_equal(a.params, b.params)
    assert_trees_equal(train_module.selected_params(plain[2]), plain[2].params)
    p0, p1, p2 = (s.params for s in plain)
    expected = jax.tree.map(
        lambda a, b, c: decay**2 * a + decay * (1 - decay) * b + (1 - decay) * c, p0, p1, p2
    )
    got = train_module.selected_params(averaged[2])
    assert not trees_equal(got, p2)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_ema_run_validates_and_keeps_the_average(small_data, tmp_path):
    # One epoch: it is the best by definition, so the kept parameters are that epoch's average.
    config = small_config(num_epochs=1, warmup_epochs=0, ema_decay=0.9)
    results = train_and_evaluate(config, tmp_path, datasets=small_data)
    state, _ = restore_checkpoint(tmp_path, 1, state_template(config, small_data))
    kept = checkpoint.load_params(tmp_path, params_template(config, small_data))
    assert_trees_equal(kept, train_module.replicate(train_module.selected_params(state), 0))
    assert not trees_equal(kept, train_module.replicate(state.params, 0))
    assert results["runs"][0]["best_epoch"] == 1


# --------------------------------------------------------------------------------------------
# Spans of steps: compile once, keys, dispatch splitting


@pytest.fixture(scope="module")
def chunk_setup(mnist):
    """A jitted 4-step span (of an 8-step epoch) that fails if it is ever traced twice."""
    config = small_config(batch_size=32)
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    optimizer = make_optimizer(config, steps_per_epoch=8)
    keys = run_keys(0)
    state = init_train_state(model, spec, optimizer, keys.init, (28, 28))
    data = make_dataset(mnist.train_images[:256], mnist.train_labels[:256])
    chunk = make_train_chunk(
        model, spec, weights, optimizer, batch_size=32, num_steps=4, steps_per_epoch=8
    )
    jitted = jax.jit(chex.assert_max_traces(chunk, n=1))
    return LoopCarry(state, jnp.array(-1, jnp.int32)), data, keys, jitted


def test_train_chunk_compiles_once(chunk_setup):
    carry, data, keys, chunk = chunk_setup
    # Different epochs and span offsets are traced values, not compile-time constants.
    for epoch, first in ((0, 0), (0, 4), (1, 0), (3, 4)):
        carry, metrics = chunk(carry, data, keys.data, keys.step, epoch, first)
    if hasattr(chunk, "_cache_size"):  # jax's own count of compiled variants
        assert chunk._cache_size() == 1
    assert metrics["loss"].shape == (4,)
    assert int(carry.state.step) == 16


def test_train_chunk_key_determinism(chunk_setup):
    carry0, data, keys, chunk = chunk_setup
    a, metrics_a = chunk(carry0, data, keys.data, keys.step, 0, 0)
    b, metrics_b = chunk(carry0, data, keys.data, keys.step, 0, 0)
    assert_trees_equal(a, b)
    assert_trees_equal(metrics_a, metrics_b)
    assert not trees_equal(a.state.params, carry0.state.params)
    other_data, _ = chunk(carry0, data, jax.random.key(123), keys.step, 0, 0)
    assert not trees_equal(other_data.state.params, a.state.params)
    other_step, _ = chunk(carry0, data, keys.data, jax.random.key(123), 0, 0)
    assert not trees_equal(other_step.state.params, a.state.params)
    other_epoch, _ = chunk(carry0, data, keys.data, keys.step, 1, 0)
    assert not trees_equal(other_epoch.state.params, a.state.params)


def test_train_chunk_turns_and_scales_digits_when_asked(chunk_setup, monkeypatch):
    carry0, data, keys, _ = chunk_setup
    config = small_config(batch_size=32)
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    optimizer = make_optimizer(config, steps_per_epoch=8)
    seen = []
    original = train_module.random_affine

    def recording(key, images, max_rotation_deg, max_scale):
        seen.append((max_rotation_deg, max_scale))
        return original(key, images, max_rotation_deg, max_scale)

    monkeypatch.setattr(train_module, "random_affine", recording)

    def run(**augment):
        chunk = make_train_chunk(
            model,
            spec,
            weights,
            optimizer,
            batch_size=32,
            num_steps=2,
            steps_per_epoch=8,
            **augment,
        )
        return jax.jit(chunk)(carry0, data, keys.data, keys.step, 0, 0)[0].state.params

    plain = run()
    assert seen == []  # no augmentation asked: the function is not even traced
    turned = run(max_rotation_deg=15.0, max_scale=0.1)
    assert seen == [(15.0, 0.1)]
    assert_trees_equal(turned, run(max_rotation_deg=15.0, max_scale=0.1))
    assert not trees_equal(turned, plain)


def test_generated_canvases_made_with_the_retina_margin_train_the_same(mnist):
    config = small_config(batch_size=16, task="cluttered60", glimpse_size=6, glimpse_scales=2)
    task = train_module.get_task(config.task)
    margin = train_module.training_image_margin(config, task)
    assert margin == 7  # the 12-pixel patch: 6 on each side of its centre, and one more
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    optimizer = make_optimizer(config, steps_per_epoch=8)
    keys = run_keys(0)
    state = init_train_state(model, spec, optimizer, keys.init, (60, 60))
    carry = LoopCarry(state, jnp.array(-1, jnp.int32))
    data = make_dataset(mnist.train_images[:128], mnist.train_labels[:128])
    made = []
    original = train_module.make_batch

    def recording(*args):
        made.append(args[-1])
        return original(*args)

    def run(image_margin):
        chunk = make_train_chunk(
            model,
            spec,
            weights,
            optimizer,
            batch_size=16,
            num_steps=3,
            steps_per_epoch=8,
            task=task,
            image_margin=image_margin,
        )
        return jax.jit(chunk)(carry, data, keys.data, keys.step, 0, 0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "make_batch", recording)
        framed, framed_metrics = run(margin)
        plain, plain_metrics = run(0)
    assert made == [margin, 0]
    # The same bytes reach the same glimpses: the same training, to float rounding.
    chex.assert_trees_all_close(framed.state.params, plain.state.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(framed_metrics, plain_metrics, rtol=1e-6, atol=1e-7)
    assert not trees_equal(framed.state.params, state.params)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (dict(task="cluttered100", glimpse_size=12, glimpse_scales=4), 49),
        (dict(task="translated60", glimpse_size=12, glimpse_scales=3), 25),
        (dict(task="translated60", glimpse_size=12, glimpse_scales=3, train_shift=2), 0),
        (dict(task="cluttered60", model="conv"), 0),
        (dict(task="mnist28"), 0),
    ],
)
def test_training_image_margin(overrides, expected):
    config = small_config(**overrides)
    task = train_module.get_task(config.task)
    assert train_module.training_image_margin(config, task) == expected


def test_train_chunk_refuses_spans_the_data_cannot_fill():
    config = small_config(batch_size=8)
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    optimizer = make_optimizer(config, steps_per_epoch=4)
    with pytest.raises(ValueError, match=r"num_steps must be in 1\.\.4 \(one epoch\), got 5"):
        make_train_chunk(
            model, spec, weights, optimizer, batch_size=8, num_steps=5, steps_per_epoch=4
        )
    chunk = make_train_chunk(
        model, spec, weights, optimizer, batch_size=8, num_steps=1, steps_per_epoch=4
    )
    keys = run_keys(0)
    carry = LoopCarry(
        init_train_state(model, spec, optimizer, keys.init, (28, 28)), jnp.array(-1, jnp.int32)
    )
    data = make_dataset(np.zeros((24, 28, 28), np.uint8), np.zeros(24))
    # Four steps of eight need 32 images: the last batch would repeat images silently.
    with pytest.raises(ValueError, match="need 32 images, the data holds 24"):
        chunk(carry, data, keys.data, keys.step, 0, 0)


def test_train_subset_larger_than_the_training_split_rejected():
    if not HAVE_MNIST:
        pytest.skip(NO_MNIST)
    config = small_config(data_dir=str(MNIST_DIR), data_backend="numpy", train_subset=50_001)
    with pytest.raises(ValueError, match="train_subset 50001 exceeds the 50000 training images"):
        train_module.load_datasets(config)


def test_image_margin_refused_where_it_would_change_the_images():
    config = small_config(batch_size=8)
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    optimizer = make_optimizer(config, steps_per_epoch=4)
    common = dict(batch_size=8, num_steps=1, steps_per_epoch=4, image_margin=5)
    with pytest.raises(ValueError, match="shift would move digits into the margin"):
        make_train_chunk(model, spec, weights, optimizer, max_shift=2, **common)
    with pytest.raises(ValueError, match="needs a generated task"):
        make_train_chunk(model, spec, weights, optimizer, max_rotation_deg=10.0, **common)
    conv = small_config(model="conv")
    with pytest.raises(ValueError, match="image_margin must be 0"):
        train_module.make_loss_fn(
            build_model(conv), rollout_spec(conv), loss_weights(conv), image_margin=5
        )


@pytest.mark.parametrize(
    ("steps_per_epoch", "requested", "expected"),
    [
        (20, 0, 20),
        (20, -3, 20),
        (20, 20, 20),
        (20, 50, 20),
        (20, 5, 5),
        (20, 7, 5),
        (20, 3, 2),
        (20, 1, 1),
        (12, 5, 4),
        (7, 3, 1),
        (93, 40, 31),
    ],
)
def test_chunk_steps(steps_per_epoch, requested, expected):
    assert train_module._chunk_steps(steps_per_epoch, requested) == expected


def test_chunk_steps_is_largest_divisor():
    for steps in range(1, 41):
        for requested in range(0, 45):
            chunk = train_module._chunk_steps(steps, requested)
            assert steps % chunk == 0
            if 0 < requested < steps:
                assert chunk <= requested
                assert not any(steps % d == 0 for d in range(chunk + 1, requested + 1))
            else:
                assert chunk == steps


def test_steps_per_dispatch_matches_whole_epoch(mnist, small_data, tmp_path, monkeypatch, capsys):
    # 768 / 64 = 12 steps per epoch; steps_per_dispatch=5 runs spans of 4 (3 per epoch).
    train = make_dataset(mnist.train_images[:768], mnist.train_labels[:768])
    data = Datasets(train, None, small_data.test)
    original = train_module.make_train_chunk
    built = []

    def traced_once(*args, **kwargs):
        built.append(kwargs["num_steps"])
        return chex.assert_max_traces(original(*args, **kwargs), n=1)

    monkeypatch.setattr(train_module, "make_train_chunk", traced_once)
    runs = {}
    for dispatch in (0, 5):
        chex.clear_trace_counter()
        config = small_config(num_epochs=2, steps_per_dispatch=dispatch, validation_size=0)
        results = train_and_evaluate(config, tmp_path / f"d{dispatch}", datasets=data)
        params = checkpoint.load_params(tmp_path / f"d{dispatch}", params_template(config, data))
        records = checkpoint.read_jsonl(tmp_path / f"d{dispatch}" / "metrics.jsonl")
        runs[dispatch] = (results, params, records)
    assert built == [12, 4]
    progress_lines = [line for line in capsys.readouterr().err.splitlines() if "ETA" in line]
    # One line per span and one per finished epoch: (1 + 1) x 2 epochs, then (3 + 1) x 2.
    assert len(progress_lines) == 2 * (1 + 1) + 2 * (3 + 1)

    (results_0, params_0, records_0), (results_5, params_5, records_5) = runs[0], runs[5]
    # Without validation the best parameters are the last epoch's.
    assert results_0["best_epoch"] == results_5["best_epoch"] == 2
    assert results_0["val_error_pct"] is None
    chex.assert_trees_all_close(params_5, params_0, rtol=1e-4, atol=1e-6)
    assert [r["step"] for r in records_5] == [r["step"] for r in records_0] == [12, 24]
    for r0, r5 in zip(records_0, records_5, strict=True):
        assert r5["loss"] == pytest.approx(r0["loss"], rel=1e-4)
        assert r5["accuracy"] == pytest.approx(r0["accuracy"], abs=1e-6)


# --------------------------------------------------------------------------------------------
# Progress line


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_non_tty_one_line_per_update_with_eta(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    stream = io.StringIO()
    bar = progress.Progress(total=10, stream=stream)
    bar.update(0, "start")
    clock.now += 10.0
    bar.update(5, "half")
    clock.now += 10.0
    bar.update(10, "end")
    bar.close()
    text = stream.getvalue()
    lines = text.splitlines()
    assert len(lines) == 3
    assert text.endswith("\n") and "\r" not in text and "\x1b" not in text
    assert "ETA --" in lines[0] and lines[0].endswith("start")
    assert "ETA 0m10s" in lines[1] and "50.0%" in lines[1] and lines[1].endswith("half")
    assert "ETA 0m00s" in lines[2] and "100.0%" in lines[2]
    assert "[############............]" in lines[1]


def test_progress_eta_counts_only_this_process():
    # A resumed run starts at done=50; its ETA comes from its own rate, not the skipped steps.
    clock = FakeClock()
    stream = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress.time, "perf_counter", clock)
        bar = progress.Progress(total=100, done=50, stream=stream)
        clock.now += 10.0
        bar.update(60)
        assert bar.eta_seconds() == pytest.approx(40.0)
    assert "ETA 0m40s" in stream.getvalue()


def test_progress_tty_redraws_in_place():
    stream = TtyStream()
    bar = progress.Progress(total=4, stream=stream)
    bar.update(2, "a")
    bar.update(4, "b")
    bar.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[K") == 2
    assert text.count("\n") == 1 and text.endswith("\n")


@pytest.mark.parametrize("stream_class", [io.StringIO, TtyStream])
def test_progress_disabled_counts_but_prints_nothing(stream_class):
    # The other processes of a multi-process run: the first one prints for them.
    stream = stream_class()
    bar = progress.Progress(total=4, stream=stream, enabled=False)
    bar.update(2, "a")
    bar.close()
    assert bar.done == 2
    assert stream.getvalue() == ""


def test_format_seconds():
    assert progress.format_seconds(0) == "0m00s"
    assert progress.format_seconds(65) == "1m05s"
    assert progress.format_seconds(3725) == "1h02m05s"
    assert progress.format_seconds(-5) == "0m00s"


# --------------------------------------------------------------------------------------------
# checkpoint.py: atomic files and parameter loading


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "results.json"
    checkpoint.atomic_write_json(path, {"b": 1, "a": [1.5, None]})
    checkpoint.atomic_write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_atomic_write_gives_files_the_umask_mode(tmp_path):
    # mkstemp creates 0600 files; results must be readable like any file the user writes.
    old = os.umask(0o022)
    try:
        checkpoint.atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    checkpoint.atomic_write_json(path, {"old": True})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_jsonl_drops_a_cut_off_last_line_and_names_a_bad_one_elsewhere(tmp_path):
    path = tmp_path / "metrics.jsonl"
    checkpoint.append_jsonl(path, {"epoch": 1})
    with open(path, "a") as f:
        f.write('{"epoch": 2, "lo')  # a crash in the middle of the write
    with pytest.warns(UserWarning, match=r"metrics.jsonl:2: dropped a cut-off last line"):
        assert checkpoint.read_jsonl(path) == [{"epoch": 1}]
    with open(path, "a") as f:
        f.write('\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not valid JSON"):
        checkpoint.read_jsonl(path)


def test_read_json_names_a_corrupt_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"task": "mnist28",')
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        checkpoint.read_json(path)
    checkpoint.atomic_write_json(path, {"task": "mnist28"})
    assert checkpoint.read_json(path) == {"task": "mnist28"}


def test_restore_latest_skips_a_checkpoint_that_does_not_restore(
    uninterrupted_run, small_data, tmp_path
):
    config, workdir_a, _ = uninterrupted_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir_a / "checkpoints", copy)
    template = state_template(config, small_data)
    store = checkpoint.CheckpointStore(copy)
    try:
        assert store.epochs() == [2, 3]
        state_2, meta_2 = store.restore(2, template)
        shutil.rmtree(copy / "3" / "state")  # the newest one cut off
        with pytest.warns(UserWarning, match=r"checkpoint of epoch 3 .* did not restore"):
            epoch, state, meta = store.restore_latest(template)
        assert (epoch, meta) == (2, meta_2)
        assert_trees_equal(state, state_2)
        shutil.rmtree(copy / "2" / "state")
        with (
            pytest.warns(UserWarning),
            pytest.raises(ValueError, match=r"no checkpoint in \S*copy"),
        ):
            store.restore_latest(template)
    finally:
        store.close()
    empty = checkpoint.CheckpointStore(tmp_path / "empty")
    assert empty.restore_latest(template) is None
    empty.close()


def test_only_the_first_process_writes_the_workdir_files(
    uninterrupted_run, small_data, tmp_path, monkeypatch
):
    # Every host of a multi-host run computes the same values; one writing them is enough, and
    # several appending to metrics.jsonl would duplicate its lines.
    _, _, results_a = uninterrupted_run
    monkeypatch.setattr(train_module, "writes_workdir_files", lambda: False)
    results = train_and_evaluate(small_config(), tmp_path, datasets=small_data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    store = checkpoint.CheckpointStore(tmp_path / "checkpoints")
    assert store.epochs() == [2, 3]  # orbax coordinates its own writes across processes
    store.close()
    for name in ("best_epoch", "val_error_pct", "test_error_pct"):
        assert results[name] == results_a[name], name


def test_finished_workdir_without_checkpoints_is_not_overwritten(
    uninterrupted_run, small_data, tmp_path
):
    # A shipped or copied workdir keeps its results but not its orbax checkpoints: training in
    # it again must not start from epoch 0 over its best parameters and metrics.
    config, workdir_a, _ = uninterrupted_run
    workdir = tmp_path / "shipped"
    shutil.copytree(workdir_a, workdir, ignore=shutil.ignore_patterns("checkpoints"))
    before = {p.name: p.read_bytes() for p in workdir.iterdir()}
    with pytest.raises(
        ValueError, match=r"holds a finished run \(results.json\) but no checkpoint"
    ):
        train_and_evaluate(config, workdir, datasets=small_data)
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert checkpoint.read_jsonl(path) == []
    checkpoint.append_jsonl(path, {"epoch": 1, "loss": 0.5})
    checkpoint.append_jsonl(path, {"epoch": 2, "loss": 0.25})
    assert checkpoint.read_jsonl(path) == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]


def test_load_params_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        checkpoint.load_params(tmp_path, {"w": jnp.zeros(3)})
    assert str(tmp_path / "best_params.msgpack") in str(info.value)


@pytest.fixture(scope="module")
def small_params():
    config = small_config()
    model, spec = build_model(config), rollout_spec(config)
    return init_train_state(model, spec, optax.identity(), jax.random.key(0), (28, 28)).params


def test_save_load_params_round_trip(tmp_path, small_params):
    checkpoint.save_params(tmp_path, small_params)
    template = jax.tree.map(np.zeros_like, small_params)
    assert_trees_equal(checkpoint.load_params(tmp_path, template), small_params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_params.msgpack"]


def test_load_params_wrong_structure_is_clear(tmp_path, small_params):
    checkpoint.save_params(tmp_path, small_params)
    # A different architecture (e.g. another core): the parameter names differ.
    target = dict(small_params)
    target["extra_layer"] = target.pop(sorted(target)[0])
    with pytest.raises(ValueError, match="does not hold parameters for this model") as info:
        checkpoint.load_params(tmp_path, target)
    assert "best_params.msgpack" in str(info.value)


def test_load_params_wrong_shapes_is_clear(tmp_path, small_params):
    # Same parameter names, other sizes (e.g. config.json's core_hidden edited after training):
    # the saved parameters do not fit the target, and load_params must say so, not return them.
    checkpoint.save_params(tmp_path, small_params)
    target = jax.tree.map(
        lambda x: np.zeros((*x.shape[:-1], 2 * x.shape[-1]), x.dtype), small_params
    )
    with pytest.raises(ValueError, match="does not hold parameters for this model"):
        checkpoint.load_params(tmp_path, target)


def test_checkpoint_store_keeps_newest_two(tmp_path):
    store = checkpoint.CheckpointStore(tmp_path / "ckpt")
    assert store.latest_epoch() is None
    state = {"w": jnp.arange(3.0)}
    for epoch in (1, 2, 3):
        store.save(epoch, {"w": state["w"] * epoch}, {"epoch": epoch})
    store.close()
    store = checkpoint.CheckpointStore(tmp_path / "ckpt")
    assert store.latest_epoch() == 3
    restored, meta = store.restore(3, state)
    store.close()
    np.testing.assert_array_equal(restored["w"], np.arange(3.0) * 3)
    assert meta == {"epoch": 3}
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == ["2", "3"]


def test_location_lr_scale_scales_only_the_policy_updates():
    # SGD without momentum or clipping: an update is -lr * gradient, so the scaled run's
    # location-network step must be exactly 4x the plain one and every other step equal.
    def one_step(scale):
        config = small_config(
            warmup_epochs=0,
            lr_schedule="constant",
            optimizer="sgd",
            momentum=0.0,
            clip_norm=0.0,
            learning_rate=0.1,
            location_lr_scale=scale,
        )
        model, spec, weights, optimizer, state, images, labels = one_step_setup(config)
        step = jax.jit(make_train_step(model, spec, weights, optimizer))
        carry, _ = step(
            LoopCarry(state, jnp.array(-1, jnp.int32)),
            images,
            labels,
            jax.random.key(1),
            jnp.int32(0),
        )
        return jax.tree.map(lambda a, b: np.asarray(a - b), carry.state.params, state.params)

    plain, scaled = one_step(1.0), one_step(4.0)
    assert np.abs(plain["location_net"]["mean"]["kernel"]).max() > 0
    for name in plain:
        factor = 4.0 if name == "location_net" else 1.0
        jax.tree.map(
            lambda a, b, f=factor: np.testing.assert_allclose(b, f * a, rtol=1e-4, atol=1e-7),
            plain[name],
            scaled[name],
        )


def test_location_lr_scale_needs_a_location_network():
    with pytest.raises(ValueError, match="no parameters named 'location_net'"):
        scale_subtree(2.0, "location_net").init({"dense": {"kernel": jnp.ones(2)}})


def test_loc_std_schedule_falls_from_loc_std_to_loc_std_final():
    assert train_module.loc_std_schedule(small_config(loc_std=0.5), 10) is None
    config = small_config(loc_std=0.5, loc_std_final=0.25, num_epochs=4)
    assert rollout_spec(config).loc_std == 0.25  # Monte-Carlo evaluation: the final policy
    scale = train_module.loc_std_schedule(config, steps_per_epoch=10)
    steps = jnp.array([0, 20, 40, 400])
    # std = 0.25 + 0.25 * (1 + cos(pi * step / 40)) / 2, over 0.25.
    np.testing.assert_allclose(scale(steps), [2.0, 1.5, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(scale(jnp.array(10)), 1 + (1 + np.cos(np.pi / 4)) / 2, rtol=1e-6)


def test_loc_std_schedule_reaches_the_episodes(mnist):
    config = small_config(batch_size=16, loc_std=0.1, warmup_epochs=0)  # step 0 moves
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    wide_spec = rollout_spec(small_config(batch_size=16, loc_std=0.3))
    optimizer = make_optimizer(config, steps_per_epoch=8)
    state = init_train_state(model, spec, optimizer, run_keys(0).init, (28, 28))
    carry = LoopCarry(state, jnp.array(-1, jnp.int32))
    images = jnp.asarray(mnist.train_images[:16])
    labels = jnp.asarray(np.asarray(mnist.train_labels[:16], np.int32))
    key, step = jax.random.key(3), jnp.int32(5)
    seen = []

    def schedule(global_step):
        seen.append(global_step)
        return jnp.float32(3.0)

    scheduled = make_train_step(model, spec, weights, optimizer, loc_std_schedule=schedule)
    wide = make_train_step(model, wide_spec, weights, optimizer)
    got, got_metrics = jax.jit(scheduled)(carry, images, labels, key, step)
    want, want_metrics = jax.jit(wide)(carry, images, labels, key, step)
    assert len(seen) == 1
    chex.assert_trees_all_close(got.state.params, want.state.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got_metrics, want_metrics, rtol=1e-5, atol=1e-6)
    plain, _ = jax.jit(make_train_step(model, spec, weights, optimizer))(
        carry, images, labels, key, step
    )
    assert not trees_equal(plain.state.params, got.state.params)
    conv = small_config(model="conv")
    with pytest.raises(ValueError, match="no location policy"):
        make_train_step(
            build_model(conv), None, loss_weights(conv), optimizer, loc_std_schedule=schedule
        )


def chunk_arguments(configs, datasets, tmp_path, monkeypatch) -> list[dict]:
    """The keyword arguments ``train_and_evaluate`` builds its training chunk with, per config
    (the run stops there: the wiring is all these tests need)."""

    class Built(Exception):
        pass

    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs)
        raise Built

    monkeypatch.setattr(train_module, "make_train_chunk", recording)
    for i, config in enumerate(configs):
        with pytest.raises(Built):
            train_and_evaluate(config, tmp_path / f"run{i}", datasets=datasets)
    return seen


def test_loc_std_final_reaches_the_training_chunk(small_data, tmp_path, monkeypatch):
    configs = [
        small_config(num_epochs=2, warmup_epochs=0, loc_std=0.1, loc_std_final=final)
        for final in (0.0, 0.05)
    ]
    fixed, falling = chunk_arguments(configs, small_data, tmp_path, monkeypatch)
    assert fixed["loc_std_schedule"] is None
    np.testing.assert_allclose(falling["loc_std_schedule"](jnp.array(0)), 2.0, rtol=1e-6)


def test_intermediate_classification_weight_reaches_the_training_chunk(
    small_data, tmp_path, monkeypatch
):
    configs = [
        small_config(num_epochs=1, warmup_epochs=0, intermediate_classification_weight=weight)
        for weight in (0.0, 0.3)
    ]
    seen = chunk_arguments(configs, small_data, tmp_path, monkeypatch)
    assert [kwargs["intermediate_classification_weight"] for kwargs in seen] == [0.0, 0.3]


def test_temporal_ensemble_fields_reach_the_training_chunk(small_data, tmp_path, monkeypatch):
    fields = dict(temporal_ensemble_decay=0.6, temporal_ensemble_episodes="mean")
    configs = [
        small_config(
            num_epochs=1,
            warmup_epochs=0,
            mean_episode_fraction=0.25,
            temporal_ensemble_weight=weight,
            **fields,
        )
        for weight in (0.0, 2.0)
    ]
    seen = chunk_arguments(configs, small_data, tmp_path, monkeypatch)
    names = ("temporal_ensemble_weight", "temporal_ensemble_decay", "temporal_ensemble_episodes")
    assert [tuple(kwargs[n] for n in names) for kwargs in seen] == [
        (0.0, 0.6, "mean"),
        (2.0, 0.6, "mean"),
    ]


def test_mean_episode_fraction_reaches_the_training_chunk(small_data, tmp_path, monkeypatch):
    configs = [
        small_config(num_epochs=1, warmup_epochs=0, mean_episode_fraction=fraction)
        for fraction in (0.0, 0.25)
    ]
    seen = chunk_arguments(configs, small_data, tmp_path, monkeypatch)
    assert [kwargs["num_mean_episodes"] for kwargs in seen] == [0, 16]  # a quarter of 64
