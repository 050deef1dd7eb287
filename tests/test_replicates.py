"""Several seeds trained at once (``config.num_seeds``, ``jax.vmap`` over a replicate axis), and
training on a generated task (canvases made on the device from 28x28 digits).

A 2-seed run must be the two single-seed runs side by side: its files name each seed, its
top-level errors are the means of its runs, replicate ``r`` is the run of seed ``seed + r``
(up to float rounding: vmap may reorder reductions), evaluate_workdir reproduces it, and a kill
and resume changes nothing. Synthetic digits, so no MNIST is needed.
"""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import assert_trees_equal
from test_train import restore_checkpoint as restore

from ram_jax import checkpoint
from ram_jax import train as train_module
from ram_jax.config import default_config
from ram_jax.tasks import fixed_set, get_task
from ram_jax.train import (
    Dataset,
    Datasets,
    build_model,
    evaluate_workdir,
    init_replicates,
    init_train_state,
    make_optimizer,
    over_replicates,
    params_file,
    replicate,
    replicate_keys,
    rollout_spec,
    run_keys,
    train_and_evaluate,
)

TIMING_FIELDS = ("train_seconds", "train_images_per_s")
SEED = 5  # the 2-seed run trains seeds 5 and 6


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8[n, 28, 28] "digits" and int32 labels: class c (0..3) is a bright 10x10 square in
    quadrant c over faint noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        top, left = (c // 2) * 14 + 2, (c % 2) * 14 + 2
        images[i, top : top + 10, left : left + 10] = 255
    return images, labels


def dataset(images, labels) -> Dataset:
    return Dataset(jnp.asarray(images), jnp.asarray(labels, jnp.int32))


def tiny_config(**overrides):
    config = default_config()
    config.patch_hidden = 16
    config.location_hidden = 16
    config.glimpse_features = 32
    config.core_hidden = 32
    config.num_glimpses = 3
    config.num_epochs = 2
    config.batch_size = 64
    config.mc_samples = 2
    config.eval_batch_size = 200
    config.seed = SEED
    for name, value in overrides.items():
        config[name] = value
    return config


def state_template(config, steps_per_epoch: int):
    """The shapes of a checkpoint's state (every replicate stacked on a leading axis)."""
    model, spec = build_model(config), rollout_spec(config)
    optimizer = make_optimizer(config, steps_per_epoch)

    def stacked():
        state = init_train_state(model, spec, optimizer, jax.random.key(0), (28, 28))
        return jax.tree.map(lambda x: jnp.stack([x] * config.num_seeds), state)

    return jax.eval_shape(stacked)


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


# --------------------------------------------------------------------------------------------
# The helpers


def test_over_replicates_one_replicate_is_the_function_itself():
    def fn(w, x, scale):
        y = jnp.tanh(x @ w) * scale
        return {"y": y, "norm": jnp.sqrt(jnp.sum(y**2))}

    w = jax.random.normal(jax.random.key(0), (1, 5, 3))  # a replicate axis of 1
    x = jax.random.normal(jax.random.key(1), (4, 5))
    mapped = jax.jit(over_replicates(fn, 1, (0, None, None)))(w, x, 0.5)
    direct = jax.jit(fn)(w[0], x, 0.5)
    assert mapped["y"].shape == (1, 4, 3) and mapped["norm"].shape == (1,)
    # Exactly, not approximately: one replicate does not go through vmap.
    np.testing.assert_array_equal(np.asarray(mapped["y"][0]), np.asarray(direct["y"]))
    np.testing.assert_array_equal(np.asarray(mapped["norm"][0]), np.asarray(direct["norm"]))


def test_over_replicates_many_replicates_map_the_leading_axis():
    def fn(w, x):
        return jnp.tanh(x @ w).sum(axis=0)

    w = jax.random.normal(jax.random.key(0), (3, 5, 2))
    x = jax.random.normal(jax.random.key(1), (4, 5))
    mapped = over_replicates(fn, 3, (0, None))(w, x)
    assert mapped.shape == (3, 2)
    for r in range(3):
        np.testing.assert_allclose(mapped[r], fn(w[r], x), rtol=1e-6, atol=1e-6)
    # Each replicate reads its own slice: they differ.
    assert not np.allclose(mapped[0], mapped[1])


@pytest.mark.parametrize("core", ["rnn", "lstm"])
def test_init_replicates_stacks_each_keys_own_state(core):
    config = tiny_config(core=core)
    model, spec = build_model(config), rollout_spec(config)
    optimizer = make_optimizer(config, 10)
    keys = replicate_keys(SEED, 3).init
    stacked = init_replicates(model, spec, optimizer, keys, (28, 28))
    for r in range(3):
        alone = init_train_state(model, spec, optimizer, keys[r], (28, 28))
        assert_trees_equal(replicate(stacked, r), alone)
    leaves = jax.tree.leaves(stacked)
    assert all(leaf.shape[0] == 3 for leaf in leaves)
    # Each replicate drew its own weights (the keys differ), not one state stacked three times.
    core_kernels = [k for k in jax.tree.leaves(stacked.params["core_net"]) if k.ndim == 3]
    assert core_kernels
    assert all(not np.array_equal(k[0], k[1]) for k in core_kernels)


@pytest.mark.parametrize("seed", [0, 7])
def test_replicate_keys_are_the_run_keys_of_consecutive_seeds(seed):
    keys = replicate_keys(seed, 3)
    for field in keys._fields:
        assert getattr(keys, field).shape == (3,)
    for i in range(3):
        single = run_keys(seed + i)
        for field in keys._fields:
            np.testing.assert_array_equal(
                jax.random.key_data(getattr(keys, field)[i]),
                jax.random.key_data(getattr(single, field)),
            )
        # replicate() picks the same keys out of the stacked tree.
        picked = replicate(keys, i)
        np.testing.assert_array_equal(
            jax.random.key_data(picked.step), jax.random.key_data(single.step)
        )
    # The streams differ between seeds and within a seed.
    data = jax.random.key_data(keys.data)
    assert not np.array_equal(data[0], data[1])
    assert not np.array_equal(jax.random.key_data(keys.data[0]), jax.random.key_data(keys.step[0]))


def test_params_file_names():
    assert params_file([3], 0) == "best_params.msgpack"
    assert params_file([3, 4], 0) == "best_params_seed3.msgpack"
    assert params_file([3, 4], 1) == "best_params_seed4.msgpack"


# --------------------------------------------------------------------------------------------
# A 2-seed run


@pytest.fixture(scope="module")
def data() -> Datasets:
    # 640 / 64 = 10 steps per epoch; 200 validation and 200 test images.
    train = dataset(*synthetic_digits(640, seed=0))
    validation = dataset(*synthetic_digits(200, seed=1))
    test = dataset(*synthetic_digits(200, seed=2))
    return Datasets(train, validation, test)


STEPS_PER_EPOCH = 10


@pytest.fixture(scope="module")
def two_seed_run(data, tmp_path_factory):
    config = tiny_config(num_seeds=2)
    workdir = tmp_path_factory.mktemp("two_seeds")
    results = train_and_evaluate(config, workdir, datasets=data)
    return config, workdir, results


@pytest.fixture(scope="module")
def seed_6_run(data, tmp_path_factory):
    """The second replicate of ``two_seed_run``, trained on its own."""
    config = tiny_config(seed=SEED + 1, num_seeds=1)
    workdir = tmp_path_factory.mktemp("seed6")
    results = train_and_evaluate(config, workdir, datasets=data)
    return config, workdir, results


def test_two_seed_run_files(two_seed_run):
    _, workdir, results = two_seed_run
    assert (workdir / "best_params_seed5.msgpack").is_file()
    assert (workdir / "best_params_seed6.msgpack").is_file()
    assert not (workdir / "best_params.msgpack").exists()
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["seed"] == SEED
    assert on_disk["seeds"] == [5, 6]
    assert [run["seed"] for run in on_disk["runs"]] == [5, 6]
    assert on_disk["epochs"] == 2
    assert on_disk["config"]["num_seeds"] == 2


def test_two_seed_results_are_the_means_of_the_runs(two_seed_run):
    _, _, results = two_seed_run
    runs = results["runs"]
    assert len(runs) == 2
    for name in ("val_error_pct", "val_error_mc_pct", "test_error_pct", "test_error_mc_pct"):
        values = [run[name] for run in runs]
        assert all(0.0 <= v <= 100.0 for v in values), (name, values)
        assert results[name] == pytest.approx((values[0] + values[1]) / 2, abs=1e-4), name
    assert results["best_epoch"] == [run["best_epoch"] for run in runs]
    assert results["mc_samples"] == 2


def test_two_seed_metrics_and_best_epochs(two_seed_run):
    config, workdir, results = two_seed_run
    records = checkpoint.read_jsonl(workdir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [10, 20]
    template = state_template(config, STEPS_PER_EPOCH)
    for r in records:
        per_seed = r["per_seed"]
        assert len(per_seed["loss"]) == len(per_seed["val_error_pct"]) == 2
        assert r["loss"] == pytest.approx(np.mean(per_seed["loss"]), rel=1e-6)
        assert r["val_error_pct"] == pytest.approx(np.mean(per_seed["val_error_pct"]), rel=1e-9)
        # Each replicate processed 64 images per step: 2 x 640 images in the epoch.
        assert r["train_images_per_s"] == pytest.approx(2 * 640 / r["train_seconds"], rel=1e-6)
    for index, run in enumerate(results["runs"]):
        val_errors = [r["per_seed"]["val_error_pct"][index] for r in records]
        # The first epoch with the lowest validation error (later ties do not replace it).
        assert run["best_epoch"] == int(np.argmin(val_errors)) + 1
        assert run["val_error_pct"] == min(val_errors)
        # Its parameters file holds that epoch's parameters of that replicate.
        state, _ = restore(workdir, run["best_epoch"], template)
        saved = checkpoint.load_params(
            workdir, replicate(state.params, index), f"best_params_seed{run['seed']}.msgpack"
        )
        assert_trees_equal(saved, replicate(state.params, index))
    final, meta = restore(workdir, 2, template)
    assert meta["best_epoch"] == results["best_epoch"]
    assert np.asarray(final.step).tolist() == [20, 20]
    assert not np.allclose(
        np.asarray(final.params["core_net"]["input"]["kernel"][0]),
        np.asarray(final.params["core_net"]["input"]["kernel"][1]),
    )


def test_replicate_matches_a_single_seed_run(two_seed_run, seed_6_run):
    config_2, workdir_2, results_2 = two_seed_run
    config_1, workdir_1, results_1 = seed_6_run
    state_2, _ = restore(workdir_2, 2, state_template(config_2, STEPS_PER_EPOCH))
    state_1, _ = restore(workdir_1, 2, state_template(config_1, STEPS_PER_EPOCH))
    # Same initial parameters, data order and episodes: only float rounding may differ.
    chex.assert_trees_all_close(
        replicate(state_2.params, 1), replicate(state_1.params, 0), atol=1e-4, rtol=1e-4
    )
    # ... while replicate 0 (seed 5) is another run: the comparison can tell runs apart.
    seed_5 = np.asarray(state_2.params["core_net"]["input"]["kernel"][0])
    seed_6 = np.asarray(state_1.params["core_net"]["input"]["kernel"][0])
    assert np.max(np.abs(seed_5 - seed_6)) > 1e-2
    records_2 = checkpoint.read_jsonl(workdir_2 / "metrics.jsonl")
    records_1 = checkpoint.read_jsonl(workdir_1 / "metrics.jsonl")
    for r2, r1 in zip(records_2, records_1, strict=True):
        assert r2["per_seed"]["loss"][1] == pytest.approx(r1["loss"], rel=1e-3)
        assert r2["per_seed"]["accuracy"][1] == pytest.approx(r1["accuracy"], abs=2e-3)
        assert abs(r2["per_seed"]["val_error_pct"][1] - r1["val_error_pct"]) <= 0.5
    assert results_1["seeds"] == [6]
    run = results_2["runs"][1]
    assert run["seed"] == 6
    for name in ("val_error_pct", "test_error_pct"):
        assert abs(run[name] - results_1[name]) <= 0.5, name


def test_evaluate_workdir_reproduces_each_seed(two_seed_run, data):
    _, workdir, results = two_seed_run
    report = evaluate_workdir(workdir, mc_samples=2, datasets=data)
    assert [run["seed"] for run in report["runs"]] == [5, 6]
    for mine, trained in zip(report["runs"], results["runs"], strict=True):
        for name in ("val_error_pct", "val_error_mc_pct", "test_error_pct", "test_error_mc_pct"):
            assert mine[name] == trained[name], (mine["seed"], name)
    for name in ("val_error_pct", "test_error_pct", "test_error_mc_pct"):
        assert report[name] == results[name], name


def test_resumed_two_seed_run_matches_uninterrupted(
    two_seed_run, data, tmp_path, monkeypatch, capsys
):
    config, workdir_a, results_a = two_seed_run
    workdir_b = tmp_path / "resumed"
    original_save = checkpoint.CheckpointStore.save
    calls = []

    def save_then_die(self, epoch, state, meta):
        calls.append(epoch)
        if epoch == 2:  # killed after epoch 1's checkpoint, before epoch 2's
            raise KeyboardInterrupt("simulated kill")
        return original_save(self, epoch, state, meta)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.CheckpointStore, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(tiny_config(num_seeds=2), workdir_b, datasets=data)
    assert calls == [1, 2]
    assert not (workdir_b / "results.json").exists()

    capsys.readouterr()
    results_b = train_and_evaluate(tiny_config(num_seeds=2), workdir_b, datasets=data)
    assert "resuming" in capsys.readouterr().out

    records_a = checkpoint.read_jsonl(workdir_a / "metrics.jsonl")
    records_b = checkpoint.read_jsonl(workdir_b / "metrics.jsonl")
    assert without_timing(records_b) == without_timing(records_a)
    template = state_template(config, STEPS_PER_EPOCH)
    state_a, meta_a = restore(workdir_a, 2, template)
    state_b, meta_b = restore(workdir_b, 2, template)
    assert_trees_equal(state_b, state_a)  # bit for bit, both replicates
    assert meta_b["best_epoch"] == meta_a["best_epoch"]
    assert meta_b["best_val_error_pct"] == meta_a["best_val_error_pct"]
    for seed in (5, 6):
        name = f"best_params_seed{seed}.msgpack"
        assert (workdir_b / name).read_bytes() == (workdir_a / name).read_bytes()
    for name in ("seeds", "epochs", "best_epoch", "val_error_pct", "test_error_pct",
                 "test_error_mc_pct", "runs"):  # fmt: skip
        assert results_b[name] == results_a[name], name


# --------------------------------------------------------------------------------------------
# A generated task: 28x28 digits in, 60x60 canvases to the model


@pytest.fixture
def seen_shapes(monkeypatch):
    """The image batches the training loss hands to the rollout (recorded when traced)."""
    shapes = []
    original = train_module.rollout

    def recording(model, params, images, key, spec, **kwargs):
        shapes.append((tuple(images.shape), str(images.dtype)))
        return original(model, params, images, key, spec, **kwargs)

    monkeypatch.setattr(train_module, "rollout", recording)
    return shapes


def translated_config(**overrides):
    return tiny_config(
        task="translated60", glimpse_size=12, glimpse_scales=3, num_glimpses=2, **overrides
    )


def test_train_and_evaluate_on_translated60(tmp_path, seen_shapes, monkeypatch):
    # The training set holds 28x28 digits (as load_datasets gives them for a generated task);
    # validation and test hold fixed 60x60 canvases made with tasks.fixed_set.
    task = get_task("translated60")
    digits = dataset(*synthetic_digits(640, seed=5))

    def canvases(seed: int, split: str) -> Dataset:
        images, labels = synthetic_digits(100, seed=seed)
        return dataset(fixed_set(task, images, images, seed=0, split=split), labels)

    data = Datasets(digits, canvases(6, "validation"), canvases(7, "test"))
    assert data.train.images.shape == (640, 28, 28)
    assert data.validation.images.shape == data.test.images.shape == (100, 60, 60)

    original = train_module.make_train_chunk
    chunks = []

    def recording_chunk(*args, **kwargs):
        chunks.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_train_chunk", recording_chunk)
    config = translated_config(num_epochs=1, warmup_epochs=0, eval_batch_size=100)
    results = train_and_evaluate(config, tmp_path, datasets=data)
    # One jitted span per epoch, told the task, fed the 28x28 digits ...
    assert [(c["task"], c["num_steps"], c["batch_size"]) for c in chunks] == [(task, 10, 64)]
    # ... and the RAM read 60x60 canvases made from them, framed by the retina's zero margin
    # (traced once).
    margin = train_module.training_image_margin(config, task)
    assert margin > 0 and chunks[0]["image_margin"] == margin
    assert seen_shapes == [((64, 60 + 2 * margin, 60 + 2 * margin), "uint8")]
    assert results["task"] == "translated60"
    assert results["epochs"] == 1
    for name in ("val_error_pct", "test_error_pct", "test_error_mc_pct"):
        assert 0.0 <= results[name] <= 100.0, name
    records = checkpoint.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [10]
    assert np.isfinite(records[0]["loss"])


@pytest.mark.parametrize("rollouts", [1, 2, 3])
def test_rollouts_per_image_repeat_each_image(rollouts, monkeypatch):
    seen = {}

    def recording_step(model, spec, weights, optimizer, **kwargs):
        def step(carry, images, labels, key, global_step):
            seen["shape"] = images.shape
            # Consecutive groups of `rollouts` episodes must share their image and label.
            grouped = images.reshape(-1, rollouts, *images.shape[1:])
            same = jnp.all(grouped == grouped[:, :1]) & jnp.all(
                labels.reshape(-1, rollouts) == labels.reshape(-1, rollouts)[:, :1]
            )
            distinct = jnp.any(grouped[1:, 0] != grouped[:-1, 0])
            return carry, {"same": same, "distinct": distinct}

        return step

    monkeypatch.setattr(train_module, "make_train_step", recording_step)
    batch, steps = 4, 3
    # Every image distinct (its index written in pixel [0, 0]); labels follow the index.
    images = (
        jnp.zeros((batch * steps, 28, 28), jnp.uint8)
        .at[:, 0, 0]
        .set(jnp.arange(1, 13, dtype=jnp.uint8))
    )
    data = train_module.Dataset(images, jnp.arange(batch * steps, dtype=jnp.int32) % 10)
    chunk = train_module.make_train_chunk(
        None, None, None, None, batch_size=batch, num_steps=steps, steps_per_epoch=steps,
        rollouts_per_image=rollouts,
    )  # fmt: skip
    carry = train_module.LoopCarry(None, jnp.array(-1, jnp.int32))
    _, metrics = chunk(carry, data, jax.random.key(0), jax.random.key(1), 0, 0)
    assert seen["shape"] == (batch * rollouts, 28, 28)
    assert bool(metrics["same"].all())
    assert bool(metrics["distinct"].all())


@pytest.mark.parametrize("advantage", ["learned_baseline", "leave_one_out"])
def test_chunk_hands_the_step_its_groups(advantage, monkeypatch):
    seen = {}

    def recording_step(model, spec, weights, optimizer, **kwargs):
        seen.update(kwargs)
        return lambda carry, images, labels, key, global_step: (carry, {})

    monkeypatch.setattr(train_module, "make_train_step", recording_step)
    train_module.make_train_chunk(
        None, None, None, None, batch_size=4, num_steps=1, steps_per_epoch=1,
        rollouts_per_image=3, advantage=advantage,
    )  # fmt: skip
    assert seen["advantage"] == advantage
    assert seen["group_size"] == 3


def test_replicates_keep_their_own_soft_targets(data, tmp_path):
    # temporal_ensemble_weight: the per-image table is part of each replicate's state, so
    # replicate 1 of a two-seed run holds the table of seed 6 trained alone.
    fields = dict(mean_episode_fraction=0.25, temporal_ensemble_weight=1.0)
    config_2 = tiny_config(num_seeds=2, **fields)
    config_1 = tiny_config(seed=SEED + 1, num_seeds=1, **fields)
    train_and_evaluate(config_2, tmp_path / "two", datasets=data)
    train_and_evaluate(config_1, tmp_path / "one", datasets=data)
    tables = []
    for config, name in ((config_2, "two"), (config_1, "one")):
        template = state_template(config, STEPS_PER_EPOCH)
        rows = jax.ShapeDtypeStruct((config.num_seeds, 640, config.num_classes + 1), jnp.float32)
        state, _ = restore(tmp_path / name, 2, template.replace(soft_targets=rows))
        tables.append(np.asarray(state.soft_targets))
    two, one = tables
    assert two.shape == (2, 640, 11) and one.shape == (1, 640, 11)
    np.testing.assert_allclose(two[1], one[0], atol=1e-4)
    assert np.max(np.abs(two[0] - one[0])) > 1e-2  # seed 5's table is another run's
    assert (one[0, :, -1] > 0).mean() > 0.5  # most images were sampled at least once
