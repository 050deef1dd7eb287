r"""Where a trained RAM's deterministic rollout looks, and whether its errors are missed digits.

    python -m experiments.diagnose --workdir=checkpoints/translated60 [--split=validation]

For every image of the split it runs the rollout that ``val_error_pct`` scores (centre first,
then the policy mean) and measures, for each glimpse, the distance in pixels from the glimpse's
centre to the centre of the digit's 28x28 square (the larger of the row and column distances;
``ram_jax.evaluation.digit_distances``). It prints, and writes as the last stdout line in JSON:

- ``error_pct``: the split's error with one deterministic rollout;
- ``mean_distance_px`` / ``mean_distance_px_wrong``: per glimpse, averaged over all images /
  over the misclassified ones (the first glimpse is the centre of the canvas);
- ``near``: for each radius r of ``--radii``, the share of images where some glimpse after the
  first came within r pixels of the digit's centre, the error among those and among the rest,
  and how many errors fall among the rest ("never looked at the digit");
- ``by_offset``: the error by how far the digit's centre lies from the canvas centre;
- ``tracking``: per glimpse and axis (y, x), the slope and correlation of the glimpse centre on
  the digit's centre across images (1 and 1: it looks straight at the digit; slope 0: it ignores
  where the digit is; ``ram_jax.evaluation.glimpse_tracking``).
- ``averaging``: one sampled rollout against the average of several
  (``ram_jax.evaluation.averaging_curve``): ``single_pct`` (mean over ``--mc_samples`` draws,
  ``single_std_pct`` their spread) and ``averaged_pct`` (entry k - 1 averages the first k
  draws; the last is the run's MC figure for the split, drawn with its key). With
  ``--mc_std_scale`` near 0 (0.001) the draws differ only in their random first glimpse.

On 28x28 MNIST every digit sits at the centre (offset 0). Select on ``validation``; ``test`` is
there to describe a model already chosen.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
import optax
from absl import app, flags, logging

from ram_jax import checkpoint, cpu_dots, evaluation
from ram_jax.config import config_from_saved, validate_config
from ram_jax.data import load_mnist, split_train_validation
from ram_jax.tasks import DIGIT, get_task
from ram_jax.train import (
    build_model,
    describe_device,
    fixed_canvases,
    init_train_state,
    mc_eval_keys,
    params_file,
    rollout_spec,
    run_keys,
)

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir of a RAM (holds config.json).")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "test"], "Which fixed split.")
_RADII = flags.DEFINE_list("radii", ["4", "8", "12"], "Distances in pixels for the 'near' table.")
_REPLICATE = flags.DEFINE_integer("replicate", 0, "Which seed of a several-seed workdir.")
_MC_SAMPLES = flags.DEFINE_integer(
    "mc_samples", None, "Sampled rollouts to average (default: the run's mc_samples)."
)
_MC_STD_SCALE = flags.DEFINE_float(
    "mc_std_scale", 1.0, "The sampled rollouts' policy std, times the run's (> 0)."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Folder of the MNIST files (default: config, then $RAM_JAX_MNIST_DIR)."
)
flags.mark_flag_as_required("workdir")


def _pct_text(value: float | None) -> str:
    return "n/a (no such image)" if value is None else f"{value}%"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    # As train and evaluate do, so that its rollouts are the ones val_error_pct scored.
    cpu_dots.use_eigen_dots()
    start = time.perf_counter()
    workdir = _WORKDIR.value
    config_path = pathlib.Path(workdir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    config = config_from_saved(checkpoint.read_json(config_path))
    if config.model != "ram":
        raise app.UsageError(f"{workdir} holds a {config.model!r} model; diagnose needs a RAM")
    if not 0 <= _REPLICATE.value < config.num_seeds:
        raise app.UsageError(
            f"--replicate must be in [0, {config.num_seeds}) for this workdir, "
            f"got {_REPLICATE.value}"
        )
    try:
        radii = [float(r) for r in _RADII.value]
    except ValueError as err:
        raise app.UsageError(f"--radii must be numbers, got {_RADII.value}") from err
    num_samples = config.mc_samples if _MC_SAMPLES.value is None else _MC_SAMPLES.value
    if num_samples < 1:
        raise app.UsageError(f"--mc_samples must be >= 1, got {num_samples}")
    if not _MC_STD_SCALE.value > 0:
        raise app.UsageError(f"--mc_std_scale must be positive, got {_MC_STD_SCALE.value}")
    if _DATA_DIR.value is not None:
        config.data_dir = _DATA_DIR.value
    validate_config(config)

    arrays = load_mnist(
        config.data_dir, backend=config.data_backend, tfds_data_dir=config.tfds_data_dir
    )
    if _SPLIT.value == "test":
        digits, labels = arrays.test_images, arrays.test_labels
    elif config.validation_size:
        _, (digits, labels) = split_train_validation(
            arrays.train_images, arrays.train_labels, config.validation_size
        )
    else:
        raise app.UsageError(f"{workdir} was trained without a validation split")
    task = get_task(config.task)
    images, placement = fixed_canvases(config, jax.device_put(digits), _SPLIT.value)

    model, spec = build_model(config), rollout_spec(config)
    seeds = [config.seed + r for r in range(config.num_seeds)]
    seed = seeds[_REPLICATE.value]
    target = init_train_state(
        model, spec, optax.identity(), run_keys(seed).init, task.image_shape
    ).params
    params = checkpoint.load_params(workdir, target, params_file(seeds, _REPLICATE.value))
    batch_size = min(config.eval_batch_size, len(labels))
    # error_pct's default key, so the rollouts are the ones val_error_pct / test_error_pct score.
    locations, predictions = evaluation.mean_paths(
        model, params, images, jax.random.key(0), spec, batch_size=batch_size
    )
    offsets = np.asarray(placement.digit_offsets)
    distances = evaluation.digit_distances(np.asarray(locations), offsets, task.image_shape)
    wrong = np.asarray(predictions) != np.asarray(labels)
    canvas_centre = np.asarray(task.image_shape, np.float64) / 2.0
    offsets_px = np.abs(offsets + DIGIT / 2.0 - canvas_centre).max(axis=-1)
    # The key the run's Monte-Carlo evaluation of this split used (train.evaluate_params).
    val_key, test_key = mc_eval_keys(run_keys(seed).eval)
    averaging = evaluation.averaging_curve(
        model,
        params,
        images,
        labels,
        spec,
        key=test_key if _SPLIT.value == "test" else val_key,
        batch_size=batch_size,
        num_samples=num_samples,
        loc_std_scale=_MC_STD_SCALE.value,
    )
    report = {
        "task": config.task,
        "split": _SPLIT.value,
        "seed": seed,
        **evaluation.path_report(distances, wrong, offsets_px, radii),
        "tracking": evaluation.glimpse_tracking(np.asarray(locations), offsets, task.image_shape),
        "averaging": {"mc_std_scale": _MC_STD_SCALE.value, **averaging},
    }

    print(
        f"{workdir} ({config.task}, {_SPLIT.value}, seed {seed}): "
        f"{report['errors']} of {report['images']} wrong, {report['error_pct']}%"
    )
    print("mean distance to the digit's centre per glimpse, px:", report["mean_distance_px"])
    print("  misclassified images only:", report["mean_distance_px_wrong"])
    for row in report["near"]:
        print(
            f"some glimpse within {row['radius_px']:g} px: {row['images_pct']}% of images, "
            f"error {_pct_text(row['error_near_pct'])} there, "
            f"{_pct_text(row['error_far_pct'])} elsewhere "
            f"({row['errors_far']} of the errors)"
        )
    for row in report["by_offset"]:
        print(
            f"digit centre {row['from_px']} to <{row['to_px']} px from the canvas centre: "
            f"{row['images']} images, error {row['error_pct']}%"
        )
    for t, row in enumerate(report["tracking"]):
        print(
            f"glimpse {t + 1} follows the digit: slope (y, x) {row['slope']}, "
            f"correlation {row['corr']}"
        )
    print(
        f"one sampled rollout (std x {_MC_STD_SCALE.value:g}): {averaging['single_pct']}% "
        f"(+- {averaging['single_std_pct']} over {num_samples} draws); "
        f"averaging the first 1..{num_samples}: {averaging['averaged_pct']}"
    )
    report["device"] = describe_device()
    report["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    app.run(main)
