"""Tests for ram_jax.rollout: trajectory shapes and timing, sampling, modes, keys, compilation."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.glimpse import batched_glimpse
from ram_jax.networks import CORES, RAM, initial_core_state
from ram_jax.rollout import (
    RolloutSpec,
    Trajectory,
    dropout,
    gaussian_log_prob,
    mc_class_probs,
    rollout,
)

B, HW, K = 4, 16, 5
TINY = dict(num_classes=K, patch_hidden=8, location_hidden=8, glimpse_features=16, core_hidden=16)
SPEC = RolloutSpec(num_glimpses=3, size=4, scales=2, loc_std=0.1)


def make_model(core="rnn", spec=SPEC, channels=1, seed=0):
    model = RAM(core=core, **TINY)
    patches = jnp.zeros((1, spec.scales, spec.size, spec.size, channels))
    params = model.init(jax.random.key(seed), patches, jnp.zeros((1, 2)))["params"]
    return model, params


def make_images(batch=B, seed=0, hw=HW):
    return jax.random.uniform(jax.random.key(100 + seed), (batch, hw, hw, 1))


# Jitted with the model and spec static: calls with equal arguments of equal shapes, across
# tests, share one compilation. Tests of the plain (eager) function call ``rollout`` directly.
jit_rollout = jax.jit(rollout, static_argnums=(0, 4), static_argnames=("mode",))


@pytest.fixture(scope="module")
def rnn():
    return make_model("rnn")


def _np(traj: Trajectory):
    return Trajectory(*(np.asarray(x) for x in traj))


# ------------------------------------------------------------------------------------------
# Shapes and time alignment


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize(("num_glimpses", "mode"), [(1, "sample"), (4, "sample"), (4, "mean")])
def test_trajectory_shapes(core, num_glimpses, mode):
    spec = RolloutSpec(num_glimpses=num_glimpses, size=4, scales=2)
    model, params = make_model(core, spec)
    traj = rollout(model, params, make_images(), jax.random.key(1), spec, mode=mode)
    t = num_glimpses
    assert traj.locations.shape == (t, B, 2)
    assert traj.means.shape == (t - 1, B, 2)
    assert traj.log_probs.shape == (t - 1, B)
    assert traj.baselines.shape == (t - 1, B)
    assert traj.logits.shape == (B, K)
    for x in traj:
        assert x.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("location_range", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("core", CORES)
def test_trajectory_matches_step_by_step_replay(core, location_range):
    """Replays the episode one glimpse at a time at the trajectory's own locations.

    Pins the time alignment: glimpse t is read at locations[t]; means[t] and baselines[t] come
    from h_t (the state after glimpse t) and means[t] chose locations[t + 1]; logits come from
    the state after the last glimpse; the baseline is not fed the sample. With a
    ``location_range`` below 1 the retina and glimpse network see ``location_range * l``
    (image coordinates, stored in ``locations``) while the policy keeps its units: the scored
    samples are ``locations[1:] / location_range``.
    """
    spec = RolloutSpec(
        num_glimpses=4, size=4, scales=2, loc_std=0.05, location_range=location_range
    )
    model, params = make_model(core, spec)
    images = make_images()
    traj = _np(rollout(model, params, images, jax.random.key(3), spec))
    assert np.all(np.abs(traj.locations) <= location_range)
    variables = {"params": params}
    state = initial_core_state(core, B, 16)
    for t in range(spec.num_glimpses):
        loc = jnp.asarray(traj.locations[t])
        patches = batched_glimpse(images, loc, size=4, scales=2)
        state, h = model.apply(variables, state, patches, loc, method=RAM.step)
        if t < spec.num_glimpses - 1:
            mean = model.apply(variables, h, method=RAM.location_mean)
            base = model.apply(variables, h, method=RAM.baseline)
            np.testing.assert_allclose(traj.means[t], mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(traj.baselines[t], base, rtol=1e-5, atol=1e-6)
    logits = model.apply(variables, h, method=RAM.classify)
    np.testing.assert_allclose(traj.logits, logits, rtol=1e-5, atol=1e-5)
    # With a small std nothing was clipped, so the stored locations are the samples scored.
    samples = traj.locations[1:] / location_range
    assert np.all(np.abs(samples) < 1)
    expected_lp = gaussian_log_prob(samples, traj.means, spec.loc_std)
    np.testing.assert_allclose(traj.log_probs, expected_lp, rtol=1e-4, atol=1e-4)


def test_location_range_scales_first_and_mean_locations(rnn):
    model, params = rnn
    images = make_images(64)
    half = RolloutSpec(num_glimpses=3, size=4, scales=2, loc_std=0.1, location_range=0.5)
    full = _np(jit_rollout(model, params, images, jax.random.key(4), SPEC))
    scaled = _np(jit_rollout(model, params, images, jax.random.key(4), half))
    # The same key draws the same uniform first location, read at half the distance.
    np.testing.assert_allclose(scaled.locations[0], 0.5 * full.locations[0], rtol=1e-6)
    # Following the mean: each next glimpse is read at half the clipped mean.
    det = _np(jit_rollout(model, params, images, jax.random.key(4), half, mode="mean"))
    np.testing.assert_array_equal(det.locations[0], 0.0)
    np.testing.assert_allclose(det.locations[1:], 0.5 * np.clip(det.means, -1, 1), rtol=1e-6)


def _count_primitive(model, params, spec, name, **kwargs) -> int:
    """How many times the primitive ``name`` appears in the rollout's traced program."""
    jaxpr = jax.make_jaxpr(
        lambda p, images, key: rollout(model, p, images, key, spec, **kwargs).logits
    )(params, make_images(), jax.random.key(6))
    return sum(1 for word in str(jaxpr).split() if word == name)


