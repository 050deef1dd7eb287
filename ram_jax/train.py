"""Training: optimiser from the config, a jitted step, spans of steps fused in ``lax.scan``,
per-epoch validation and checkpoints, and the final report.

The run is a function of ``config.seed``: one root key is split into fixed streams (parameters,
data order, training steps, evaluation); the data order of epoch ``e`` comes from
``fold_in(data_key, e)`` and step ``s`` samples with ``fold_in(step_key, s)``. A run killed and
resumed from its last epoch checkpoint therefore ends in the same state as one never stopped.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import subprocess
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from ram_jax import checkpoint, evaluation, parallel, xla_workarounds
from ram_jax.augment import random_affine, random_shift
from ram_jax.baselines import Convolutional, FullyConnected, classifier_loss
from ram_jax.config import config_differences, config_from_saved, validate_config
from ram_jax.glimpse import glimpse_pad
from ram_jax.losses import LossWeights, hybrid_loss
from ram_jax.networks import RAM
from ram_jax.progress import Progress, format_seconds
from ram_jax.rollout import RolloutSpec, rollout, to_float_images
from ram_jax.tasks import Placement, TaskSpec, fixed_set_with_placement, get_task, make_batch

__all__ = [
    "Dataset",
    "LoopCarry",
    "ParamsEmaState",
    "RunKeys",
    "TrainState",
    "build_model",
    "describe_device",
    "evaluate_params",
    "evaluate_workdir",
    "fixed_canvases",
    "init_replicates",
    "init_train_state",
    "load_datasets",
    "loss_weights",
    "make_loss_fn",
    "make_optimizer",
    "make_train_chunk",
    "make_train_chunk_for",
    "make_train_step",
    "over_replicates",
    "params_ema",
    "params_file",
    "replicate",
    "replicate_keys",
    "rollout_spec",
    "run_keys",
    "selected_params",
    "train_and_evaluate",
]


@flax.struct.dataclass
class TrainState:
    """Everything the optimisation carries from one step to the next."""

    step: jax.Array  # int32[], number of updates applied
    params: Any
    opt_state: Any
    # With ``temporal_ensemble_weight > 0``: f32[N, K + 1], for each training image the moving
    # average of its sampled episodes' class probabilities and, in the last column, the same
    # average of 1 (so row / last column is the bias-corrected mean; 0 before the first visit).
    # None otherwise, which leaves the checkpoint's structure as before the option.
    soft_targets: Any = None


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


Model = RAM | FullyConnected | Convolutional
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# ``results.json["seconds_this_process"]``: loading the data; the training spans (the first
# epoch's, which compiles, also on its own); per-epoch validation and bookkeeping; metrics,
# checkpoints and best-parameter files; the final test and Monte-Carlo evaluation; the rest
# (setup, restoring, compiling the initialisation). All but ``first_epoch_train`` sum to the
# process's wall time.
PHASES = (
    "load_data",
    "train",
    "first_epoch_train",
    "validate",
    "checkpoint",
    "final_evaluation",
    "other",
)


def build_model(config: ml_collections.ConfigDict) -> Model:
    """The RAM, or the fully connected / convolutional baseline, that ``config.model`` names."""
    dtype = COMPUTE_DTYPES[config.compute_dtype]
    if config.model == "fc":
        return FullyConnected(hidden=config.fc_hidden, num_classes=config.num_classes, dtype=dtype)
    if config.model == "conv":
        return Convolutional(
            filters=config.conv_filters,
            kernel=config.conv_kernel,
            stride=config.conv_stride,
            hidden=config.conv_hidden,
            num_classes=config.num_classes,
            dtype=dtype,
        )
    return RAM(
        num_classes=config.num_classes,
        patch_hidden=config.patch_hidden,
        location_hidden=config.location_hidden,
        glimpse_features=config.glimpse_features,
        core=config.core,
        core_hidden=config.core_hidden,
        recurrent_init=config.recurrent_init,
        location_mlp=config.location_mlp,
        action_mlp=config.action_mlp,
        pixel_mean=float(config.pixel_mean),
        pixel_std=float(config.pixel_std),
        dtype=dtype,
    )


def rollout_spec(config: ml_collections.ConfigDict) -> RolloutSpec:
    return RolloutSpec(
        num_glimpses=config.num_glimpses,
        size=config.glimpse_size,
        scales=config.glimpse_scales,
        factor=config.glimpse_factor,
        # Evaluation samples with the policy as training leaves it.
        loc_std=float(config.loc_std_final or config.loc_std),
        location_range=float(config.location_range),
        reinforce_through_core=config.reinforce_through_core,
        random_first_glimpse=config.random_first_glimpse,
        policy=config.policy,
    )


def loc_std_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> Callable[[jax.Array], jax.Array] | None:
    """``scale(global_step)``: the training policy's std over ``rollout_spec``'s, when
    ``loc_std_final > 0``: the std falls from ``loc_std`` to ``loc_std_final`` along a half
    cosine over ``num_epochs``, so the scale goes from ``loc_std / loc_std_final`` to 1.
    None when the std is fixed.
    """
    if not config.loc_std_final:
        return None
    start, final = float(config.loc_std), float(config.loc_std_final)
    total = max(1, config.num_epochs * steps_per_epoch)

    def scale(global_step: jax.Array) -> jax.Array:
        progress = jnp.minimum(global_step / total, 1.0)
        std = final + (start - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return (std / final).astype(jnp.float32)

    return scale


def loss_weights(config: ml_collections.ConfigDict) -> LossWeights:
    """The hybrid loss's weights; random glimpses make no decisions, so only cross-entropy."""
    learned = config.policy == "learned"
    return LossWeights(
        classification=config.classification_weight,
        reinforce=config.reinforce_weight if learned else 0.0,
        baseline=config.baseline_weight if learned else 0.0,
    )


