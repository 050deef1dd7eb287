"""The whole-image baselines of ram_jax.baselines: shapes, parameter counts, the loss, training.

Also trains each model the paper compares (FC, conv, and the RAM with random glimpses) for a
few steps on synthetic, linearly separable images: the loss must fall. No MNIST needed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ram_jax import evaluation
from ram_jax.baselines import BASELINES, Convolutional, FullyConnected, classifier_loss
from ram_jax.config import default_config
from ram_jax.rollout import RolloutSpec
from ram_jax.train import (
    LoopCarry,
    build_model,
    init_train_state,
    loss_weights,
    make_loss_fn,
    make_train_step,
    rollout_spec,
)

SIDES = (28, 60, 100)


def init_params(model, side: int, key=0):
    return model.init(jax.random.key(key), jnp.zeros((1, side, side, 1), jnp.float32))["params"]


def param_shapes(model, side: int):
    """The parameters as shapes only (``jax.eval_shape``: nothing is computed)."""
    return jax.eval_shape(lambda: init_params(model, side))


def count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def synthetic_images(n: int, side: int = 28, num_classes: int = 4, seed: int = 0):
    """uint8[n, side, side] and labels int32[n]: class c is a bright 10x10 square in quadrant c
    (over faint noise), so one linear layer separates the classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.integers(0, 40, (n, side, side)).astype(np.uint8)
    half = side // 2
    for i, c in enumerate(labels):
        top, left = (c // 2) * half + 2, (c % 2) * half + 2
        images[i, top : top + 10, left : left + 10] = 255
    return jnp.asarray(images), jnp.asarray(labels)


# --------------------------------------------------------------------------------------------
# Shapes and parameters


def small_baseline(name: str):
    return FullyConnected(hidden=16) if name == "fc" else Convolutional(hidden=16)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", BASELINES)
def test_output_shape(name, side):
    model = small_baseline(name)
    # Shapes only (jax.eval_shape): nothing is computed.
    logits = jax.eval_shape(
        lambda: model.apply({"params": init_params(model, side)}, jnp.zeros((3, side, side, 1)))
    )
    assert logits.shape == (3, 10)
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize("name", BASELINES)
def test_output_values_per_image(name):
    model = small_baseline(name)
    params = init_params(model, 28)
    images = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    logits = model.apply({"params": params}, images)
    assert logits.shape == (3, 10)
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert not np.allclose(logits[0], logits[1])  # different images, different outputs
    # Each image is classified on its own: a batch of one gives the same row.
    np.testing.assert_allclose(
        model.apply({"params": params}, images[1:2])[0], logits[1], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    ("side", "feature_side", "inputs"),
    [(28, 4, 128), (60, 11, 968), (100, 19, 2888)],  # (side - 10) // 5 + 1; side^2 * 8 filters
)
def test_conv_feature_map_size(side, feature_side, inputs):
    params = param_shapes(Convolutional(), side)
    assert feature_side * feature_side * 8 == inputs
    assert params["conv"]["kernel"].shape == (10, 10, 1, 8)
    assert params["conv"]["bias"].shape == (8,)
    assert params["hidden"]["kernel"].shape == (inputs, 256)
    assert params["logits"]["kernel"].shape == (256, 10)


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        # (784*64 + 64) + (64*64 + 64) + (64*10 + 10) = 50,240 + 4,160 + 650
        (28, 55_050),
        # (3600*64 + 64) + 4,160 + 650
        (60, 235_274),
    ],
)
def test_fc_parameter_count_by_hand(side, expected):
    params = param_shapes(FullyConnected(hidden=64), side)
    assert sorted(params) == ["hidden1", "hidden2", "logits"]
    assert count_params(params) == expected


def test_conv_parameter_count_by_hand():
    # conv 10*10*8 + 8, hidden 128*256 + 256, logits 256*10 + 10 on 28x28.
    expected = (800 + 8) + (128 * 256 + 256) + (2560 + 10)
    assert count_params(param_shapes(Convolutional(), 28)) == expected == 36_402