def test_location_range_one_traces_no_scaling(rnn):
    # Range 1 skips the multiplication altogether (values alone could not tell: x * 1.0 == x),
    # so programs traced before the option existed are unchanged.
    model, params = rnn
    full = _count_primitive(model, params, SPEC, "mul")
    half = _count_primitive(model, params, dataclasses.replace(SPEC, location_range=0.5), "mul")
    assert half > full


# ------------------------------------------------------------------------------------------
# Keys and modes


def test_same_key_same_trajectory_different_key_different_locations(rnn):
    model, params = rnn
    images = make_images()
    a = _np(jit_rollout(model, params, images, jax.random.key(7), SPEC))
    b = _np(jit_rollout(model, params, images, jax.random.key(7), SPEC))
    c = _np(jit_rollout(model, params, images, jax.random.key(8), SPEC))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.locations[0], c.locations[0])
    assert not np.allclose(a.locations[1:], c.locations[1:])
    # Every step gets its own noise: the deviations from the mean differ between steps.
    dev = a.locations[1:] - a.means
    assert not np.allclose(dev[0], dev[1])


def test_legacy_uint32_key_accepted(rnn):
    model, params = rnn
    traj = rollout(model, params, make_images(), jax.random.PRNGKey(0), SPEC)
    assert traj.locations.shape == (SPEC.num_glimpses, B, 2)


def test_mean_mode(rnn):
    model, params = rnn
    images = make_images()
    a = _np(jit_rollout(model, params, images, jax.random.key(1), SPEC, mode="mean"))
    b = _np(jit_rollout(model, params, images, jax.random.key(2), SPEC, mode="mean"))
    np.testing.assert_array_equal(a.locations[0], 0.0)
    for x, y in zip(a, b, strict=True):  # the key is unused
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.locations[1:], a.means)
    # The "sample" is the mean itself: the log-density at the mode.
    at_mode = -2 * math.log(SPEC.loc_std) - math.log(2 * math.pi)
    np.testing.assert_allclose(a.log_probs, at_mode, rtol=1e-6)
    # And the locations do move (the policy is followed, not frozen at the centre).
    assert np.abs(a.locations[1:]).max() > 0


def test_sampled_locations_in_range_and_clipped(rnn):
    model, params = rnn
    spec = RolloutSpec(num_glimpses=3, size=4, scales=2, loc_std=1.5)
    traj = _np(jit_rollout(model, params, make_images(64), jax.random.key(0), spec))
    assert np.all(np.abs(traj.locations) <= 1.0)
    # With std 1.5 many samples leave [-1, 1]: they are clipped onto the border...
    assert np.any(np.abs(traj.locations[1:]) == 1.0)
    # ... while the log-probability scores the unclipped sample, which is further out than the
    # clipped location: scoring the clipped one would give a larger density there.
    clipped_lp = gaussian_log_prob(traj.locations[1:], traj.means, spec.loc_std)
    hit = np.any(np.abs(traj.locations[1:]) == 1.0, axis=-1)
    assert np.all(np.asarray(traj.log_probs)[hit] < np.asarray(clipped_lp)[hit])
    unclipped = ~hit
    np.testing.assert_allclose(
        traj.log_probs[unclipped], np.asarray(clipped_lp)[unclipped], rtol=1e-4, atol=1e-4
    )