class ParamsEmaState(NamedTuple):
    """State of ``params_ema``: the moving average of the parameters after each update."""

    ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
    """Keeps ``ema <- decay * ema + (1 - decay) * (params + updates)``; updates pass unchanged.

    It reads the parameters the update will produce, so it must be the last transform of a
    chain. The average starts at the initial parameters (no bias correction needed).
    """
    if not 0 <= decay < 1:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")

    def init_fn(params):
        return ParamsEmaState(jax.tree.map(jnp.asarray, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("params_ema needs the parameters: call update(updates, state, params)")
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, new)
        return updates, ParamsEmaState(ema)

    return optax.GradientTransformation(init_fn, update_fn)


def selected_params(state: TrainState) -> Any:
    """The parameters that are validated, kept as best and reported: the optimiser's moving
    average when it keeps one (``ema_decay > 0``), else the trained parameters themselves."""
    found = optax.tree.get(state.opt_state, ParamsEmaState.__name__)
    return state.params if found is None else found.ema


def scale_subtree(factor: float, name: str) -> optax.GradientTransformation:
    """Multiplies the updates of the parameters under the top-level key ``name`` by ``factor``."""

    def mask(params: Any) -> Any:
        if name not in params:
            raise ValueError(f"no parameters named {name!r} to scale; found {sorted(params)}")
        return {k: jax.tree.map(lambda _, hit=k == name: hit, v) for k, v in params.items()}

    return optax.masked(optax.scale(factor), mask)


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """Clipping (optional), then Adam or momentum SGD under a warmup + constant/cosine schedule.

    ``weight_decay > 0`` decays every parameter by ``learning rate * weight_decay`` per step,
    decoupled from the gradient (AdamW; for SGD the same decay added to the update).
    ``location_lr_scale != 1`` multiplies the location network's updates by that factor (a
    learning rate of its own for the policy; RAM only, and moot for random glimpses).
    ``ema_decay > 0`` appends ``params_ema``: a moving average of the parameters that
    ``selected_params`` then hands to validation and evaluation.
    """
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
    # Without decay the plain transforms: their state has the structure older checkpoints hold.
    if config.optimizer == "adam" and config.weight_decay == 0:
        opt = optax.adam(schedule)
    elif config.optimizer == "adam":
        opt = optax.adamw(schedule, weight_decay=config.weight_decay)
    elif config.weight_decay == 0:
        opt = optax.sgd(schedule, momentum=config.momentum)
    else:
        opt = optax.chain(
            optax.trace(decay=config.momentum),
            optax.add_decayed_weights(config.weight_decay),
            optax.scale_by_learning_rate(schedule),
        )
    if config.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    if config.location_lr_scale != 1:
        opt = optax.chain(opt, scale_subtree(config.location_lr_scale, "location_net"))
    if config.ema_decay > 0:
        opt = optax.chain(opt, params_ema(config.ema_decay))
    return opt


def init_train_state(
    model: Model,
    spec: RolloutSpec,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, ...],
) -> TrainState:
    """Fresh parameters and optimiser state. ``image_shape`` is (H, W) or (H, W, C).

    ``spec`` sizes the RAM's glimpse input; the baselines read whole images and ignore it.
    """
    channels = image_shape[2] if len(image_shape) == 3 else 1
    if isinstance(model, RAM):
        patches = jnp.zeros((1, spec.scales, spec.size, spec.size, channels), jnp.float32)
        params = model.init(key, patches, jnp.zeros((1, 2), jnp.float32))["params"]
    else:
        params = model.init(key, jnp.zeros((1, *image_shape[:2], channels), jnp.float32))["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def init_replicates(
    model: Model,
    spec: RolloutSpec,
    optimizer: optax.GradientTransformation,
    keys: jax.Array,
    image_shape: tuple[int, ...],
) -> TrainState:
    """``init_train_state`` of each key in ``keys`` (R x key), stacked on a leading R axis.

    One jitted initialisation per replicate rather than one ``vmap`` over them: with jaxlib
    0.10.2 the vmapped initialisation of exactly two replicates of the 60x60 configs deadlocks
    XLA on the CPU (``ram_jax.xla_workarounds``). It runs once per run, so the loop costs
    nothing that matters, and replicate ``r`` is exactly the state of a run of key ``r`` alone.
    """
    init = jax.jit(lambda key: init_train_state(model, spec, optimizer, key, image_shape))
    states = [init(keys[r]) for r in range(keys.shape[0])]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def mean_episodes_per_batch(config: ml_collections.ConfigDict) -> int:
    """Training episodes per step that follow the policy mean: ``mean_episode_fraction`` of the
    batch, rounded to the nearest episode."""
    return round(config.mean_episode_fraction * config.batch_size)


def training_image_margin(config: ml_collections.ConfigDict, task: TaskSpec) -> int:
    """The zero margin a generated task's training canvases are made with: the retina's own
    padding (``glimpse.glimpse_pad``) for RAM, so the step reads glimpses without copying each
    canvas into a padded one (on 100x100 canvases and 96-pixel patches the padded canvas has four
    times the pixels). 0 for the baselines, for the 28x28 digits (kept as they are on the
    device), and with ``train_shift`` (a shift would move pixels into the margin).
    """
    if config.model != "ram" or not task.generated or config.train_shift:
        return 0
    return glimpse_pad(config.glimpse_size, config.glimpse_scales, config.glimpse_factor)


