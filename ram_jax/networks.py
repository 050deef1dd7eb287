"""Flax (Linen) networks of the Recurrent Attention Model (Mnih et al., 2014, section 4).

Parameters live in a plain pytree (``variables = model.init(...)``) and every network is used
through ``model.apply(variables, ..., method=...)``, so the rollout stays a pure function of
``(params, images, key)``. Which parameters each loss reaches is decided by the rollout (where it
places ``stop_gradient``), not here.

Shapes: ``B`` batch, ``S`` scales, ``g`` glimpse side, ``C`` channels, ``H`` core units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "CORES",
    "RAM",
    "ActionNetwork",
    "BaselineNetwork",
    "CoreState",
    "GlimpseNetwork",
    "LSTMCore",
    "LocationNetwork",
    "RNNCore",
    "initial_core_state",
]

# A core's recurrent state: ``(h,)`` for the ReLU RNN, ``(c, h)`` for the LSTM. The hidden
# output ``h`` is always the last entry so the heads read it the same way for every core.
CoreState = tuple[jax.Array, ...]
CORES = ("rnn", "lstm")


def initial_core_state(core: str, batch_size: int, hidden: int) -> CoreState:
    """Zero state f32[B, H] (one array for ``rnn``, two for ``lstm``)."""
    if core not in CORES:
        raise ValueError(f"unknown core {core!r}; expected one of {CORES}")
    zeros = jnp.zeros((batch_size, hidden), jnp.float32)
    return (zeros,) if core == "rnn" else (zeros, zeros)


class GlimpseNetwork(nn.Module):
    """g = ReLU(Linear(h_g) + Linear(h_l)), h_g = ReLU(Linear(rho)), h_l = ReLU(Linear(l)).

    ``rho`` is read as ``(patches - pixel_mean) / pixel_std``. The defaults (0, 1) are the paper's
    raw pixels; other values describe the same set of functions (the first layer's weights and
    bias absorb them) but train differently. With Adam on 28x28 MNIST raw pixels trained
    better (BUILD_NOTES.md, "28x28 MNIST: search").
    """

    patch_hidden: int = 128
    location_hidden: int = 128
    features: int = 256
    pixel_mean: float = 0.0
    pixel_std: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, patches: jax.Array, loc: jax.Array) -> jax.Array:
        """patches: f32[B, S, g, g, C]; loc: f32[B, 2] -> [B, features] in ``dtype``."""
        if self.pixel_std <= 0:
            raise ValueError(f"pixel_std must be positive, got {self.pixel_std!r}")
        rho = patches.reshape(len(patches), -1)
        if (self.pixel_mean, self.pixel_std) != (0.0, 1.0):
            rho = (rho - self.pixel_mean) / self.pixel_std
        h_g = nn.relu(nn.Dense(self.patch_hidden, dtype=self.dtype, name="patch")(rho))
        h_l = nn.relu(nn.Dense(self.location_hidden, dtype=self.dtype, name="where")(loc))
        what = nn.Dense(self.features, dtype=self.dtype, name="what_out")(h_g)
        where = nn.Dense(self.features, use_bias=False, dtype=self.dtype, name="where_out")(h_l)
        return nn.relu(what + where)


RECURRENT_INITS = ("lecun_normal", "identity")


def _recurrent_initializer(name: str) -> Callable[..., jax.Array]:
    if name == "lecun_normal":
        return nn.initializers.lecun_normal()
    if name == "identity":

        def identity(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
            del key
            return jnp.eye(shape[0], shape[1], dtype=dtype)

        return identity
    raise ValueError(f"unknown recurrent_init {name!r}; expected one of {RECURRENT_INITS}")


class RNNCore(nn.Module):
    """The paper's core: h_t = ReLU(Linear(h_{t-1}) + Linear(g_t)).

    ``recurrent_init="identity"`` starts the recurrent matrix at the identity (the IRNN of Le,
    Jaitly and Hinton 2015; not in the paper), so that at initialisation the state adds up the
    glimpses instead of mixing them through a random matrix.
    """

    hidden: int = 256
    recurrent_init: str = "lecun_normal"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, state: CoreState, g: jax.Array) -> tuple[CoreState, jax.Array]:
        (h,) = state
        h = nn.relu(
            nn.Dense(
                self.hidden,
                use_bias=False,
                kernel_init=_recurrent_initializer(self.recurrent_init),
                dtype=self.dtype,
                name="recurrent",
            )(h)
            + nn.Dense(self.hidden, dtype=self.dtype, name="input")(g)
        )
        # The recurrent state stays float32 whatever the compute precision.
        h = h.astype(jnp.float32)
        return (h,), h


class LSTMCore(nn.Module):
    """An LSTM core (the paper's choice for Catch)."""

    hidden: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, state: CoreState, g: jax.Array) -> tuple[CoreState, jax.Array]:
        cell = nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype, name="lstm")
        (c, h), _ = cell(state, g)
        c, h = c.astype(jnp.float32), h.astype(jnp.float32)
        return (c, h), h


