"""Tests for the configuration: the mnist28 experiment file, validation, and what it builds."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ram_jax import train
from ram_jax.config import (
    apply_learned_ram_recipe,
    apply_row_args,
    config_differences,
    config_from_saved,
    default_config,
    validate_config,
)
from ram_jax.networks import RAM
from ram_jax.rollout import RolloutSpec

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO_ROOT / "experiments" / "configs" / "mnist28.py"
SHIPPED = sorted((REPO_ROOT / "checkpoints").glob("*/config.json"))


def load_config_module(path=CONFIG_FILE):
    """Imports a config file by path, as ml_collections' config_flags does."""
    spec = importlib.util.spec_from_file_location("mnist28_config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# The experiment file


def test_mnist28_loads_and_validates():
    config = load_config_module().get_config()
    validate_config(config)
    assert config.task == "mnist28"
    assert config.num_glimpses == 6
    assert config.glimpse_size == 8
    assert config.glimpse_scales == 1
    # Only the fields chosen on the validation split differ from the defaults.
    chosen = {
        "loc_std": 0.2,
        "num_epochs": 400,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "location_lr_scale": 0.1,
        "location_range": 0.5,
    }
    assert {k: config[k] for k in chosen} == chosen
    assert config.to_dict() == {**default_config().to_dict(), **chosen}


@pytest.mark.parametrize(
    ("arg", "learned"),
    [
        ("glimpses=4", True),
        ("glimpses=1,policy=random", False),
        ("model=fc,hidden=64", False),
        ("model=conv", False),
    ],
)
def test_mnist28_rows_keep_their_recipes(arg, learned):
    # Learned-policy RAM rows take SGD with glimpses near the centre; the controls keep Adam at
    # 1e-3 over the whole canvas, as they were run. All use std 0.2 and 400 epochs.
    config = load_config_module().get_config(arg)
    validate_config(config)
    recipe = (config.optimizer, config.learning_rate, config.location_lr_scale)
    assert recipe == (("sgd", 0.01, 0.1) if learned else ("adam", 1e-3, 1.0))
    assert config.location_range == (0.5 if learned else 1.0)
    assert (config.loc_std, config.num_epochs) == (0.2, 400)


@pytest.mark.parametrize("n", [1, 4, 8])
def test_mnist28_glimpses_argument(n):
    config = load_config_module().get_config(f"glimpses={n}")
    validate_config(config)
    assert config.num_glimpses == n
    assert isinstance(config.num_glimpses, int)


@pytest.mark.parametrize(
    ("arg", "error", "match"),
    [
        ("glimpse=4", ValueError, "bad config argument 'glimpse=4'"),
        ("scales=2", ValueError, "bad config argument 'scales=2'"),
        ("glimpses=four", ValueError, "four"),
        ("glimpses=4,size=8", ValueError, "bad config argument 'size=8'"),
        ("glimpses", ValueError, "expected name=value"),
        ("model=mlp", ValueError, "model must be one of"),
        ("policy=greedy", ValueError, "policy must be one of"),
    ],
)
def test_mnist28_bad_argument(arg, error, match):
    with pytest.raises(error, match=match):
        load_config_module().get_config(arg)


def test_mnist28_glimpses_zero_fails_validation():
    with pytest.raises(ValueError, match="num_glimpses"):
        load_config_module().get_config("glimpses=0")


# ------------------------------------------------------------------------------------------
# validate_config


def test_default_is_valid():
    validate_config(default_config())


def test_unknown_field_is_named():
    config = default_config()
    config.lcoation_std = 0.2  # a typo must not pass silently
    with pytest.raises(ValueError, match="lcoation_std"):
        validate_config(config)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("loc_std", 0.0, "loc_std must be positive"),
        ("loc_std", -0.1, "loc_std must be positive"),
        ("loc_std_final", -0.1, "loc_std_final must be positive"),
        ("checkpoint_every_s", -1.0, "checkpoint_every_s must be a non-negative number"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("batch_size", -8, "batch_size must be a positive integer"),
        ("num_glimpses", 0, "num_glimpses"),
        ("glimpse_size", 0, "glimpse_size"),
        ("core", "gru", "core must be one of"),
        ("optimizer", "rmsprop", "optimizer must be one of"),
        ("lr_schedule", "step", "lr_schedule must be one of"),
        ("task", "cifar10", "task must be one of"),
        ("learning_rate", 0.0, "learning_rate"),
        ("momentum", 1.0, "momentum"),
        ("clip_norm", -1.0, "clip_norm"),
        ("warmup_epochs", 200, "warmup_epochs"),
        ("reinforce_weight", -1.0, "reinforce_weight"),
        ("seed", -1, "seed"),
        ("train_shift", -1, "train_shift"),
        ("train_rotation", -5.0, r"train_rotation must be in \[0, 180\]"),
        ("train_rotation", 270.0, r"train_rotation must be in \[0, 180\]"),
        ("train_scale", 1.0, r"train_scale must be in \[0, 1\)"),
        ("train_scale", -0.1, r"train_scale must be in \[0, 1\)"),
        ("reward", "accuracy", "reward must be one of"),
        ("weight_decay", -0.1, "weight_decay must be >= 0"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
        ("dropout", -0.1, r"dropout must be in \[0, 1\)"),
        ("pixel_std", 0.0, "pixel_std must be positive"),
        ("pixel_std", -0.3, "pixel_std must be positive"),
        ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
        ("ema_decay", -0.5, r"ema_decay must be in \[0, 1\)"),
        ("advantage", "critic", "advantage must be one of"),
        ("recurrent_init", "orthogonal", "recurrent_init must be one of"),
        ("location_lr_scale", 0.0, "location_lr_scale must be positive"),
        ("location_range", 0.0, r"location_range must be in \(0, 1\]"),
        ("location_range", 1.2, r"location_range must be in \(0, 1\]"),
        ("advantage", "leave_one_out", "needs rollouts_per_image >= 2, got 1"),
        ("action_mlp", -1, "action_mlp must be a non-negative integer"),
        (
            "intermediate_classification_weight",
            -0.1,
            "intermediate_classification_weight must be >= 0",
        ),
        (
            "intermediate_classification_weight",
            float("nan"),
            "intermediate_classification_weight must be >= 0",
        ),
        ("validate_every", 0, "validate_every must be a positive integer"),
    ],
)
def test_bad_values_rejected(field, value, match):
    config = default_config()
    config[field] = value
    with pytest.raises(ValueError, match=match):
        validate_config(config)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("location_lr_scale", 2.0),
        ("location_range", 0.5),
        ("action_mlp", 64),
        ("location_mlp", 64),
        ("mean_rollout_weight", 1.0),
        ("intermediate_classification_weight", 0.3),
    ],
)
@pytest.mark.parametrize("model", ["fc", "conv"])
def test_location_options_on_a_baseline_rejected(model, field, value):
    config = default_config()
    config.model, config[field] = model, value
    with pytest.raises(ValueError, match=f"{field} applies to model 'ram' only, not '{model}'"):
        validate_config(config)


