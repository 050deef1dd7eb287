"""Run by tests/test_parallel.py in a fresh process with 8 fake CPU devices (the XLA flag must be
set before JAX starts). Prints one JSON line of what the test checks."""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ram_jax import parallel, train
from ram_jax.config import default_config


def tiny_config(**overrides):
    config = default_config()
    config.update(
        # SGD, not Adam: two ways of summing the same gradients differ in their last bits, and
        # Adam's first steps turn a near-zero gradient's sign into a whole learning-rate step
        # (measured: parameters 2e-3 apart after four steps with Eigen's products), where SGD
        # keeps the difference at the size of the rounding.
        optimizer="sgd",
        learning_rate=0.01,
        patch_hidden=16,
        location_hidden=16,
        glimpse_features=32,
        core_hidden=32,
        num_glimpses=3,
        batch_size=16,
        num_epochs=2,
        warmup_epochs=0,
        validation_size=0,
        mc_samples=2,
        eval_batch_size=64,
        **overrides,
    )
    return config


def synthetic(key, n):
    images = jax.random.randint(key, (n, 28, 28), 0, 256).astype(jnp.uint8)
    labels = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, 10)
    return train.Dataset(images, labels.astype(jnp.int32))


def run_span(config, data, mesh, num_steps):
    model, spec = train.build_model(config), train.rollout_spec(config)
    optimizer = train.make_optimizer(config, num_steps)
    keys = train.run_keys(config.seed)
    state = train.init_train_state(model, spec, optimizer, keys.init, (28, 28))
    if config.temporal_ensemble_weight > 0:
        rows = jnp.zeros((len(data.labels), config.num_classes + 1), jnp.float32)
        state = state.replace(soft_targets=rows)
    chunk = train.make_train_chunk_for(
        config, model, spec, optimizer, num_steps=num_steps, steps_per_epoch=num_steps, mesh=mesh
    )
    carry = train.LoopCarry(state, jnp.array(-1, jnp.int32))
    if mesh is not None:
        carry, data = parallel.replicate_on(mesh, (carry, data))
    jitted = jax.jit(chunk)
    args = (carry, data, keys.data, keys.step, 0, 0)
    hlo = jitted.lower(*args).compile().as_text()
    carry, metrics = jitted(*args)
    return carry, metrics, hlo


def main() -> None:
    task = sys.argv[1] if len(sys.argv) > 1 else "mnist28"
    overrides = {}
    if task == "mnist28_temporal_ensemble":
        # Per-image soft targets: a table gathered and scattered by the sharded batch's rows.
        overrides = dict(mean_episode_fraction=0.25, temporal_ensemble_weight=1.0)
    elif task != "mnist28":
        overrides = dict(task=task, glimpse_size=12, glimpse_scales=3)
    config = tiny_config(**overrides)
    data = synthetic(jax.random.key(1), 4 * config.batch_size)
    single, single_metrics, _ = run_span(config, data, None, 4)
    mesh = parallel.data_mesh()
    sharded, sharded_metrics, hlo = run_span(config, data, mesh, 4)
    diffs = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b)))),
        single.state.params,
        sharded.state.params,
    )
    leaf = jax.tree.leaves(sharded.state.params)[0]
    soft_diff = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        single.state.soft_targets,
        sharded.state.soft_targets,
    )
    # The whole run on 8 devices: checkpoints, resume-free path, evaluation.
    with tempfile.TemporaryDirectory() as workdir:
        datasets = train.Datasets(data, None, synthetic(jax.random.key(2), 64))
        results = train.train_and_evaluate(config, workdir, datasets=datasets)
        metric_lines = len((pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines())
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "mesh_devices": int(mesh.devices.size),
                "max_param_diff": max(jax.tree.leaves(diffs)),
                # null without soft targets; else the largest difference of the two tables
                "max_soft_target_diff": soft_diff,
                "soft_targets_filled": bool(
                    single.state.soft_targets is not None
                    and np.asarray(single.state.soft_targets)[:, -1].max() > 0
                ),
                "loss_single": np.asarray(single_metrics["loss"]).tolist(),
                "loss_sharded": np.asarray(sharded_metrics["loss"]).tolist(),
                "all_reduce_in_hlo": "all-reduce" in hlo,
                "params_replicated": leaf.sharding.is_fully_replicated,
                "param_devices": len(leaf.sharding.device_set),
                "full_run_epochs": results["epochs"],
                "full_run_metric_lines": metric_lines,
                "full_run_device": results["device"],
                "num_epochs": config.num_epochs,
                "task": task,
            }
        )
    )


if __name__ == "__main__":
    main()