class LocationNetwork(nn.Module):
    """Mean of the location policy: tanh(Linear(h)) in [-1, 1]^2, as (y, x).

    ``hidden > 0`` puts a ReLU layer of that many units before the output (not in the paper,
    which uses one linear layer).
    """

    hidden: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        if self.hidden:
            h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(h))
        return jnp.tanh(nn.Dense(2, dtype=self.dtype, name="mean")(h).astype(jnp.float32))


class ActionNetwork(nn.Module):
    """Linear softmax classifier on the final hidden state; returns logits f32[B, K].

    ``hidden > 0`` puts a ReLU layer of that many units before the output (not in the paper,
    which uses one linear layer).
    """

    num_classes: int = 10
    hidden: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        if self.hidden:
            h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(h))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(h).astype(jnp.float32)


class BaselineNetwork(nn.Module):
    """The learned baseline b_t = Linear(h_t), an estimate of the expected reward; f32[B]."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return nn.Dense(1, dtype=self.dtype, name="value")(h)[..., 0].astype(jnp.float32)


class RAM(nn.Module):
    """The five networks of RAM behind one parameter tree.

    Use ``step`` for one glimpse, then the heads ``location_mean``, ``baseline`` and ``classify``
    on the hidden state it returns. ``__call__`` runs each once and exists to build parameters.
    """

    num_classes: int = 10
    patch_hidden: int = 128
    location_hidden: int = 128
    glimpse_features: int = 256
    core: str = "rnn"
    core_hidden: int = 256
    # RNN core only: "lecun_normal" (Flax's default) or "identity" (IRNN; not the paper).
    recurrent_init: str = "lecun_normal"
    location_mlp: int = 0  # > 0: a hidden ReLU layer of that many units in the location network
    action_mlp: int = 0  # > 0: a hidden ReLU layer of that many units in the action network
    # Glimpse pixels are fed as (x - pixel_mean) / pixel_std; (0, 1) is the paper's raw input.
    pixel_mean: float = 0.0
    pixel_std: float = 1.0
    # Compute precision of every layer (bfloat16 for mixed precision); parameters, the core's
    # state and the heads' outputs stay float32 (the glimpse features g_t, which only the core
    # reads, come in the compute precision).
    dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.core not in CORES:
            raise ValueError(f"unknown core {self.core!r}; expected one of {CORES}")
        self.glimpse_net = GlimpseNetwork(
            self.patch_hidden,
            self.location_hidden,
            self.glimpse_features,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            dtype=self.dtype,
        )
        if self.core == "rnn":
            self.core_net = RNNCore(
                self.core_hidden, recurrent_init=self.recurrent_init, dtype=self.dtype
            )
        else:
            if self.recurrent_init != "lecun_normal":
                raise ValueError("recurrent_init applies to the 'rnn' core only")
            self.core_net = LSTMCore(self.core_hidden, dtype=self.dtype)
        self.location_net = LocationNetwork(self.location_mlp, dtype=self.dtype)
        self.action_net = ActionNetwork(self.num_classes, self.action_mlp, dtype=self.dtype)
        self.baseline_net = BaselineNetwork(dtype=self.dtype)

    def step(
        self, state: CoreState, patches: jax.Array, loc: jax.Array
    ) -> tuple[CoreState, jax.Array]:
        """One glimpse: patches f32[B, S, g, g, C], loc f32[B, 2] -> (state, h f32[B, H])."""
        return self.update_core(state, self.encode_glimpse(patches, loc))

    def encode_glimpse(self, patches: jax.Array, loc: jax.Array) -> jax.Array:
        """g_t [B, glimpse_features] in ``dtype`` from the glimpse network: half of ``step``."""
        return self.glimpse_net(patches, loc)

    def update_core(self, state: CoreState, g: jax.Array) -> tuple[CoreState, jax.Array]:
        """The core's update from glimpse features g_t: the second half of ``step``."""
        return self.core_net(state, g)

    def location_mean(self, h: jax.Array) -> jax.Array:
        return self.location_net(h)

    def baseline(self, h: jax.Array) -> jax.Array:
        return self.baseline_net(h)

    def classify(self, h: jax.Array) -> jax.Array:
        return self.action_net(h)

    def __call__(self, patches: jax.Array, loc: jax.Array):
        state = initial_core_state(self.core, patches.shape[0], self.core_hidden)
        _, h = self.step(state, patches, loc)
        return self.classify(h), self.location_mean(h), self.baseline(h)
