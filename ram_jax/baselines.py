"""The paper's non-attention baselines: fully connected and convolutional classifiers.

Both see the whole image at once and are trained by cross-entropy alone. Architectures (the paper
gives only their names, "FC, 2 layers" and "Convolutional, 2 layers"; this is our reading):

- ``FullyConnected(hidden)``: flatten -> Dense(hidden) -> ReLU -> Dense(hidden) -> ReLU ->
  Dense(K). The paper's rows use ``hidden`` 64 and 256.
- ``Convolutional()``: Conv(8 filters, 10x10, stride 5, VALID padding) -> ReLU -> flatten ->
  Dense(256) -> ReLU -> Dense(K). On 28x28 the feature map is 4x4x8, on 60x60 11x11x8, on
  100x100 19x19x8.

Images are f32[B, H, W, C] in [0, 1]; the output is logits f32[B, K].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

__all__ = ["BASELINES", "Convolutional", "FullyConnected", "classifier_loss"]

BASELINES = ("fc", "conv")


def _check_images(images: jax.Array) -> None:
    # [B, H, W] would reach nn.Conv as one unbatched image, and bytes would be read 255 times
    # too bright: rollout.to_float_images converts both.
    if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images must be floating point [B, H, W, C] in [0, 1], got {images.dtype} of shape "
            f"{tuple(images.shape)} (rollout.to_float_images converts uint8 and [B, H, W])"
        )


class FullyConnected(nn.Module):
    """Two hidden ReLU layers of ``hidden`` units, then a linear softmax."""

    hidden: int = 256
    num_classes: int = 10
    dtype: Any = jnp.float32  # compute precision; parameters and logits stay float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        _check_images(images)
        x = images.reshape(len(images), -1)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden1")(x))
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden2")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)


class Convolutional(nn.Module):
    """One strided convolution, one hidden ReLU layer, then a linear softmax."""

    filters: int = 8
    kernel: int = 10
    stride: int = 5
    hidden: int = 256
    num_classes: int = 10
    dtype: Any = jnp.float32  # compute precision; parameters and logits stay float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        _check_images(images)
        height, width = images.shape[1:3]
        if min(height, width) < self.kernel:
            raise ValueError(
                f"a {self.kernel}x{self.kernel} convolution does not fit a {height}x{width} image"
            )
        x = nn.Conv(
            self.filters,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding="VALID",
            dtype=self.dtype,
            name="conv",
        )(images)
        x = nn.relu(x).reshape(len(images), -1)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)


def classifier_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy and the metrics the training loop logs (``loss``, ``accuracy``)."""
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape {logits.shape[:1]}, got {tuple(labels.shape)}")
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32).mean()
    return loss, {"loss": loss, "classification": loss, "accuracy": accuracy}