@pytest.mark.parametrize(
    ("task", "size", "scales"), [("mnist28", 29, 1), ("translated60", 61, 3), ("mnist28", 40, 1)]
)
def test_glimpse_larger_than_the_canvas_rejected_before_training(task, size, scales):
    config = default_config()
    config.task, config.glimpse_size, config.glimpse_scales = task, size, scales
    with pytest.raises(ValueError, match=f"task '{task}': glimpse size {size} is larger than"):
        validate_config(config)


def test_glimpse_as_large_as_the_canvas_accepted_and_baselines_not_checked():
    config = default_config()
    config.glimpse_size, config.glimpse_scales = 28, 4  # larger scales read zero padding
    validate_config(config)
    config.model, config.glimpse_size = "fc", 40  # a baseline reads whole images
    validate_config(config)


@pytest.mark.parametrize("num_classes", [2, 9])
def test_fewer_classes_than_mnist_labels_rejected(num_classes):
    config = default_config()
    config.num_classes = num_classes
    with pytest.raises(ValueError, match=f"num_classes must be >= 10 .*got {num_classes}"):
        validate_config(config)


def test_identity_recurrent_init_on_an_lstm_rejected():
    config = default_config()
    config.core, config.recurrent_init = "lstm", "identity"
    with pytest.raises(ValueError, match="recurrent_init applies to the 'rnn' core only"):
        validate_config(config)


