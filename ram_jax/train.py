"""Training: optimiser from the config, a jitted step, spans of steps fused in ``lax.scan``,
per-epoch validation and checkpoints, and the final report.

The run is a function of ``config.seed``: one root key is split into fixed streams (parameters,
data order, training steps, evaluation); the data order of epoch ``e`` comes from
``fold_in(data_key, e)`` and step ``s`` samples with ``fold_in(step_key, s)``. A run killed and
resumed from its last epoch checkpoint therefore ends in the same state as one never stopped.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ram_jax import checkpoint, evaluation
from ram_jax.augment import random_shift
from ram_jax.config import config_differences, config_from_saved, validate_config
from ram_jax.losses import LossWeights, hybrid_loss
from ram_jax.networks import RAM
from ram_jax.progress import Progress, format_seconds
from ram_jax.rollout import RolloutSpec, rollout

__all__ = [
    "Dataset",
    "LoopCarry",
    "RunKeys",
    "TrainState",
    "build_model",
    "describe_device",
    "evaluate_params",
    "evaluate_workdir",
    "init_train_state",
    "load_datasets",
    "loss_weights",
    "make_optimizer",
    "make_train_chunk",
    "make_train_step",
    "rollout_spec",
    "run_keys",
    "train_and_evaluate",
]


@flax.struct.dataclass
class TrainState:
    """Everything the optimisation carries from one step to the next."""

    step: jax.Array  # int32[], number of updates applied
    params: Any
    opt_state: Any


class LoopCarry(NamedTuple):
    """The ``lax.scan`` carry of a span of training steps."""

    state: TrainState
    # int32[]: the global step whose loss or gradient was first non-finite, or -1. Once set, no
    # further update is applied, so ``state`` stays the last good one.
    halted_at: jax.Array


class Dataset(NamedTuple):
    """Images u8[N, H, W] and labels int32[N], resident on the device."""

    images: jax.Array
    labels: jax.Array


class Datasets(NamedTuple):
    train: Dataset
    validation: Dataset | None
    test: Dataset


class RunKeys(NamedTuple):
    init: jax.Array
    data: jax.Array
    step: jax.Array
    eval: jax.Array


def run_keys(seed: int) -> RunKeys:
    return RunKeys(*jax.random.split(jax.random.key(seed), 4))


def build_model(config: ml_collections.ConfigDict) -> RAM:
    return RAM(
        num_classes=config.num_classes,
        patch_hidden=config.patch_hidden,
        location_hidden=config.location_hidden,
        glimpse_features=config.glimpse_features,
        core=config.core,
        core_hidden=config.core_hidden,
    )


def rollout_spec(config: ml_collections.ConfigDict) -> RolloutSpec:
    return RolloutSpec(
        num_glimpses=config.num_glimpses,
        size=config.glimpse_size,
        scales=config.glimpse_scales,
        factor=config.glimpse_factor,
        loc_std=float(config.loc_std),
        reinforce_through_core=config.reinforce_through_core,
        random_first_glimpse=config.random_first_glimpse,
    )


def loss_weights(config: ml_collections.ConfigDict) -> LossWeights:
    return LossWeights(
        classification=config.classification_weight,
        reinforce=config.reinforce_weight,
        baseline=config.baseline_weight,
    )


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """Clipping (optional), then Adam or momentum SGD under a warmup + constant/cosine schedule."""
    total = config.num_epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(config.learning_rate, max(1, total - warmup))
    else:
        main = optax.constant_schedule(config.learning_rate)
    if warmup > 0:
        ramp = optax.linear_schedule(0.0, config.learning_rate, warmup)
        schedule = optax.join_schedules([ramp, main], [warmup])
    else:
        schedule = main
    if config.optimizer == "adam":
        opt = optax.adam(schedule)
    else:
        opt = optax.sgd(schedule, momentum=config.momentum)
    if config.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    return opt


def init_train_state(
    model: RAM,
    spec: RolloutSpec,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, ...],
) -> TrainState:
    """Fresh parameters and optimiser state. ``image_shape`` is (H, W) or (H, W, C)."""
    channels = image_shape[2] if len(image_shape) == 3 else 1
    patches = jnp.zeros((1, spec.scales, spec.size, spec.size, channels), jnp.float32)
    params = model.init(key, patches, jnp.zeros((1, 2), jnp.float32))["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def make_train_step(
    model: RAM,
    spec: RolloutSpec,
    weights: LossWeights,
    optimizer: optax.GradientTransformation,
) -> Callable[[LoopCarry, jax.Array, jax.Array, jax.Array, jax.Array], tuple[LoopCarry, dict]]:
    """``train_step(carry, images, labels, key, global_step) -> (carry, metrics)``, pure.

    A non-finite loss or gradient leaves the state untouched and records ``global_step`` in
    ``carry.halted_at``; every later step is then a no-op.
    """

    def loss_fn(params, images, labels, key):
        traj = rollout(model, params, images, key, spec, mode="sample")
        return hybrid_loss(traj, labels, weights)

    def train_step(carry, images, labels, key, global_step):
        state = carry.state
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, images, labels, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite & (carry.halted_at < 0)
        new_state = TrainState(state.step + 1, params, opt_state)
        state = jax.tree.map(lambda new, old: jnp.where(apply, new, old), new_state, state)
        halted_at = jnp.where((carry.halted_at < 0) & ~finite, global_step, carry.halted_at)
        metrics["grad_norm"] = grad_norm
        return LoopCarry(state, halted_at.astype(jnp.int32)), metrics

    return train_step


def make_train_chunk(
    model: RAM,
    spec: RolloutSpec,
    weights: LossWeights,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    num_steps: int,
    steps_per_epoch: int,
    max_shift: int = 0,
) -> Callable[..., tuple[LoopCarry, dict]]:
    """A pure function running ``num_steps`` training steps of one epoch in a ``lax.scan``.

    ``train_chunk(carry, data, data_key, step_key, epoch, first_step) -> (carry, metrics)``:
    the epoch's data order is ``permutation(fold_in(data_key, epoch))``; the span covers its
    batches ``first_step .. first_step + num_steps - 1``; metrics are stacked per step.
    ``max_shift > 0`` moves each training image by a random offset (``augment.random_shift``).
    """
    train_step = make_train_step(model, spec, weights, optimizer)

    def train_chunk(carry, data: Dataset, data_key, step_key, epoch, first_step):
        order = jax.random.permutation(jax.random.fold_in(data_key, epoch), len(data.labels))

        def body(carry, i):
            batch_index = first_step + i
            idx = jax.lax.dynamic_slice_in_dim(order, batch_index * batch_size, batch_size)
            global_step = epoch * steps_per_epoch + batch_index
            key = jax.random.fold_in(step_key, global_step)
            images = data.images[idx]
            if max_shift:
                # A stream of its own, so runs without shifts keep their keys.
                images = random_shift(jax.random.fold_in(key, 1), images, max_shift)
                key = jax.random.fold_in(key, 0)
            return train_step(carry, images, data.labels[idx], key, global_step)

        return jax.lax.scan(body, carry, jnp.arange(num_steps))

    return train_chunk


# --------------------------------------------------------------------------------------------
# Data


def load_datasets(config: ml_collections.ConfigDict) -> Datasets:
    """The task's train / validation / test sets, on the default device."""
    from ram_jax.data import load_mnist, split_train_validation

    arrays = load_mnist(
        config.data_dir, backend=config.data_backend, tfds_data_dir=config.tfds_data_dir
    )
    (train_x, train_y), (val_x, val_y) = split_train_validation(
        arrays.train_images, arrays.train_labels, config.validation_size
    )
    if config.train_subset:
        train_x, train_y = train_x[: config.train_subset], train_y[: config.train_subset]
    if len(train_y) < config.batch_size:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {len(train_y)} training images"
        )

    def put(x, y):
        return Dataset(jax.device_put(x), jax.device_put(y.astype(np.int32)))

    validation = put(val_x, val_y) if config.validation_size else None
    return Datasets(put(train_x, train_y), validation, put(arrays.test_images, arrays.test_labels))


