"""ram_jax.evaluation: where the deterministic rollout looked, against numbers worked by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.baselines import FullyConnected
from ram_jax.evaluation import (
    averaging_curve,
    digit_distances,
    error_pct,
    glimpse_tracking,
    mean_paths,
    path_report,
    predict,
    rollout_probs,
)
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


def test_rollout_probs_are_the_rollouts_mc_averages():
    spec = RolloutSpec(num_glimpses=3, size=4, scales=2, loc_std=0.3)
    model, params = make_model(spec)
    images = jax.random.uniform(jax.random.key(1), (10, 16, 16, 1))
    key = jax.random.key(5)
    probs = rollout_probs(model, params, images, key, spec, batch_size=4, num_samples=3)
    assert probs.shape == (3, 10, 5)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    # Rollout s of image i is the one predict's MC mode draws: batch key, then rollout key.
    padded = jnp.concatenate([images, jnp.zeros((2, 16, 16, 1))])
    for b, batch_key in enumerate(jax.random.split(key, 3)):
        count = min(4, 10 - 4 * b)
        for s, rollout_key in enumerate(jax.random.split(batch_key, 3)):
            logits = rollout(
                model, params, padded[4 * b : 4 * b + 4], rollout_key, spec, mode="sample"
            ).logits
            np.testing.assert_allclose(
                probs[s, 4 * b : 4 * b + count], jax.nn.softmax(logits)[:count], atol=1e-6
            )
    expected = predict(model, params, images, key, spec, batch_size=4, mc_samples=3)
    np.testing.assert_array_equal(jnp.argmax(probs.mean(axis=0), axis=-1), expected)
    # The draws differ from each other (the policy samples), and a narrower std moves them.
    assert not np.allclose(probs[0], probs[1])
    narrow = rollout_probs(
        model, params, images, key, spec, batch_size=4, num_samples=3, loc_std_scale=0.01
    )
    assert not np.allclose(narrow, probs)


def test_averaging_curve_counts_errors_of_single_and_averaged_draws():
    spec = RolloutSpec(num_glimpses=2, size=4, loc_std=0.5)
    model, params = make_model(spec)
    images = jax.random.uniform(jax.random.key(2), (40, 16, 16, 1))
    labels = np.arange(40) % 5
    key = jax.random.key(3)
    curve = averaging_curve(
        model, params, images, labels, spec, key=key, batch_size=16, num_samples=4
    )
    probs = np.asarray(
        rollout_probs(model, params, images, key, spec, batch_size=16, num_samples=4)
    )
    singles = [100.0 * np.mean(p.argmax(-1) != labels) for p in probs]
    assert curve["single_pct"] == pytest.approx(np.mean(singles), abs=1e-4)
    assert curve["single_std_pct"] == pytest.approx(np.std(singles), abs=1e-4)
    assert curve["averaged_pct"][0] == pytest.approx(singles[0], abs=1e-4)
    for k in (2, 3):
        wrong = np.mean(probs[:k].mean(axis=0).argmax(-1) != labels)
        assert curve["averaged_pct"][k - 1] == pytest.approx(100.0 * wrong, abs=1e-4)
    # The last point is the Monte-Carlo error that evaluation reports with the same key.
    mc = error_pct(model, params, images, labels, spec, key=key, batch_size=16, mc_samples=4)
    assert curve["averaged_pct"][-1] == pytest.approx(mc, abs=1e-4)
    assert len(curve["averaged_pct"]) == 4


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_samples=0), ValueError, "num_samples"),
        (dict(num_samples=2.0), ValueError, "num_samples"),
        (dict(loc_std_scale=0.0), ValueError, "loc_std_scale"),
        (dict(labels=np.zeros(3, np.int32)), ValueError, r"labels must have shape \(4,\)"),
        (dict(labels=np.zeros((4, 1), np.int32)), ValueError, r"got \(4, 1\)"),
    ],
)
def test_averaging_curve_rejects_bad_arguments(kwargs, error, match):
    spec = RolloutSpec(num_glimpses=2, size=4)
    model, params = make_model(spec)
    args = {"labels": np.zeros(4, np.int32), **kwargs}
    labels = args.pop("labels")
    with pytest.raises(error, match=match):
        averaging_curve(model, params, jnp.zeros((4, 16, 16, 1)), labels, spec, **args)


@pytest.mark.parametrize("shape", [(4, 1), (3,)])
def test_error_pct_rejects_labels_not_one_per_image(shape):
    # [N, 1] labels would broadcast against [N] predictions and count N x N comparisons.
    spec = RolloutSpec(num_glimpses=2, size=4)
    model, params = make_model(spec)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\), one per image"):
        error_pct(model, params, jnp.zeros((4, 16, 16, 1)), np.zeros(shape, np.int32), spec)


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.array([0, 1, 5, 2]), {}, r"labels must lie in \[0, 5\), .* got 0\.\.5"),
        (np.array([0, -1, 2, 2]), {}, r"got -1\.\.2"),
        (np.array([0.0, 1.0, 2.0, 3.0]), {}, "labels must be integer class indices"),
        (np.array([0, 1, 2, 3]), {"batch_size": 0}, "batch_size must be an integer >= 1"),
    ],
)
def test_error_pct_rejects_labels_no_class_can_match(labels, kwargs, match):
    # The tiny RAM has 5 classes: a label of 5 would count as an error without a word.
    spec = RolloutSpec(num_glimpses=2, size=4)
    model, params = make_model(spec)
    with pytest.raises(ValueError, match=match):
        error_pct(model, params, jnp.zeros((4, 16, 16, 1)), labels, spec, **kwargs)


def test_error_pct_of_no_images_is_an_error():
    spec = RolloutSpec(num_glimpses=2, size=4)
    model, params = make_model(spec)
    with pytest.raises(ValueError, match="need at least one image"):
        error_pct(model, params, jnp.zeros((0, 16, 16, 1)), np.zeros(0, np.int32), spec)


def test_averaging_curve_needs_a_ram():
    model = FullyConnected(hidden=8, num_classes=5)
    spec = RolloutSpec(num_glimpses=2, size=4)
    with pytest.raises(TypeError, match="needs a RAM model"):
        averaging_curve(model, {}, jnp.zeros((2, 16, 16)), np.zeros(2), spec)


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


def test_glimpse_tracking_by_hand():
    # 60x60; digit centres at 14, 30, 46 on both axes (offsets 0, 16, 32).
    offsets = np.asarray([[0, 0], [16, 16], [32, 32]])
    # Glimpse 0 looks straight at each digit; glimpse 1 moves half as far; glimpse 2 sits at
    # rows 30, 30, 54 and always at column 30.
    straight = offsets + 14.0
    half = 30.0 + 0.5 * (straight - 30.0)
    third = np.asarray([[30.0, 30.0], [30.0, 30.0], [54.0, 30.0]])
    centres = np.stack([straight, half, third])
    locations = centres / 30.0 - 1.0  # inverse of (l + 1) / 2 * 60
    got = glimpse_tracking(locations, offsets, (60, 60))
    assert got[0] == {"slope": [1.0, 1.0], "corr": [1.0, 1.0]}
    assert got[1] == {"slope": [0.5, 0.5], "corr": [1.0, 1.0]}
    # Rows: digits -16, 0, 16 and glimpses -8, -8, 16 about their means: covariance 128,
    # variances 512/3 and 128, so slope 0.75 and correlation sqrt(3)/2. Columns never move.
    assert got[2]["slope"] == [0.75, 0.0]
    assert got[2]["corr"] == [round(np.sqrt(3) / 2, 3), None]


def test_glimpse_tracking_is_undefined_when_digits_do_not_move():
    locations = np.asarray([[[0.0, 0.0], [0.5, -0.5]]], np.float32)
    got = glimpse_tracking(locations, np.zeros((2, 2), np.int32), (28, 28))
    assert got == [{"slope": [None, None], "corr": [None, None]}]


def test_glimpse_tracking_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"digit_offsets must be \[N, 2\]"):
        glimpse_tracking(np.zeros((3, 4, 2)), np.zeros((5, 2)), (60, 60))


def test_path_report_by_hand():
    # 3 glimpses, 4 images. The first glimpse (the centre) never counts as "looking at" the digit.
    distances = np.asarray(
        [
            [0.0, 20.0, 20.0, 20.0],
            [3.0, 9.0, 15.0, 6.0],
            [5.0, 7.0, 30.0, 2.0],
        ],
        np.float32,
    )
    wrong = np.asarray([False, True, True, False])
    offsets = np.asarray([0.0, 3.0, 9.0, 16.0])
    report = path_report(distances, wrong, offsets, radii=[4.0, 8.0])
    assert report["images"] == 4 and report["errors"] == 2 and report["error_pct"] == 50.0
    np.testing.assert_allclose(report["mean_distance_px"], [15.0, 8.25, 11.0])
    np.testing.assert_allclose(report["mean_distance_px_wrong"], [20.0, 12.0, 18.5])
    # Closest later glimpse: 3, 7, 15, 2. Within 4 px: images 0 and 3 (both right).
    within4, within8 = report["near"]
    assert within4 == {
        "radius_px": 4.0,
        "images_pct": 50.0,
        "error_near_pct": 0.0,
        "error_far_pct": 100.0,
        "errors_far": 2,
    }
    # Within 8 px: images 0, 1, 3; image 1 is wrong there, image 2 (15 px) is wrong elsewhere.
    assert within8["images_pct"] == 75.0
    assert within8["error_near_pct"] == pytest.approx(100 / 3, abs=1e-3)
    assert within8["error_far_pct"] == 100.0 and within8["errors_far"] == 1
    # Bands of 4 px: [0, 4) holds images 0 and 1, [8, 12) image 2, [16, 20) image 3.
    assert report["by_offset"] == [
        {"from_px": 0, "to_px": 4, "images": 2, "error_pct": 50.0},
        {"from_px": 8, "to_px": 12, "images": 1, "error_pct": 100.0},
        {"from_px": 16, "to_px": 20, "images": 1, "error_pct": 0.0},
    ]


@pytest.mark.parametrize(
    ("distances", "wrong", "offsets", "match"),
    [
        (np.ones((2, 4)), np.array([0, 1, 1, 0]), np.zeros(4), "wrong must be a bool mask"),
        (np.ones((2, 4)), np.zeros(3, bool), np.zeros(4), r"shapes \(2, 4\), \(3,\)"),
        (np.ones((2, 4)), np.zeros(4, bool), np.zeros(5), r"and \(5,\)"),
        (np.ones(4), np.zeros(4, bool), np.zeros(4), r"expected distances \[T, N\]"),
    ],
)
def test_path_report_rejects_masks_and_shapes_that_do_not_match(distances, wrong, offsets, match):
    # A 0/1 integer mask would select columns 0 and 1 and report wrong distances silently.
    with pytest.raises(ValueError, match=match):
        path_report(distances, wrong, offsets, radii=[4.0])


def test_path_report_without_errors_has_no_wrong_distances():
    report = path_report(np.ones((2, 3), np.float32), np.zeros(3, bool), np.zeros(3), [1.0])
    assert report["errors"] == 0 and report["mean_distance_px_wrong"] is None
    assert report["near"][0]["images_pct"] == 100.0 and report["near"][0]["error_far_pct"] is None
