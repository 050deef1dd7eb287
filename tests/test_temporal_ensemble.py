"""``temporal_ensemble_weight``: soft targets from each training image's earlier episodes.

The option (not in the paper; Laine and Aila's temporal ensembling, here as self-distillation)
keeps, per training image, a moving average of the class probabilities its sampled episodes
gave, and adds the cross-entropy of each episode against that average to the loss. Checked
here: the loss term by hand (which episodes it teaches, images not yet visited), the update of
the averages by one and two training steps (sampled episodes only, rows of other images
untouched, nothing after a halt), the bias correction that makes a first visit's target the
episode's own probabilities, and that a resumed run carries the averages exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ram_jax.baselines import FullyConnected
from ram_jax.losses import LossWeights
from ram_jax.networks import RAM
from ram_jax.rollout import RolloutSpec, rollout
from ram_jax.train import LoopCarry, TrainState, make_loss_fn, make_train_step

B, T, HW, K, N = 8, 3, 16, 10, 20
M = 3  # episodes on the policy mean: the first M of the batch
TINY = dict(num_classes=K, patch_hidden=8, location_hidden=8, glimpse_features=16, core_hidden=16)


def setup():
    spec = RolloutSpec(num_glimpses=T, size=4, scales=2, loc_std=0.2)
    model = RAM(**TINY)
    patches = jnp.zeros((1, spec.scales, spec.size, spec.size, 1))
    params = model.init(jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    images = jax.random.uniform(jax.random.key(1), (B, HW, HW, 1))
    labels = jax.random.randint(jax.random.key(2), (B,), 0, K)
    return model, spec, params, images, labels


def soft_rows(coverage: np.ndarray) -> np.ndarray:
    """f32[len(coverage), K + 1]: probabilities times the coverage, then the coverage."""
    probs = np.random.default_rng(3).dirichlet(np.ones(K), len(coverage))
    return np.concatenate([probs * coverage[:, None], coverage[:, None]], 1).astype(np.float32)


def cross_entropy_by_hand(logits, targets) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -(targets * log_p).sum(-1)


@pytest.mark.parametrize(("episodes", "weight"), [("all", 1.0), ("all", 0.5), ("mean", 2.0)])
def test_loss_adds_the_cross_entropy_against_the_average_of_visited_images(episodes, weight):
    model, spec, params, images, labels = setup()
    key = jax.random.key(9)
    # Images 1 and 6 have no average yet: their episodes are not taught.
    coverage = np.array([0.2, 0.0, 0.36, 0.488, 1.0, 0.2, 0.0, 0.5], np.float32)
    rows = soft_rows(coverage)
    common = dict(num_mean_episodes=M)
    base_loss, _ = make_loss_fn(model, spec, LossWeights(), **common)(params, images, labels, key)
    loss_fn = make_loss_fn(
        model,
        spec,
        LossWeights(),
        temporal_ensemble_weight=weight,
        temporal_ensemble_episodes=episodes,
        **common,
    )
    loss, metrics = loss_fn(params, images, labels, key, soft_targets=jnp.asarray(rows))
    traj = rollout(model, params, images, key, spec, num_mean_episodes=M)
    targets = np.zeros((B, K))
    seen = coverage > 0
    targets[seen] = rows[seen, :K] / coverage[seen, None]
    taught = seen if episodes == "all" else seen & (np.arange(B) < M)
    assert taught.sum() == (6 if episodes == "all" else 2)
    expected = cross_entropy_by_hand(traj.logits, targets)[taught].mean()
    np.testing.assert_allclose(metrics["temporal_ensemble"], expected, rtol=1e-5)
    np.testing.assert_allclose(loss, base_loss + weight * expected, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["episode_probs"], jax.nn.softmax(traj.logits), rtol=1e-5, atol=1e-7
    )


def test_no_visited_image_adds_nothing():
    model, spec, params, images, labels = setup()
    loss_fn = make_loss_fn(model, spec, LossWeights(), temporal_ensemble_weight=1.0)
    base_loss, _ = make_loss_fn(model, spec, LossWeights())(
        params, images, labels, jax.random.key(9)
    )
    zeros = jnp.zeros((B, K + 1))
    loss, metrics = loss_fn(params, images, labels, jax.random.key(9), soft_targets=zeros)
    assert float(metrics["temporal_ensemble"]) == 0.0
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)


def test_the_term_pulls_the_classification_towards_the_target():
    model, spec, params, images, labels = setup()
    only_term = make_loss_fn(model, spec, LossWeights(0.0, 0.0, 0.0), temporal_ensemble_weight=1.0)
    target = np.zeros((B, K + 1), np.float32)
    target[:, 4] = target[:, K] = 1.0  # every image: class 4, surely
    grads = jax.grad(
        lambda p: only_term(p, images, labels, jax.random.key(9), soft_targets=target)[0]
    )(params)
    # By the action network's bias the term's gradient is mean(p - target): < 0 at class 4.
    traj = rollout(model, params, images, jax.random.key(9), spec)
    expected = np.asarray(jax.nn.softmax(traj.logits)).mean(0) - target[0, :K]
    assert expected[4] < -0.5
    np.testing.assert_allclose(grads["action_net"]["logits"]["bias"], expected, atol=1e-6)
    for net in ("location_net", "baseline_net"):
        for leaf in jax.tree.leaves(grads[net]):
            np.testing.assert_array_equal(leaf, 0.0)


def make_step(decay: float = 0.8):
    model, spec, params, images, labels = setup()
    weights = LossWeights()
    step = make_train_step(
        model,
        spec,
        weights,
        optax.sgd(0.1),
        num_mean_episodes=M,
        temporal_ensemble_weight=1.0,
        temporal_ensemble_decay=decay,
    )
    state = TrainState(
        jnp.zeros((), jnp.int32),
        params,
        optax.sgd(0.1).init(params),
        jnp.zeros((N, K + 1), jnp.float32),
    )
    carry = LoopCarry(state, jnp.asarray(-1, jnp.int32))
    loss_fn = make_loss_fn(model, spec, weights, num_mean_episodes=M, temporal_ensemble_weight=1.0)
    return step, carry, loss_fn, images, labels


def episode_probs(loss_fn, params, images, labels, key, rows):
    return np.asarray(loss_fn(params, images, labels, key, soft_targets=rows)[1]["episode_probs"])


def test_a_step_folds_each_sampled_episode_into_its_images_row_only():
    decay = 0.8
    step, carry, loss_fn, images, labels = make_step(decay)
    index = jnp.array([17, 2, 9, 0, 5, 11, 14, 3])
    key = jax.random.key(4)
    probs = episode_probs(loss_fn, carry.state.params, images, labels, key, jnp.zeros((B, K + 1)))
    after, _ = jax.jit(step)(carry, images, labels, key, jnp.asarray(0), image_index=index)
    table = np.asarray(after.state.soft_targets)
    sampled = np.arange(B) >= M
    expected = np.zeros((N, K + 1), np.float32)
    expected[np.asarray(index)[sampled], :K] = (1 - decay) * probs[sampled]
    expected[np.asarray(index)[sampled], K] = 1 - decay
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-7)
    # Bias corrected, a first visit's target is the episode's own probabilities.
    np.testing.assert_allclose(
        table[np.asarray(index)[sampled], :K] / table[np.asarray(index)[sampled], K:],
        probs[sampled],
        rtol=1e-5,
    )
    assert int(after.state.step) == 1

    # A second visit: decay times the first, plus the new episode's share.
    key2 = jax.random.key(5)
    rows = after.state.soft_targets[index]
    probs2 = episode_probs(loss_fn, after.state.params, images, labels, key2, rows)
    again, _ = jax.jit(step)(after, images, labels, key2, jnp.asarray(1), image_index=index)
    table2 = np.asarray(again.state.soft_targets)
    expected2 = expected.copy()
    seen = np.concatenate([probs2, np.ones((B, 1))], 1)
    expected2[np.asarray(index)[sampled]] = (
        decay * expected[np.asarray(index)[sampled]] + (1 - decay) * seen[sampled]
    )
    np.testing.assert_allclose(table2, expected2, rtol=1e-5, atol=1e-7)


def test_a_halted_run_changes_no_average():
    step, carry, _, images, labels = make_step()
    start = np.asarray(soft_rows(np.linspace(0.1, 1.0, N)))
    halted = LoopCarry(carry.state.replace(soft_targets=jnp.asarray(start)), jnp.asarray(3))
    index = jnp.arange(B)
    after, _ = step(halted, images, labels, jax.random.key(4), jnp.asarray(7), image_index=index)
    np.testing.assert_array_equal(after.state.soft_targets, start)
    assert int(after.halted_at) == 3 and int(after.state.step) == 0


def test_misuse_is_refused_with_an_error_naming_it():
    model, spec, params, images, labels = setup()
    with pytest.raises(ValueError, match="temporal_ensemble_weight must be >= 0"):
        make_loss_fn(model, spec, LossWeights(), temporal_ensemble_weight=float("nan"))
    with pytest.raises(ValueError, match="must be 'all' or 'mean', got 'sampled'"):
        make_loss_fn(
            model,
            spec,
            LossWeights(),
            temporal_ensemble_weight=1.0,
            temporal_ensemble_episodes="sampled",
        )
    with pytest.raises(ValueError, match="FullyConnected has no episodes"):
        make_loss_fn(FullyConnected(num_classes=K), None, LossWeights(), temporal_ensemble_weight=1)
    loss_fn = make_loss_fn(model, spec, LossWeights(), temporal_ensemble_weight=1.0)
    with pytest.raises(ValueError, match="the loss needs soft_targets"):
        loss_fn(params, images, labels, jax.random.key(0))
    with pytest.raises(ValueError, match=r"temporal_ensemble_decay must be in \[0, 1\)"):
        make_train_step(
            model, spec, LossWeights(), optax.sgd(0.1), temporal_ensemble_weight=1.0,
            temporal_ensemble_decay=1.0,
        )  # fmt: skip
    step, carry, _, images, labels = make_step()
    with pytest.raises(ValueError, match="train_step needs image_index"):
        step(carry, images, labels, jax.random.key(0), jnp.asarray(0))
