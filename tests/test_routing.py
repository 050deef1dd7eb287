"""Which parameters each term of the hybrid loss trains, through the real rollout.

Each loss keeps a single term (weights (1,0,0), (0,1,0) or (0,0,1)); its gradient must be exactly
zero (stop_gradient gives exact zeros) on the networks it must not reach and non-zero on every
parameter array of those it must reach. Then the REINFORCE gradient of the location network is
checked against a hand formula (the classic bugs: the location network receiving no gradient,
the sample not stopped, std and variance mixed up, the sign flipped).

To keep the test fast, one configuration's rollout is differentiated once with ``jax.vjp``, and
the gradient of each one-term loss ``L(rollout(params))`` is the chain rule: the pullback of
``dL/dtrajectory``. ``test_pullback_equals_plain_grad`` checks that against ``jax.grad`` once.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.losses import LossWeights, hybrid_loss
from ram_jax.networks import CORES, RAM
from ram_jax.rollout import RolloutSpec, rollout

B, T, HW, K = 8, 3, 16, 10
TINY = dict(num_classes=K, patch_hidden=8, location_hidden=8, glimpse_features=16, core_hidden=16)
NETS = ("glimpse_net", "core_net", "location_net", "action_net", "baseline_net")
CE_ONLY, REINFORCE_ONLY, BASELINE_ONLY = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
# A small std keeps the sampled locations inside [-1, 1], so the stored (clipped) locations are
# the samples that were scored.
LOC_STD = 0.05
KEY = jax.random.key(3)


def build(core: str, reinforce_through_core: bool):
    spec = RolloutSpec(
        num_glimpses=T,
        size=4,
        scales=2,
        loc_std=LOC_STD,
        reinforce_through_core=reinforce_through_core,
    )
    model = RAM(core=core, **TINY)
    patches = jnp.zeros((1, spec.scales, spec.size, spec.size, 1))
    params = model.init(jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    images = jax.random.uniform(jax.random.key(1), (B, HW, HW, 1))
    labels = jax.random.randint(jax.random.key(2), (B,), 0, K)
    return model, spec, params, images, labels


class Routed(NamedTuple):
    traj: object  # the Trajectory, as float64 numpy arrays
    labels: np.ndarray
    grads: dict  # name -> gradient pytree of that scalar w.r.t. the parameters


def _one_term(weights):
    """A loss of one term: hybrid_loss with the other weights zero."""
    return lambda traj, labels: hybrid_loss(traj, labels, LossWeights(*weights))[0]


@functools.cache
def routed(core: str, through_core: bool) -> Routed:
    model, spec, params, images, labels = build(core, through_core)
    traj, pullback = jax.vjp(lambda p: rollout(model, p, images, KEY, spec), params)

    def grad_of(cotangent):
        (grads,) = pullback(cotangent)
        return jax.tree.map(np.asarray, grads)

    def grad_of_term(weights):
        return grad_of(jax.grad(_one_term(weights))(traj, labels))

    zeros = jax.tree.map(jnp.zeros_like, traj)
    # d log N(s; m, std) / d m with the sample s held fixed.
    score = (traj.locations[1:] - traj.means) / spec.loc_std**2
    grads = {
        "ce": grad_of_term(CE_ONLY),
        "reinforce": grad_of_term(REINFORCE_ONLY),
        "baseline": grad_of_term(BASELINE_ONLY),
        # The gradient of sum(log_probs)...
        "sum_log_probs": grad_of(zeros._replace(log_probs=jnp.ones_like(traj.log_probs))),
        # ... and the VJP of the means with cotangent `score`.
        "score_through_means": grad_of(zeros._replace(means=score)),
    }
    traj64 = jax.tree.map(lambda x: np.asarray(x, np.float64), traj)
    return Routed(traj64, np.asarray(labels), grads)


def nonzero_nets(grads) -> set[str]:
    """Networks with a non-zero gradient; asserts that such a network has no all-zero array."""
    reached = set()
    for net in NETS:
        leaves = jax.tree_util.tree_leaves_with_path(grads[net])
        nonzero = {jax.tree_util.keystr(p): bool(np.any(g)) for p, g in leaves}
        if any(nonzero.values()):
            reached.add(net)
            assert all(nonzero.values()), f"{net}: some arrays get no gradient: {nonzero}"
    return reached


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("through_core", [False, True])
@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("ce", {"action_net", "core_net", "glimpse_net"}),
        ("reinforce", None),  # depends on through_core, see below
        ("baseline", {"baseline_net"}),
    ],
    ids=["ce", "reinforce", "baseline"],
)
def test_gradient_routing(core, through_core, term, expected):
    if term == "reinforce":
        expected = {"location_net"} | ({"core_net", "glimpse_net"} if through_core else set())
    assert nonzero_nets(routed(core, through_core).grads[term]) == expected


def test_pullback_equals_plain_grad():
    # The chain-rule gradients above must equal plain jax.grad of a one-term loss function of the
    # parameters (checked on REINFORCE, the term with the most paths through the rollout).
    model, spec, params, images, labels = build("rnn", True)
    loss = _one_term(REINFORCE_ONLY)
    grads = jax.grad(lambda p: loss(rollout(model, p, images, KEY, spec), labels))(params)
    chained = routed("rnn", True).grads["reinforce"]
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(chained), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("through_core", [False, True])
@pytest.mark.parametrize(
    ("field", "net", "layers", "trained_by"),
    [
        ("location_mlp", "location_net", {"hidden", "mean"}, REINFORCE_ONLY),
        ("action_mlp", "action_net", {"hidden", "logits"}, CE_ONLY),
    ],
)
def test_head_mlp_is_trained_by_its_own_loss_alone(field, net, layers, trained_by, through_core):
    # With a hidden layer in a head, both of its layers get their loss's gradient and nothing
    # else: REINFORCE alone trains the location network, the cross-entropy alone the action
    # network (the reward is not differentiated), and the baseline reaches neither.
    model = RAM(core="rnn", **{field: 8}, **TINY)
    spec = RolloutSpec(
        num_glimpses=T, size=4, scales=2, loc_std=LOC_STD, reinforce_through_core=through_core
    )
    _, _, _, images, labels = build("rnn", through_core)
    patches = jnp.zeros((1, spec.scales, spec.size, spec.size, 1))
    params = model.init(jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    assert set(params[net]) == layers

    def term_grads(weights):
        loss = lambda p: _one_term(weights)(rollout(model, p, images, KEY, spec), labels)
        return jax.grad(loss)(params)

    assert net in nonzero_nets(term_grads(trained_by))
    for weights in {CE_ONLY, REINFORCE_ONLY, BASELINE_ONLY} - {trained_by}:
        assert net not in nonzero_nets(term_grads(weights))


@pytest.mark.parametrize("through_core", [False, True])
def test_location_network_gets_reinforce_gradient(through_core):
    # The classic bug: stop_gradient on the policy mean (instead of the sample) leaves the
    # location network untrained. Its kernel and bias must both move.
    grads = routed("rnn", through_core).grads["reinforce"]["location_net"]["mean"]
    assert np.abs(grads["kernel"]).max() > 1e-4
    assert np.abs(grads["bias"]).max() > 1e-4


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("through_core", [False, True])
def test_log_prob_gradient_is_score_through_the_mean(core, through_core):
    """grad_params sum(log_probs) == vjp of the means with cotangent (sample - mean) / std^2.

    log_probs[t, b] = sum_d -0.5 ((s - m) / std)^2 + const with the sample s stopped, so
    d log_prob / d m = (s - m) / std^2, and the parameters reach log_probs only through the
    means. If s were not stopped (s = m + noise), the gradient would be zero; with the variance
    used as the std, it would be 1 / std^2 = 400 times too large; if the mean were stopped, zero.
    Compared on every network, so it also checks that nothing else reaches the log-probs.
    """
    r = routed(core, through_core)
    samples, means = r.traj.locations[1:], r.traj.means
    # The stored locations are clipped samples: with std 0.05 nothing was clipped here, so they
    # are the samples that were scored.
    assert np.all(np.abs(samples) < 1)
    z = (samples - means) / LOC_STD
    np.testing.assert_allclose(
        r.traj.log_probs,
        -0.5 * (z**2).sum(-1) - 2 * np.log(LOC_STD) - np.log(2 * np.pi),
        rtol=1e-4,
        atol=1e-3,
    )
    got, want = r.grads["sum_log_probs"], r.grads["score_through_means"]
    for net in NETS:
        for g, w in zip(jax.tree.leaves(got[net]), jax.tree.leaves(want[net]), strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-3, atol=1e-3 * np.abs(w).max() + 1e-6)
    assert np.abs(got["location_net"]["mean"]["bias"]).max() > 1.0


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("through_core", [False, True])
def test_reinforce_bias_gradient_by_hand(core, through_core):
    """The REINFORCE term's gradient w.r.t. the location-net bias, fully by hand.

    mean = tanh(W h + bias), so d mean_d / d bias_d = 1 - mean_d^2 (and the bias reaches
    nothing else: the sampled locations it produces are stopped). With A = R - b,

        d/d bias_d [-1/B sum_b sum_t log_prob * A] = -1/B sum_{t,b} A (s - m)_d / std^2 (1 - m_d^2).
    """
    r = routed(core, through_core)
    got = r.grads["reinforce"]["location_net"]["mean"]["bias"]
    samples, means = r.traj.locations[1:], r.traj.means
    assert np.all(np.abs(samples) < 1)  # no clipping: the stored locations are the samples
    reward = (r.traj.logits.argmax(-1) == r.labels).astype(np.float64)
    advantage = reward[None, :] - r.traj.baselines  # [T-1, B]
    score = (samples - means) / LOC_STD**2 * (1 - means**2)  # [T-1, B, 2]
    want = -(advantage[..., None] * score).sum(axis=(0, 1)) / B
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    assert np.abs(want).max() > 1e-3  # not trivially zero
