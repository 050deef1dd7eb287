"""The "random glimpses" control of the paper: ``RolloutSpec(policy="random")``.

Every location is uniform in [-1, 1]^2 and drawn from the key, in both rollout modes; the
location network is never read, so it gets no gradient, and the loss drops the REINFORCE and
baseline terms (``train.loss_weights``). Each property is checked against the learned policy as
a control, so that a test cannot pass by looking at something that never changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ram_jax.config import default_config
from ram_jax.losses import LossWeights
from ram_jax.networks import RAM
from ram_jax.rollout import MODES, RolloutSpec, rollout
from ram_jax.train import init_train_state, loss_weights, make_loss_fn, rollout_spec

B, T = 512, 4
TINY = dict(patch_hidden=16, location_hidden=16, glimpse_features=32, core_hidden=32)


def make_spec(policy: str) -> RolloutSpec:
    return RolloutSpec(num_glimpses=T, size=8, scales=2, loc_std=0.2, policy=policy)


@pytest.fixture(scope="module")
def setup():
    model = RAM(**TINY)
    spec = make_spec("random")
    params = jax.jit(lambda k: init_train_state(model, spec, optax.identity(), k, (28, 28)).params)(
        jax.random.key(0)
    )
    images = jax.random.randint(jax.random.key(1), (B, 28, 28), 0, 256).astype(jnp.uint8)
    labels = jax.random.randint(jax.random.key(2), (B,), 0, 10)
    run = jax.jit(rollout, static_argnames=("model", "spec", "mode"))
    return model, params, images, labels, run


def perturbed_location_net(params):
    """The location network's weights changed (scaled and shifted), everything else kept."""
    params = dict(params)
    params["location_net"] = jax.tree.map(lambda x: -3.0 * x + 0.5, params["location_net"])
    return params


@pytest.mark.parametrize("mode", MODES)
def test_locations_are_uniform_in_the_square(setup, mode):
    model, params, images, _, run = setup
    traj = run(model, params, images, jax.random.key(7), make_spec("random"), mode=mode)
    locs = np.asarray(traj.locations)
    assert locs.shape == (T, B, 2)
    assert np.all(np.abs(locs) <= 1.0)
    # Spread over the whole square: 4 x 512 x 2 uniform draws.
    assert locs.min() < -0.8 and locs.max() > 0.8
    # Uniform on [-1, 1]: mean 0, variance 1/3 (the standard error of 4,096 draws is ~0.009).
    assert abs(locs.mean()) < 0.05
    assert locs.var() == pytest.approx(1.0 / 3.0, abs=0.03)
    for t in range(T):  # every glimpse, the first included, is spread, not only the pooled set
        assert locs[t].min() < -0.8 and locs[t].max() > 0.8
        # Each quarter of [-1, 1] holds about a quarter of the draws.
        counts = np.histogram(locs[t], bins=4, range=(-1.0, 1.0))[0] / locs[t].size
        np.testing.assert_allclose(counts, 0.25, atol=0.05)
    # Not clipped onto the border (as Gaussian samples beyond it would be).
    assert not np.any(np.abs(locs) == 1.0)