def make_loss_fn(
    model: Model,
    spec: RolloutSpec,
    weights: LossWeights,
    *,
    mean_rollout_weight: float = 0.0,
    reward: str = "correct",
    dropout_rate: float = 0.0,
    advantage: str = "learned_baseline",
    group_size: int = 1,
    num_mean_episodes: int = 0,
    image_margin: int = 0,
    intermediate_classification_weight: float = 0.0,
    temporal_ensemble_weight: float = 0.0,
    temporal_ensemble_episodes: str = "all",
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, dict]]:
    """``loss_fn(params, images, labels, key) -> (loss, metrics)`` for any of the models.

    RAM: the hybrid loss of one sampled episode per image. With ``mean_rollout_weight > 0`` the
    cross-entropy of a second, deterministic episode (centre first, then the policy mean: the
    episode evaluation runs) is added with that weight, so the classifier also learns from the
    glimpses it will see at test time. ``reward`` is what an episode earns (``losses.rewards``).
    ``dropout_rate`` applies dropout in the training episodes (``rollout``'s argument).
    ``advantage`` and ``group_size`` (episodes per image, consecutive) go to ``hybrid_loss``.
    ``num_mean_episodes`` of the batch's episodes follow the policy mean instead of sampling
    (``rollout``'s argument): the classifier trains on the test-time episode at no extra cost.
    ``image_margin``: the images come with that many zero pixels around them (``rollout``'s
    argument). RAM's ``loss_fn`` also takes ``loc_std_scale`` (``rollout``'s argument; a
    training schedule's). ``intermediate_classification_weight > 0`` (not in the paper) adds,
    with that weight, the cross-entropy of the action network run on the core state after each
    glimpse but the last (``TrajectoryWithStepLogits.step_logits``), averaged over those
    glimpses and the episodes: the core is asked to know the class as early as it can.
    ``temporal_ensemble_weight > 0`` (not in the paper): RAM's ``loss_fn`` then takes
    ``soft_targets`` f32[B, K + 1] (``TrainState.soft_targets``' rows of the batch's images) and
    adds, with that weight, the cross-entropy of the episodes' classifications against them,
    averaged over the episodes whose image has a target yet (``temporal_ensemble_episodes``:
    ``"all"`` of them, or only the ``"mean"`` episodes); its metrics then carry
    ``episode_probs`` f32[B, K], the episodes' class probabilities, for ``make_train_step`` to
    fold into the averages.
    Baselines: cross-entropy only, on images without a margin.
    """
    if not intermediate_classification_weight >= 0:
        raise ValueError(
            f"intermediate_classification_weight must be >= 0, got "
            f"{intermediate_classification_weight!r}"
        )
    if not temporal_ensemble_weight >= 0:
        raise ValueError(f"temporal_ensemble_weight must be >= 0, got {temporal_ensemble_weight!r}")
    if temporal_ensemble_episodes not in ("all", "mean"):
        raise ValueError(
            "temporal_ensemble_episodes must be 'all' or 'mean', got "
            f"{temporal_ensemble_episodes!r}"
        )
    if not isinstance(model, RAM):
        if temporal_ensemble_weight:
            raise ValueError(
                f"{type(model).__name__} has no episodes: temporal_ensemble_weight must be 0"
            )
        if image_margin:
            raise ValueError(f"{type(model).__name__} reads whole images: image_margin must be 0")
        if intermediate_classification_weight:
            raise ValueError(
                f"{type(model).__name__} has no glimpses: intermediate_classification_weight "
                "must be 0"
            )

        def baseline_loss(params, images, labels, key):
            del key  # no randomness in a feed-forward classifier
            logits = model.apply({"params": params}, to_float_images(images))
            return classifier_loss(logits, labels)

        return baseline_loss
    if intermediate_classification_weight and spec.num_glimpses < 2:
        # One glimpse leaves no earlier state to classify: the mean would be over nothing.
        raise ValueError(
            f"intermediate_classification_weight needs num_glimpses >= 2, got {spec.num_glimpses}"
        )

    def ram_loss(params, images, labels, key, loc_std_scale=1.0, soft_targets=None):
        traj = rollout(
            model,
            params,
            images,
            key,
            spec,
            mode="sample",
            dropout_rate=dropout_rate,
            num_mean_episodes=num_mean_episodes,
            image_margin=image_margin,
            loc_std_scale=loc_std_scale,
            classify_every_glimpse=intermediate_classification_weight > 0,
        )
        loss, metrics = hybrid_loss(
            traj, labels, weights, reward=reward, advantage=advantage, group_size=group_size
        )
        if intermediate_classification_weight > 0:
            step_labels = jnp.broadcast_to(labels, traj.step_logits.shape[:2])
            step_ce = optax.softmax_cross_entropy_with_integer_labels(
                traj.step_logits, step_labels
            ).mean()
            loss = loss + intermediate_classification_weight * step_ce
            metrics["intermediate_classification"] = step_ce
            metrics["loss"] = loss
        if mean_rollout_weight > 0:
            mean_logits = rollout(
                model,
                params,
                images,
                key,
                spec,
                mode="mean",
                dropout_rate=dropout_rate,
                image_margin=image_margin,
            ).logits
            mean_ce = optax.softmax_cross_entropy_with_integer_labels(mean_logits, labels).mean()
            loss = loss + mean_rollout_weight * mean_ce
            metrics["mean_classification"] = mean_ce
            metrics["loss"] = loss
        if temporal_ensemble_weight > 0:
            if soft_targets is None:
                raise ValueError(
                    "temporal_ensemble_weight > 0: the loss needs soft_targets, the rows of "
                    "TrainState.soft_targets for the batch's images"
                )
            coverage = soft_targets[:, -1:]
            targets = soft_targets[:, :-1] / jnp.maximum(coverage, 1e-12)
            taught = coverage[:, 0] > 0
            if temporal_ensemble_episodes == "mean":
                taught = taught & (jnp.arange(labels.shape[0]) < num_mean_episodes)
            per_episode = optax.softmax_cross_entropy(traj.logits, targets)
            soft_ce = jnp.where(taught, per_episode, 0.0).sum() / jnp.maximum(taught.sum(), 1)
            loss = loss + temporal_ensemble_weight * soft_ce
            metrics["temporal_ensemble"] = soft_ce
            metrics["loss"] = loss
            metrics["episode_probs"] = jax.nn.softmax(jax.lax.stop_gradient(traj.logits))
        return loss, metrics

    return ram_loss


