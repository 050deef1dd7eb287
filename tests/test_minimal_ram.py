"""Tests for experiments/minimal_ram.py, the one-file cross-check of the library's 28x28 recipe.

Its retina is written independently of ``ram_jax.glimpse``; the two must read the same pixels,
or a comparison of their training results would compare different tasks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import minimal_ram as mr
from ram_jax.glimpse import glimpse


def test_crop_reads_the_same_pixels_as_the_library_retina():
    image = jax.random.uniform(jax.random.key(0), (mr.SIDE, mr.SIDE))
    # Corners, the centre, locations whose patch starts on a whole pixel, and random ones.
    grid = np.array([[-1, -1], [1, 1], [-1, 1], [0, 0], [2 / 7, -3 / 7], [0.5, -0.5]])
    random = np.asarray(jax.random.uniform(jax.random.key(1), (200, 2), minval=-1, maxval=1))
    locs = jnp.asarray(np.concatenate([grid, random]), jnp.float32)
    ours = jax.vmap(mr.crop, in_axes=(None, 0))(image, locs)
    library = jax.vmap(lambda loc: glimpse(image[..., None], loc, size=mr.GLIMPSE))(locs)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(library).reshape(len(locs), -1))


def test_episode_shapes_and_deterministic_mode_ignores_the_key():
    params = mr.init_params(jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (5, mr.SIDE, mr.SIDE))
    logits, log_probs, baselines = mr.episode(params, images, jax.random.key(2), 0.2, True)
    assert logits.shape == (5, 10)
    assert log_probs.shape == baselines.shape == (mr.GLIMPSES - 1, 5)
    first = mr.episode(params, images, jax.random.key(3), 0.2, False)[0]
    second = mr.episode(params, images, jax.random.key(4), 0.2, False)[0]
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_reinforce_reaches_the_location_layer_and_not_the_core():
    params = mr.init_params(jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (8, mr.SIDE, mr.SIDE))
    labels = jnp.arange(8) % 10

    def reinforce_only(p):
        logits, log_probs, baselines = mr.episode(p, images, jax.random.key(2), 0.2, True)
        reward = (logits.argmax(-1) == labels).astype(jnp.float32)
        return -(log_probs * jax.lax.stop_gradient(reward[None] - baselines)).sum()

    grads = jax.grad(reinforce_only)(params)
    assert float(jnp.abs(grads["location"]["w"]).sum()) > 0
    for name in ("recurrent", "input", "patch", "classify"):
        assert float(jnp.abs(grads[name]["w"]).sum()) == 0, name
