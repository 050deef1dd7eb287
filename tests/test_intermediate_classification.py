"""``intermediate_classification_weight``: the action network run after every glimpse.

The option (not in the paper) adds the cross-entropy of ``classify(h_t)`` for every glimpse but
the last to the training loss. Checked here: what ``rollout(..., classify_every_glimpse=True)``
returns (by the deterministic episode's own logits when it is cut short), the loss term by hand,
which networks it trains, its FLOP count, and the errors for models and episodes it cannot apply
to.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax import flops
from ram_jax.baselines import FullyConnected
from ram_jax.config import default_config
from ram_jax.losses import LossWeights
from ram_jax.networks import CORES, RAM
from ram_jax.rollout import RolloutSpec, Trajectory, TrajectoryWithStepLogits, rollout
from ram_jax.train import build_model, make_loss_fn, rollout_spec

B, T, HW, K = 8, 4, 16, 10
TINY = dict(num_classes=K, patch_hidden=8, location_hidden=8, glimpse_features=16, core_hidden=16)
NETS = ("glimpse_net", "core_net", "location_net", "action_net", "baseline_net")
EVERY = {"classify_every_glimpse": True}


def setup(core: str, num_glimpses: int = T, loc_std: float = 0.2):
    spec = RolloutSpec(num_glimpses=num_glimpses, size=4, scales=2, loc_std=loc_std)
    model = RAM(core=core, **TINY)
    patches = jnp.zeros((1, spec.scales, spec.size, spec.size, 1))
    params = model.init(jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    images = jax.random.uniform(jax.random.key(1), (B, HW, HW, 1))
    labels = jax.random.randint(jax.random.key(2), (B,), 0, K)
    return model, spec, params, images, labels


@pytest.mark.parametrize("core", CORES)
def test_step_logits_are_the_logits_of_the_episode_cut_short(core):
    # The deterministic episode does not depend on its key, so its state after glimpse t is
    # the final state of the same episode run for t + 1 glimpses.
    model, spec, params, images, _ = setup(core)
    traj = rollout(model, params, images, jax.random.key(5), spec, mode="mean", **EVERY)
    assert traj.step_logits.shape == (T - 1, B, K)
    for t in range(T - 1):
        short = RolloutSpec(num_glimpses=t + 1, size=4, scales=2, loc_std=0.2)
        cut = rollout(model, params, images, jax.random.key(5), short, mode="mean")
        np.testing.assert_allclose(traj.step_logits[t], cut.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_classifying_every_glimpse_leaves_the_episode_unchanged(mode):
    model, spec, params, images, _ = setup("rnn")
    plain = rollout(model, params, images, jax.random.key(5), spec, mode=mode)
    every = rollout(model, params, images, jax.random.key(5), spec, mode=mode, **EVERY)
    assert type(plain) is Trajectory and type(every) is TrajectoryWithStepLogits
    assert every._fields == (*Trajectory._fields, "step_logits")
    for name in ("locations", "means", "log_probs", "baselines", "logits"):
        np.testing.assert_allclose(getattr(every, name), getattr(plain, name), rtol=1e-6)


def cross_entropy_by_hand(logits: np.ndarray, labels: np.ndarray) -> float:
    logits = np.asarray(logits, np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return float((log_z - picked).mean())


@pytest.mark.parametrize("weight", [0.3, 2.0])
def test_loss_adds_the_weighted_mean_cross_entropy_of_the_earlier_glimpses(weight):
    model, spec, params, images, labels = setup("rnn")
    key = jax.random.key(9)
    base_loss, base_metrics = make_loss_fn(model, spec, LossWeights())(params, images, labels, key)
    loss_fn = make_loss_fn(model, spec, LossWeights(), intermediate_classification_weight=weight)
    loss, metrics = loss_fn(params, images, labels, key)
    traj = rollout(model, params, images, key, spec, **EVERY)
    per_step = np.broadcast_to(np.asarray(labels), (T - 1, B))
    expected = cross_entropy_by_hand(traj.step_logits, per_step)
    assert expected > 0.1  # an untrained classifier: the term is far from zero
    np.testing.assert_allclose(metrics["intermediate_classification"], expected, rtol=1e-5)
    np.testing.assert_allclose(loss, base_loss + weight * expected, rtol=1e-5)
    assert metrics["loss"] == loss
    # The paper's terms are those of the episode without the option.
    for name in ("classification", "reinforce", "baseline", "accuracy"):
        np.testing.assert_allclose(metrics[name], base_metrics[name], rtol=1e-5)


@pytest.mark.parametrize("core", CORES)
def test_the_term_trains_glimpse_core_and_action_networks_only(core):
    model, spec, params, images, labels = setup(core)
    only_term = make_loss_fn(
        model, spec, LossWeights(0.0, 0.0, 0.0), intermediate_classification_weight=1.0
    )
    grads = jax.grad(lambda p: only_term(p, images, labels, jax.random.key(9))[0])(params)
    assert set(grads) == set(NETS)
    for net in ("glimpse_net", "core_net", "action_net"):
        for leaf in jax.tree.leaves(grads[net]):
            assert np.abs(np.asarray(leaf)).max() > 0, net
    for net in ("location_net", "baseline_net"):
        for leaf in jax.tree.leaves(grads[net]):
            np.testing.assert_array_equal(leaf, 0.0)


@pytest.mark.parametrize("weight", [-0.1, float("nan")])
def test_a_negative_or_nan_weight_is_refused(weight):
    model, spec, *_ = setup("rnn")
    with pytest.raises(ValueError, match="intermediate_classification_weight must be >= 0"):
        make_loss_fn(model, spec, LossWeights(), intermediate_classification_weight=weight)


def test_refused_where_there_is_no_earlier_glimpse_or_no_glimpse_at_all():
    model, spec, *_ = setup("rnn", num_glimpses=1)
    with pytest.raises(ValueError, match="needs num_glimpses >= 2, got 1"):
        make_loss_fn(model, spec, LossWeights(), intermediate_classification_weight=0.3)
    with pytest.raises(ValueError, match="FullyConnected has no glimpses"):
        make_loss_fn(
            FullyConnected(num_classes=K), None, LossWeights(), intermediate_classification_weight=1
        )


@pytest.mark.parametrize("action_mlp", [0, 32])
def test_flop_count_adds_the_action_network_at_every_glimpse(action_mlp):
    config = default_config()
    config.action_mlp = action_mlp
    plain = flops.ram_flops(config)
    config.intermediate_classification_weight = 0.3
    counted = flops.ram_flops(config)
    head = 2 * (256 * action_mlp + action_mlp * 10) if action_mlp else 2 * 256 * 10
    assert flops.action_head_flops(256, 10, action_mlp) == head
    assert counted.forward == counted.inference == plain.forward
    assert counted.training == 3 * (plain.forward + 6 * head)
    # The traced episode computes exactly that: the forward plus the head at every glimpse.
    model, spec = build_model(config), rollout_spec(config)
    patches = jax.ShapeDtypeStruct((1, 1, 8, 8, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    images = jax.ShapeDtypeStruct((2, 28, 28), jnp.uint8)
    every = functools.partial(rollout, **EVERY)
    count = flops.jaxpr_flops(every, model, params, images, jax.random.key(0), spec)
    assert count == 2 * counted.training // 3
