"""Training-time augmentation, on the device and keyed (not part of the paper's setup)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["random_shift"]


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