# --------------------------------------------------------------------------------------------
# Reporting


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device() -> str:
    devices = jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        kind = f"{_cpu_model()} ({os.cpu_count()} cores)"
    return f"{jax.default_backend()}: {kind} x{len(devices)}"


def git_commit() -> str:
    here = pathlib.Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _chunk_steps(steps_per_epoch: int, requested: int) -> int:
    """The largest divisor of ``steps_per_epoch`` not above ``requested`` (0: the whole epoch).

    Every span of an epoch then has the same length, so the span compiles once.
    """
    if requested <= 0 or requested >= steps_per_epoch:
        return steps_per_epoch
    return max(d for d in range(1, requested + 1) if steps_per_epoch % d == 0)


# --------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    datasets: Datasets | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) a RAM in ``workdir`` and writes ``results.json``; returns its content.

    ``datasets`` may be given to skip loading (tests); otherwise ``load_datasets(config)``.
    """
    validate_config(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_dict = config.to_dict()
    trained = (workdir / "metrics.jsonl").exists() or (workdir / "checkpoints").exists()
    if trained and config_path.exists():
        previous = json.loads(config_path.read_text())
        changed = config_differences(previous, config_dict)
        if changed:
            raise ValueError(
                f"{workdir} holds a run with a different config (fields {changed}); "
                "use a new --workdir, or the same config to resume"
            )

    start = time.perf_counter()
    commit = git_commit()  # the code that runs, even if the checkout changes before the end
    data = datasets if datasets is not None else load_datasets(config)
    # Written once the data loaded: a run that failed before training binds the workdir to nothing.
    checkpoint.atomic_write_json(config_path, config_dict)
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    steps_per_epoch = len(data.train.labels) // config.batch_size
    optimizer = make_optimizer(config, steps_per_epoch)
    keys = run_keys(config.seed)
    state = init_train_state(model, spec, optimizer, keys.init, data.train.images.shape[1:])

    store = checkpoint.CheckpointStore(workdir / "checkpoints")
    meta = {"epoch": 0, "best_epoch": 0, "best_val_error_pct": None, "train_seconds": 0.0}
    latest = store.latest_epoch()
    if latest is not None:
        state, meta = store.restore(latest, state)
        print(f"resuming {workdir} from epoch {meta['epoch']}", flush=True)
    metrics_path = workdir / "metrics.jsonl"
    # Epochs logged after the restored checkpoint were lost with the process: drop them.
    history = [r for r in checkpoint.read_jsonl(metrics_path) if r["epoch"] <= meta["epoch"]]
    checkpoint.atomic_write_bytes(
        metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history).encode()
    )

    chunk = _chunk_steps(steps_per_epoch, config.steps_per_dispatch)
    train_chunk = jax.jit(
        make_train_chunk(
            model,
            spec,
            weights,
            optimizer,
            batch_size=config.batch_size,
            num_steps=chunk,
            steps_per_epoch=steps_per_epoch,
            max_shift=config.train_shift,
        )
    )
    carry = LoopCarry(state, jnp.array(-1, jnp.int32))
    progress = Progress(config.num_epochs * steps_per_epoch, meta["epoch"] * steps_per_epoch)
    first_epoch = meta["epoch"]
    timed_images, timed_seconds = 0, 0.0  # epochs after this process's first (which compiles)
    for epoch in range(first_epoch, config.num_epochs):
        epoch_start = time.perf_counter()
        sums: dict[str, float] = {}
        for first in range(0, steps_per_epoch, chunk):
            carry, step_metrics = train_chunk(carry, data.train, keys.data, keys.step, epoch, first)
            step_metrics = jax.device_get(step_metrics)
            halted_at = int(carry.halted_at)
            if halted_at >= 0:
                checkpoint.save_params(workdir, carry.state.params, "last_good_params.msgpack")
                progress.close()
                store.close()
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {halted_at} (epoch {epoch + 1}); "
                    f"training stopped. The last good parameters are in "
                    f"{workdir / 'last_good_params.msgpack'}, the last epoch checkpoint "
                    f"(epoch {meta['epoch']}) in {workdir / 'checkpoints'}. Lower the learning "
                    "rate or set clip_norm, then train in a new workdir."
                )
            for name, values in step_metrics.items():
                sums[name] = sums.get(name, 0.0) + float(np.sum(values))
            done = epoch * steps_per_epoch + first + chunk
            progress.update(
                done,
                f"epoch {epoch + 1}/{config.num_epochs} "
                f"loss {float(np.mean(step_metrics['loss'])):.3f}",
            )
        train_seconds = time.perf_counter() - epoch_start
        record = {name: total / steps_per_epoch for name, total in sums.items()}
        record.update(
            epoch=epoch + 1,
            step=int(carry.state.step),
            train_seconds=train_seconds,
            train_images_per_s=steps_per_epoch * config.batch_size / train_seconds,
        )
        if epoch > first_epoch:
            timed_images += steps_per_epoch * config.batch_size
            timed_seconds += train_seconds
        if data.validation is not None:
            val_error = evaluation.error_pct(
                model,
                carry.state.params,
                data.validation.images,
                data.validation.labels,
                spec,
                batch_size=config.eval_batch_size,
            )
            record["val_error_pct"] = val_error
            best = meta["best_val_error_pct"]
            if best is None or val_error < best:
                meta.update(best_val_error_pct=val_error, best_epoch=epoch + 1)
                checkpoint.save_params(workdir, carry.state.params)
        else:
            meta.update(best_epoch=epoch + 1)
            checkpoint.save_params(workdir, carry.state.params)
        meta["epoch"] = epoch + 1
        meta["train_seconds"] += train_seconds
        checkpoint.append_jsonl(metrics_path, record)
        store.save(epoch + 1, carry.state, meta)
        progress.update(
            (epoch + 1) * steps_per_epoch,
            f"epoch {epoch + 1}/{config.num_epochs} loss {record['loss']:.3f} "
            f"train acc {100 * record['accuracy']:.2f}% "
            + (f"val err {record['val_error_pct']:.2f}% " if "val_error_pct" in record else "")
            + f"{record['train_images_per_s']:,.0f} img/s",
        )
    progress.close()
    store.close()

    best_params = checkpoint.load_params(workdir, carry.state.params)
    report = evaluate_params(
        model,
        best_params,
        spec,
        data,
        keys.eval,
        batch_size=config.eval_batch_size,
        mc_samples=config.mc_samples,
    )
    results = {
        "task": config.task,
        "num_glimpses": config.num_glimpses,
        "seed": config.seed,
        "epochs": meta["epoch"],
        "best_epoch": meta["best_epoch"],
        **report,
        "train_seconds": meta["train_seconds"],
        "train_images_per_s": timed_images / timed_seconds if timed_seconds else None,
        "wall_seconds_this_process": time.perf_counter() - start,
        "device": describe_device(),
        "commit": commit,
        "jax_version": jax.__version__,
        "config": config_dict,
    }
    checkpoint.atomic_write_json(workdir / "results.json", results)
    print(
        f"done: best epoch {results['best_epoch']}, val {results['val_error_pct']}%, "
        f"test {results['test_error_pct']:.2f}% (MC{config.mc_samples} "
        f"{results['test_error_mc_pct']:.2f}%), training time "
        f"{format_seconds(meta['train_seconds'])}",
        flush=True,
    )
    return results


def evaluate_params(
    model: RAM,
    params,
    spec: RolloutSpec,
    data: Datasets,
    key: jax.Array,
    *,
    batch_size: int,
    mc_samples: int,
) -> dict[str, Any]:
    """Validation and test error, deterministic and Monte-Carlo, as a flat dict of percentages."""
    val_key, test_key = jax.random.split(key)

    def errors(dataset: Dataset, mc_key: jax.Array) -> tuple[float, float]:
        det = evaluation.error_pct(
            model, params, dataset.images, dataset.labels, spec, batch_size=batch_size
        )
        mc = evaluation.error_pct(
            model,
            params,
            dataset.images,
            dataset.labels,
            spec,
            key=mc_key,
            batch_size=batch_size,
            mc_samples=mc_samples,
        )
        return det, mc

    val_det = val_mc = None
    if data.validation is not None:
        val_det, val_mc = errors(data.validation, val_key)
    test_det, test_mc = errors(data.test, test_key)
    return {
        "val_error_pct": val_det,
        "val_error_mc_pct": val_mc,
        "test_error_pct": test_det,
        "test_error_mc_pct": test_mc,
        "mc_samples": mc_samples,
    }


def evaluate_workdir(
    workdir: str | os.PathLike,
    *,
    mc_samples: int = 10,
    data_dir: str | None = None,
    datasets: Datasets | None = None,
) -> dict[str, Any]:
    """Re-evaluates the best parameters saved in ``workdir`` (deterministic and Monte-Carlo)."""
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    config = config_from_saved(json.loads(config_path.read_text()))
    if data_dir is not None:
        config.data_dir = data_dir
    config.mc_samples = mc_samples
    validate_config(config)
    data = datasets if datasets is not None else load_datasets(config)
    model, spec = build_model(config), rollout_spec(config)
    keys = run_keys(config.seed)
    target = init_train_state(
        model, spec, optax.identity(), keys.init, data.train.images.shape[1:]
    ).params
    params = checkpoint.load_params(workdir, target)
    report = evaluate_params(
        model,
        params,
        spec,
        data,
        keys.eval,
        batch_size=config.eval_batch_size,
        mc_samples=mc_samples,
    )
    return {"task": config.task, "num_glimpses": config.num_glimpses, **report}