def make_train_step(
    model: Model,
    spec: RolloutSpec,
    weights: LossWeights,
    optimizer: optax.GradientTransformation,
    *,
    mean_rollout_weight: float = 0.0,
    reward: str = "correct",
    dropout_rate: float = 0.0,
    advantage: str = "learned_baseline",
    group_size: int = 1,
    num_mean_episodes: int = 0,
    image_margin: int = 0,
    loc_std_schedule: Callable[[jax.Array], jax.Array] | None = None,
    intermediate_classification_weight: float = 0.0,
    temporal_ensemble_weight: float = 0.0,
    temporal_ensemble_decay: float = 0.8,
    temporal_ensemble_episodes: str = "all",
) -> Callable[..., tuple[LoopCarry, dict]]:
    """``train_step(carry, images, labels, key, global_step) -> (carry, metrics)``, pure.

    The loss is ``make_loss_fn``'s. A non-finite loss or gradient leaves the state untouched and
    records ``global_step`` in ``carry.halted_at``; every later step is then a no-op.
    ``loc_std_schedule`` (RAM; ``train.loc_std_schedule``) maps ``global_step`` to the policy
    std's scale for that step's episodes. ``temporal_ensemble_weight > 0``: ``train_step`` also
    takes ``image_index`` int32[B], the batch's rows of ``state.soft_targets``; each sampled
    episode's class probabilities enter its image's average as
    ``decay * old + (1 - decay) * [probs, 1]`` (only when the step is applied).
    """
    if loc_std_schedule is not None and not isinstance(model, RAM):
        raise ValueError(f"{type(model).__name__} has no location policy: no loc_std_schedule")
    if not 0 <= temporal_ensemble_decay < 1:
        raise ValueError(
            f"temporal_ensemble_decay must be in [0, 1), got {temporal_ensemble_decay!r}"
        )
    loss_fn = make_loss_fn(
        model,
        spec,
        weights,
        mean_rollout_weight=mean_rollout_weight,
        reward=reward,
        dropout_rate=dropout_rate,
        advantage=advantage,
        group_size=group_size,
        num_mean_episodes=num_mean_episodes,
        image_margin=image_margin,
        intermediate_classification_weight=intermediate_classification_weight,
        temporal_ensemble_weight=temporal_ensemble_weight,
        temporal_ensemble_episodes=temporal_ensemble_episodes,
    )

    def train_step(carry, images, labels, key, global_step, image_index=None):
        state = carry.state
        # No keyword at all without a schedule: the baselines' loss takes none.
        extra = {} if loc_std_schedule is None else {"loc_std_scale": loc_std_schedule(global_step)}
        if temporal_ensemble_weight > 0:
            if image_index is None or state.soft_targets is None:
                raise ValueError(
                    "temporal_ensemble_weight > 0: train_step needs image_index and a state "
                    "with soft_targets (f32[N, num_classes + 1])"
                )
            extra["soft_targets"] = state.soft_targets[image_index]
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, images, labels, key, **extra
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite & (carry.halted_at < 0)
        soft_targets = state.soft_targets
        if temporal_ensemble_weight > 0:
            probs = metrics.pop("episode_probs")
            old = extra["soft_targets"]
            seen = jnp.concatenate([probs, jnp.ones_like(probs[:, :1])], axis=1)
            new = temporal_ensemble_decay * old + (1 - temporal_ensemble_decay) * seen
            sampled = (jnp.arange(old.shape[0]) >= num_mean_episodes)[:, None]
            rows = jnp.where(apply & sampled, new, old)
            soft_targets = soft_targets.at[image_index].set(rows)
        new_state = TrainState(state.step + 1, params, opt_state)
        kept = jax.tree.map(
            lambda new, old: jnp.where(apply, new, old),
            new_state,
            TrainState(state.step, state.params, state.opt_state),
        )
        state = kept.replace(soft_targets=soft_targets)
        halted_at = jnp.where((carry.halted_at < 0) & ~finite, global_step, carry.halted_at)
        metrics["grad_norm"] = grad_norm
        return LoopCarry(state, halted_at.astype(jnp.int32)), metrics

    return train_step


