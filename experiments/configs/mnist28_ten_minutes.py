"""28x28 MNIST in ten minutes on a 2-core CPU: RAM, 6 glimpses of 8x8 at 1 scale, by Adam.

    python -m experiments.train --config=experiments/configs/mnist28_ten_minutes.py \
        --workdir=runs/mnist28_ten_minutes

The same model as ``mnist28.py`` (the paper's RAM with 6 glimpses), with a recipe chosen on the
validation split to learn fast (none of it in the paper; BUILD_NOTES.md, the sections "28x28 in
ten minutes"):

- Adam at 2e-3 with a cosine decay, batch 256, 125 epochs; the location network at the full rate;
- glimpse centres within 0.4 of the image centre on each axis, sampled with std 0.5;
- each training digit turned by up to 10 degrees and scaled by 0.9-1.1;
- a quarter of each batch's episodes follow the policy mean (the test-time episode);
- the action network's cross-entropy after every earlier glimpse added to the loss
  (``intermediate_classification_weight``);
- validation (which picks the kept parameters) every fifth epoch, checkpoints every minute.

Expected (2-core AMD EPYC CPU, each run alone, the same fields given as overrides to mnist28.py
with ``--config.data_backend=numpy``, commits 5079ee5 and 730e968): test error 1.00 / 1.11 /
1.08% with one deterministic rollout and 0.46 / 0.52 / 0.54% averaging 10 sampled ones for seeds
0 / 1 / 2 (validation 1.12 / 1.15 / 0.99%), in 9 min 37 s / 10 min 2 s / 9 min 37 s of wall
time. That is 1.06 +- 0.06% and 0.51 +- 0.04%, the level of mnist28.py's 400-epoch SGD recipe;
the 1.0% target is met by seed 0 alone. A weight of 1.0 instead of 0.3 validated within the
noise of it (one-core runs of 135 epochs, seeds 0-2: 1.03 against 1.07% over the last ten).
"""

import ml_collections

from experiments.configs import mnist28

# Each field the recipe changes from ``mnist28.py``, and its value.
TEN_MINUTE_RECIPE = {
    "optimizer": "adam",
    "learning_rate": 2e-3,
    "location_lr_scale": 1.0,
    "location_range": 0.4,
    "loc_std": 0.5,
    "batch_size": 256,
    "num_epochs": 125,
    "train_rotation": 10.0,
    "train_scale": 0.1,
    "mean_episode_fraction": 0.25,
    "intermediate_classification_weight": 0.3,
    "validate_every": 5,
    "checkpoint_every_s": 60.0,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        # The recipe was chosen for the paper's 6-glimpse RAM only; other rows are mnist28.py's.
        raise ValueError(
            f"mnist28_ten_minutes.py takes no row argument, got {arg!r}; "
            "use experiments/configs/mnist28.py for the other rows"
        )
    config = mnist28.get_config()
    config.update(TEN_MINUTE_RECIPE)
    return config
