"""Classification error of a trained RAM over a whole dataset, in one jitted call.

Two modes: ``"mean"`` (one deterministic rollout: centre first, then the policy mean) and
``"mc"`` (class probabilities averaged over ``mc_samples`` sampled rollouts, Ba et al. 2015).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ram_jax.networks import RAM
from ram_jax.rollout import RolloutSpec, mc_class_probs, rollout, to_float_images

__all__ = ["error_pct", "predict"]


@functools.partial(jax.jit, static_argnames=("model", "spec", "batch_size", "mc_samples"))
def predict(
    model: nn.Module,
    params,
    images: jax.Array,
    key: jax.Array,
    spec: RolloutSpec,
    *,
    batch_size: int,
    mc_samples: int = 0,
) -> jax.Array:
    """Predicted classes int32[N] for images u8/f32[N, H, W(, C)].

    ``mc_samples == 0`` runs one deterministic rollout; ``> 0`` averages that many sampled ones.
    ``model`` may also be a whole-image baseline (``ram_jax.baselines``): ``spec`` and
    ``mc_samples`` then change nothing.
    The dataset is processed in batches of ``batch_size`` by ``lax.map`` (padded at the end), so
    memory stays bounded and one compiled program serves the whole set.
    """
    n = images.shape[0]
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    padded = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]), images.dtype)])
    batches = padded.reshape(num_batches, batch_size, *images.shape[1:])
    keys = jax.random.split(key, num_batches)

    def classify(args):
        batch, batch_key = args
        if not isinstance(model, RAM):
            logits = model.apply({"params": params}, to_float_images(batch))
        elif mc_samples == 0:
            logits = rollout(model, params, batch, batch_key, spec, mode="mean").logits
        else:
            logits = mc_class_probs(model, params, batch, batch_key, spec, mc_samples)
        return jnp.argmax(logits, axis=-1)

    return jax.lax.map(classify, (batches, keys)).reshape(-1)[:n]


def error_pct(
    model: nn.Module,
    params,
    images: jax.Array,
    labels: jax.Array,
    spec: RolloutSpec,
    *,
    key: jax.Array | None = None,
    batch_size: int = 1000,
    mc_samples: int = 0,
) -> float:
    """Percentage of misclassified images (see ``predict`` for the modes)."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if key is None:
        key = jax.random.key(0)
    batch_size = min(batch_size, len(images))
    predicted = predict(
        model, params, images, key, spec, batch_size=batch_size, mc_samples=mc_samples
    )
    wrong = int(np.sum(np.asarray(predicted) != np.asarray(labels)))
    return round(100.0 * wrong / len(labels), 4)
