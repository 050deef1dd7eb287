"""The training configuration: every field, its default, and validation with clear errors.

Experiment files under ``experiments/configs/`` start from ``default_config()`` and change a few
fields; ``validate_config`` rejects unknown fields (a typo must not be silently ignored) and
values that cannot work.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from ram_jax.glimpse import validate_retina
from ram_jax.losses import ADVANTAGES, REWARDS
from ram_jax.networks import CORES, RECURRENT_INITS
from ram_jax.rollout import POLICIES
from ram_jax.tasks import TASKS as TASK_SPECS

__all__ = [
    "TASKS",
    "apply_row_args",
    "config_differences",
    "config_from_saved",
    "default_config",
    "validate_config",
]

TASKS = tuple(TASK_SPECS)
MODELS = ("ram", "fc", "conv")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
DATA_BACKENDS = ("auto", "tfds", "numpy")

# Fields that may change between a run and its resumption without changing its results
# (``steps_per_dispatch`` and ``eval_batch_size`` beyond float rounding: XLA may sum in
# another order).
RESUMABLE_CHANGES = frozenset(
    {
        "data_dir",
        "tfds_data_dir",
        "data_backend",
        "eval_batch_size",
        "steps_per_dispatch",
        "distributed",
        "checkpoint_every_s",
    }
)


def default_config() -> ml_collections.ConfigDict:
    """All fields with their defaults (the 28x28 MNIST setting of the paper)."""
    c = ml_collections.ConfigDict()
    # Data.
    c.task = "mnist28"
    c.data_dir = config_dict.placeholder(str)  # else $RAM_JAX_MNIST_DIR, else ~/.cache/ram_jax
    c.tfds_data_dir = config_dict.placeholder(str)  # where TFDS writes array_record files
    c.data_backend = "auto"  # "tfds", "numpy" (plain IDX reader), or "auto"
    c.validation_size = 10_000  # carved from the end of the training set
    c.train_subset = 0  # > 0: train on the first N training images only (tests, smoke runs)
    c.train_shift = 0  # > 0: shift each training digit by up to N pixels (not in the paper)
    # > 0: turn each training digit by up to this many degrees, and scale it by a factor in
    # [1 - train_scale, 1 + train_scale], before it is placed on its canvas (not in the paper).
    c.train_rotation = 0.0
    c.train_scale = 0.0
    c.task_seed = 0  # generated tasks: the fixed validation and test canvases depend on it only
    c.seed = 0
    c.num_seeds = 1  # > 1: replicates with seeds seed, seed + 1, ... trained at once (vmap)
    # Model: "ram", or a whole-image baseline "fc" / "conv" (ram_jax.baselines).
    c.model = "ram"
    c.policy = "learned"  # RAM: "learned" locations, or "random" glimpses (a control)
    c.fc_hidden = 256  # fc: units in each of its two hidden layers
    c.conv_filters = 8
    c.conv_kernel = 10
    c.conv_stride = 5
    c.conv_hidden = 256
    # Retina and networks (paper section 4).
    c.num_glimpses = 6
    c.glimpse_size = 8
    c.glimpse_scales = 1
    c.glimpse_factor = 2
    c.patch_hidden = 128
    c.location_hidden = 128
    c.glimpse_features = 256
    c.core = "rnn"  # "rnn" (the paper's ReLU RNN) or "lstm"
    c.core_hidden = 256
    c.recurrent_init = "lecun_normal"  # rnn core: or "identity" (IRNN; not the paper)
    c.location_mlp = 0  # > 0: a ReLU layer of that many units in the location network
    c.action_mlp = 0  # > 0: a ReLU layer of that many units in the action network (not paper)
    c.pixel_mean = 0.0  # RAM: glimpse pixels enter as (x - pixel_mean) / pixel_std (not paper)
    c.pixel_std = 1.0
    c.dropout = 0.0  # > 0: dropout on glimpse features and final state, training only (not paper)
    c.num_classes = 10
    # Location policy and loss.
    c.loc_std = 0.1
    # > 0: training episodes' policy std falls from loc_std to this over the run (a cosine, per
    # step), and Monte-Carlo evaluation samples with it, the final policy's (not in the paper).
    c.loc_std_final = 0.0
    # < 1: glimpses are read at location_range * l, inside the central part of the canvas
    # (policy units unchanged; the Torch reproduction's scaling; not in the paper).
    c.location_range = 1.0
    c.random_first_glimpse = True  # False: training episodes start at the centre too
    c.reinforce_through_core = False  # True: REINFORCE also trains core and glimpse nets
    c.classification_weight = 1.0
    c.reinforce_weight = 1.0
    c.baseline_weight = 1.0
    c.mean_rollout_weight = 0.0  # > 0: add the cross-entropy of a deterministic episode
    # > 0: add, with this weight, the cross-entropy of the action network run on the core state
    # after each glimpse but the last, averaged over those glimpses (not in the paper).
    c.intermediate_classification_weight = 0.0
    # > 0: that share of each batch's training episodes follows the policy mean (the evaluation
    # episode) instead of sampling, at no extra cost (not in the paper).
    c.mean_episode_fraction = 0.0
    # > 0: add, with this weight, the cross-entropy of each training episode against a soft
    # target: the moving average, over the epochs, of the class probabilities the image's
    # earlier sampled episodes gave (temporal ensembling; not in the paper). The average keeps
    # temporal_ensemble_decay of its old value at each visit of the image (once an epoch).
    c.temporal_ensemble_weight = 0.0
    c.temporal_ensemble_decay = 0.8
    c.temporal_ensemble_episodes = "all"  # or "mean": only the episodes on the policy mean
    c.reward = "correct"  # "correct" (the paper: 1 if right) or "probability" (p of the label)
    # REINFORCE's reward minus: "learned_baseline" (the paper's b_t) or "leave_one_out" (the mean
    # reward of the image's other episodes; needs rollouts_per_image >= 2; not in the paper).
    c.advantage = "learned_baseline"
    # Optimisation.
    c.optimizer = "adam"  # or "sgd" (with momentum)
    c.learning_rate = 1e-3
    c.location_lr_scale = 1.0  # RAM: the location network's updates times this (not paper)
    c.momentum = 0.9  # sgd only
    c.weight_decay = 0.0  # > 0: decoupled decay, lr * weight_decay per step (AdamW for adam)
    c.lr_schedule = "cosine"  # or "constant"
    c.warmup_epochs = 1
    c.ema_decay = 0.0  # > 0: validate and keep a moving average of the parameters (not paper)
    c.clip_norm = 5.0  # global gradient norm; 0 disables clipping
    c.batch_size = 64
    c.rollouts_per_image = 1  # > 1: that many episodes per training image and step
    c.num_epochs = 120
    c.steps_per_dispatch = 0  # training steps per jitted call; 0 = one epoch
    c.compute_dtype = "float32"  # "bfloat16": mixed precision (float32 parameters), for GPU/TPU
    c.distributed = False  # True: jax.distributed.initialize() first (several hosts)
    # Seconds between checkpoints (and best-parameter files), taken at the end of an epoch; 0 =
    # every epoch. On a GPU an epoch can take a fifth of a second and a checkpoint as long.
    c.checkpoint_every_s = 0.0
    # Evaluation.
    # Validate (and so choose the best parameters) after every this many epochs and after the
    # last; on a GPU a validation pass can cost as much as an epoch of training.
    c.validate_every = 1
    c.eval_batch_size = 1000
    c.mc_samples = 10
    return c


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"invalid config: {message}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming every unknown field, or the first bad value."""
    known = set(default_config().keys())
    unknown = sorted(set(config.keys()) - known)
    _check(not unknown, f"unknown field(s) {unknown}; known fields: {sorted(known)}")
    missing = sorted(known - set(config.keys()))
    _check(not missing, f"missing field(s) {missing}")

    def positive_int(name: str, allow_zero: bool = False) -> None:
        value = config[name]
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (value >= 0 if allow_zero else value > 0)
        _check(
            ok,
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, "
            f"got {value!r}",
        )

    def one_of(name: str, allowed: tuple[str, ...]) -> None:
        _check(config[name] in allowed, f"{name} must be one of {allowed}, got {config[name]!r}")

    one_of("task", TASKS)
    one_of("model", MODELS)
    one_of("policy", POLICIES)
    one_of("compute_dtype", ("float32", "bfloat16"))
    one_of("data_backend", DATA_BACKENDS)
    one_of("core", CORES)
    one_of("recurrent_init", RECURRENT_INITS)
    _check(
        config.recurrent_init == "lecun_normal" or config.core == "rnn",
        f"recurrent_init applies to the 'rnn' core only, not {config.core!r}",
    )
    one_of("optimizer", OPTIMIZERS)
    one_of("lr_schedule", SCHEDULES)
    one_of("reward", REWARDS)
    one_of("advantage", ADVANTAGES)
    for name in (
        "num_glimpses",
        "glimpse_size",
        "glimpse_scales",
        "glimpse_factor",
        "patch_hidden",
        "location_hidden",
        "glimpse_features",
        "core_hidden",
        "num_classes",
        "batch_size",
        "rollouts_per_image",
        "num_epochs",
        "eval_batch_size",
        "validate_every",
        "mc_samples",
        "num_seeds",
        "fc_hidden",
        "conv_filters",
        "conv_kernel",
        "conv_stride",
        "conv_hidden",
    ):
        positive_int(name)
    for name in (
        "validation_size",
        "train_subset",
        "train_shift",
        "task_seed",
        "steps_per_dispatch",
        "warmup_epochs",
        "seed",
        "location_mlp",
        "action_mlp",
    ):
        positive_int(name, allow_zero=True)
    # Checked here, before a workdir is written, rather than when the first step compiles.
    if config.model == "ram":
        try:
            validate_retina(
                (*TASK_SPECS[config.task].image_shape, 1),
                size=config.glimpse_size,
                scales=config.glimpse_scales,
                factor=config.glimpse_factor,
            )
        except ValueError as e:
            _check(False, f"task {config.task!r}: {e}")
    _check(
        config.num_classes >= 10,
        f"num_classes must be >= 10 (the MNIST labels are 0..9), got {config.num_classes}",
    )
    _check(config.loc_std > 0, f"loc_std must be positive, got {config.loc_std!r}")
    _check(
        config.loc_std_final >= 0,
        f"loc_std_final must be positive (or 0: std fixed), got {config.loc_std_final!r}",
    )
    _check(
        isinstance(config.checkpoint_every_s, (int, float))
        and not isinstance(config.checkpoint_every_s, bool)
        and config.checkpoint_every_s >= 0,
        f"checkpoint_every_s must be a non-negative number, got {config.checkpoint_every_s!r}",
    )
    _check(
        0 < config.location_range <= 1,
        f"location_range must be in (0, 1], got {config.location_range!r}",
    )
    _check(
        config.location_range == 1 or config.model == "ram",
        f"location_range applies to model 'ram' only, not {config.model!r}",
    )
    _check(config.learning_rate > 0, f"learning_rate must be positive, got {config.learning_rate}")
    _check(
        config.location_lr_scale > 0,
        f"location_lr_scale must be positive, got {config.location_lr_scale!r}",
    )
    _check(
        config.location_lr_scale == 1 or config.model == "ram",
        f"location_lr_scale applies to model 'ram' only, not {config.model!r}",
    )
    for name in (
        "action_mlp",
        "location_mlp",
        "mean_rollout_weight",
        "intermediate_classification_weight",
    ):
        _check(
            config[name] == 0 or config.model == "ram",
            f"{name} applies to model 'ram' only, not {config.model!r}",
        )
    _check(config.clip_norm >= 0, f"clip_norm must be >= 0 (0 disables), got {config.clip_norm}")
    _check(config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}")
    _check(0 <= config.ema_decay < 1, f"ema_decay must be in [0, 1), got {config.ema_decay}")
    _check(0 <= config.momentum < 1, f"momentum must be in [0, 1), got {config.momentum}")
    _check(
        0 <= config.train_rotation <= 180,
        f"train_rotation must be in [0, 180] degrees, got {config.train_rotation!r}",
    )
    _check(
        0 <= config.train_scale < 1, f"train_scale must be in [0, 1), got {config.train_scale!r}"
    )
    _check(config.pixel_std > 0, f"pixel_std must be positive, got {config.pixel_std!r}")
    _check(0 <= config.dropout < 1, f"dropout must be in [0, 1), got {config.dropout}")
    _check(
        (config.pixel_mean, config.pixel_std) == (0.0, 1.0) or config.model == "ram",
        f"pixel_mean and pixel_std apply to model 'ram' only, not {config.model!r}",
    )
    _check(
        config.dropout == 0 or config.model == "ram",
        f"dropout is implemented for model 'ram' only, not {config.model!r}",
    )
    _check(
        config.advantage != "leave_one_out" or config.rollouts_per_image >= 2,
        "advantage 'leave_one_out' compares the episodes of one image: it needs "
        f"rollouts_per_image >= 2, got {config.rollouts_per_image}",
    )
    _check(
        0 <= config.mean_episode_fraction < 1,
        f"mean_episode_fraction must be in [0, 1), got {config.mean_episode_fraction!r}",
    )
    _check(
        config.mean_episode_fraction == 0 or (config.model == "ram" and config.policy == "learned"),
        "mean_episode_fraction applies to RAM with a learned policy, not "
        f"model {config.model!r} with policy {config.policy!r}",
    )
    _check(
        config.loc_std_final == 0 or (config.model == "ram" and config.policy == "learned"),
        "loc_std_final applies to RAM with a learned policy, not "
        f"model {config.model!r} with policy {config.policy!r}",
    )
    _check(
        config.intermediate_classification_weight == 0 or config.num_glimpses >= 2,
        "intermediate_classification_weight classifies after each glimpse but the last: it "
        f"needs num_glimpses >= 2, got {config.num_glimpses}",
    )
    _check(
        config.mean_episode_fraction == 0 or config.rollouts_per_image == 1,
        "mean_episode_fraction needs rollouts_per_image == 1 (the episodes of one image are "
        f"compared with each other), got {config.rollouts_per_image}",
    )
    _check(
        0 <= config.temporal_ensemble_decay < 1,
        f"temporal_ensemble_decay must be in [0, 1), got {config.temporal_ensemble_decay!r}",
    )
    _check(
        config.temporal_ensemble_weight == 0
        or (config.model == "ram" and config.policy == "learned"),
        "temporal_ensemble_weight applies to RAM with a learned policy, not "
        f"model {config.model!r} with policy {config.policy!r}",
    )
    _check(
        config.temporal_ensemble_weight == 0 or config.rollouts_per_image == 1,
        "temporal_ensemble_weight keeps one average per training image: it needs "
        f"rollouts_per_image == 1, got {config.rollouts_per_image}",
    )
    _check(
        config.temporal_ensemble_episodes in ("all", "mean"),
        "temporal_ensemble_episodes must be 'all' or 'mean', got "
        f"{config.temporal_ensemble_episodes!r}",
    )
    _check(
        config.temporal_ensemble_episodes == "all" or config.mean_episode_fraction > 0,
        "temporal_ensemble_episodes 'mean' needs mean_episode_fraction > 0",
    )
    _check(
        config.warmup_epochs < config.num_epochs,
        f"warmup_epochs ({config.warmup_epochs}) must be < num_epochs ({config.num_epochs})",
    )
    for name in (
        "classification_weight",
        "reinforce_weight",
        "baseline_weight",
        "mean_rollout_weight",
        "intermediate_classification_weight",
        "temporal_ensemble_weight",
    ):
        _check(config[name] >= 0, f"{name} must be >= 0, got {config[name]}")


