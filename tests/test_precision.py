"""Mixed precision: ``compute_dtype="bfloat16"`` computes layers in bfloat16, keeps float32
parameters, state and outputs, and stays close to the float32 model."""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax import train
from ram_jax.config import default_config, validate_config


def setup(model: str, dtype: str):
    config = default_config()
    config.update(model=model, compute_dtype=dtype, core_hidden=64, glimpse_features=64)
    module, spec = train.build_model(config), train.rollout_spec(config)
    optimizer = train.make_optimizer(config, 10)
    state = train.init_train_state(module, spec, optimizer, jax.random.key(0), (28, 28))
    loss_fn = train.make_loss_fn(module, spec, train.loss_weights(config))
    images = jax.random.randint(jax.random.key(1), (32, 28, 28), 0, 256).astype(jnp.uint8)
    labels = jnp.arange(32) % 10
    return state, loss_fn, images, labels, module, spec, optimizer, config


def dot_input_dtypes(fn, *args) -> set[str]:
    """Dtypes of the operands of every dot_general / convolution in ``fn``'s jaxpr."""
    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.update(str(v.aval.dtype) for v in eqn.invars)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("model", ["ram", "fc", "conv"])
def test_bfloat16_matmuls_float32_parameters_and_loss(model):
    state, loss_fn, images, labels, *_ = setup(model, "bfloat16")
    key = jax.random.key(2)
    assert dot_input_dtypes(loss_fn, state.params, images, labels, key) == {"bfloat16"}
    assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {"float32"}
    loss, _ = loss_fn(state.params, images, labels, key)
    assert loss.dtype == jnp.float32
    grads = jax.grad(lambda p: loss_fn(p, images, labels, key)[0])(state.params)
    assert {str(x.dtype) for x in jax.tree.leaves(grads)} == {"float32"}


@pytest.mark.parametrize("model", ["ram", "fc", "conv"])
def test_float32_default_has_no_bfloat16(model):
    state, loss_fn, images, labels, *_ = setup(model, "float32")
    key = jax.random.key(2)
    assert dot_input_dtypes(loss_fn, state.params, images, labels, key) == {"float32"}


@pytest.mark.parametrize("model", ["ram", "conv"])
def test_bfloat16_loss_close_to_float32(model):
    state32, loss32, images, labels, *_ = setup(model, "float32")
    state16, loss16, *_ = setup(model, "bfloat16")
    key = jax.random.key(2)
    # Same parameters (the dtype changes computation only), so the losses nearly agree.
    for a, b in zip(jax.tree.leaves(state32.params), jax.tree.leaves(state16.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Cross-entropy only: REINFORCE's reward is an argmax, which rounding may flip.
    a = float(loss32(state32.params, images, labels, key)[1]["classification"])
    b = float(loss16(state16.params, images, labels, key)[1]["classification"])
    assert abs(a - b) < 0.02 * abs(a), (a, b)


def test_unknown_compute_dtype_is_refused():
    config = default_config()
    config.compute_dtype = "float16"
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        validate_config(config)