@pytest.mark.parametrize("model", ["fc", "conv"])
def test_pixel_scaling_on_a_baseline_rejected(model):
    config = default_config()
    config.model, config.pixel_mean = model, 0.1
    with pytest.raises(ValueError, match="pixel_mean and pixel_std apply to model 'ram' only"):
        validate_config(config)


def test_dropout_on_a_baseline_rejected():
    config = default_config()
    config.model, config.dropout = "fc", 0.2
    with pytest.raises(ValueError, match="dropout is implemented for model 'ram' only"):
        validate_config(config)


def test_missing_field_rejected():
    values = default_config().to_dict()
    del values["loc_std"]
    import ml_collections

    with pytest.raises(ValueError, match="missing field"):
        validate_config(ml_collections.ConfigDict(values))


# ------------------------------------------------------------------------------------------
# What the config builds


def test_build_model_and_spec_from_default():
    config = default_config()
    model = train.build_model(config)
    assert model == RAM(
        num_classes=10,
        patch_hidden=128,
        location_hidden=128,
        glimpse_features=256,
        core="rnn",
        core_hidden=256,
    )
    spec = train.rollout_spec(config)
    assert spec == RolloutSpec(
        num_glimpses=6, size=8, scales=1, factor=2, loc_std=0.1, reinforce_through_core=False
    )
    assert isinstance(spec.loc_std, float)
    weights = train.loss_weights(config)
    assert tuple(weights) == (1.0, 1.0, 1.0)


def test_config_fields_reach_the_model_and_spec():
    config = default_config()
    config.core, config.core_hidden, config.num_classes = "lstm", 32, 7
    config.glimpse_scales, config.glimpse_factor, config.loc_std = 3, 3, 0.2
    config.reinforce_through_core = True
    config.pixel_mean, config.pixel_std = 0.25, 0.5
    config.location_range = 0.5
    model, spec = train.build_model(config), train.rollout_spec(config)
    assert spec.location_range == 0.5
    assert (model.core, model.core_hidden, model.num_classes) == ("lstm", 32, 7)
    assert (model.pixel_mean, model.pixel_std) == (0.25, 0.5)
    assert (spec.scales, spec.factor, spec.loc_std, spec.reinforce_through_core) == (
        3,
        3,
        0.2,
        True,
    )


def _hand_count(core: str) -> int:
    """Parameters of the default RAM on 28x28x1 images with one 8x8 glimpse, layer by layer."""
    glimpse_in = 1 * 8 * 8 * 1  # scales * size * size * channels
    glimpse_net = (
        (glimpse_in * 128 + 128)  # patch -> h_g
        + (2 * 128 + 128)  # location -> h_l
        + (128 * 256 + 256)  # h_g -> g
        + (128 * 256)  # h_l -> g, no bias
    )
    if core == "rnn":
        core_net = 256 * 256 + (256 * 256 + 256)  # recurrent (no bias) + input
    else:
        # Four gates, each with an input kernel (no bias) and a hidden kernel with bias.
        core_net = 4 * (256 * 256) + 4 * (256 * 256 + 256)
    location_net = 256 * 2 + 2
    action_net = 256 * 10 + 10
    baseline_net = 256 * 1 + 1
    return glimpse_net + core_net + location_net + action_net + baseline_net


def test_hand_count_values():
    # The arithmetic above, as literal numbers.
    assert _hand_count("rnn") == 209_165
    assert _hand_count("lstm") == 603_149


