"""Training-time augmentation, on the device and keyed (not part of the paper's setup)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

__all__ = ["affine_warp", "random_affine", "random_shift"]


def random_shift(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    """Moves each image by its own integer offset in [-max_shift, max_shift]^2, filling with 0.

    Args:
      key: PRNG key; one offset pair per image is drawn from it.
      images: [B, H, W] or [B, H, W, C], any dtype.
      max_shift: largest shift in pixels along each axis (0 returns the images unchanged).

    Returns:
      Array of the same shape and dtype.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    batch, height, width = images.shape[:3]
    pad = [(0, 0), (max_shift, max_shift), (max_shift, max_shift)] + [(0, 0)] * (images.ndim - 3)
    padded = jnp.pad(images, pad)
    # Offset o into the padded image shifts the content by max_shift - o.
    starts = jax.random.randint(key, (batch, 2), 0, 2 * max_shift + 1)

    def crop(image, start):
        index = (start[0], start[1]) + (0,) * (images.ndim - 3)
        return jax.lax.dynamic_slice(image, index, (height, width, *images.shape[3:]))

    return jax.vmap(crop)(padded, starts)


def affine_warp(images: jax.Array, angles: jax.Array, scales: jax.Array) -> jax.Array:
    """Rotates each image about its centre and scales it, with bilinear sampling and zero fill.

    Args:
      images: [B, H, W], any real or uint8 dtype.
      angles: [B] anticlockwise rotation in radians (as drawn on screen: row 0 at the top).
      scales: [B] size factor (> 1 enlarges).

    Returns:
      Array of the images' shape and dtype (uint8 rounded and clipped to [0, 255]).
    """
    if images.ndim != 3:
        raise ValueError(f"images must be [B, H, W], got shape {tuple(images.shape)}")
    height, width = images.shape[1:]
    centre = np.array([(height - 1) / 2, (width - 1) / 2], np.float32)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    grid = np.stack([rows, cols]).reshape(2, -1).astype(np.float32) - centre[:, None]

    def one(image, angle, scale):
        # The inverse map: each output pixel reads the source point it came from, turned back by
        # the angle and shrunk by the scale (rows point down the screen, hence the signs).
        cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
        y, x = grid
        source = jnp.stack([cos * y + sin * x, cos * x - sin * y]) + centre[:, None]
        warped = ndimage.map_coordinates(
            image.astype(jnp.float32), list(source), order=1, mode="constant", cval=0.0
        )
        return warped.reshape(height, width)

    out = jax.vmap(one)(images, angles, scales)
    if images.dtype == jnp.uint8:
        return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
    return out.astype(images.dtype)


def random_affine(
    key: jax.Array, images: jax.Array, max_rotation_deg: float, max_scale: float
) -> jax.Array:
    """``affine_warp`` with each image's angle uniform in +-max_rotation_deg degrees and its
    scale uniform in [1 - max_scale, 1 + max_scale]; both 0 return the images unchanged."""
    if not 0 <= max_rotation_deg <= 180:
        raise ValueError(f"max_rotation_deg must be in [0, 180], got {max_rotation_deg}")
    if not 0 <= max_scale < 1:
        raise ValueError(f"max_scale must be in [0, 1), got {max_scale}")
    if max_rotation_deg == 0 and max_scale == 0:
        return images
    k_angle, k_scale = jax.random.split(key)
    batch = images.shape[0]
    limit = np.deg2rad(max_rotation_deg)
    angles = jax.random.uniform(k_angle, (batch,), minval=-limit, maxval=limit)
    scales = jax.random.uniform(k_scale, (batch,), minval=1 - max_scale, maxval=1 + max_scale)
    return affine_warp(images, angles, scales)