def test_first_location_uniform_over_square(rnn):
    model, params = rnn
    spec = RolloutSpec(num_glimpses=1, size=4, scales=2)
    images = jnp.zeros((4096, 8, 8, 1))
    first = np.asarray(jit_rollout(model, params, images, jax.random.key(5), spec).locations[0])
    assert np.all(np.abs(first) <= 1)
    n = first.size
    # Uniform on [-1, 1]: mean 0, variance 1/3, both tails reached, flat histogram.
    assert abs(first.mean()) < 0.05
    assert abs(first.var() - 1 / 3) < 0.03
    assert first.min() < -0.99 and first.max() > 0.99
    counts, _ = np.histogram(first, bins=10, range=(-1, 1))
    assert np.all(np.abs(counts - n / 10) < 0.15 * n / 10), counts
    # y and x are drawn independently.
    assert abs(np.corrcoef(first[:, 0], first[:, 1])[0, 1]) < 0.05


def test_sampling_noise_has_std_loc_std(rnn):
    """The noise around the mean has standard deviation loc_std (not its square, not 1).

    Mixing up std and variance would make the z-scores have std 10 or 0.1 here.
    """
    model, params = rnn
    spec = RolloutSpec(num_glimpses=5, size=4, scales=2, loc_std=0.1)
    traj = _np(jit_rollout(model, params, make_images(256), jax.random.key(9), spec))
    inside = np.all(np.abs(traj.locations[1:]) < 1, axis=-1)
    assert inside.mean() > 0.9
    z = (traj.locations[1:] - traj.means)[inside] / spec.loc_std
    assert abs(z.mean()) < 0.05
    assert abs(z.std() - 1) < 0.05
    # log_probs agree: -2 log p - 2 log(2 pi std^2) is the chi-square(2) statistic, mean 2.
    chi2 = -2 * traj.log_probs - 2 * math.log(2 * math.pi * spec.loc_std**2)
    assert abs(chi2.mean() - 2) < 0.15


def test_unknown_mode(rnn):
    model, params = rnn
    with pytest.raises(ValueError, match="unknown rollout mode 'greedy'"):
        rollout(model, params, make_images(), jax.random.key(0), SPEC, mode="greedy")


# ------------------------------------------------------------------------------------------
# The Gaussian log-density


@pytest.mark.parametrize("std", [0.05, 0.1, 0.5, 1.0, 2.0])
def test_gaussian_log_prob_by_hand(std):
    mean = jnp.array([0.3, -0.2])
    at_mean = -2 * math.log(std) - math.log(2 * math.pi)
    np.testing.assert_allclose(gaussian_log_prob(mean, mean, std), at_mean, rtol=1e-5)
    one_sd = mean + jnp.array([std, 0.0])
    np.testing.assert_allclose(gaussian_log_prob(one_sd, mean, std), at_mean - 0.5, rtol=1e-5)
    # z = (1, -2): -0.5 * (1 + 4) = -2.5
    off = mean + jnp.array([std, -2 * std])
    np.testing.assert_allclose(gaussian_log_prob(off, mean, std), at_mean - 2.5, rtol=1e-5)


def test_gaussian_log_prob_numbers():
    # Literal values: std 0.1 at the mean is 2 log 10 - log 2 pi = 2.7672; a plain number so a
    # variance-for-std mix-up (log 0.01 instead of log 0.1) cannot cancel out.
    np.testing.assert_allclose(
        gaussian_log_prob(jnp.zeros(2), jnp.zeros(2), 0.1), 2.7672, atol=1e-4
    )
    # x - mean = (0.1, 0.2), std 0.5: z = (0.2, 0.4), -0.5 * 0.2 + 2 log 2 - log 2 pi.
    got = gaussian_log_prob(jnp.array([0.1, 0.2]), jnp.zeros(2), 0.5)
    np.testing.assert_allclose(got, -0.1 + 2 * math.log(2) - math.log(2 * math.pi), rtol=1e-5)


def test_gaussian_log_prob_batched():
    x = jax.random.normal(jax.random.key(0), (3, 4, 2))
    mean = jax.random.normal(jax.random.key(1), (3, 4, 2))
    got = gaussian_log_prob(x, mean, 0.3)
    assert got.shape == (3, 4)
    z = (np.asarray(x) - np.asarray(mean)) / 0.3
    expected = (-0.5 * z**2 - np.log(0.3) - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Compilation


def test_compiles_once_across_keys_and_images(rnn):
    # Fails if anything about a key or the image values (rather than shapes) leaks into
    # the trace, e.g. a Python-level branch on them.
    model, params = rnn

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, images, key):
        return rollout(model, params, images, key, SPEC)

    for seed in range(4):
        run(params, make_images(seed=seed), jax.random.key(seed)).logits.block_until_ready()