@pytest.mark.parametrize("core", ["rnn", "lstm"])
def test_default_model_parameter_count(core):
    config = default_config()
    config.core = core
    model, spec = train.build_model(config), train.rollout_spec(config)
    # init_train_state builds from an image shape, as the training run does (eval_shape: no
    # arrays are allocated).
    state = jax.eval_shape(
        lambda key: train.init_train_state(model, spec, optax.identity(), key, (28, 28)),
        jax.random.key(0),
    )
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    assert count == _hand_count(core)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_make_optimizer(optimizer, schedule, warmup_epochs):
    config = default_config()
    config.optimizer, config.lr_schedule, config.warmup_epochs = optimizer, schedule, warmup_epochs
    opt = train.make_optimizer(config, steps_per_epoch=10)
    params = {"w": jnp.ones((3,))}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    state = opt.init(params)
    updates, _ = opt.update(grads, state, params)
    first = np.asarray(updates["w"])
    if warmup_epochs:
        # The warmup ramp starts at a learning rate of 0.
        np.testing.assert_array_equal(first, 0.0)
    else:
        assert np.all(np.sign(first) == -np.sign(np.asarray(grads["w"])))
        if optimizer == "adam":  # Adam's first step is lr * sign(g).
            np.testing.assert_allclose(np.abs(first), config.learning_rate, rtol=1e-3)
        else:  # SGD: lr * g.
            np.testing.assert_allclose(first, -config.learning_rate * grads["w"], rtol=1e-6)


def test_make_optimizer_clips_global_norm():
    config = default_config()
    config.optimizer, config.warmup_epochs, config.lr_schedule = "sgd", 0, "constant"
    config.momentum, config.learning_rate, config.clip_norm = 0.0, 1.0, 5.0
    opt = train.make_optimizer(config, steps_per_epoch=10)
    params = {"w": jnp.zeros((2,))}
    grads = {"w": jnp.array([30.0, 40.0])}  # norm 50 -> clipped to 5
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-3.0, -4.0], rtol=1e-6)
    config.clip_norm = 0.0  # disabled
    opt = train.make_optimizer(config, steps_per_epoch=10)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-30.0, -40.0], rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_make_optimizer_weight_decay(optimizer):
    # Zero gradients isolate the decay: each step moves a parameter by -lr * weight_decay * p.
    config = default_config()
    config.optimizer, config.warmup_epochs, config.lr_schedule = optimizer, 0, "constant"
    config.learning_rate, config.weight_decay = 0.1, 0.5
    opt = train.make_optimizer(config, steps_per_epoch=10)
    params = {"w": jnp.array([2.0, -4.0])}
    updates, _ = opt.update({"w": jnp.zeros((2,))}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1, 0.2], rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_make_optimizer_without_decay_keeps_the_plain_state(optimizer):
    # Checkpoints of runs made before weight_decay existed hold the plain optimiser's state;
    # with weight_decay = 0 its structure must not change, or they could not resume.
    config = default_config()
    config.optimizer, config.clip_norm = optimizer, 0.0
    params = {"w": jnp.zeros((2,))}
    lr = optax.constant_schedule(1e-3)  # any schedule: the state holds its step count
    plain = optax.adam(lr) if optimizer == "adam" else optax.sgd(lr, momentum=0.9)
    state = train.make_optimizer(config, steps_per_epoch=10).init(params)
    assert jax.tree.structure(state) == jax.tree.structure(plain.init(params))


# ------------------------------------------------------------------------------------------
# Saved configs (config.json of a workdir)


def test_there_are_shipped_checkpoints():
    assert [p.parent.name for p in SHIPPED] == [
        "cluttered100",
        "cluttered60",
        "mnist28",
        "translated60",
    ]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_checkpoint_configs_load(path):
    # A field added to the config after a checkpoint shipped must not break evaluating it.
    config = config_from_saved(json.loads(path.read_text()))
    assert config.task == path.parent.name


def test_saved_config_lacking_a_field_takes_its_default():
    saved = default_config().to_dict()
    saved["loc_std"] = 0.3
    del saved["train_shift"]
    config = config_from_saved(saved)
    assert config.train_shift == default_config().train_shift
    assert config.loc_std == 0.3


def test_saved_config_with_unknown_field_is_rejected():
    saved = default_config().to_dict() | {"not_a_field": 1}
    with pytest.raises(ValueError, match="not_a_field"):
        config_from_saved(saved)


def test_saved_config_with_bad_value_is_rejected():
    saved = default_config().to_dict() | {"loc_std": -1.0}
    with pytest.raises(ValueError, match="loc_std"):
        config_from_saved(saved)