@pytest.mark.parametrize("shape", [(8, 8), (9, 28), (28, 9)])
def test_conv_too_small_image_raises(shape):
    model = Convolutional()
    with pytest.raises(ValueError, match=r"10x10 convolution does not fit"):
        model.init(jax.random.key(0), jnp.zeros((1, *shape, 1)))


@pytest.mark.parametrize("model", [FullyConnected(hidden=8), Convolutional(hidden=8)])
@pytest.mark.parametrize(
    ("shape", "dtype"), [((16, 28, 28), jnp.float32), ((2, 28, 28, 1), jnp.uint8)]
)
def test_images_without_a_channel_axis_or_as_bytes_raise(model, shape, dtype):
    # A [16, 28, 28] batch would reach the convolution as one 16x28 image of 28 channels.
    with pytest.raises(ValueError, match=r"images must be floating point \[B, H, W, C\]"):
        model.init(jax.random.key(0), jnp.zeros(shape, dtype))


def test_conv_smallest_image_that_fits():
    # 10x10: one output position per filter.
    params = param_shapes(Convolutional(hidden=16), 10)
    assert params["hidden"]["kernel"].shape == (8, 16)


@pytest.mark.parametrize(
    ("model", "hidden", "expected_type"),
    [("fc", 64, FullyConnected), ("conv", None, Convolutional)],
)
def test_build_model_reads_the_config(model, hidden, expected_type):
    config = default_config()
    config.model = model
    config.fc_hidden = 64
    config.conv_hidden = 32
    config.conv_filters = 4
    built = build_model(config)
    assert type(built) is expected_type
    if model == "fc":
        assert built.hidden == 64
    else:
        assert (built.filters, built.kernel, built.stride, built.hidden) == (4, 10, 5, 32)
    # init_train_state sizes the baseline from the image shape; the rollout spec is ignored.
    state = jax.eval_shape(
        lambda: init_train_state(
            built, rollout_spec(config), optax.identity(), jax.random.key(0), (60, 60)
        )
    )
    first = state.params["hidden1" if model == "fc" else "conv"]["kernel"]
    assert first.shape == ((3600, 64) if model == "fc" else (10, 10, 1, 4))


# --------------------------------------------------------------------------------------------
# The loss


