"""ram_jax.augment.random_shift: every image moved by its own in-range offset, zero filled."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ram_jax.augment import random_shift


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