def test_config_differences_counts_missing_saved_fields_as_defaults():
    new = default_config().to_dict()
    old = {k: v for k, v in new.items() if k != "train_shift"}
    assert config_differences(old, new) == []
    assert config_differences(old, new | {"train_shift": 2}) == ["train_shift"]
    # Fields that do not change results may differ.
    assert config_differences(old, new | {"eval_batch_size": 7}) == []


def test_leave_one_out_with_several_rollouts_is_valid():
    config = default_config()
    config.advantage, config.rollouts_per_image = "leave_one_out", 2
    validate_config(config)


# ------------------------------------------------------------------------------------------
# A config file's recipe for its learned-policy RAM rows


@pytest.mark.parametrize(
    "arg, gets_recipe",
    [
        (None, True),
        ("glimpses=4", True),
        ("policy=random", False),
        ("model=conv", False),
        ("model=fc,hidden=64", False),
    ],
)
def test_learned_ram_recipe_reaches_only_learned_policy_ram_rows(arg, gets_recipe):
    config = apply_row_args(default_config(), arg)
    config = apply_learned_ram_recipe(config, location_range=0.7, mean_rollout_weight=1.0)
    expected = (0.7, 1.0) if gets_recipe else (1.0, 0.0)
    assert (config.location_range, config.mean_rollout_weight) == expected


def test_learned_ram_recipe_names_an_unknown_field():
    with pytest.raises(ValueError, match=r"unknown config field.*'loc_range'"):
        apply_learned_ram_recipe(default_config(), loc_range=0.7)


def test_learned_ram_recipe_is_validated():
    with pytest.raises(ValueError, match="location_range must be in"):
        apply_learned_ram_recipe(default_config(), location_range=1.5)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"mean_episode_fraction": -0.1}, r"mean_episode_fraction must be in \[0, 1\)"),
        ({"mean_episode_fraction": 1.0}, r"mean_episode_fraction must be in \[0, 1\)"),
        ({"mean_episode_fraction": 0.25, "policy": "random"}, "learned policy"),
        ({"mean_episode_fraction": 0.25, "model": "fc"}, "learned policy"),
        ({"loc_std_final": 0.05, "model": "conv"}, "loc_std_final applies to RAM"),
        ({"loc_std_final": 0.05, "policy": "random"}, "loc_std_final applies to RAM"),
        (
            {"mean_episode_fraction": 0.25, "rollouts_per_image": 2},
            "needs rollouts_per_image == 1",
        ),
        (
            {"intermediate_classification_weight": 0.3, "num_glimpses": 1},
            "needs num_glimpses >= 2, got 1",
        ),
        ({"temporal_ensemble_weight": -1.0}, "temporal_ensemble_weight must be >= 0"),
        ({"temporal_ensemble_decay": 1.0}, r"temporal_ensemble_decay must be in \[0, 1\)"),
        ({"temporal_ensemble_decay": -0.1}, r"temporal_ensemble_decay must be in \[0, 1\)"),
        ({"temporal_ensemble_weight": 1.0, "model": "fc"}, "temporal_ensemble_weight applies"),
        ({"temporal_ensemble_weight": 1.0, "policy": "random"}, "learned policy"),
        (
            {"temporal_ensemble_weight": 1.0, "rollouts_per_image": 2},
            "one average per training image: it needs rollouts_per_image == 1, got 2",
        ),
        ({"temporal_ensemble_episodes": "sampled"}, "must be 'all' or 'mean', got 'sampled'"),
        ({"temporal_ensemble_episodes": "mean"}, "'mean' needs mean_episode_fraction > 0"),
    ],
)
def test_policy_training_options_reject(fields, match):
    config = default_config()
    config.update(fields)
    with pytest.raises(ValueError, match=match):
        validate_config(config)


@pytest.mark.parametrize(
    ("fraction", "batch", "expected"), [(0.0, 64, 0), (0.25, 256, 64), (0.3, 10, 3)]
)
def test_mean_episodes_per_batch(fraction, batch, expected):
    config = default_config()
    config.update({"mean_episode_fraction": fraction, "batch_size": batch})
    validate_config(config)
    assert train.mean_episodes_per_batch(config) == expected
