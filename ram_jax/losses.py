"""The hybrid loss of Mnih et al. (2014), section 3.2.

    loss = w_ce * CE(logits, label)
         + w_rl * -sum_t log pi(l_{t+1} | h_t) * stop_gradient(R - b_t)
         + w_b  * mean_t (R - b_t)^2

with reward ``R = 1`` when the final classification is correct, else 0 (``reward="correct"``, the
paper's), or ``R = p(label)``, the probability the action network gives the true class
(``reward="probability"``, not in the paper: a smooth reward that still ranks glimpse paths
once nearly every episode is correct). Terms are averaged over the batch; the REINFORCE term
sums over the ``T - 1`` location decisions (the score-function estimator of the episode's
return), the baseline term averages over them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ram_jax.rollout import Trajectory

__all__ = [
    "ADVANTAGES",
    "REWARDS",
    "LossWeights",
    "hybrid_loss",
    "leave_one_out_baseline",
    "rewards",
]

REWARDS = ("correct", "probability")
ADVANTAGES = ("learned_baseline", "leave_one_out")


class LossWeights(NamedTuple):
    """Weights of the three terms of the hybrid loss."""

    classification: float = 1.0
    reinforce: float = 1.0
    baseline: float = 1.0


DEFAULT_WEIGHTS = LossWeights()


def rewards(logits: jax.Array, labels: jax.Array, kind: str = "correct") -> jax.Array:
    """f32[B], carrying no gradient.

    ``"correct"``: 1 where the argmax class equals the label, else 0. ``"probability"``: the
    softmax probability of the label.
    """
    if labels.shape != logits.shape[:1]:
        # [B, 1] labels would broadcast against [B] predictions to a [B, B] comparison.
        raise ValueError(f"labels must have shape {logits.shape[:1]}, got {tuple(labels.shape)}")
    if kind == "correct":
        return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if kind == "probability":
        probs = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
        return jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
    raise ValueError(f"unknown reward {kind!r}; expected one of {REWARDS}")


def leave_one_out_baseline(earned: jax.Array, group_size: int) -> jax.Array:
    """For each episode, the mean reward of the other episodes of its group; f32[B].

    ``earned`` f32[B] holds consecutive groups of ``group_size`` episodes of the same image (as
    ``jnp.repeat`` of the batch's indices lays them out). A baseline that excludes the episode
    itself keeps the policy gradient unbiased; where every episode of a group earns the same,
    the advantage is exactly 0, so only images whose paths disagree move the policy.
    """
    if group_size < 2:
        raise ValueError(
            f"a leave-one-out baseline needs groups of >= 2 episodes, got {group_size}"
        )
    if earned.shape[0] % group_size:
        raise ValueError(
            f"{earned.shape[0]} episodes do not split into groups of {group_size} per image"
        )
    groups = earned.reshape(-1, group_size)
    others = (groups.sum(axis=1, keepdims=True) - groups) / (group_size - 1)
    return others.reshape(earned.shape)


def hybrid_loss(
    traj: Trajectory,
    labels: jax.Array,
    weights: LossWeights = DEFAULT_WEIGHTS,
    *,
    reward: str = "correct",
    advantage: str = "learned_baseline",
    group_size: int = 1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and its parts.

    Args:
      traj: a sampled trajectory (``rollout(..., mode="sample")``).
      labels: int[B] class indices.
      weights: the terms' weights.
      reward: what an episode earns, ``"correct"`` (the paper) or ``"probability"``.
      advantage: what REINFORCE subtracts from the reward: ``"learned_baseline"`` (the paper's
        b_t) or ``"leave_one_out"`` (not in the paper: the mean reward of the other episodes
        on the same image, ``leave_one_out_baseline``; the baseline network still trains).
      group_size: episodes per image, consecutive in the batch (``"leave_one_out"`` only).

    Returns:
      ``(loss, metrics)``; metrics hold ``loss``, ``classification``, ``reinforce``,
      ``baseline`` (each unweighted), ``accuracy``, ``mean_reward`` and ``mean_baseline``.
    """
    if labels.shape != traj.logits.shape[:1]:
        raise ValueError(
            f"labels must have shape {traj.logits.shape[:1]}, got {tuple(labels.shape)}"
        )
    correct = rewards(traj.logits, labels)
    earned = correct if reward == "correct" else rewards(traj.logits, labels, reward)
    classification = optax.softmax_cross_entropy_with_integer_labels(traj.logits, labels).mean()
    if advantage == "learned_baseline":
        subtracted = traj.baselines
    elif advantage == "leave_one_out":
        subtracted = leave_one_out_baseline(earned, group_size)[None, :]
    else:
        raise ValueError(f"unknown advantage {advantage!r}; expected one of {ADVANTAGES}")
    reinforce_weight = jax.lax.stop_gradient(earned[None, :] - subtracted)
    reinforce = -(traj.log_probs * reinforce_weight).sum(axis=0).mean()
    # With one glimpse there is no location decision: empty terms must read 0, not NaN.
    decisions = max(1, traj.baselines.size)
    baseline = jnp.square(earned[None, :] - traj.baselines).sum() / decisions
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
        "accuracy": correct.mean(),
        "mean_reward": earned.mean(),
        "mean_baseline": traj.baselines.sum() / decisions,
    }
    return loss, metrics
