"""One RAM episode over a batch of images as a single ``jax.lax.scan`` over glimpses.

Step ``t`` reads a glimpse at ``l_t``, updates the core to ``h_t``, and from ``h_t`` emits the
baseline ``b_t`` and the policy mean for the next location ``l_{t+1}``. The first location is
drawn uniformly from ``[-1, 1]^2`` (the paper) when sampling, unless
``RolloutSpec.random_first_glimpse`` is False, and is the image centre in the deterministic
mode. After ``T`` glimpses the action network classifies ``h_{T-1}``.

Gradient routing, fixed here and checked by tests:
- the sampled location is ``stop_gradient``-ed before it is scored and fed back, so the
  REINFORCE term reaches the location network through the policy mean only;
- the baseline reads ``stop_gradient(h)``: its squared error trains the baseline network alone;
- the location network reads ``h`` (REINFORCE also trains core and glimpse networks) or
  ``stop_gradient(h)`` when ``RolloutSpec.reinforce_through_core`` is False.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ram_jax import glimpse as retina
from ram_jax.networks import RAM, initial_core_state

__all__ = [
    "MODES",
    "POLICIES",
    "RolloutSpec",
    "Trajectory",
    "TrajectoryWithStepLogits",
    "dropout",
    "gaussian_log_prob",
    "mc_class_probs",
    "rollout",
    "sampled_class_probs",
    "to_float_images",
]

MODES = ("sample", "mean")
# Episodes of up to this many glimpses run as straight-line code (``lax.scan(unroll=...)``)
# rather than a loop: XLA:CPU pays a cost per loop iteration that is large beside the step's
# 256-row products; unrolled, the 28x28 training step (6 glimpses) ran 10-25% faster on two
# cores, and the 60x60 and 100x100 steps no slower (BUILD_NOTES.md, twelfth session). Longer
# episodes stay a loop, so that compilation does not grow with them.
MAX_UNROLLED_GLIMPSES = 8
POLICIES = ("learned", "random")


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """Static description of an episode (hashable: safe as a ``jit`` static argument).

    Attributes:
      num_glimpses: T, glimpses per image.
      size: side of each glimpse patch in pixels.
      scales: patches per glimpse, each ``factor`` times wider than the last.
      factor: integer growth between scales.
      loc_std: fixed std of the Gaussian location policy, in [-1, 1] units.
      location_range: the retina reads the glimpse chosen as ``l`` (policy units, in
        [-1, 1]; the random first location too) at ``location_range * l`` in image
        coordinates: below 1, every glimpse centre lies in the central ``location_range`` of
        each axis and the policy's noise is that much narrower in pixels (the Torch
        reproduction reads at about 0.43; not in the paper).
      reinforce_through_core: whether REINFORCE's gradient reaches core and glimpse networks.
      random_first_glimpse: in ``"sample"`` mode, draw the first location uniformly from
        [-1, 1]^2 (the paper); if False start at the centre, as the deterministic mode does.
      policy: ``"learned"`` (the location network) or ``"random"`` (the paper's "random
        glimpses" control: every location uniform in [-1, 1]^2, in both modes, drawn from the
        key; the location network is then unused).
    """

    num_glimpses: int
    size: int
    scales: int = 1
    factor: int = 2
    loc_std: float = 0.1
    location_range: float = 1.0
    reinforce_through_core: bool = True
    random_first_glimpse: bool = True
    policy: str = "learned"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; expected one of {POLICIES}")
        is_number = isinstance(self.loc_std, numbers.Real) and not isinstance(self.loc_std, bool)
        if not (is_number and self.loc_std > 0):
            raise ValueError(f"loc_std must be a positive number, got {self.loc_std!r}")
        is_number = isinstance(self.location_range, numbers.Real) and not isinstance(
            self.location_range, bool
        )
        if not (is_number and 0 < self.location_range <= 1):
            raise ValueError(f"location_range must be in (0, 1], got {self.location_range!r}")
        for name in ("num_glimpses", "size", "scales", "factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class Trajectory(NamedTuple):
    """What one episode produced. Time-major: ``T`` glimpses, ``B`` images, ``K`` classes.

    Attributes:
      locations: f32[T, B, 2], where each glimpse was read, (y, x) in [-1, 1] image
        coordinates.
      means: f32[T-1, B, 2], the policy mean that chose ``locations[1:]``, in policy units
        (the retina reads at ``RolloutSpec.location_range`` times the clipped sample).
      log_probs: f32[T-1, B], log-density of the (unclipped) sample under that policy.
      baselines: f32[T-1, B], b_t from the state that chose ``locations[t + 1]``.
      logits: f32[B, K], the action network's output after the last glimpse.
    """

    locations: jax.Array
    means: jax.Array
    log_probs: jax.Array
    baselines: jax.Array
    logits: jax.Array


class TrajectoryWithStepLogits(NamedTuple):
    """A ``Trajectory`` (the same fields, in the same order) plus the action network's output
    after each earlier glimpse: ``rollout(..., classify_every_glimpse=True)``.

    Attributes:
      step_logits: f32[T-1, B, K], the action network on ``h_t`` (without dropout) for every
        glimpse but the last, whose state ``logits`` classifies.
    """

    locations: jax.Array
    means: jax.Array
    log_probs: jax.Array
    baselines: jax.Array
    logits: jax.Array
    step_logits: jax.Array


def gaussian_log_prob(x: jax.Array, mean: jax.Array, std: float | jax.Array) -> jax.Array:
    """log N(x; mean, std^2 I) summed over the last axis (isotropic; std a number or a traced
    scalar)."""
    z = (x - mean) / std
    log_std = math.log(std) if isinstance(std, numbers.Real) else jnp.log(std)
    per_dim = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)
    return per_dim.sum(axis=-1)


def dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: each entry zeroed with probability ``rate``, survivors scaled by
    ``1 / (1 - rate)`` so the expectation is unchanged. ``rate == 0`` returns ``x``."""
    if not 0 <= rate < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    if rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _check_images(images: jax.Array) -> jax.Array:
    """f32[B, H, W, C] or u8[B, H, W, C] (uint8 in [0, 255]); [B, H, W] gains a channel axis."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C) or (B, H, W), got {images.shape}")
    if images.dtype != jnp.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    return images


def to_float_images(images: jax.Array) -> jax.Array:
    """Accepts f32[B, H, W, C], or uint8 in [0, 255] (scaled to [0, 1]); also [B, H, W]."""
    images = _check_images(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def rollout(
    model: RAM,
    params,
    images: jax.Array,
    key: jax.Array,
    spec: RolloutSpec,
    *,
    mode: str = "sample",
    dropout_rate: float = 0.0,
    num_mean_episodes: int = 0,
    image_margin: int = 0,
    loc_std_scale: float | jax.Array = 1.0,
    classify_every_glimpse: bool = False,
) -> Trajectory | TrajectoryWithStepLogits:
    """Runs ``spec.num_glimpses`` glimpses over a batch.

    Args:
      model: the ``RAM`` module (its fields fix the architecture).
      params: its parameters, ``variables["params"]``.
      images: f32[B, H, W, C] in [0, 1] (uint8 and [B, H, W] are accepted too).
      key: PRNG key; split ahead into the first location and one key per later glimpse.
      spec: the episode's static description.
      mode: ``"sample"`` draws locations from the policy (training, Monte-Carlo evaluation);
        ``"mean"`` starts at the centre and follows the policy mean (the key then serves only
        the dropout masks and ``policy="random"``'s locations).
      dropout_rate: training only (not in the paper): inverted dropout at this rate on every
        glimpse's features g_t before the core and on the final state before the action
        network, with masks from ``fold_in`` of the episode's keys (so 0, the default, leaves
        every trajectory exactly as without it). Evaluation leaves it at 0.
      num_mean_episodes: ``"sample"`` mode only (training; not in the paper): the first this
        many images of the batch get the deterministic episode instead (centre first, then the
        policy mean, as ``"mean"`` mode), the rest are sampled as usual. Their log-densities are
        taken at the mean, so REINFORCE gets no gradient from them (``(x - mean) / std^2 = 0``).
      image_margin: the images come with this many zero pixels around the canvas on every side
        (``tasks.generate``'s ``margin``): locations refer to the canvas inside, and the retina
        pads only what the margin lacks (none when it equals ``glimpse.glimpse_pad``).
      loc_std_scale: ``"sample"`` mode: the policy's std is ``spec.loc_std`` times this, which
        may be a traced scalar (a training schedule changes it without recompiling). The
        default 1.0 leaves the traced program exactly as without it.
      classify_every_glimpse: also run the action network on the state after each glimpse but
        the last, and return a ``TrajectoryWithStepLogits`` (training's
        ``intermediate_classification_weight``; not in the paper). False, the default, leaves
        the traced program and the returned ``Trajectory`` as without it.

    Returns:
      A ``Trajectory`` (a ``TrajectoryWithStepLogits`` with ``classify_every_glimpse``). The
      same key (and inputs) gives the same trajectory.
    """
    if mode not in MODES:
        raise ValueError(f"unknown rollout mode {mode!r}; expected one of {MODES}")
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    # uint8 stays uint8 through padding and cropping: only glimpses are converted to float.
    images = _check_images(images)
    if images.dtype != jnp.uint8:
        images = images.astype(jnp.float32)
    batch, height, width, _ = images.shape
    padded = retina.pad_images(
        images, size=spec.size, scales=spec.scales, factor=spec.factor, margin=image_margin
    )
    height, width = height - 2 * image_margin, width - 2 * image_margin
    if isinstance(num_mean_episodes, bool) or not isinstance(num_mean_episodes, int):
        raise ValueError(f"num_mean_episodes must be an int, got {num_mean_episodes!r}")
    if not 0 <= num_mean_episodes <= batch:
        raise ValueError(
            f"num_mean_episodes must be in [0, batch size {batch}], got {num_mean_episodes}"
        )
    if num_mean_episodes and (mode != "sample" or spec.policy == "random"):
        raise ValueError(
            "num_mean_episodes applies to sampled episodes of a learned policy, not to mode "
            f"{mode!r} with policy {spec.policy!r}"
        )
    retina.validate_retina(
        (height, width, images.shape[-1]), size=spec.size, scales=spec.scales, factor=spec.factor
    )
    if isinstance(loc_std_scale, numbers.Real) and not loc_std_scale > 0:
        raise ValueError(f"loc_std_scale must be positive, got {loc_std_scale!r}")
    std = (
        spec.loc_std
        if isinstance(loc_std_scale, numbers.Real) and loc_std_scale == 1
        else (spec.loc_std * loc_std_scale)
    )
    variables = {"params": params}
    first_key, step_keys = jax.random.split(key, 2)
    step_keys = jax.random.split(step_keys, spec.num_glimpses)

    random_policy = spec.policy == "random"
    if random_policy or (mode == "sample" and spec.random_first_glimpse):
        first_loc = jax.random.uniform(first_key, (batch, 2), minval=-1.0, maxval=1.0)
    else:
        first_loc = jnp.zeros((batch, 2), jnp.float32)
    # A static count: 0 leaves the traced program exactly as without the option.
    sampled = jnp.arange(batch)[:, None] >= num_mean_episodes if num_mean_episodes else None
    if sampled is not None:
        first_loc = jnp.where(sampled, first_loc, 0.0)

    def glimpse_step(carry, step_key):
        state, policy_loc = carry
        # A Python float: range 1 leaves the traced program exactly as without the option.
        loc = policy_loc if spec.location_range == 1 else spec.location_range * policy_loc
        patches = retina.glimpse_from_padded(
            padded, loc, (height, width), size=spec.size, scales=spec.scales, factor=spec.factor
        )
        g = model.apply(variables, patches, loc, method=RAM.encode_glimpse)
        g = dropout(jax.random.fold_in(step_key, 1), g, dropout_rate)
        state, h = model.apply(variables, state, g, method=RAM.update_core)
        policy_input = h if spec.reinforce_through_core else jax.lax.stop_gradient(h)
        mean = model.apply(variables, policy_input, method=RAM.location_mean)
        baseline = model.apply(variables, jax.lax.stop_gradient(h), method=RAM.baseline)
        if random_policy:
            # No decision to score: REINFORCE and the baseline get nothing from these steps.
            sample = jax.random.uniform(step_key, mean.shape, mean.dtype, -1.0, 1.0)
            mean = jax.lax.stop_gradient(sample)
        elif mode == "sample":
            noise = std * jax.random.normal(step_key, mean.shape, mean.dtype)
            if sampled is not None:
                noise = jnp.where(sampled, noise, 0.0)
            sample = jax.lax.stop_gradient(mean + noise)
        else:
            sample = jax.lax.stop_gradient(mean)
        log_prob = gaussian_log_prob(sample, mean, std)
        if random_policy:
            log_prob = jnp.zeros_like(log_prob)
        next_loc = jnp.clip(sample, -1.0, 1.0)
        outputs = (loc, mean, log_prob, baseline)
        if classify_every_glimpse:
            outputs += (model.apply(variables, h, method=RAM.classify),)
        return (state, next_loc), outputs

    state0 = initial_core_state(model.core, batch, model.core_hidden)
    unroll = spec.num_glimpses if spec.num_glimpses <= MAX_UNROLLED_GLIMPSES else 1
    (state, _), (locs, means, log_probs, baselines, *step_logits) = jax.lax.scan(
        glimpse_step, (state0, first_loc), step_keys, unroll=unroll
    )
    final = dropout(jax.random.fold_in(first_key, 1), state[-1], dropout_rate)
    logits = model.apply(variables, final, method=RAM.classify)
    # The last step's policy output chooses no glimpse (and its state is the one ``logits``
    # classifies): drop it.
    fields = (locs, means[:-1], log_probs[:-1], baselines[:-1], logits)
    if classify_every_glimpse:
        return TrajectoryWithStepLogits(*fields, step_logits[0][:-1])
    return Trajectory(*fields)


def sampled_class_probs(
    model: RAM,
    params,
    images: jax.Array,
    key: jax.Array,
    spec: RolloutSpec,
    num_samples: int,
    loc_std_scale: float | jax.Array = 1.0,
) -> jax.Array:
    """Class probabilities f32[num_samples, B, K] of ``num_samples`` sampled rollouts.

    Rollout ``s`` uses key ``s`` of ``jax.random.split(key, num_samples)``; ``loc_std_scale`` is
    ``rollout``'s.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    keys = jax.random.split(key, num_samples)

    def probs(k):
        trajectory = rollout(
            model, params, images, k, spec, mode="sample", loc_std_scale=loc_std_scale
        )
        return jax.nn.softmax(trajectory.logits)

    return jax.lax.map(probs, keys)


def mc_class_probs(
    model: RAM,
    params,
    images: jax.Array,
    key: jax.Array,
    spec: RolloutSpec,
    num_samples: int,
) -> jax.Array:
    """Class probabilities f32[B, K] averaged over ``num_samples`` sampled rollouts."""
    return sampled_class_probs(model, params, images, key, spec, num_samples).mean(axis=0)