def config_from_saved(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """The config of a saved run (``config.json``), validated.

    Fields added to ``default_config`` after the run was saved take their defaults, which are
    chosen so that a new field leaves earlier behaviour unchanged; fields this version does not
    know are still an error.
    """
    config = default_config()
    unknown = sorted(set(saved) - set(config.keys()))
    _check(not unknown, f"unknown field(s) {unknown} in a saved config")
    config.update(saved)
    validate_config(config)
    return config


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Fields whose values differ in a way that would change a resumed run's results.

    ``old`` is a saved config: fields it lacks count as their defaults (``config_from_saved``).
    """
    old = {**default_config().to_dict(), **old}
    keys = (set(old) | set(new)) - RESUMABLE_CHANGES
    return sorted(k for k in keys if old.get(k) != new.get(k))


# The learned-policy RAM recipe of both 60x60 tasks (not in the paper), chosen on validation
# (BUILD_NOTES.md, 2026-11-26, third to fifth sessions): glimpse centres within ±0.7 of the
# canvas centre, REINFORCE reaching the core at a tenth of the weight, and the deterministic
# episode's cross-entropy added to every step.
RECIPE_60X60 = {
    "location_range": 0.7,
    "reinforce_through_core": True,
    "reinforce_weight": 0.1,
    "mean_rollout_weight": 1.0,
}


def apply_learned_ram_recipe(
    config: ml_collections.ConfigDict, **fields
) -> ml_collections.ConfigDict:
    """Sets ``fields`` on a RAM row with a learned policy, in place; other rows are left alone.

    A config file's departures from the paper, chosen on validation for its learned-policy RAM
    rows, must not reach the FC, conv and random-glimpse rows, which keep the settings they
    were run with. Call it after ``apply_row_args``, which selects the row.
    """
    unknown = sorted(set(fields) - set(config))
    if unknown:
        raise ValueError(f"unknown config field(s) in a learned-RAM recipe: {unknown}")
    if config.model == "ram" and config.policy == "learned":
        for field, value in fields.items():
            config[field] = value
        validate_config(config)
    return config


def apply_row_args(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Selects a row of a paper table from a config file's argument, in place.

    ``arg`` is ``name=value`` pairs joined by commas, as after the colon in
    ``--config=experiments/configs/cluttered60.py:glimpses=6,policy=random``:

    - ``glimpses=N``: RAM with N glimpses;
    - ``policy=random``: RAM with random glimpses (``learned`` is the default);
    - ``model=fc`` or ``model=conv``: a whole-image baseline (``model=ram`` is the default);
    - ``hidden=N``: the width of the fully connected baseline's two layers.
    """
    setters = {
        "glimpses": ("num_glimpses", int),
        "policy": ("policy", str),
        "model": ("model", str),
        "hidden": ("fc_hidden", int),
    }
    for item in filter(None, (arg or "").split(",")):
        name, sep, value = item.partition("=")
        if name not in setters or not sep:
            raise ValueError(
                f"bad config argument {item!r}; expected name=value with name one of "
                f"{sorted(setters)}"
            )
        field, parse = setters[name]
        try:
            config[field] = parse(value)
        except ValueError as e:
            raise ValueError(f"bad value for {name}: {value!r}") from e
    validate_config(config)
    return config
