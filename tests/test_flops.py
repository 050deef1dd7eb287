"""Tests for ram_jax.flops: jaxpr FLOP counting against hand-computed counts.

Every expected value below is written out by hand (multiply-adds, times 2), so a counter that
forgot a scan's trip count, a sub-jaxpr, a branch, a dimension or the backward pass fails.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from ram_jax import flops, train
from ram_jax import rollout as rollout_module
from ram_jax.config import default_config
from ram_jax.losses import hybrid_loss
from ram_jax.networks import RAM
from ram_jax.rollout import RolloutSpec, rollout

# --------------------------------------------------------------------------------------------
# Primitives and control flow


def test_dense_in_a_scan_counts_every_step():
    t, b, n_in, n_out = 4, 3, 5, 7
    xs = jnp.ones((t, b, n_in))
    w = jnp.ones((n_in, n_out))

    def f(xs, w):
        def body(carry, x):
            return carry + x @ w, None

        return jax.lax.scan(body, jnp.zeros((b, n_out)), xs)[0]

    assert flops.jaxpr_flops(f, xs, w) == t * 2 * n_in * n_out * b


def test_nested_scans_multiply():
    outer, inner, b, n = 3, 5, 2, 4
    w = jnp.ones((n, n))

    def f(x, w):
        def inner_loop(c, _):
            return jax.lax.scan(lambda h, _: (h @ w, None), c, None, length=inner)[0], None

        return jax.lax.scan(inner_loop, x, None, length=outer)[0]

    assert flops.jaxpr_flops(f, jnp.ones((b, n)), w) == outer * inner * 2 * b * n * n


def test_dot_general_with_batch_and_several_contracting_dims():
    # 'bij,bjk->bik': b * i * k outputs, each a sum of j products.
    b, i, j, k = 2, 3, 4, 5
    x, y = jnp.ones((b, i, j)), jnp.ones((b, j, k))
    assert flops.jaxpr_flops(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), x, y) == (
        2 * b * i * j * k
    )
    # Contracting two dimensions at once: 'pqr,qrs->ps'.
    p, q, r, s = 2, 3, 4, 5
    x, y = jnp.ones((p, q, r)), jnp.ones((q, r, s))
    count = flops.jaxpr_flops(lambda x, y: jnp.tensordot(x, y, axes=2), x, y)
    assert count == 2 * p * q * r * s
    # Several free dimensions on each side: 'abj,jcd->abcd'.
    x, y = jnp.ones((2, 3, 4)), jnp.ones((4, 5, 6))
    count = flops.jaxpr_flops(lambda x, y: jnp.einsum("abj,jcd->abcd", x, y), x, y)
    assert count == 2 * (2 * 3) * 4 * (5 * 6)


def test_convolution():
    # NCHW input 2x3x5x5, OIHW kernel 4x3x3x3, VALID: output 2x4x3x3, each 3*3*3 products.
    x, k = jnp.ones((2, 3, 5, 5)), jnp.ones((4, 3, 3, 3))
    conv = lambda x, k: jax.lax.conv(x, k, (1, 1), "VALID")
    assert flops.jaxpr_flops(conv, x, k) == 2 * (2 * 4 * 3 * 3) * (3 * 3 * 3)
    # Grouped (depthwise-like): 3 groups of 2 channels, kernel 6x2x3x3: each output sums 2*3*3.
    x, k = jnp.ones((1, 6, 5, 5)), jnp.ones((6, 2, 3, 3))

    def grouped(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", feature_group_count=3)

    assert flops.jaxpr_flops(grouped, x, k) == 2 * (1 * 6 * 3 * 3) * (2 * 3 * 3)


def test_elementwise_ops_are_not_counted():
    x = jnp.ones((8, 8))
    assert flops.jaxpr_flops(lambda x: jnp.tanh(x) * 2 + jnp.exp(x).sum(), x) == 0


def test_call_primitives_are_entered_once():
    b, n = 3, 4
    x, w = jnp.ones((b, n)), jnp.ones((n, n))
    one = 2 * b * n * n

    @jax.custom_jvp
    def custom(x, w):
        return x @ w

    custom.defjvp(lambda primals, tangents: (custom(*primals), tangents[0] @ primals[1]))

    @jax.custom_vjp
    def custom_v(x, w):
        return x @ w

    custom_v.defvjp(lambda x, w: (x @ w, (x, w)), lambda res, g: (g @ res[1].T, res[0].T @ g))

    def f(x, w):
        x = jax.jit(lambda x: x @ w)(x)
        x = jax.checkpoint(lambda x: x @ w)(x)
        x = custom(x, w)
        return custom_v(x, w)

    assert flops.jaxpr_flops(f, x, w) == 4 * one


def test_cond_counts_its_most_expensive_branch():
    b, n = 3, 4
    x, w = jnp.ones((b, n)), jnp.ones((n, n))

    def f(x, w):
        return jax.lax.cond(x.sum() > 0, lambda x: (x @ w) @ w, lambda x: x @ w, x)

    assert flops.jaxpr_flops(f, x, w) == 2 * (2 * b * n * n)


def test_while_loop_is_refused():
    def f(x):
        return jax.lax.while_loop(lambda c: c.sum() < 10, lambda c: c @ jnp.eye(2), x)

    with pytest.raises(ValueError, match="while loop"):
        flops.jaxpr_flops(f, jnp.ones((2, 2)))


def test_static_arguments_and_shape_structs():
    # Non-array leaves are closed over; ShapeDtypeStructs trace without data.
    x = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    w = jax.ShapeDtypeStruct((4, 6), jnp.float32)

    def f(x, w, repeat, *, scale):
        return sum(x @ w for _ in range(repeat)) * scale

    assert flops.jaxpr_flops(f, x, w, 2, scale=3.0) == 2 * (2 * 3 * 4 * 6)


def test_xla_cost_analysis_counts_a_scan_body_once():
    """Why ``jaxpr_flops`` exists: XLA's estimate of a 10-step scan is about one step's."""
    steps, b, n = 10, 4, 32
    x, w = jnp.ones((b, n)), jnp.ones((n, n))
    per_step = 2 * b * n * n

    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=steps)[0]

    def unrolled(x, w):
        for _ in range(steps):
            x = x @ w
        return x

    assert flops.jaxpr_flops(scanned, x, w) == flops.jaxpr_flops(unrolled, x, w) == steps * per_step
    # Unrolled, XLA agrees with the jaxpr count; as a scan it sees about one body.
    assert flops.xla_cost_flops(unrolled, x, w) == pytest.approx(steps * per_step, rel=0.05)
    assert flops.xla_cost_flops(scanned, x, w) < 2 * per_step


# --------------------------------------------------------------------------------------------
# The RAM

# A tiny RAM: S=2 scales of g=4 (16x16 images, C=1), Ph=4, Lh=5, F=6, H=7, K=3, T=3 glimpses.
TINY = dict(num_classes=3, patch_hidden=4, location_hidden=5, glimpse_features=6, core_hidden=7)
SPEC = RolloutSpec(num_glimpses=3, size=4, scales=2)
BATCH = 2

# Multiply-adds of each dense layer of the tiny RAM, per image (written out by hand).
PATCH = 2 * 4 * 4 * 1 * 4  # S*g*g*C -> Ph: 128
WHERE = 2 * 5  # loc (2) -> Lh: 10
WHAT_OUT = 4 * 6  # Ph -> F: 24
WHERE_OUT = 5 * 6  # Lh -> F: 30
CORE_IN = 6 * 7  # F -> H (RNN): 42
CORE_REC = 7 * 7  # H -> H (RNN): 49
LOC_HEAD = 7 * 2  # H -> 2: 14
BASE_HEAD = 7 * 1  # H -> 1: 7
ACTION = 7 * 3  # H -> K, once: 21
PER_GLIMPSE_RNN = PATCH + WHERE + WHAT_OUT + WHERE_OUT + CORE_IN + CORE_REC + LOC_HEAD + BASE_HEAD
PER_GLIMPSE_LSTM = PER_GLIMPSE_RNN + 3 * (CORE_IN + CORE_REC)  # four gates instead of one
HAND_FORWARD = {  # FLOPs per image
    "rnn": 2 * (3 * PER_GLIMPSE_RNN + ACTION),  # 2 * (3 * 304 + 21) = 1866
    "lstm": 2 * (3 * PER_GLIMPSE_LSTM + ACTION),  # 2 * (3 * 577 + 21) = 3504
}


def tiny(core: str):
    model = RAM(core=core, **TINY)
    patches = jnp.zeros((1, SPEC.scales, SPEC.size, SPEC.size, 1))
    params = model.init(jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    images = jax.random.uniform(jax.random.key(1), (BATCH, 16, 16, 1))
    return model, params, images


def test_hand_counts_are_what_they_say():
    assert PER_GLIMPSE_RNN == 304 and PER_GLIMPSE_LSTM == 577
    assert HAND_FORWARD == {"rnn": 1866, "lstm": 3504}


@pytest.mark.parametrize("core", ["rnn", "lstm"])
@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_tiny_ram_rollout_matches_hand_count(core, mode):
    model, params, images = tiny(core)
    count = flops.jaxpr_flops(rollout, model, params, images, jax.random.key(2), SPEC, mode=mode)
    assert count == BATCH * HAND_FORWARD[core]


@pytest.mark.parametrize("core", ["rnn", "lstm"])
def test_analytic_formula_matches_hand_count(core):
    analytic = flops.ram_forward_flops_per_image(
        num_glimpses=3, glimpse_size=4, glimpse_scales=2, channels=1, core=core, **TINY
    )
    assert analytic == HAND_FORWARD[core]


@pytest.mark.parametrize("core", ["rnn", "lstm"])
@pytest.mark.parametrize(
    "side, glimpses, size, scales",
    [(28, 6, 8, 1), (60, 8, 12, 3), (100, 8, 12, 4)],
    ids=["mnist28", "translated60", "cluttered100"],
)
def test_analytic_formula_matches_jaxpr_of_full_size_rollout(core, side, glimpses, size, scales):
    config = default_config()
    config.update(num_glimpses=glimpses, glimpse_size=size, glimpse_scales=scales, core=core)
    model = RAM(
        num_classes=config.num_classes,
        patch_hidden=config.patch_hidden,
        location_hidden=config.location_hidden,
        glimpse_features=config.glimpse_features,
        core=core,
        core_hidden=config.core_hidden,
    )
    spec = RolloutSpec(num_glimpses=glimpses, size=size, scales=scales)
    patches = jax.ShapeDtypeStruct((1, scales, size, size, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    images = jax.ShapeDtypeStruct((3, side, side), jnp.uint8)
    count = flops.jaxpr_flops(rollout, model, params, images, jax.random.key(0), spec)
    expected = flops.ram_flops(config)
    assert count == 3 * expected.forward
    assert expected.training == 3 * expected.forward == 3 * expected.inference


# Extra forward FLOPs of a hidden layer of M units in a head, by hand: H -> M -> 2 in place of
# H -> 2 at each of the 6 glimpses (location), H -> M -> K in place of H -> K once an episode
# (action).
HEAD_MLP_EXTRA = {
    "location_mlp": lambda m: 2 * 6 * (256 * m + m * 2 - 256 * 2),
    "action_mlp": lambda m: 2 * (256 * m + m * 10 - 256 * 10),
}


@pytest.mark.parametrize("width", [16, 32])
@pytest.mark.parametrize("field", sorted(HEAD_MLP_EXTRA))
def test_analytic_formula_counts_a_head_mlp(field, width):
    config = default_config()
    config[field] = width
    model = train.build_model(config)
    spec = train.rollout_spec(config)
    patches = jax.ShapeDtypeStruct((1, 1, 8, 8, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    images = jax.ShapeDtypeStruct((2, 28, 28), jnp.uint8)
    count = flops.jaxpr_flops(rollout, model, params, images, jax.random.key(0), spec)
    assert count == 2 * flops.ram_flops(config).forward
    extra = HEAD_MLP_EXTRA[field](width)
    assert flops.ram_flops(config).forward == flops.ram_flops(default_config()).forward + extra


@pytest.mark.parametrize(
    ("rollouts", "mean_weight", "episodes"), [(1, 0.0, 1), (4, 0.0, 4), (1, 1.0, 2), (2, 0.5, 4)]
)
def test_training_count_covers_every_episode_of_an_image(rollouts, mean_weight, episodes):
    # M sampled episodes per image, and as many deterministic ones with mean_rollout_weight.
    config = default_config()
    config.rollouts_per_image, config.mean_rollout_weight = rollouts, mean_weight
    counted = flops.ram_flops(config)
    assert counted.forward == counted.inference == flops.ram_flops(default_config()).forward
    assert counted.training == 3 * episodes * counted.forward


@pytest.mark.parametrize("model", ["fc", "conv"])
def test_ram_count_refuses_a_baseline(model):
    config = default_config()
    config.model = model
    with pytest.raises(ValueError, match=f"counts the RAM only, not model '{model}'"):
        flops.ram_flops(config)


def hand_gradient_flops(core: str, reinforce_through_core: bool) -> int:
    """FLOPs per image of ``jax.grad`` of the hybrid loss of the tiny RAM, by hand.

    The forward runs once. Backward, every dense layer computes its weight gradient
    ``dW = x^T dy`` (as many multiply-adds as its forward) and, where its input depends on the
    parameters, its input gradient ``dx = dy W^T`` (as many again). No input gradient is
    computed for: the patch layer (input: pixels), the location layer (input: the sampled
    location, under ``stop_gradient``), the baseline head (reads ``stop_gradient(h)``) and the
    location head unless ``reinforce_through_core``. The recurrent layer's input gradient is
    computed at every step, the first included (the scan's transpose is uniform).
    """
    gates = 1 if core == "rnn" else 4
    core_net = gates * (CORE_IN + CORE_REC)
    forward = 3 * (PATCH + WHERE + WHAT_OUT + WHERE_OUT + core_net + LOC_HEAD + BASE_HEAD)
    forward += ACTION
    weight_grads = forward
    input_grads = 3 * (WHAT_OUT + WHERE_OUT + core_net + LOC_HEAD * reinforce_through_core)
    input_grads += ACTION
    return 2 * (forward + weight_grads + input_grads)


@pytest.mark.parametrize("core", ["rnn", "lstm"])
@pytest.mark.parametrize("through_core", [False, True])
def test_gradient_of_the_loss_matches_hand_count(core, through_core):
    model, params, images = tiny(core)
    spec = RolloutSpec(num_glimpses=3, size=4, scales=2, reinforce_through_core=through_core)
    labels = jnp.zeros(BATCH, jnp.int32)

    def loss(params):
        traj = rollout(model, params, images, jax.random.key(2), spec)
        return hybrid_loss(traj, labels)[0]

    count = flops.jaxpr_flops(jax.grad(loss), params)
    assert count == BATCH * hand_gradient_flops(core, through_core)
    # Below the 3x convention (skipped input gradients), above 2x (all weight gradients). The
    # tiny model sits near 2.5x: its patch layer, which gets no input gradient, is a large part.
    assert 2 * BATCH * HAND_FORWARD[core] < count < 3 * BATCH * HAND_FORWARD[core]


def full_size_rnn(batch: int = 2):
    """The default 28x28 RAM as shapes only (nothing is computed): model, params, images, spec."""
    model = RAM()
    spec = RolloutSpec(num_glimpses=6, size=8)
    patches = jax.ShapeDtypeStruct((1, 1, 8, 8, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]
    return model, params, jax.ShapeDtypeStruct((batch, 28, 28), jnp.uint8), spec


def test_gradient_of_full_size_model_is_just_under_three_forwards():
    """The default 28x28 RAM: the executed gradient is 2.96x the forward (3x by convention)."""
    model, params, images, spec = full_size_rnn()
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)

    def loss(params, images, labels):
        return hybrid_loss(rollout(model, params, images, jax.random.key(0), spec), labels)[0]

    ratio = flops.jaxpr_flops(jax.grad(loss), params, images, labels) / (
        2 * flops.ram_flops(default_config()).forward
    )
    assert 2.9 < ratio < 3.0


def test_xla_under_counts_the_rollout_as_a_loop(monkeypatch):
    """Six glimpses in a loop: XLA's estimate is about one glimpse's products (plus elementwise
    work). Unrolled (the default for short episodes), it sees every glimpse."""
    model, params, images, spec = full_size_rnn()
    args = (model, params, images, jax.random.key(2), spec)
    exact = flops.jaxpr_flops(rollout, *args)
    assert exact == 2 * flops.ram_flops(default_config()).forward
    assert exact <= flops.xla_cost_flops(rollout, *args) < 1.1 * exact
    monkeypatch.setattr(rollout_module, "MAX_UNROLLED_GLIMPSES", 0)
    assert flops.jaxpr_flops(rollout, *args) == exact  # the same count either way
    assert 0 < flops.xla_cost_flops(rollout, *args) < exact / 3