def make_train_chunk(
    model: Model,
    spec: RolloutSpec,
    weights: LossWeights,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    num_steps: int,
    steps_per_epoch: int,
    max_shift: int = 0,
    max_rotation_deg: float = 0.0,
    max_scale: float = 0.0,
    mean_rollout_weight: float = 0.0,
    task: TaskSpec | None = None,
    mesh: Mesh | None = None,
    rollouts_per_image: int = 1,
    reward: str = "correct",
    dropout_rate: float = 0.0,
    advantage: str = "learned_baseline",
    num_mean_episodes: int = 0,
    image_margin: int = 0,
    loc_std_schedule: Callable[[jax.Array], jax.Array] | None = None,
    intermediate_classification_weight: float = 0.0,
    temporal_ensemble_weight: float = 0.0,
    temporal_ensemble_decay: float = 0.8,
    temporal_ensemble_episodes: str = "all",
) -> Callable[..., tuple[LoopCarry, dict]]:
    """A pure function running ``num_steps`` training steps of one epoch in a ``lax.scan``.

    ``train_chunk(carry, data, data_key, step_key, epoch, first_step) -> (carry, metrics)``:
    the epoch's data order is ``permutation(fold_in(data_key, epoch))``; the span covers its
    batches ``first_step .. first_step + num_steps - 1``; metrics are stacked per step.
    ``max_shift > 0`` moves each training image by a random offset (``augment.random_shift``);
    ``max_rotation_deg`` / ``max_scale`` turn and scale each training digit before it is placed
    (``augment.random_affine``; clutter is cut from unaltered digits).
    A generated ``task`` (translated, cluttered) turns each batch of digits into fresh canvases
    on the device, with clutter cut from random digits of ``data``. With a ``mesh``
    (``parallel.data_mesh``) each step's batch is split over its devices (data parallelism).
    ``rollouts_per_image > 1`` runs that many episodes on every image of a batch (each with its
    own glimpse path), so a step sees ``batch_size * rollouts_per_image`` episodes; on a
    generated task each copy of a digit gets a canvas of its own. ``advantage="leave_one_out"``
    (``losses.hybrid_loss``) compares each episode with the other episodes of its image.
    ``num_mean_episodes`` of each step's episodes follow the policy mean (``make_loss_fn``).
    ``image_margin``: every image reaches the step with that many zero pixels on each side
    (``rollout``'s argument; ``training_image_margin`` gives the one that spares the step its
    padding copy). A generated task makes its canvases with it; otherwise ``data.images`` must
    already carry it. ``loc_std_schedule`` and ``intermediate_classification_weight``:
    ``make_train_step``'s and ``make_loss_fn``'s.
    """
    if image_margin and max_shift:
        raise ValueError("image_margin and max_shift: a shift would move digits into the margin")
    if image_margin and (max_rotation_deg or max_scale) and not (task and task.generated):
        raise ValueError(
            "image_margin with turned or scaled digits needs a generated task (the digits are "
            "turned before they are placed on a canvas)"
        )
    if not 1 <= num_steps <= steps_per_epoch:
        raise ValueError(f"num_steps must be in 1..{steps_per_epoch} (one epoch), got {num_steps}")
    train_step = make_train_step(
        model,
        spec,
        weights,
        optimizer,
        mean_rollout_weight=mean_rollout_weight,
        reward=reward,
        dropout_rate=dropout_rate,
        advantage=advantage,
        group_size=rollouts_per_image,
        num_mean_episodes=num_mean_episodes,
        image_margin=image_margin,
        loc_std_schedule=loc_std_schedule,
        intermediate_classification_weight=intermediate_classification_weight,
        temporal_ensemble_weight=temporal_ensemble_weight,
        temporal_ensemble_decay=temporal_ensemble_decay,
        temporal_ensemble_episodes=temporal_ensemble_episodes,
    )

    def train_chunk(carry, data: Dataset, data_key, step_key, epoch, first_step):
        if steps_per_epoch * batch_size > len(data.labels):
            # dynamic_slice would clamp the last batches' start and repeat images silently.
            raise ValueError(
                f"{steps_per_epoch} steps of batch {batch_size} need "
                f"{steps_per_epoch * batch_size} images, the data holds {len(data.labels)}"
            )
        order = jax.random.permutation(jax.random.fold_in(data_key, epoch), len(data.labels))

        def body(carry, i):
            batch_index = first_step + i
            idx = jax.lax.dynamic_slice_in_dim(order, batch_index * batch_size, batch_size)
            global_step = epoch * steps_per_epoch + batch_index
            key = jax.random.fold_in(step_key, global_step)
            if rollouts_per_image > 1:
                idx = jnp.repeat(idx, rollouts_per_image)
            images, labels = data.images[idx], data.labels[idx]
            if mesh is not None:
                # Sharded before generation, so each device makes its own part of the batch.
                images, labels = parallel.shard_batch(mesh, (images, labels))
            if max_rotation_deg or max_scale:
                images = random_affine(
                    jax.random.fold_in(key, 3), images, max_rotation_deg, max_scale
                )
            if task is not None and task.generated:
                images = make_batch(
                    jax.random.fold_in(key, 2), task, images, data.images, image_margin
                )
            if max_shift:
                # A stream of its own, so runs without shifts keep their keys.
                images = random_shift(jax.random.fold_in(key, 1), images, max_shift)
                key = jax.random.fold_in(key, 0)
            if temporal_ensemble_weight > 0:
                return train_step(carry, images, labels, key, global_step, image_index=idx)
            return train_step(carry, images, labels, key, global_step)

        return jax.lax.scan(body, carry, jnp.arange(num_steps))

    return train_chunk


def make_train_chunk_for(
    config: ml_collections.ConfigDict,
    model: Model,
    spec: RolloutSpec,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    steps_per_epoch: int,
    mesh: Mesh | None = None,
    generate_canvases: bool = True,
) -> Callable[..., tuple[LoopCarry, dict]]:
    """``make_train_chunk`` with every training option read from ``config``.

    The one place that maps config fields onto the step, so that ``train_and_evaluate`` and
    ``experiments.bench`` run the same one. ``generate_canvases=False``: ``data`` already holds
    a generated task's canvases, framed by ``training_image_margin`` (the bench's synthetic
    ones), and the step does not make them.
    """
    task = get_task(config.task)
    return make_train_chunk(
        model,
        spec,
        loss_weights(config),
        optimizer,
        batch_size=config.batch_size,
        num_steps=num_steps,
        steps_per_epoch=steps_per_epoch,
        max_shift=config.train_shift,
        max_rotation_deg=config.train_rotation,
        max_scale=config.train_scale,
        mean_rollout_weight=config.mean_rollout_weight,
        task=task if generate_canvases else None,
        mesh=mesh,
        rollouts_per_image=config.rollouts_per_image,
        reward=config.reward,
        dropout_rate=config.dropout,
        advantage=config.advantage,
        num_mean_episodes=mean_episodes_per_batch(config),
        image_margin=training_image_margin(config, task),
        loc_std_schedule=loc_std_schedule(config, steps_per_epoch),
        intermediate_classification_weight=config.intermediate_classification_weight,
        temporal_ensemble_weight=config.temporal_ensemble_weight,
        temporal_ensemble_decay=config.temporal_ensemble_decay,
        temporal_ensemble_episodes=config.temporal_ensemble_episodes,
    )


# --------------------------------------------------------------------------------------------
# Data


def fixed_canvases(
    config: ml_collections.ConfigDict, digits: jax.Array, split: str
) -> tuple[jax.Array, Placement]:
    """The fixed images of a validation / test split and where their digits lie.

    Clutter comes from the split's own digits; the bytes are a function of ``task_seed``. For
    28x28 MNIST the digits themselves, with zero offsets.
    """
    task = get_task(config.task)
    return fixed_set_with_placement(task, digits, digits, seed=config.task_seed, split=split)