def test_classifier_loss_by_hand():
    # Row 0: uniform over 3 classes, label 2 -> ln 3 (argmax is class 0: wrong).
    # Row 1: probabilities (2, 1, 1) / 4, label 0 -> -ln(1/2) = ln 2 (right).
    logits = jnp.array([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    labels = jnp.array([2, 0])
    loss, metrics = classifier_loss(logits, labels)
    expected = (math.log(3.0) + math.log(2.0)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["loss"]) == float(metrics["classification"]) == float(loss)
    assert float(metrics["accuracy"]) == 0.5


def test_classifier_loss_confident_and_right_is_near_zero():
    logits = jnp.array([[5.0, 0.0], [0.0, 5.0]])
    loss, metrics = classifier_loss(logits, jnp.array([0, 1]))
    assert float(loss) == pytest.approx(math.log1p(math.exp(-5.0)), rel=1e-4)
    assert float(metrics["accuracy"]) == 1.0


def test_classifier_loss_checks_label_shape():
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        classifier_loss(jnp.zeros((2, 3)), jnp.array([0, 1, 2]))


def test_baseline_loss_fn_is_the_classifier_loss_and_ignores_the_key():
    model = FullyConnected(hidden=16)
    images, labels = synthetic_images(8)
    params = init_params(model, 28)
    loss_fn = make_loss_fn(model, None, loss_weights(default_config()))
    loss_a, metrics = loss_fn(params, images, labels, jax.random.key(0))
    loss_b, _ = loss_fn(params, images, labels, jax.random.key(99))
    logits = model.apply({"params": params}, images[..., None].astype(jnp.float32) / 255.0)
    expected, _ = classifier_loss(logits, labels)
    assert float(loss_a) == float(loss_b)
    assert float(loss_a) == pytest.approx(float(expected), rel=1e-6)
    assert set(metrics) == {"loss", "classification", "accuracy"}


# --------------------------------------------------------------------------------------------
# Training: each model of the comparison learns a separable problem

STEPS = 40


def tiny_config(model: str):
    """A small network with 4 classes (the synthetic problem's), or the RAM with random glimpses
    for ``model="random"``."""
    config = default_config()
    config.model = model
    config.num_classes = 4
    config.fc_hidden = 32
    config.conv_hidden = 32
    config.patch_hidden = 64
    config.location_hidden = 64
    config.glimpse_features = 64
    config.core_hidden = 64
    if model == "random":
        config.model = "ram"
        config.policy = "random"
        config.num_glimpses = 3
        config.glimpse_size = 8
        config.glimpse_scales = 3  # the 32x32 patch covers the whole 28x28 image
    return config


def mean_loss(loss_fn, params, images, labels) -> float:
    # Over 4 fixed keys: the RAM's random glimpses make one episode's loss noisy.
    keys = jax.random.split(jax.random.key(123), 4)
    return float(np.mean([float(loss_fn(params, images, labels, k)[0]) for k in keys]))


def label_entropy(labels) -> float:
    """The cross-entropy of the best prediction that ignores the image: the label frequencies."""
    p = np.bincount(np.asarray(labels)) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# Measured on CPU (seed 0, 40 steps): fc 1.42 -> 0.02, conv 1.42 -> 0.06, random 1.46 -> 0.84,
# against 1.32 for the label frequencies alone.
@pytest.mark.parametrize(("name", "bound"), [("fc", 0.25), ("conv", 0.25), ("random", 1.1)])
def test_model_trains_on_separable_data(name, bound):
    config = tiny_config(name)
    model, spec, weights = build_model(config), rollout_spec(config), loss_weights(config)
    optimizer = optax.adam(1e-3)
    images, labels = synthetic_images(32, seed=1)
    state = init_train_state(model, spec, optimizer, jax.random.key(0), (28, 28))
    step = jax.jit(make_train_step(model, spec, weights, optimizer))
    loss_fn = jax.jit(make_loss_fn(model, spec, weights))
    before = mean_loss(loss_fn, state.params, images, labels)
    carry = LoopCarry(state, jnp.array(-1, jnp.int32))
    for s in range(STEPS):
        carry, metrics = step(carry, images, labels, jax.random.key(1000 + s), jnp.int32(s))
        assert np.isfinite(float(metrics["loss"]))
    assert int(carry.halted_at) == -1
    assert int(carry.state.step) == STEPS
    after = mean_loss(loss_fn, carry.state.params, images, labels)
    assert label_entropy(labels) == pytest.approx(1.3229, abs=1e-4)
    # Below what the label frequencies alone give: the model reads the images.
    assert after < bound < label_entropy(labels) < before, (before, after)


# --------------------------------------------------------------------------------------------
# Evaluation of a baseline


@pytest.mark.parametrize("name", BASELINES)
def test_error_pct_of_a_baseline(name):
    model = small_baseline(name)
    images, labels = synthetic_images(50, seed=2)
    params = init_params(model, 28, key=3)
    logits = model.apply({"params": params}, images[..., None].astype(jnp.float32) / 255.0)
    wrong = int(np.sum(np.argmax(np.asarray(logits), axis=-1) != np.asarray(labels)))
    expected = round(100.0 * wrong / 50, 4)
    # A spec whose retina could not even read these images: a baseline must ignore it.
    unusable = RolloutSpec(num_glimpses=2, size=64)
    # 50 images in batches of 16: the last batch is padded.
    got = evaluation.error_pct(model, params, images, labels, unusable, batch_size=16)
    assert got == expected
    # Monte-Carlo sampling changes nothing for a deterministic classifier.
    mc = evaluation.error_pct(
        model, params, images, labels, unusable, key=jax.random.key(5), batch_size=16, mc_samples=3
    )
    assert mc == expected
    # All labels replaced by the predictions: no error; by another class: all wrong.
    predicted = jnp.asarray(np.argmax(np.asarray(logits), axis=-1), jnp.int32)
    assert evaluation.error_pct(model, params, images, predicted, unusable, batch_size=16) == 0.0
    shifted = (predicted + 1) % 10
    assert evaluation.error_pct(model, params, images, shifted, unusable, batch_size=16) == 100.0