def test_learned_mean_mode_control_starts_at_the_centre(setup):
    # The control for the test above: the learned policy's deterministic episode starts at the
    # centre, so "uniform" is a property of the random policy, not of every rollout.
    model, params, images, _, run = setup
    traj = run(model, params, images, jax.random.key(7), make_spec("learned"), mode="mean")
    np.testing.assert_array_equal(np.asarray(traj.locations[0]), 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_log_probs_are_zero(setup, mode):
    model, params, images, _, run = setup
    traj = run(model, params, images, jax.random.key(7), make_spec("random"), mode=mode)
    assert traj.log_probs.shape == (T - 1, B)
    np.testing.assert_array_equal(np.asarray(traj.log_probs), 0.0)
    # The "means" are the draws themselves: the location network's output is not reported.
    np.testing.assert_array_equal(np.asarray(traj.means), np.asarray(traj.locations[1:]))
    # Control: a learned policy scores its samples (Gaussian log-densities are not all zero).
    learned = run(model, params, images, jax.random.key(7), make_spec("learned"), mode="sample")
    assert np.all(np.asarray(learned.log_probs) != 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_trajectory_ignores_the_location_network(setup, mode):
    model, params, images, _, run = setup
    other = perturbed_location_net(params)
    key = jax.random.key(11)
    a = run(model, params, images, key, make_spec("random"), mode=mode)
    b = run(model, other, images, key, make_spec("random"), mode=mode)
    np.testing.assert_array_equal(np.asarray(a.locations), np.asarray(b.locations))
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    np.testing.assert_array_equal(np.asarray(a.baselines), np.asarray(b.baselines))
    # Control: the learned policy does follow the location network.
    c = run(model, params, images, key, make_spec("learned"), mode=mode)
    d = run(model, other, images, key, make_spec("learned"), mode=mode)
    assert not np.array_equal(np.asarray(c.locations[1:]), np.asarray(d.locations[1:]))
    assert not np.array_equal(np.asarray(c.logits), np.asarray(d.logits))


@pytest.mark.parametrize("mode", MODES)
def test_locations_are_drawn_from_the_key(setup, mode):
    model, params, images, _, run = setup
    spec = make_spec("random")
    a = run(model, params, images, jax.random.key(3), spec, mode=mode)
    b = run(model, params, images, jax.random.key(3), spec, mode=mode)
    c = run(model, params, images, jax.random.key(4), spec, mode=mode)
    np.testing.assert_array_equal(np.asarray(a.locations), np.asarray(b.locations))
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    # A different key moves every glimpse, the first included ("mean" mode too: random
    # glimpses have no mean to follow).
    for t in range(T):
        assert not np.array_equal(np.asarray(a.locations[t]), np.asarray(c.locations[t])), t
    assert not np.array_equal(np.asarray(a.logits), np.asarray(c.logits))


def test_learned_mean_mode_control_ignores_the_key(setup):
    # Control for the test above: the learned policy's "mean" mode does not use the key.
    model, params, images, _, run = setup
    spec = make_spec("learned")
    a = run(model, params, images, jax.random.key(3), spec, mode="mean")
    c = run(model, params, images, jax.random.key(4), spec, mode="mean")
    np.testing.assert_array_equal(np.asarray(a.locations), np.asarray(c.locations))


def test_both_modes_draw_the_same_random_glimpses(setup):
    # Random glimpses make no decision, so the mode has nothing to change: with one key, the
    # deterministic and the sampled episode read the same places.
    model, params, images, _, run = setup
    spec = make_spec("random")
    a = run(model, params, images, jax.random.key(5), spec, mode="sample")
    b = run(model, params, images, jax.random.key(5), spec, mode="mean")
    np.testing.assert_array_equal(np.asarray(a.locations), np.asarray(b.locations))


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match=r"unknown policy 'greedy'"):
        RolloutSpec(num_glimpses=2, size=8, policy="greedy")


@pytest.mark.parametrize("policy", ["learned", "random"])
def test_loss_weights(policy):
    config = default_config()
    config.policy = policy
    config.classification_weight = 2.0
    config.reinforce_weight = 0.5
    config.baseline_weight = 0.25
    weights = loss_weights(config)
    assert isinstance(weights, LossWeights)
    if policy == "random":
        assert weights == LossWeights(classification=2.0, reinforce=0.0, baseline=0.0)
    else:
        assert weights == LossWeights(classification=2.0, reinforce=0.5, baseline=0.25)
    assert rollout_spec(config).policy == policy


def _grads(policy: str, setup, mean_rollout_weight: float = 0.0):
    model, params, images, labels, _ = setup
    config = default_config()
    config.policy = policy
    spec = make_spec(policy)
    loss_fn = make_loss_fn(
        model, spec, loss_weights(config), mean_rollout_weight=mean_rollout_weight
    )
    grad_fn = jax.jit(
        jax.grad(lambda p: loss_fn(p, images[:64], labels[:64], jax.random.key(9))[0])
    )
    return grad_fn(params)


def _all_zero(tree) -> bool:
    return all(bool(jnp.all(x == 0.0)) for x in jax.tree.leaves(tree))


def _every_array_nonzero(tree) -> bool:
    return all(bool(jnp.any(x != 0.0)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("mean_rollout_weight", [0.0, 0.5])
def test_location_network_gets_exactly_zero_gradient(setup, mean_rollout_weight):
    grads = _grads("random", setup, mean_rollout_weight)
    assert _all_zero(grads["location_net"])
    # The baseline's term has weight 0, and the classification loss does not read it.
    assert _all_zero(grads["baseline_net"])
    # The classifier trains: glimpse, core and action networks all get a gradient.
    for name in ("glimpse_net", "core_net", "action_net"):
        assert _every_array_nonzero(grads[name]), name


def test_learned_policy_control_trains_the_location_network(setup):
    grads = _grads("learned", setup)
    assert _every_array_nonzero(grads["location_net"])
    assert _every_array_nonzero(grads["baseline_net"])