def load_datasets(config: ml_collections.ConfigDict) -> Datasets:
    """The task's train / validation / test sets, on the default device.

    For generated tasks the training set holds 28x28 digits (canvases are made at every step),
    validation and test hold their fixed canvases.
    """
    from ram_jax.data import load_mnist, split_train_validation

    arrays = load_mnist(
        config.data_dir, backend=config.data_backend, tfds_data_dir=config.tfds_data_dir
    )
    (train_x, train_y), (val_x, val_y) = split_train_validation(
        arrays.train_images, arrays.train_labels, config.validation_size
    )
    if config.train_subset:
        if config.train_subset > len(train_y):
            raise ValueError(
                f"train_subset {config.train_subset} exceeds the {len(train_y)} training images "
                f"left after the {config.validation_size} validation images"
            )
        train_x, train_y = train_x[: config.train_subset], train_y[: config.train_subset]
    if len(train_y) < config.batch_size:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {len(train_y)} training images"
        )

    task = get_task(config.task)

    def put(x, y, split=None):
        x = jax.device_put(x)
        if split is not None and task.generated:
            x = fixed_canvases(config, x, split)[0]
        return Dataset(x, jax.device_put(y.astype(np.int32)))

    validation = put(val_x, val_y, "validation") if config.validation_size else None
    test = put(arrays.test_images, arrays.test_labels, "test")
    return Datasets(put(train_x, train_y), validation, test)


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
    processes = jax.process_count()
    over = f" over {processes} processes" if processes > 1 else ""
    return f"{jax.default_backend()}: {kind} x{len(devices)}{over}"


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


def replicate_keys(seed: int, num_seeds: int) -> RunKeys:
    """``run_keys`` of seeds ``seed .. seed + num_seeds - 1``, stacked on a leading axis."""
    return jax.tree.map(lambda *k: jnp.stack(k), *[run_keys(seed + r) for r in range(num_seeds)])


def over_replicates(fn: Callable, num_replicates: int, in_axes: tuple) -> Callable:
    """``fn`` mapped over a leading replicate axis of the arguments whose ``in_axes`` is 0.

    One replicate skips ``vmap`` (its single-seed numerics stay exactly those of ``fn``) but keeps
    the axis, so callers handle one and many replicates alike.
    """
    if num_replicates > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def single(*args):
        args = [
            jax.tree.map(lambda x: x[0], a) if axis == 0 else a
            for a, axis in zip(args, in_axes, strict=True)
        ]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return single


def writes_workdir_files() -> bool:
    """Whether this process writes the workdir's own files (config, records, parameters,
    results): the first process of a multi-host run, every other one computing the same
    values. Orbax coordinates the checkpoints across processes itself."""
    return jax.process_index() == 0


def replicate(tree: Any, index: int) -> Any:
    """Replicate ``index`` of a tree stacked on a leading replicate axis."""
    return jax.tree.map(lambda x: x[index], tree)


def _silent(*args: Any, **kwargs: Any) -> None:
    """``print`` for the processes of a multi-process run that leave reporting to the first."""


