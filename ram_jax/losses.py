"""The hybrid loss of Mnih et al. (2014), section 3.2.

    loss = w_ce * CE(logits, label)
         + w_rl * -sum_t log pi(l_{t+1} | h_t) * stop_gradient(R - b_t)
         + w_b  * mean_t (R - b_t)^2

with reward ``R = 1`` when the final classification is correct, else 0. Terms are averaged over
the batch; the REINFORCE term sums over the ``T - 1`` location decisions (the score-function
estimator of the episode's return), the baseline term averages over them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ram_jax.rollout import Trajectory

__all__ = ["LossWeights", "hybrid_loss", "rewards"]


class LossWeights(NamedTuple):
    """Weights of the three terms of the hybrid loss."""

    classification: float = 1.0
    reinforce: float = 1.0
    baseline: float = 1.0


DEFAULT_WEIGHTS = LossWeights()


def rewards(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """f32[B]: 1 where the argmax class equals the label, else 0. Carries no gradient."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def hybrid_loss(
    traj: Trajectory, labels: jax.Array, weights: LossWeights = DEFAULT_WEIGHTS
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and its parts.

    Args:
      traj: a sampled trajectory (``rollout(..., mode="sample")``).
      labels: int[B] class indices.
      weights: the terms' weights.

    Returns:
      ``(loss, metrics)``; metrics hold ``loss``, ``classification``, ``reinforce``,
      ``baseline`` (each unweighted), ``accuracy`` and ``mean_baseline``.
    """
    if labels.shape != traj.logits.shape[:1]:
        raise ValueError(
            f"labels must have shape {traj.logits.shape[:1]}, got {tuple(labels.shape)}"
        )
    reward = rewards(traj.logits, labels)
    classification = optax.softmax_cross_entropy_with_integer_labels(traj.logits, labels).mean()
    advantage = jax.lax.stop_gradient(reward[None, :] - traj.baselines)
    reinforce = -(traj.log_probs * advantage).sum(axis=0).mean()
    # With one glimpse there is no location decision: empty terms must read 0, not NaN.
    decisions = max(1, traj.baselines.size)
    baseline = jnp.square(reward[None, :] - traj.baselines).sum() / decisions
    loss = (
        weights.classification * classification
        + weights.reinforce * reinforce
        + weights.baseline * baseline
    )
    metrics = {
        "loss": loss,
        "classification": classification,
        "reinforce": reinforce,
        "baseline": baseline,
        "accuracy": reward.mean(),
        "mean_baseline": traj.baselines.sum() / decisions,
    }
    return loss, metrics