def test_spec_and_model_are_static_arguments(rnn):
    # RAM and RolloutSpec must be hashable and compare by value, so equal copies built anew
    # reuse the compiled rollout.
    model, params = rnn
    traced = []

    def fn(model, params, images, key, spec):
        traced.append(1)
        return rollout(model, params, images, key, spec)

    run = jax.jit(fn, static_argnums=(0, 4))
    for seed in range(3):
        again_model = RAM(core="rnn", **TINY)
        again_spec = RolloutSpec(num_glimpses=3, size=4, scales=2, loc_std=0.1)
        run(again_model, params, make_images(), jax.random.key(seed), again_spec)
    assert len(traced) == 1
    run(model, params, make_images(), jax.random.key(0), RolloutSpec(3, 4, 2, loc_std=0.2))
    assert len(traced) == 2


# ------------------------------------------------------------------------------------------
# Monte-Carlo class probabilities


def test_mc_class_probs(rnn):
    model, params = rnn
    images = make_images()
    key = jax.random.key(11)
    probs = np.asarray(mc_class_probs(model, params, images, key, SPEC, num_samples=3))
    assert probs.shape == (B, K)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert np.all(probs >= 0)
    # The average of the softmaxes of rollouts sampled with jax.random.split(key, M).
    keys = jax.random.split(key, 3)
    expected = np.mean(
        [jax.nn.softmax(jit_rollout(model, params, images, k, SPEC).logits) for k in keys], axis=0
    )
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_mc_class_probs_single_sample(rnn):
    model, params = rnn
    images = make_images()
    key = jax.random.key(12)
    got = mc_class_probs(model, params, images, key, SPEC, num_samples=1)
    first = jax.random.split(key, 1)[0]
    expected = jax.nn.softmax(jit_rollout(model, params, images, first, SPEC).logits)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_mc_class_probs_rejects_zero_samples(rnn):
    model, params = rnn
    with pytest.raises(ValueError, match="num_samples"):
        mc_class_probs(model, params, make_images(), jax.random.key(0), SPEC, num_samples=0)


# ------------------------------------------------------------------------------------------
# The spec and the images


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(loc_std=0.0), "loc_std"),
        (dict(loc_std=-0.1), "loc_std"),
        (dict(loc_std="0.1"), "loc_std"),
        (dict(num_glimpses=0), "num_glimpses"),
        (dict(num_glimpses=-1), "num_glimpses"),
        (dict(num_glimpses=2.0), "num_glimpses"),
        (dict(num_glimpses=True), "num_glimpses"),
        (dict(loc_std=True), "loc_std"),
        (dict(size=0), "size"),
        (dict(scales=0), "scales"),
        (dict(factor=0), "factor"),
        (dict(location_range=0.0), "location_range"),
        (dict(location_range=1.5), "location_range"),
        (dict(location_range=-0.5), "location_range"),
        (dict(location_range=True), "location_range"),
    ],
)
def test_spec_rejects(kwargs, match):
    args = dict(num_glimpses=3, size=4) | kwargs
    with pytest.raises(ValueError, match=match):
        RolloutSpec(**args)


def test_spec_accepts_numpy_std():
    assert RolloutSpec(3, 4, loc_std=np.float32(0.1)).loc_std == np.float32(0.1)


def test_spec_is_hashable_and_frozen():
    a = RolloutSpec(3, 4)
    assert hash(a) == hash(RolloutSpec(3, 4)) and a == RolloutSpec(3, 4)
    with pytest.raises(AttributeError):
        a.loc_std = 0.5


def test_uint8_images_equal_float_images_over_255(rnn):
    model, params = rnn
    raw = np.random.default_rng(0).integers(0, 256, size=(B, HW, HW, 1), dtype=np.uint8)
    key = jax.random.key(4)
    a = _np(jit_rollout(model, params, jnp.asarray(raw), key, SPEC))
    b = _np(jit_rollout(model, params, jnp.asarray(raw.astype(np.float32) / 255.0), key, SPEC))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # Not scaled would be a different episode.
    c = _np(jit_rollout(model, params, jnp.asarray(raw.astype(np.float32)), key, SPEC))
    assert not np.allclose(a.logits, c.logits)