def params_file(seeds: list[int], index: int) -> str:
    """Where the best parameters of replicate ``index`` are saved in a workdir."""
    if len(seeds) == 1:
        return checkpoint.BEST_PARAMS
    return f"best_params_seed{seeds[index]}.msgpack"


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    datasets: Datasets | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) ``config.num_seeds`` replicates in ``workdir``; writes ``results.json``.

    Replicate ``r`` uses seed ``config.seed + r`` (parameters, data order, episodes); all are
    trained together in one compiled program (``jax.vmap`` over the replicate axis), each with its
    own best epoch on the validation split. Returns the content of ``results.json``.
    ``datasets`` may be given to skip loading (tests); otherwise ``load_datasets(config)``.
    """
    validate_config(config)
    if config.distributed:
        # First: JAX joins the processes before anything starts its backend.
        parallel.initialize_distributed()
    if config.num_seeds > 1:
        # A guard beside init_replicates: XLA starts below at the latest (data_mesh), and reads
        # the flag then or never.
        in_effect = xla_workarounds.avoid_replicate_deadlock()
        if not in_effect and jax.default_backend() == "cpu":
            warnings.warn(
                f"{config.num_seeds} replicates on the CPU without "
                f"XLA_FLAGS={xla_workarounds.SCHEDULER_FLAG}: that XLA scheduler deadlocked a "
                "vmapped two-replicate program with jaxlib 0.10.2 (ram_jax.xla_workarounds); "
                "set the flag before JAX starts, or call train_and_evaluate first",
                RuntimeWarning,
                stacklevel=2,
            )
    mesh = parallel.data_mesh()
    parallel.check_divisible(config.batch_size, mesh)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_dict = config.to_dict()
    trained = (workdir / "metrics.jsonl").exists() or (workdir / "checkpoints").exists()
    if trained and config_path.exists():
        previous = checkpoint.read_json(config_path)
        changed = config_differences(previous, config_dict)
        if changed:
            raise ValueError(
                f"{workdir} holds a run with a different config (fields {changed}); "
                "use a new --workdir, or the same config to resume"
            )

    start = time.perf_counter()
    commit = git_commit()  # the code that runs, even if the checkout changes before the end
    data = datasets if datasets is not None else load_datasets(config)
    # Where this process's wall time went (results.json): on a GPU an epoch trains in a fraction
    # of a second, and the work around the fused training spans can cost as much as they do.
    phases = dict.fromkeys(PHASES, 0.0)
    phases["load_data"] = time.perf_counter() - start
    writer = writes_workdir_files()
    # The other processes of a multi-process run compute the same values: only the writer
    # prints them, so that a shared log holds each line once.
    say = functools.partial(print, flush=True) if writer else _silent
    # Written once the data loaded: a run that failed before training binds the workdir to nothing.
    if writer:
        checkpoint.atomic_write_json(config_path, config_dict)
    model, spec = build_model(config), rollout_spec(config)
    task = get_task(config.task)
    steps_per_epoch = len(data.train.labels) // config.batch_size
    optimizer = make_optimizer(config, steps_per_epoch)
    num_seeds = config.num_seeds
    seeds = [config.seed + r for r in range(num_seeds)]
    keys = replicate_keys(config.seed, num_seeds)
    image_shape = task.image_shape
    state = init_replicates(model, spec, optimizer, keys.init, image_shape)
    if config.temporal_ensemble_weight > 0:
        rows = (num_seeds, len(data.train.labels), config.num_classes + 1)
        state = state.replace(soft_targets=jnp.zeros(rows, jnp.float32))
    state = parallel.replicate_on(mesh, state)
    train_data = parallel.replicate_on(mesh, data.train)

    store = checkpoint.CheckpointStore(workdir / "checkpoints")
    meta = {
        "epoch": 0,
        "best_epoch": [0] * num_seeds,
        "best_val_error_pct": [None] * num_seeds,
        "train_seconds": 0.0,
    }
    restored = store.restore_latest(state)
    if restored is None and (workdir / "results.json").exists():
        # A finished run whose checkpoints are gone (a shipped or copied workdir): starting
        # again from epoch 0 would overwrite its best parameters and its records. (A run killed
        # before its first checkpoint has no results.json, and restarts.)
        raise ValueError(
            f"{workdir} holds a finished run (results.json) but no checkpoint to resume from "
            f"in {store.directory}; use a new --workdir"
        )
    if restored is not None:
        _, state, meta = restored
        state = parallel.replicate_on(mesh, state)
        say(f"resuming {workdir} from epoch {meta['epoch']}")
        for name in ("best_epoch", "best_val_error_pct"):  # one seed, before replicates existed
            if not isinstance(meta[name], list):
                meta[name] = [meta[name]]
    metrics_path = workdir / "metrics.jsonl"
    # Epochs logged after the restored checkpoint were lost with the process: drop them.
    history = [r for r in checkpoint.read_jsonl(metrics_path) if r["epoch"] <= meta["epoch"]]
    if writer:
        checkpoint.atomic_write_bytes(
            metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history).encode()
        )

    chunk = _chunk_steps(steps_per_epoch, config.steps_per_dispatch)
    train_chunk = jax.jit(
        over_replicates(
            make_train_chunk_for(
                config,
                model,
                spec,
                optimizer,
                num_steps=chunk,
                steps_per_epoch=steps_per_epoch,
                mesh=mesh,
            ),
            num_seeds,
            (0, None, 0, 0, None, None),
        )
    )

    def validation_error(params) -> float:
        return evaluation.error_pct(
            model,
            params,
            data.validation.images,
            data.validation.labels,
            spec,
            batch_size=config.eval_batch_size,
        )

    # Every input placed as the outputs will be, so the span is traced and compiled once.
    carry = parallel.replicate_on(mesh, LoopCarry(state, jnp.full((num_seeds,), -1, jnp.int32)))
    progress = Progress(
        config.num_epochs * steps_per_epoch, meta["epoch"] * steps_per_epoch, enabled=writer
    )
    first_epoch = meta["epoch"]
    timed_images, timed_seconds = 0, 0.0  # epochs after this process's first (which compiles)
    # Best parameters found since the last checkpoint are written with it, not before: a resumed
    # run replays those epochs, so the files on disk always match the checkpoint's ``meta``.
    pending_best: dict[int, Any] = {}
    # The best parameters this process found: the final evaluation reads them from here, and
    # from the workdir only when the best epoch came before a resume (or on a process that
    # writes no files, from the file the first process wrote).
    found_best: dict[int, Any] = {}
    saved_epoch, last_save = meta["epoch"], time.perf_counter()

    def write_pending_best() -> None:
        for r, params in pending_best.items() if writer else ():
            checkpoint.save_params(workdir, params, params_file(seeds, r))
        pending_best.clear()

    for epoch in range(first_epoch, config.num_epochs):
        epoch_start = time.perf_counter()
        sums: dict[str, np.ndarray] = {}
        for first in range(0, steps_per_epoch, chunk):
            carry, step_metrics = train_chunk(carry, train_data, keys.data, keys.step, epoch, first)
            step_metrics = jax.device_get(step_metrics)  # each [replicates, steps]
            halted = np.asarray(carry.halted_at)
            if (halted >= 0).any():
                r = int(np.argmax(halted >= 0))
                # Every replicate's, as validation would read them (the moving average if one
                # is kept): a halted one froze at its last good step, the others are sound.
                for i in range(num_seeds):
                    name = params_file(seeds, i).replace("best_params", "last_good_params")
                    if writer:
                        kept = selected_params(replicate(carry.state, i))
                        checkpoint.save_params(workdir, kept, name)
                last_good = workdir / params_file(seeds, r).replace(
                    "best_params", "last_good_params"
                )
                # The run cannot go on, so the best parameters found since the last checkpoint
                # are kept now rather than lost (a resumed run would replay to the same ones).
                write_pending_best()
                progress.close()
                store.close()
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {int(halted[r])} (epoch {epoch + 1}, "
                    f"seed {seeds[r]}); training stopped. The last good parameters are in "
                    f"{last_good}, the last epoch checkpoint (epoch {saved_epoch}) in "
                    f"{workdir / 'checkpoints'}. Lower the learning rate or set clip_norm, "
                    "then train in a new workdir."
                )
            for name, values in step_metrics.items():
                sums[name] = sums.get(name, 0.0) + np.sum(values, axis=1)
            done = epoch * steps_per_epoch + first + chunk
            progress.update(
                done,
                f"epoch {epoch + 1}/{config.num_epochs} "
                f"loss {float(np.mean(step_metrics['loss'])):.3f}",
            )
        train_seconds = time.perf_counter() - epoch_start
        phases["train"] += train_seconds
        if epoch == first_epoch:
            phases["first_epoch_train"] = train_seconds
        validate_start = time.perf_counter()
        per_seed = {name: total / steps_per_epoch for name, total in sums.items()}
        record: dict[str, Any] = {name: float(np.mean(v)) for name, v in per_seed.items()}
        record.update(
            epoch=epoch + 1,
            step=int(carry.state.step[0]),
            train_seconds=train_seconds,
            train_images_per_s=steps_per_epoch * config.batch_size * num_seeds / train_seconds,
        )
        if epoch > first_epoch:
            timed_images += steps_per_epoch * config.batch_size * num_seeds
            timed_seconds += train_seconds
        val_errors = []
        last_epoch = epoch + 1 == config.num_epochs
        due = last_epoch or (epoch + 1) % config.validate_every == 0
        # Without a validation split every epoch is the best; with one, only validated epochs
        # can be.
        for r in range(num_seeds if due or data.validation is None else 0):
            params = replicate(selected_params(carry.state), r)
            if data.validation is not None:
                val_error = validation_error(params)
                val_errors.append(val_error)
                best = meta["best_val_error_pct"][r]
                if best is not None and val_error >= best:
                    continue
                meta["best_val_error_pct"][r] = val_error
            meta["best_epoch"][r] = epoch + 1
            pending_best[r] = found_best[r] = params
        if val_errors:
            record["val_error_pct"] = float(np.mean(val_errors))
        if num_seeds > 1:
            record["per_seed"] = {k: [float(x) for x in v] for k, v in per_seed.items()}
            if val_errors:
                record["per_seed"]["val_error_pct"] = val_errors
        meta["epoch"] = epoch + 1
        meta["train_seconds"] += train_seconds
        save_start = time.perf_counter()
        phases["validate"] += save_start - validate_start
        if writer:
            checkpoint.append_jsonl(metrics_path, record)
        if last_epoch or time.perf_counter() - last_save >= config.checkpoint_every_s:
            write_pending_best()
            store.save(epoch + 1, carry.state, meta)
            saved_epoch, last_save = epoch + 1, time.perf_counter()
        phases["checkpoint"] += time.perf_counter() - save_start
        progress.update(
            (epoch + 1) * steps_per_epoch,
            f"epoch {epoch + 1}/{config.num_epochs} loss {record['loss']:.3f} "
            f"train acc {100 * record['accuracy']:.2f}% "
            + (f"val err {record['val_error_pct']:.2f}% " if "val_error_pct" in record else "")
            + f"{record['train_images_per_s']:,.0f} img/s",
        )
    progress.close()
    store.close()

    final_start = time.perf_counter()
    runs = []
    for r, seed in enumerate(seeds):
        best_params = found_best.get(r)
        if best_params is None:
            best_params = checkpoint.load_params(
                workdir, replicate(selected_params(carry.state), r), params_file(seeds, r)
            )
        report = evaluate_params(
            model,
            best_params,
            spec,
            data,
            replicate(keys.eval, r),
            batch_size=config.eval_batch_size,
            mc_samples=config.mc_samples,
        )
        runs.append({"seed": seed, "best_epoch": meta["best_epoch"][r], **report})
    phases["final_evaluation"] = time.perf_counter() - final_start
    wall = time.perf_counter() - start
    phases["other"] = wall - sum(v for k, v in phases.items() if k != "first_epoch_train")
    results = {
        "task": config.task,
        "model": config.model,
        "num_glimpses": config.num_glimpses,
        "seed": config.seed,
        "seeds": seeds,
        "epochs": meta["epoch"],
        **_summarise_runs(runs),
        "runs": runs,
        "train_seconds": meta["train_seconds"],
        "train_images_per_s": timed_images / timed_seconds if timed_seconds else None,
        "wall_seconds_this_process": wall,
        "seconds_this_process": {k: round(v, 3) for k, v in phases.items()},
        "device": describe_device(),
        "commit": commit,
        "jax_version": jax.__version__,
        "config": config_dict,
    }
    if writer:
        checkpoint.atomic_write_json(workdir / "results.json", results)
    mc = config.mc_samples
    for run in runs:
        which = "" if num_seeds == 1 else f" (seed {run['seed']})"
        say(
            f"done{which}: best epoch "
            f"{run['best_epoch']}, val {run['val_error_pct']}%, test "
            f"{run['test_error_pct']:.2f}% (MC{mc} {run['test_error_mc_pct']:.2f}%)"
        )
    say(f"training time {format_seconds(meta['train_seconds'])}")
    say(
        "this process: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in phases.items())
        + f"; wall {wall:.1f} s"
    )
    return results


def _summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-level result fields: the run itself for one seed, means over seeds for several."""
    if len(runs) == 1:
        return {k: v for k, v in runs[0].items() if k != "seed"}
    summary: dict[str, Any] = {"mc_samples": runs[0]["mc_samples"]}
    for name in ("val_error_pct", "val_error_mc_pct", "test_error_pct", "test_error_mc_pct"):
        values = [run[name] for run in runs]
        summary[name] = None if None in values else round(float(np.mean(values)), 4)
    if all("best_epoch" in run for run in runs):
        summary["best_epoch"] = [run["best_epoch"] for run in runs]
    return summary


