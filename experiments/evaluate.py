"""Re-evaluates the model saved in a training workdir; the last stdout line is one JSON object.

    python -m experiments.evaluate --workdir=checkpoints/mnist28 [--mc_samples=10]

The JSON holds ``task``, ``num_glimpses``, ``val_error_pct`` and ``test_error_pct`` (one
deterministic rollout, following the policy mean), ``val_error_mc_pct`` and ``test_error_mc_pct``
(class probabilities averaged over ``mc_samples`` sampled rollouts), and ``mc_samples``.
"""

import json
import time

from absl import app, flags, logging

from ram_jax import cpu_dots
from ram_jax.train import describe_device, evaluate_workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (holds config.json).")
_MC_SAMPLES = flags.DEFINE_integer("mc_samples", 10, "Sampled rollouts averaged for the MC error.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Folder of the MNIST files (default: config, then $RAM_JAX_MNIST_DIR)."
)
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Orbax logs every file it writes at INFO; progress and results are printed instead.
    logging.set_verbosity(logging.WARNING)
    cpu_dots.use_eigen_dots()  # before the first computation (ram_jax.cpu_dots)
    start = time.perf_counter()
    report = evaluate_workdir(
        _WORKDIR.value, mc_samples=_MC_SAMPLES.value, data_dir=_DATA_DIR.value
    )
    report["device"] = describe_device()
    report["eval_seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    app.run(main)
