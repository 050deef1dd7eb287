"""Tests for ram_jax.losses.hybrid_loss on a hand-built trajectory with hand-computed values.

B = 2 images, T = 4 glimpses (3 location decisions). T - 1 = 3 differs from 2 on purpose: with
T - 1 = 2 the REINFORCE gradient w.r.t. log_probs, -(R - b) / B, and the baseline term's
gradient w.r.t. baselines, -2 (R - b) / ((T - 1) B), would be the same numbers.

    logits  = [[2.0, 1.0, 0.1],     labels = [0, 0]  ->  argmax [0, 1]  ->  R = [1, 0]
               [0.5, 2.5, 0.0]]
    log_probs (t, b) = [[-1.0, -2.0], [-0.5, -3.0], [-1.5, -0.25]]
    baselines (t, b) = [[ 0.2,  0.4], [ 0.6,  0.1], [ 0.9,  0.5 ]]
    R - b     (t, b) = [[ 0.8, -0.4], [ 0.4, -0.1], [ 0.1, -0.5 ]]

    REINFORCE: image 0: -1.0*0.8 - 0.5*0.4 - 1.5*0.1 = -1.15
               image 1: -2.0*-0.4 - 3.0*-0.1 - 0.25*-0.5 = 1.225
               -> -mean(-1.15, 1.225) = -0.0375
    baseline:  mean(0.64, 0.16, 0.16, 0.01, 0.01, 0.25) = 1.23 / 6 = 0.205
    CE:        image 0: log(e^2 + e^1 + e^0.1) - 2;  image 1: log(e^0.5 + e^2.5 + 1) - 0.5
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.losses import LossWeights, hybrid_loss, leave_one_out_baseline, rewards
from ram_jax.rollout import Trajectory

LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]]
LABELS = jnp.array([0, 0], jnp.int32)
LOG_PROBS = [[-1.0, -2.0], [-0.5, -3.0], [-1.5, -0.25]]
BASELINES = [[0.2, 0.4], [0.6, 0.1], [0.9, 0.5]]

CE = (
    math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.1))
    - 2.0
    + math.log(math.exp(0.5) + math.exp(2.5) + 1.0)
    - 0.5
) / 2
REINFORCE = -0.0375
BASELINE = 0.205
ADVANTAGE = np.array([[0.8, -0.4], [0.4, -0.1], [0.1, -0.5]])


def make_traj(log_probs=LOG_PROBS, baselines=BASELINES, logits=LOGITS) -> Trajectory:
    t, b = 4, 2
    return Trajectory(
        locations=jnp.zeros((t, b, 2)),
        means=jnp.zeros((t - 1, b, 2)),
        log_probs=jnp.asarray(log_probs, jnp.float32),
        baselines=jnp.asarray(baselines, jnp.float32),
        logits=jnp.asarray(logits, jnp.float32),
    )


def test_rewards():
    np.testing.assert_array_equal(rewards(jnp.asarray(LOGITS), LABELS), [1.0, 0.0])
    np.testing.assert_array_equal(rewards(jnp.asarray(LOGITS), jnp.array([2, 1])), [0.0, 1.0])


def test_terms_by_hand():
    loss, metrics = hybrid_loss(make_traj(), LABELS)
    np.testing.assert_allclose(metrics["classification"], CE, rtol=1e-6)
    np.testing.assert_allclose(metrics["reinforce"], REINFORCE, rtol=1e-5)
    np.testing.assert_allclose(metrics["baseline"], BASELINE, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], 0.5)
    np.testing.assert_allclose(metrics["mean_baseline"], 2.7 / 6, rtol=1e-6)
    np.testing.assert_allclose(loss, CE + REINFORCE + BASELINE, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], loss)


@pytest.mark.parametrize(
    "weights", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2.0, 3.0, 5.0), (0.5, 0.0, 2.0)]
)
def test_weights_scale_each_term(weights):
    loss, metrics = hybrid_loss(make_traj(), LABELS, LossWeights(*weights))
    w_ce, w_rl, w_b = weights
    np.testing.assert_allclose(
        loss, w_ce * CE + w_rl * REINFORCE + w_b * BASELINE, rtol=1e-5, atol=1e-7
    )
    # The reported parts stay unweighted.
    np.testing.assert_allclose(metrics["classification"], CE, rtol=1e-6)
    np.testing.assert_allclose(metrics["reinforce"], REINFORCE, rtol=1e-5)
    np.testing.assert_allclose(metrics["baseline"], BASELINE, rtol=1e-5)


def _grads(weights=LossWeights(1.0, 1.0, 1.0)):  # noqa: B008 (an immutable tuple)
    def f(log_probs, baselines, logits):
        traj = make_traj(log_probs, baselines, logits)
        return hybrid_loss(traj, LABELS, weights)[0]

    args = (jnp.asarray(LOG_PROBS), jnp.asarray(BASELINES), jnp.asarray(LOGITS))
    return [np.asarray(g) for g in jax.grad(f, argnums=(0, 1, 2))(*args)]


def test_reinforce_gradient_sign():
    # d loss / d log_prob[t, b] = -(R_b - b_t) / B: gradient descent raises the log-probability
    # of decisions that beat the baseline (image 0 was classified correctly) and lowers the
    # others. A flipped sign fails here.
    g_logp, _, _ = _grads()
    np.testing.assert_allclose(g_logp, -ADVANTAGE / 2, rtol=1e-6)
    assert np.all(g_logp[:, 0] < 0)  # correct episode: pushed up
    assert np.all(g_logp[:, 1] > 0)  # wrong episode: pushed down


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.0, 1.0, 0.0), (0.0, 0.0, 2.0)])
def test_baseline_gradient_is_only_the_squared_error(weights):
    # d/db of w_b * mean (R - b)^2 = -2 w_b (R - b) / ((T - 1) B) = -w_b (R - b) / 3. If the
    # advantage were not stopped, REINFORCE would add w_rl * log_prob / B here (e.g. -0.5 for
    # entry (0, 0)), and with weights (0, 1, 0) the gradient would not be zero.
    _, g_base, _ = _grads(LossWeights(*weights))
    np.testing.assert_allclose(g_base, -weights[2] * ADVANTAGE / 3, rtol=1e-6, atol=1e-8)


def test_logits_gradient_is_only_cross_entropy():
    # The reward is an argmax: no gradient reaches the logits through REINFORCE or the baseline.
    _, _, g_logits = _grads(LossWeights(1.0, 1.0, 1.0))
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
    onehot = np.array([[1.0, 0, 0], [1.0, 0, 0]])
    np.testing.assert_allclose(g_logits, (probs - onehot) / 2, rtol=1e-5, atol=1e-7)
    _, _, g_logits_rl = _grads(LossWeights(0.0, 1.0, 1.0))
    np.testing.assert_array_equal(g_logits_rl, 0.0)


def test_jittable():
    loss, _ = jax.jit(hybrid_loss)(make_traj(), LABELS)
    np.testing.assert_allclose(loss, CE + REINFORCE + BASELINE, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3,), (2, 1), (), (1,)])
def test_labels_of_wrong_shape(shape):
    with pytest.raises(ValueError, match="labels must have shape"):
        hybrid_loss(make_traj(), jnp.zeros(shape, jnp.int32))


def test_single_glimpse_episode_has_a_finite_loss():
    # With num_glimpses = 1 (accepted by RolloutSpec and validate_config) there are no location
    # decisions: log_probs and baselines are [0, B]. REINFORCE and the baseline's squared error
    # then have nothing to sum, and the loss must be the cross-entropy alone, not NaN (a NaN loss
    # halts training at its first step).
    traj = Trajectory(
        locations=jnp.zeros((1, 2, 2)),
        means=jnp.zeros((0, 2, 2)),
        log_probs=jnp.zeros((0, 2)),
        baselines=jnp.zeros((0, 2)),
        logits=jnp.asarray(LOGITS),
    )
    loss, metrics = hybrid_loss(traj, LABELS)
    for name, value in metrics.items():
        assert np.isfinite(value), f"{name} is {value}"
    np.testing.assert_allclose(metrics["reinforce"], 0.0)
    np.testing.assert_allclose(metrics["baseline"], 0.0)
    np.testing.assert_allclose(loss, CE, rtol=1e-6)


# The "probability" reward: R = softmax(logits)[label], here the probability of class 0.
P_LABEL = np.array(
    [
        math.exp(2.0) / (math.exp(2.0) + math.exp(1.0) + math.exp(0.1)),
        math.exp(0.5) / (math.exp(0.5) + math.exp(2.5) + 1.0),
    ]
)


def test_probability_reward_by_hand():
    np.testing.assert_allclose(
        rewards(jnp.asarray(LOGITS), LABELS, "probability"), P_LABEL, rtol=1e-6
    )
    advantage = P_LABEL[None, :] - np.asarray(BASELINES)
    reinforce = -(np.asarray(LOG_PROBS) * advantage).sum(axis=0).mean()
    baseline = np.square(advantage).mean()
    loss, metrics = hybrid_loss(make_traj(), LABELS, reward="probability")
    np.testing.assert_allclose(metrics["reinforce"], reinforce, rtol=1e-5)
    np.testing.assert_allclose(metrics["baseline"], baseline, rtol=1e-5)
    np.testing.assert_allclose(metrics["mean_reward"], P_LABEL.mean(), rtol=1e-6)
    # Accuracy still counts correct episodes, whatever the reward.
    np.testing.assert_allclose(metrics["accuracy"], 0.5)
    np.testing.assert_allclose(loss, CE + reinforce + baseline, rtol=1e-5)


def test_probability_reward_sends_no_gradient_to_the_logits():
    # The reward is a probability of the logits but must act as a constant: only the
    # cross-entropy may train the action network.
    def f(logits):
        traj = make_traj(logits=logits)
        return hybrid_loss(traj, LABELS, LossWeights(0.0, 1.0, 1.0), reward="probability")[0]

    np.testing.assert_array_equal(jax.grad(f)(jnp.asarray(LOGITS)), 0.0)


@pytest.mark.parametrize("kind", ["correct", "probability"])
def test_rewards_reject_labels_of_another_shape(kind):
    # [B, 1] labels would otherwise broadcast to a [B, B] comparison and a wrong mean.
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\), got \(2, 1\)"):
        rewards(jnp.asarray(LOGITS), jnp.asarray(LABELS)[:, None], kind)


def test_unknown_reward():
    with pytest.raises(ValueError, match="unknown reward 'accuracy'"):
        hybrid_loss(make_traj(), LABELS, reward="accuracy")


def test_leave_one_out_baseline_by_hand():
    earned = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        leave_one_out_baseline(earned, 3), [0.5, 1.0, 0.5, 1.0, 1.0, 1.0], rtol=1e-6
    )
    np.testing.assert_allclose(leave_one_out_baseline(earned, 2), [0, 1, 1, 1, 1, 1])


def test_leave_one_out_terms_by_hand():
    # The two episodes form one group: R = [1, 0], so the other episode's reward is [0, 1] and
    # the advantage [1, -1] at every decision, whatever the baseline network says.
    #   image 0: -(-1.0 - 0.5 - 1.5) * 1 = 3.0;  image 1: -(-2.0 - 3.0 - 0.25) * -1 = -5.25
    #   -> mean(3.0, -5.25) = -1.125
    loss, metrics = hybrid_loss(make_traj(), LABELS, advantage="leave_one_out", group_size=2)
    np.testing.assert_allclose(metrics["reinforce"], -1.125, rtol=1e-6)
    # The other terms, and the baseline network's training, are unchanged.
    np.testing.assert_allclose(metrics["classification"], CE, rtol=1e-6)
    np.testing.assert_allclose(metrics["baseline"], BASELINE, rtol=1e-5)
    np.testing.assert_allclose(loss, CE - 1.125 + BASELINE, rtol=1e-5)


def test_leave_one_out_ignores_the_baseline_network_in_reinforce():
    # The REINFORCE term's value, not its gradient: the advantage is stop_gradient-ed either
    # way, so only the value shows which baseline was subtracted.
    def reinforce(baselines, advantage):
        traj = make_traj(baselines=baselines)
        return hybrid_loss(traj, LABELS, advantage=advantage, group_size=2)[1]["reinforce"]

    zeros, learned = jnp.zeros((3, 2)), jnp.asarray(BASELINES)
    loo = reinforce(zeros, "leave_one_out")
    assert float(loo) == float(reinforce(learned, "leave_one_out"))
    assert float(reinforce(zeros, "learned_baseline")) != float(
        reinforce(learned, "learned_baseline")
    )


@pytest.mark.parametrize(
    ("group_size", "match"), [(1, "groups of >= 2 episodes"), (3, "do not split into groups of 3")]
)
def test_leave_one_out_bad_groups(group_size, match):
    with pytest.raises(ValueError, match=match):
        hybrid_loss(make_traj(), LABELS, advantage="leave_one_out", group_size=group_size)


def test_unknown_advantage():
    with pytest.raises(ValueError, match="unknown advantage 'critic'"):
        hybrid_loss(make_traj(), LABELS, advantage="critic")
