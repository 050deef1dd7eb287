"""ram_jax.evaluation: where the deterministic rollout looked, against hand-worked distances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.baselines import FullyConnected
from ram_jax.evaluation import digit_distances, mean_paths, predict
from ram_jax.networks import RAM
from ram_jax.rollout import RolloutSpec, rollout

TINY = dict(num_classes=5, patch_hidden=8, location_hidden=8, glimpse_features=16, core_hidden=16)


def make_model(spec: RolloutSpec):
    model = RAM(**TINY)
    patches = jnp.zeros((1, spec.scales, spec.size, spec.size, 1))
    return model, model.init(jax.random.key(0), patches, jnp.zeros((1, 2)))["params"]


@pytest.mark.parametrize("policy", ["learned", "random"])
def test_mean_paths_are_the_rollouts_predict_scores(policy):
    spec = RolloutSpec(num_glimpses=3, size=4, scales=2, loc_std=0.1, policy=policy)
    model, params = make_model(spec)
    images = jax.random.uniform(jax.random.key(1), (10, 16, 16, 1))
    key = jax.random.key(7)
    # 10 images in batches of 4: the last batch is padded, and its padding must not leak out.
    locations, predictions = mean_paths(model, params, images, key, spec, batch_size=4)
    assert locations.shape == (3, 10, 2) and predictions.shape == (10,)
    expected = predict(model, params, images, key, spec, batch_size=4)
    np.testing.assert_array_equal(predictions, expected)
    padded = jnp.concatenate([images, jnp.zeros((2, 16, 16, 1))])
    for b, batch_key in enumerate(jax.random.split(key, 3)):
        batch = padded[4 * b : 4 * b + 4]
        trajectory = rollout(model, params, batch, batch_key, spec, mode="mean")
        count = min(4, 10 - 4 * b)
        np.testing.assert_allclose(
            locations[:, 4 * b : 4 * b + count], trajectory.locations[:, :count], atol=1e-6
        )


def test_mean_paths_needs_a_ram():
    model = FullyConnected(hidden=8, num_classes=5)
    spec = RolloutSpec(num_glimpses=2, size=4)
    with pytest.raises(TypeError, match="needs a RAM model"):
        mean_paths(model, {}, jnp.zeros((2, 16, 16)), jax.random.key(0), spec, batch_size=2)


# Worked by hand on a 60x60 canvas: location l is the point (l + 1) * 30 on each axis, and a
# digit with top-left (r, c) has its centre at (r + 14, c + 14).
@pytest.mark.parametrize(
    "loc, offset, expected",
    [
        ((0.0, 0.0), (16, 16), 0.0),  # centred digit, centre glimpse
        ((-1.0, -1.0), (16, 16), 30.0),  # top-left corner
        ((0.5, -0.2), (16, 16), 15.0),  # (45, 24) against (30, 30): rows 15, cols 6
        ((0.0, 0.0), (0, 32), 16.0),  # digit centre (14, 46)
        ((2.0, 0.0), (0, 32), 46.0),  # clipped to the bottom edge: row 60 against 14
    ],
)
def test_digit_distances_by_hand(loc, offset, expected):
    locations = np.asarray(loc, np.float32).reshape(1, 1, 2)
    got = digit_distances(locations, np.asarray([offset]), (60, 60))
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(expected)


def test_digit_distances_on_28x28_measure_from_the_image_centre():
    locations = np.asarray([[[0.0, 0.0], [0.5, 0.5]], [[-0.5, 0.25], [1.0, -1.0]]], np.float32)
    got = digit_distances(locations, np.zeros((2, 2), np.int32), (28, 28))
    # 28x28: l -> (l + 1) * 14; the digit's centre is (14, 14).
    np.testing.assert_allclose(got, [[0.0, 7.0], [7.0, 14.0]])


@pytest.mark.parametrize(
    "locations, offsets, match",
    [
        (np.zeros((3, 4)), np.zeros((4, 2)), r"locations must be \[T, N, 2\]"),
        (np.zeros((3, 4, 2)), np.zeros((5, 2)), r"digit_offsets must be \[N, 2\]"),
    ],
)
def test_digit_distances_rejects_bad_shapes(locations, offsets, match):
    with pytest.raises(ValueError, match=match):
        digit_distances(locations, offsets, (60, 60))
