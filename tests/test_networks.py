"""Tests for ram_jax.networks: shapes, ranges and the parameter tree of the five networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.networks import (
    CORES,
    RAM,
    ActionNetwork,
    BaselineNetwork,
    GlimpseNetwork,
    LocationNetwork,
    LSTMCore,
    RNNCore,
    initial_core_state,
)

B, S, G, C, H = 3, 2, 4, 2, 16
TINY = dict(patch_hidden=8, location_hidden=8, glimpse_features=16, core_hidden=H)
KEY = jax.random.key(0)


def _inputs(seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    patches = jax.random.uniform(k1, (B, S, G, G, C))
    loc = jax.random.uniform(k2, (B, 2), minval=-1.0, maxval=1.0)
    return patches, loc


def _init(module, *args):
    return module.init(KEY, *args)


def test_glimpse_network_shape():
    patches, loc = _inputs()
    net = GlimpseNetwork(patch_hidden=8, location_hidden=8, features=16)
    variables = _init(net, patches, loc)
    g = net.apply(variables, patches, loc)
    assert g.shape == (B, 16)
    assert g.dtype == jnp.float32
    assert np.all(np.asarray(g) >= 0)  # the output is a ReLU
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes["patch"]["kernel"] == (S * G * G * C, 8)
    assert shapes["where"]["kernel"] == (2, 8)
    assert shapes["what_out"]["kernel"] == (8, 16)
    assert shapes["where_out"] == {"kernel": (8, 16)}  # no bias: what_out carries it


def test_glimpse_network_uses_both_what_and_where():
    patches, loc = _inputs()
    net = GlimpseNetwork(patch_hidden=8, location_hidden=8, features=16)
    variables = _init(net, patches, loc)
    base = net.apply(variables, patches, loc)
    assert not np.allclose(net.apply(variables, patches * 0.5, loc), base)
    assert not np.allclose(net.apply(variables, patches, -loc), base)


def test_glimpse_network_normalises_pixels():
    # (patches - 0.25) / 0.5 fed to the default network is what pixel_mean/pixel_std do.
    patches, loc = _inputs()
    plain = GlimpseNetwork(patch_hidden=8, location_hidden=8, features=16)
    variables = _init(plain, patches, loc)
    normed = GlimpseNetwork(
        patch_hidden=8, location_hidden=8, features=16, pixel_mean=0.25, pixel_std=0.5
    )
    got = normed.apply(variables, patches, loc)
    expected = plain.apply(variables, (patches - 0.25) * 2.0, loc)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, plain.apply(variables, patches, loc))


@pytest.mark.parametrize("std", [0.0, -1.0])
def test_glimpse_network_rejects_non_positive_pixel_std(std):
    patches, loc = _inputs()
    with pytest.raises(ValueError, match="pixel_std must be positive"):
        _init(GlimpseNetwork(pixel_std=std), patches, loc)


@pytest.mark.parametrize(("core_cls", "core"), [(RNNCore, "rnn"), (LSTMCore, "lstm")])
def test_core_shapes(core_cls, core):
    g = jax.random.normal(KEY, (B, 16))
    net = core_cls(hidden=H)
    state = initial_core_state(core, B, H)
    variables = _init(net, state, g)
    new_state, h = net.apply(variables, state, g)
    assert len(new_state) == (1 if core == "rnn" else 2)
    for part in new_state:
        assert part.shape == (B, H)
    assert h.shape == (B, H)
    # The hidden output is the state's last entry (the rollout classifies state[-1]).
    np.testing.assert_array_equal(np.asarray(new_state[-1]), np.asarray(h))


def test_rnn_core_is_relu_of_sum():
    g = jax.random.normal(KEY, (B, 16))
    h0 = jax.random.normal(jax.random.key(2), (B, H))
    net = RNNCore(hidden=H)
    variables = _init(net, (h0,), g)
    p = variables["params"]
    (h,), out = net.apply(variables, (h0,), g)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(h))
    expected = np.maximum(
        np.asarray(h0) @ np.asarray(p["recurrent"]["kernel"])
        + np.asarray(g) @ np.asarray(p["input"]["kernel"])
        + np.asarray(p["input"]["bias"]),
        0.0,
    )
    np.testing.assert_allclose(np.asarray(h), expected, rtol=1e-5, atol=1e-5)


def test_identity_recurrent_init_adds_glimpses_up():
    g = jax.random.normal(KEY, (B, 16))
    h0 = jax.random.uniform(jax.random.key(2), (B, H))  # non-negative, as a ReLU state is
    net = RNNCore(hidden=H, recurrent_init="identity")
    variables = _init(net, (h0,), g)
    p = variables["params"]
    np.testing.assert_array_equal(np.asarray(p["recurrent"]["kernel"]), np.eye(H))
    (h,), _ = net.apply(variables, (h0,), g)
    drive = np.asarray(g) @ np.asarray(p["input"]["kernel"]) + np.asarray(p["input"]["bias"])
    np.testing.assert_allclose(np.asarray(h), np.maximum(np.asarray(h0) + drive, 0.0), atol=1e-5)
    # The default draws the recurrent matrix at random.
    default = _init(RNNCore(hidden=H), (h0,), g)["params"]["recurrent"]["kernel"]
    assert not np.allclose(np.asarray(default), np.eye(H))


def test_recurrent_init_checked():
    patches, loc = _inputs()
    with pytest.raises(ValueError, match="unknown recurrent_init 'orthogonal'"):
        RAM(recurrent_init="orthogonal", **TINY).init(KEY, patches, loc)
    with pytest.raises(ValueError, match="recurrent_init applies to the 'rnn' core only"):
        RAM(core="lstm", recurrent_init="identity", **TINY).init(KEY, patches, loc)


def test_heads_shapes():
    h = jax.random.normal(KEY, (B, H))
    loc_net, act_net, base_net = LocationNetwork(), ActionNetwork(num_classes=7), BaselineNetwork()
    assert loc_net.apply(_init(loc_net, h), h).shape == (B, 2)
    assert act_net.apply(_init(act_net, h), h).shape == (B, 7)
    assert base_net.apply(_init(base_net, h), h).shape == (B,)


def test_action_mlp_is_relu_layer_then_logits():
    h = jax.random.normal(KEY, (B, H))
    net = ActionNetwork(num_classes=7, hidden=5)
    variables = _init(net, h)
    p = jax.tree.map(np.asarray, variables["params"])
    assert p["hidden"]["kernel"].shape == (H, 5) and p["logits"]["kernel"].shape == (5, 7)
    hidden = np.maximum(np.asarray(h) @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0.0)
    expected = hidden @ p["logits"]["kernel"] + p["logits"]["bias"]
    np.testing.assert_allclose(np.asarray(net.apply(variables, h)), expected, atol=1e-5)
    # RAM passes its action_mlp on; 0 keeps the paper's single linear layer.
    patches, loc = _inputs()
    for width, names in ((0, {"logits"}), (6, {"hidden", "logits"})):
        params = RAM(action_mlp=width, **TINY).init(KEY, patches, loc)["params"]
        assert set(params["action_net"]) == names


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6, 1e30])
def test_location_mean_in_range_for_huge_inputs(scale):
    h = scale * jax.random.normal(KEY, (64, H))
    net = LocationNetwork()
    variables = _init(net, h)
    mean = np.asarray(net.apply(variables, h))
    assert np.all(np.isfinite(mean))
    assert np.all(np.abs(mean) <= 1.0)
    if scale >= 1e3:
        # Saturated, i.e. the squashing really is there (a plain Linear would exceed 1).
        assert np.abs(mean).max() > 0.99


@pytest.mark.parametrize("core", CORES)
def test_ram_methods(core):
    patches, loc = _inputs()
    model = RAM(num_classes=5, core=core, **TINY)
    variables = model.init(KEY, patches, loc)
    logits, mean, baseline = model.apply(variables, patches, loc)
    assert (logits.shape, mean.shape, baseline.shape) == ((B, 5), (B, 2), (B,))

    state = initial_core_state(core, B, H)
    new_state, h = model.apply(variables, state, patches, loc, method=RAM.step)
    assert h.shape == (B, H)
    assert [s.shape for s in new_state] == [(B, H)] * len(state)
    np.testing.assert_array_equal(np.asarray(new_state[-1]), np.asarray(h))
    # A second step from the new state changes it (the core is recurrent).
    _, h2 = model.apply(variables, new_state, patches, loc, method=RAM.step)
    assert not np.allclose(np.asarray(h2), np.asarray(h))

    assert model.apply(variables, h, method=RAM.location_mean).shape == (B, 2)
    assert model.apply(variables, h, method=RAM.baseline).shape == (B,)
    assert model.apply(variables, h, method=RAM.classify).shape == (B, 5)
    # __call__ is one step from the zero state followed by the three heads.
    np.testing.assert_allclose(
        np.asarray(logits), np.asarray(model.apply(variables, h, method=RAM.classify)), rtol=1e-6
    )
    huge = 1e6 * jnp.ones((B, H))
    assert np.all(np.abs(np.asarray(model.apply(variables, huge, method=RAM.location_mean))) <= 1)


@pytest.mark.parametrize("core", ["gru", "RNN", ""])
def test_unknown_core(core):
    patches, loc = _inputs()
    with pytest.raises(ValueError, match="unknown core"):
        RAM(core=core, **TINY).init(KEY, patches, loc)
    with pytest.raises(ValueError, match="unknown core"):
        initial_core_state(core, B, H)


@pytest.mark.parametrize("core", CORES)
def test_initial_core_state(core):
    state = initial_core_state(core, 4, 7)
    assert len(state) == (1 if core == "rnn" else 2)
    for part in state:
        assert part.shape == (4, 7)
        assert part.dtype == jnp.float32
        assert not np.any(np.asarray(part))


@pytest.mark.parametrize("core", CORES)
def test_parameter_tree_of_default_ram(core):
    model = RAM(core=core)
    patches = jnp.zeros((1, 1, 8, 8, 1))
    shapes = jax.tree.map(
        jnp.shape, jax.eval_shape(model.init, KEY, patches, jnp.zeros((1, 2)))["params"]
    )
    assert set(shapes) == {"glimpse_net", "core_net", "location_net", "action_net", "baseline_net"}
    glimpse_net = shapes["glimpse_net"]
    assert glimpse_net["patch"] == {"kernel": (64, 128), "bias": (128,)}
    assert glimpse_net["where"] == {"kernel": (2, 128), "bias": (128,)}
    assert glimpse_net["what_out"] == {"kernel": (128, 256), "bias": (256,)}
    assert glimpse_net["where_out"] == {"kernel": (128, 256)}
    assert shapes["location_net"] == {"mean": {"kernel": (256, 2), "bias": (2,)}}
    assert shapes["action_net"] == {"logits": {"kernel": (256, 10), "bias": (10,)}}
    assert shapes["baseline_net"] == {"value": {"kernel": (256, 1), "bias": (1,)}}
    if core == "rnn":
        assert shapes["core_net"] == {
            "recurrent": {"kernel": (256, 256)},
            "input": {"kernel": (256, 256), "bias": (256,)},
        }
    else:
        # Flax's LSTM cell: input kernels ii/if/ig/io without bias, recurrent ones with it.
        gates = {f"i{g}": {"kernel": (256, 256)} for g in "ifgo"}
        gates |= {f"h{g}": {"kernel": (256, 256), "bias": (256,)} for g in "ifgo"}
        assert shapes["core_net"] == {"lstm": gates}
        # Glimpse features narrower than the state tell input kernels from recurrent ones.
        narrow = RAM(core=core, glimpse_features=128)
        lstm = jax.tree.map(
            jnp.shape, jax.eval_shape(narrow.init, KEY, patches, jnp.zeros((1, 2)))["params"]
        )["core_net"]["lstm"]
        assert {k: v["kernel"] for k, v in lstm.items()} == {
            **{f"i{g}": (128, 256) for g in "ifgo"},
            **{f"h{g}": (256, 256) for g in "ifgo"},
        }
