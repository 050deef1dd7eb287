"""Trains a RAM from a config file; resumes when the workdir holds an unfinished run.

    python -m experiments.train --config=experiments/configs/mnist28.py --workdir=runs/mnist28 \
        [--config.field=value ...]
"""

from absl import app, flags, logging
from ml_collections import config_flags

from ram_jax import cpu_dots
from ram_jax.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value.strip():
        # An unset shell variable gives --workdir= , which would train into the current folder.
        raise app.UsageError("--workdir must not be empty")
    # Orbax logs every file it writes at INFO; progress and results are printed instead.
    logging.set_verbosity(logging.WARNING)
    # Before the first computation: XLA reads its flags once (ram_jax.cpu_dots says why).
    cpu_dots.use_eigen_dots()
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