def mc_eval_keys(eval_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Monte-Carlo keys of the validation and the test split, from a run's ``RunKeys.eval``."""
    val_key, test_key = jax.random.split(eval_key)
    return val_key, test_key


def evaluate_params(
    model: Model,
    params,
    spec: RolloutSpec,
    data: Datasets,
    key: jax.Array,
    *,
    batch_size: int,
    mc_samples: int,
) -> dict[str, Any]:
    """Validation and test error, deterministic and Monte-Carlo, as a flat dict of percentages."""
    val_key, test_key = mc_eval_keys(key)

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
    """Re-evaluates the best parameters saved in ``workdir`` (deterministic and Monte-Carlo).

    A workdir of several seeds gives the means at the top level and each seed under ``runs``.
    """
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    config = config_from_saved(checkpoint.read_json(config_path))
    if data_dir is not None:
        config.data_dir = data_dir
    config.mc_samples = mc_samples
    validate_config(config)
    data = datasets if datasets is not None else load_datasets(config)
    model, spec = build_model(config), rollout_spec(config)
    seeds = [config.seed + r for r in range(config.num_seeds)]
    image_shape = get_task(config.task).image_shape
    runs = []
    for r, seed in enumerate(seeds):
        keys = run_keys(seed)
        target = init_train_state(model, spec, optax.identity(), keys.init, image_shape).params
        params = checkpoint.load_params(workdir, target, params_file(seeds, r))
        report = evaluate_params(
            model,
            params,
            spec,
            data,
            keys.eval,
            batch_size=config.eval_batch_size,
            mc_samples=mc_samples,
        )
        runs.append({"seed": seed, **report})
    summary = _summarise_runs(runs)
    result = {"task": config.task, "model": config.model, "num_glimpses": config.num_glimpses}
    return {**result, **summary, **({"runs": runs} if len(runs) > 1 else {})}