def test_images_without_channel_axis(rnn):
    model, params = rnn
    images = make_images()
    key = jax.random.key(4)
    a = _np(jit_rollout(model, params, images, key, SPEC))
    b = _np(jit_rollout(model, params, images[..., 0], key, SPEC))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("margin", [2, 5, 7])
def test_image_margin_reads_the_canvas_inside(rnn, margin):
    # SPEC's largest patch is 8 pixels: the retina pads by 5, so 2 is too little, 7 too much.
    model, params = rnn
    images = make_images()
    framed = jnp.pad(images, ((0, 0), (margin, margin), (margin, margin), (0, 0)))
    key = jax.random.key(6)
    for mode in ("sample", "mean"):
        a = _np(rollout(model, params, images, key, SPEC, mode=mode))
        b = _np(rollout(model, params, framed, key, SPEC, mode=mode, image_margin=margin))
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    # Not declared, the frame is part of the canvas: locations point elsewhere.
    c = _np(rollout(model, params, framed, key, SPEC, mode="mean"))
    assert not np.allclose(a.logits, c.logits)


def test_loc_std_scale_widens_the_sampled_policy(rnn):
    model, params = rnn
    images, key = make_images(), jax.random.key(8)
    wide = dataclasses.replace(SPEC, loc_std=2 * SPEC.loc_std)
    expected = _np(rollout(model, params, images, key, wide))
    # A traced scale, as a training schedule passes it, and a Python number.
    scaled = jax.jit(lambda scale: rollout(model, params, images, key, SPEC, loc_std_scale=scale))(
        jnp.float32(2.0)
    )
    for x, y in zip(expected, _np(scaled), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    for x, y in zip(
        expected, _np(rollout(model, params, images, key, SPEC, loc_std_scale=2.0)), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    narrow = _np(rollout(model, params, images, key, SPEC, loc_std_scale=0.5))
    assert not np.allclose(narrow.locations, expected.locations)
    with pytest.raises(ValueError, match="loc_std_scale must be positive"):
        rollout(model, params, images, key, SPEC, loc_std_scale=0.0)


def test_gaussian_log_prob_takes_a_traced_std():
    x, mean = jnp.array([[0.3, -0.2]]), jnp.array([[0.1, 0.1]])
    traced = jax.jit(lambda std: gaussian_log_prob(x, mean, std))(jnp.float32(0.25))
    np.testing.assert_allclose(traced, gaussian_log_prob(x, mean, 0.25), rtol=1e-6)


def test_bad_images_rejected(rnn):
    model, params = rnn
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="uint8 or floating"):
        rollout(model, params, jnp.zeros((B, HW, HW, 1), jnp.int32), key, SPEC)
    with pytest.raises(ValueError, match="shape"):
        rollout(model, params, jnp.zeros((HW, HW)), key, SPEC)
    with pytest.raises(ValueError, match="larger than"):
        rollout(model, params, jnp.zeros((B, 3, 3, 1)), key, SPEC)


# ------------------------------------------------------------------------------------------
# Dropout (training only)


def test_dropout_zeroes_at_rate_and_scales_survivors():
    x = jnp.arange(1.0, 20_001.0).reshape(100, 200)
    y = np.asarray(dropout(jax.random.key(0), x, 0.25))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert abs(1 - kept.mean() - 0.25) < 0.01  # 20,000 draws: 4 sigma is about 0.012
    np.testing.assert_array_equal(np.asarray(dropout(jax.random.key(0), x, 0.0)), np.asarray(x))
    np.testing.assert_array_equal(y, np.asarray(dropout(jax.random.key(0), x, 0.25)))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_rate(rnn, rate):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        dropout(jax.random.key(0), jnp.ones(3), rate)
    model, params = rnn
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\)"):
        rollout(model, params, make_images(), jax.random.key(0), SPEC, dropout_rate=rate)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_rollout_dropout_is_keyed_and_changes_the_episode(core, mode):
    model, params = make_model(core)
    images = make_images()
    plain = _np(rollout(model, params, images, jax.random.key(3), SPEC, mode=mode))
    a = _np(rollout(model, params, images, jax.random.key(3), SPEC, mode=mode, dropout_rate=0.5))
    b = _np(rollout(model, params, images, jax.random.key(3), SPEC, mode=mode, dropout_rate=0.5))
    c = _np(rollout(model, params, images, jax.random.key(4), SPEC, mode=mode, dropout_rate=0.5))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # The first glimpse is read before any dropout; later steps and the logits see it.
    np.testing.assert_array_equal(a.locations[0], plain.locations[0])
    assert not np.allclose(a.logits, plain.logits)
    assert not np.allclose(a.baselines, plain.baselines)
    assert not np.allclose(a.logits, c.logits)


