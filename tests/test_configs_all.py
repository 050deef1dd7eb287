"""Every experiment config file under ``experiments/configs/``, with every row argument it lists.

Each file is imported by path (as ``experiments.train --config=PATH:ARG`` does), then each row
must validate, name its own task, build its model and initialise its parameters (abstractly,
with ``jax.eval_shape``: no parameter is allocated), and its RAM retina must fit the task's
images. A new config file fails ``test_every_config_file_has_its_rows_here`` until its rows are
added to ``ROWS``.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import optax
import pytest

from ram_jax import glimpse as retina
from ram_jax.baselines import Convolutional, FullyConnected
from ram_jax.config import validate_config
from ram_jax.networks import RAM
from ram_jax.rollout import rollout
from ram_jax.tasks import get_task
from ram_jax.train import build_model, init_train_state, rollout_spec

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "experiments" / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")

# The rows of each paper table a file's docstring lists, as config arguments.
ROWS = {
    "mnist28": [
        None,
        *[f"glimpses={n}" for n in range(2, 8)],
        "glimpses=1,policy=random",
        "model=fc,hidden=256",
        "model=conv",
    ],
    "translated60": [
        None,
        "glimpses=4",
        "glimpses=6",
        "model=fc,hidden=64",
        "model=fc,hidden=256",
        "model=conv",
    ],
    "cluttered60": [
        None,
        "glimpses=4",
        "glimpses=6",
        "policy=random",
        "model=fc,hidden=64",
        "model=fc,hidden=256",
        "model=conv",
    ],
    "cluttered100": [None, "glimpses=4", "glimpses=6", "policy=random", "model=conv"],
}

# Recipe files: the table file they start from, and the overrides of it that the recipe's
# recorded runs were given (BUILD_NOTES.md), which must be every field the file changes.
RECIPES = {
    "mnist28_ten_minutes": (
        "mnist28",
        "--config.optimizer=adam --config.learning_rate=2e-3 --config.location_lr_scale=1 "
        "--config.location_range=0.4 --config.loc_std=0.5 --config.batch_size=256 "
        "--config.checkpoint_every_s=60 --config.train_rotation=10 --config.train_scale=0.1 "
        "--config.mean_episode_fraction=0.25 --config.intermediate_classification_weight=0.3 "
        "--config.validate_every=5 --config.num_epochs=120 --config.temporal_ensemble_weight=1.0",
    ),
}


def parse_overrides(command: str) -> dict:
    """``--config.field=value`` items as {field: value}, numbers parsed, other values as text."""
    overrides = {}
    for item in command.split():
        field, value = item.removeprefix("--config.").split("=")
        try:
            overrides[field] = ast.literal_eval(value)
        except (ValueError, SyntaxError):  # text such as "adam" or "lstm"
            overrides[field] = value
    return overrides


# Per task: image side, RAM glimpses by default, glimpse side, scales, and the side of the
# widest patch worked out by hand (size * 2 ** (scales - 1)), which must fit the image.
RETINA = {
    "mnist28": (28, 6, 8, 1, 8),
    "translated60": (60, 8, 12, 3, 48),
    "cluttered60": (60, 8, 12, 3, 48),
    "cluttered100": (100, 8, 12, 4, 96),
}


def load_config_module(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"config_file_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {path.stem: load_config_module(path) for path in CONFIG_FILES}
CASES = [(name, arg) for name in sorted(ROWS) for arg in ROWS[name]]


def case_id(case) -> str:
    name, arg = case
    return f"{name}:{arg or '-'}"


def parse_arg(arg: str | None) -> dict[str, str]:
    return dict(item.split("=") for item in (arg or "").split(",") if item)


def test_config_folder_is_found():
    # The glob must see the four files of the paper's tables, or every test below is vacuous.
    assert {p.stem for p in CONFIG_FILES} >= {
        "mnist28",
        "translated60",
        "cluttered60",
        "cluttered100",
    }


def test_every_config_file_is_listed_here():
    assert sorted(MODULES) == sorted([*ROWS, *RECIPES])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_command_line_names_the_file(name):
    doc = MODULES[name].__doc__
    assert doc, f"{name}.py has no docstring"
    assert f"--config=experiments/configs/{name}.py" in doc


@pytest.mark.parametrize("name", sorted(ROWS))
def test_docstring_rows_are_loadable_rows(name):
    # Every ``:arg`` the docstring offers is one of the rows tested here (so it is loaded below).
    documented = re.findall(r"``:([a-z]+=[^`]+)``", MODULES[name].__doc__)
    assert documented, f"{name}.py documents no row arguments"
    for arg in documented:
        assert arg in ROWS[name], arg


@pytest.mark.parametrize("name", sorted(ROWS))
def test_docstring_default_row_matches_the_config(name):
    # "RAM, 8 glimpses of 12x12 at 3 scales": the default row as the docstring states it.
    match = re.search(r"RAM, (\d+) glimpses of (\d+)x(\d+) at (\d+) scales?", MODULES[name].__doc__)
    assert match, f"{name}.py does not state its default RAM"
    glimpses, height, width, scales = map(int, match.groups())
    config = MODULES[name].get_config()
    assert config.model == "ram" and config.policy == "learned"
    assert config.num_glimpses == glimpses
    assert config.glimpse_size == height == width
    assert config.glimpse_scales == scales
    _, default_glimpses, size, expected_scales, _ = RETINA[name]
    assert (glimpses, height, scales) == (default_glimpses, size, expected_scales)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_row_loads_validates_and_sets_its_fields(case):
    name, arg = case
    config = MODULES[name].get_config(arg)
    assert config.task == name
    fields = parse_arg(arg)
    assert config.model == fields.get("model", "ram")
    assert config.policy == fields.get("policy", "learned")
    if "glimpses" in fields:
        assert config.num_glimpses == int(fields["glimpses"])
    else:
        assert config.num_glimpses == RETINA[name][1]
    if "hidden" in fields:
        assert config.fc_hidden == int(fields["hidden"])
    # The same row given twice to a fresh config is the same config (no state between calls).
    assert MODULES[name].get_config(arg).to_dict() == config.to_dict()


# The departures from the paper each file makes for its learned-policy RAM rows, chosen on
# validation (BUILD_NOTES.md); every other row keeps the defaults it was run with.
LEARNED_RAM_RECIPE = {
    "mnist28": {
        "location_range": 0.5,
        "reinforce_through_core": False,
        "optimizer": "sgd",
        "mean_rollout_weight": 0.0,
        "train_rotation": 0.0,
        "train_scale": 0.0,
    },
    "translated60": {
        "location_range": 0.7,
        "reinforce_through_core": True,
        "reinforce_weight": 0.1,
        "mean_rollout_weight": 1.0,
        "train_rotation": 10.0,
        "train_scale": 0.1,
    },
    "cluttered60": {
        "location_range": 0.7,
        "reinforce_through_core": True,
        "reinforce_weight": 0.1,
        "mean_rollout_weight": 1.0,
        "train_rotation": 0.0,
        "train_scale": 0.0,
    },
    "cluttered100": {
        "location_range": 1.0,
        "reinforce_through_core": True,
        "reinforce_weight": 0.1,
        "mean_rollout_weight": 0.0,
        "train_rotation": 0.0,
        "train_scale": 0.0,
    },
}
OTHER_ROWS = {
    "location_range": 1.0,
    "reinforce_through_core": False,
    "reinforce_weight": 1.0,
    "mean_rollout_weight": 0.0,
    "train_rotation": 0.0,
    "train_scale": 0.0,
}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_only_learned_policy_ram_rows_get_the_files_recipe(case):
    name, arg = case
    config = MODULES[name].get_config(arg)
    learned_ram = config.model == "ram" and config.policy == "learned"
    expected = LEARNED_RAM_RECIPE[name] if learned_ram else OTHER_ROWS
    assert {field: config[field] for field in expected} == expected


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_row_builds_and_initialises_its_model(case):
    name, arg = case
    config = MODULES[name].get_config(arg)
    model = build_model(config)
    spec = rollout_spec(config)
    image_shape = get_task(config.task).image_shape
    side = RETINA[name][0]
    assert image_shape == (side, side)
    expected_type = {"ram": RAM, "fc": FullyConnected, "conv": Convolutional}[config.model]
    assert type(model) is expected_type

    state = jax.eval_shape(
        lambda k: init_train_state(model, spec, optax.identity(), k, image_shape),
        jax.random.key(0),
    )
    params = state.params
    assert jax.tree.leaves(params)
    if config.model == "fc":
        # The first layer reads the whole flattened image.
        assert params["hidden1"]["kernel"].shape == (side * side, config.fc_hidden)
    elif config.model == "conv":
        feature_side = (side - config.conv_kernel) // config.conv_stride + 1
        assert params["hidden"]["kernel"].shape == (
            feature_side * feature_side * config.conv_filters,
            config.conv_hidden,
        )
    else:
        # The glimpse network reads scales patches of size x size pixels.
        patch_inputs = config.glimpse_scales * config.glimpse_size**2
        assert params["glimpse_net"]["patch"]["kernel"].shape == (
            patch_inputs,
            config.patch_hidden,
        )

    # One forward pass over a batch of the task's images, abstractly: logits [B, K].
    images = jax.ShapeDtypeStruct((2, side, side), jnp.uint8)
    if isinstance(model, RAM):
        logits = jax.eval_shape(
            lambda p, x: rollout(model, p, x, jax.random.key(0), spec, mode="mean").logits,
            params,
            images,
        )
    else:
        logits = jax.eval_shape(
            lambda p, x: model.apply({"params": p}, x.astype(jnp.float32)[..., None]),
            params,
            images,
        )
    assert logits.shape == (2, config.num_classes)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_retina_fits_the_task_images(name):
    config = MODULES[name].get_config()
    side, _, size, scales, widest = RETINA[name]
    assert get_task(config.task).image_shape == (side, side)
    assert (config.glimpse_size, config.glimpse_scales) == (size, scales)
    assert config.glimpse_size * config.glimpse_factor ** (config.glimpse_scales - 1) == widest
    assert widest <= side
    retina.validate_retina(
        (side, side, 1),
        size=config.glimpse_size,
        scales=config.glimpse_scales,
        factor=config.glimpse_factor,
    )


BAD_ARGS = [
    # (argument, what the error message must name)
    ("glimpse=4", r"'glimpse=4'"),  # an unknown name
    ("glimpses", r"'glimpses'"),  # no "="
    ("glimpses=four", r"glimpses: 'four'"),  # not an integer
    ("glimpses=2.5", r"glimpses: '2.5'"),
    ("hidden=many", r"hidden: 'many'"),
    ("glimpses=0", r"num_glimpses"),  # parses, but the field must be positive
    ("hidden=-8", r"fc_hidden"),
    ("policy=greedy", r"policy.*'greedy'"),
    ("model=mlp", r"model.*'mlp'"),
    ("glimpses=4,shape=square", r"'shape=square'"),  # one bad item among good ones
]


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize(("arg", "named"), BAD_ARGS, ids=[a for a, _ in BAD_ARGS])
def test_bad_argument_raises_naming_it(name, arg, named):
    with pytest.raises(ValueError, match=named):
        MODULES[name].get_config(arg)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_empty_items_are_ignored(name):
    get_config = MODULES[name].get_config
    assert get_config("").to_dict() == get_config(None).to_dict() == get_config().to_dict()
    assert get_config("glimpses=3,").to_dict() == get_config("glimpses=3").to_dict()
    assert get_config("glimpses=3").num_glimpses == 3


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_changes_exactly_its_fields(name):
    base, command = RECIPES[name]
    changes = parse_overrides(command)
    config = MODULES[name].get_config().to_dict()
    default = MODULES[base].get_config().to_dict()
    assert config.keys() == default.keys()
    changed = {field: config[field] for field in config if config[field] != default[field]}
    assert changed == changes


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_validates_and_runs_an_episode(name):
    base, _ = RECIPES[name]
    config = MODULES[name].get_config()
    validate_config(config)
    assert config.task == base
    model, spec = build_model(config), rollout_spec(config)
    side = RETINA[base][0]
    state = jax.eval_shape(
        lambda k: init_train_state(model, spec, optax.identity(), k, (side, side)),
        jax.random.key(0),
    )
    logits = jax.eval_shape(
        lambda p, x: rollout(model, p, x, jax.random.key(0), spec, mode="mean").logits,
        state.params,
        jax.ShapeDtypeStruct((2, side, side), jnp.uint8),
    )
    assert logits.shape == (2, config.num_classes)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_refuses_a_row_argument(name):
    with pytest.raises(ValueError, match=rf"{name}\.py takes no row argument.*'glimpses=4'"):
        MODULES[name].get_config("glimpses=4")
    assert MODULES[name].get_config(None).to_dict() == MODULES[name].get_config().to_dict()
