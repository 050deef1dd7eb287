"""ram_jax.augment: shifts (each image moved by its own in-range offset, zero filled) and turns and
scalings (checked against quarter turns and a scaling worked out by hand)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.augment import affine_warp, random_affine, random_shift


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved down by dy and right by dx (negative: up / left), zeros shifted in."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def offsets_of(images: np.ndarray, out: np.ndarray, max_shift: int) -> list[tuple[int, int]]:
    """The unique in-range offset that maps each image to its output (fails if none does)."""
    found = []
    span = range(-max_shift, max_shift + 1)
    for image, result in zip(images, out, strict=True):
        matches = [
            (dy, dx) for dy in span for dx in span if np.array_equal(shifted(image, dy, dx), result)
        ]
        assert len(matches) == 1, matches
        found.append(matches[0])
    return found


@pytest.mark.parametrize("max_shift", [1, 2, 3])
def test_each_image_is_an_in_range_zero_filled_shift(max_shift):
    # Pixels 1..255 (no zeros) make every offset identifiable.
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(64, 9, 7), dtype=np.uint8)
    out = np.asarray(random_shift(jax.random.key(0), images, max_shift))
    assert out.shape == images.shape and out.dtype == images.dtype
    found = offsets_of(images, out, max_shift)
    # Over 64 images, several different offsets (and a non-zero one) must occur.
    assert len(set(found)) > 3 and any(o != (0, 0) for o in found)


def test_channels_move_together():
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, size=(8, 6, 6, 3), dtype=np.uint8)
    out = np.asarray(random_shift(jax.random.key(1), images, 2))
    for c in range(3):
        assert offsets_of(images[..., c], out[..., c], 2) == offsets_of(
            images[..., 0], out[..., 0], 2
        )


def test_same_key_same_shifts_and_zero_is_identity():
    images = np.arange(4 * 5 * 5, dtype=np.float32).reshape(4, 5, 5) + 1
    a = random_shift(jax.random.key(2), images, 2)
    np.testing.assert_array_equal(a, random_shift(jax.random.key(2), images, 2))
    assert not np.array_equal(a, random_shift(jax.random.key(3), images, 2))
    np.testing.assert_array_equal(random_shift(jax.random.key(2), images, 0), images)


def test_negative_shift_rejected():
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(jax.random.key(0), np.zeros((1, 4, 4)), -1)


# --------------------------------------------------------------------------------------------
# affine_warp / random_affine: turned and scaled digits


@pytest.mark.parametrize(("angle", "turns"), [(np.pi / 2, 1), (-np.pi / 2, -1), (np.pi, 2)])
def test_quarter_turns_match_rot90(angle, turns):
    # Multiples of 90 degrees land every output pixel on a source pixel: exact, no blending.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 6, 6), dtype=np.uint8)
    out = np.asarray(affine_warp(images, jnp.full((3,), angle), jnp.ones(3)))
    np.testing.assert_array_equal(out, np.rot90(images, turns, axes=(1, 2)))


def test_zero_angle_unit_scale_is_the_identity():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(affine_warp(images, jnp.zeros(4), jnp.ones(4)), images)


def test_scale_two_by_hand():
    # A single lit pixel one column right of the centre of a 9x9 image. Doubling the size maps
    # output column c to source column 4 + (c - 4) / 2: column 6 reads column 5 (the pixel),
    # columns 5 and 7 read halfway between it and a dark neighbour, everything else reads zero.
    image = np.zeros((1, 9, 9), np.float32)
    image[0, 4, 5] = 1.0
    out = np.asarray(affine_warp(image, jnp.zeros(1), jnp.full((1,), 2.0)))[0]
    expected = np.zeros((9, 9), np.float32)
    expected[4, 5:8] = [0.5, 1.0, 0.5]
    expected[3, 5:8] = expected[5, 5:8] = [0.25, 0.5, 0.25]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_random_affine_respects_its_scale_range():
    # A centred disc's area grows with the square of the scale; with no rotation, the ink of
    # each output must lie within [(1 - s)^2, (1 + s)^2] times the original's (up to edge blur).
    rows, cols = np.mgrid[:28, :28] - 13.5
    disc = (rows**2 + cols**2 <= 6.0**2).astype(np.float32)
    images = np.repeat(disc[None], 256, axis=0)
    out = np.asarray(random_affine(jax.random.key(0), images, 0.0, 0.2))
    ratio = out.sum(axis=(1, 2)) / disc.sum()
    assert ratio.min() >= 0.8**2 * 0.95 and ratio.max() <= 1.2**2 * 1.05
    assert ratio.min() < 0.75 and ratio.max() > 1.3  # the range is used, not just its centre


def test_random_affine_key_determinism_and_no_op():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    a = random_affine(jax.random.key(2), images, 15.0, 0.1)
    assert a.dtype == np.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a, random_affine(jax.random.key(2), images, 15.0, 0.1))
    assert not np.array_equal(a, random_affine(jax.random.key(3), images, 15.0, 0.1))
    assert random_affine(jax.random.key(2), images, 0.0, 0.0) is images


@pytest.mark.parametrize(
    ("rotation", "scale", "match"),
    [(-1.0, 0.0, "max_rotation_deg"), (181.0, 0.0, "max_rotation_deg"), (0.0, 1.0, "max_scale")],
)
def test_random_affine_rejects_bad_ranges(rotation, scale, match):
    with pytest.raises(ValueError, match=match):
        random_affine(jax.random.key(0), np.zeros((1, 4, 4)), rotation, scale)


def test_affine_warp_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        affine_warp(np.zeros((4, 4)), jnp.zeros(1), jnp.ones(1))


def test_random_affine_respects_its_rotation_range():
    # A bar through the centre along the rows; its ink's principal axis (from second moments)
    # gives each output's angle, which must stay within the limit (plus sampling blur) and use it.
    bar = np.zeros((28, 28), np.float32)
    bar[13:15, 4:24] = 1.0
    out = np.asarray(random_affine(jax.random.key(4), np.repeat(bar[None], 256, axis=0), 10.0, 0.0))
    rows, cols = np.mgrid[:28, :28] - 13.5
    mass = out.sum(axis=(1, 2))
    mu_rr = (out * rows**2).sum(axis=(1, 2)) / mass
    mu_cc = (out * cols**2).sum(axis=(1, 2)) / mass
    mu_rc = (out * rows * cols).sum(axis=(1, 2)) / mass
    angles = np.degrees(0.5 * np.arctan2(2 * mu_rc, mu_cc - mu_rr))
    assert np.abs(angles).max() <= 10.5
    assert angles.min() < -8 and angles.max() > 8