# ------------------------------------------------------------------------------------------
# Mean episodes among sampled ones (training option ``mean_episode_fraction``)


@pytest.mark.parametrize("num_mean", [1, 3, B])
def test_mean_episodes_are_the_deterministic_ones_and_the_rest_unchanged(rnn, num_mean):
    model, params = rnn
    images, key = make_images(), jax.random.key(5)
    mixed = _np(rollout(model, params, images, key, SPEC, num_mean_episodes=num_mean))
    sampled = _np(rollout(model, params, images, key, SPEC, mode="sample"))
    mean = _np(rollout(model, params, images, key, SPEC, mode="mean"))
    # locations, means, log_probs, baselines are time-major; logits are [B, K].
    batch_axes = (1, 1, 1, 1, 0)
    for got, want_sampled, want_mean, batch_axis in zip(
        mixed, sampled, mean, batch_axes, strict=True
    ):
        head = np.take(got, range(num_mean), axis=batch_axis)
        tail = np.take(got, range(num_mean, B), axis=batch_axis)
        np.testing.assert_allclose(
            head, np.take(want_mean, range(num_mean), axis=batch_axis), rtol=1e-6, atol=1e-7
        )
        np.testing.assert_allclose(
            tail, np.take(want_sampled, range(num_mean, B), axis=batch_axis), rtol=1e-6, atol=1e-7
        )


def test_zero_mean_episodes_traces_no_selection(rnn):
    # 0 is the default, so comparing values with the default call could not fail: check that
    # 0 traces none of the per-episode selections that a positive count adds.
    model, params = rnn
    plain = _count_primitive(model, params, SPEC, "select_n", num_mean_episodes=0)
    mixed = _count_primitive(model, params, SPEC, "select_n", num_mean_episodes=1)
    assert mixed > plain


def test_mean_episodes_give_reinforce_no_gradient(rnn):
    # d log N(x; m, s) / dm = (x - m) / s^2 vanishes where the episode followed the mean.
    model, params = rnn
    images, key = make_images(), jax.random.key(5)
    advantages = jax.random.normal(jax.random.key(6), (SPEC.num_glimpses - 1, B))

    def surrogate(p, num_mean):
        traj = rollout(model, p, images, key, SPEC, num_mean_episodes=num_mean)
        return -(advantages * traj.log_probs).sum()

    all_mean = jax.grad(surrogate)(params, B)["location_net"]
    some_sampled = jax.grad(surrogate)(params, 2)["location_net"]
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(all_mean))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(some_sampled))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_mean_episodes": -1}, r"in \[0, batch size 4\]"),
        ({"num_mean_episodes": B + 1}, r"in \[0, batch size 4\]"),
        ({"num_mean_episodes": 1.5}, "must be an int"),
        ({"num_mean_episodes": True}, "must be an int"),
        ({"num_mean_episodes": 2, "mode": "mean"}, "applies to sampled episodes"),
    ],
)
def test_mean_episodes_rejects(rnn, kwargs, match):
    model, params = rnn
    with pytest.raises(ValueError, match=match):
        rollout(model, params, make_images(), jax.random.key(0), SPEC, **kwargs)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_unrolled_episode_equals_the_loop(core, mode, monkeypatch):
    # Short episodes run unrolled (rollout.MAX_UNROLLED_GLIMPSES): the same computation.
    from ram_jax import rollout as rollout_module

    model, params = make_model(core)
    images, key = make_images(), jax.random.key(7)

    def episode():
        # A fresh function each time: jit would reuse a trace made under the other setting.
        fn = lambda p, x, k: rollout(model, p, x, k, SPEC, mode=mode)
        eqns = jax.make_jaxpr(fn)(params, images, key).eqns
        (scan,) = [e for e in eqns if e.primitive.name == "scan"]
        return scan.params["unroll"], _np(jax.jit(fn)(params, images, key))

    assert SPEC.num_glimpses <= rollout_module.MAX_UNROLLED_GLIMPSES
    unroll, unrolled = episode()
    assert unroll == SPEC.num_glimpses
    monkeypatch.setattr(rollout_module, "MAX_UNROLLED_GLIMPSES", SPEC.num_glimpses - 1)
    unroll, loop = episode()
    assert unroll == 1
    for x, y in zip(unrolled, loop, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
