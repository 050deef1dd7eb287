r"""60x60 translated MNIST (a digit at a uniformly random position; the paper's second table).

RAM, 8 glimpses of 12x12 at 3 scales, by default:

    python -m experiments.train --config=experiments/configs/translated60.py \
        --workdir=runs/translated60

Other rows of the table as arguments (``ram_jax.config.apply_row_args``):
- ``:glimpses=4`` / ``:glimpses=6`` (RAM 4 and 6 glimpses);
- ``:model=fc,hidden=64`` / ``:model=fc,hidden=256`` (FC, 2 layers);
- ``:model=conv`` (the convolutional baseline).

``--config.num_seeds=3`` trains three seeds at once in one program.

Training canvases are generated on the device at every step; validation and test canvases are
fixed by ``task_seed`` (``ram_jax.tasks``). Optimisation starts from the 28x28 choices. The core
is an LSTM, not the paper's ReLU RNN: on validation it learns this task far faster (1.57% after
60 epochs against 2.47% for the RNN after 100; BUILD_NOTES.md records every run made with this
file). ``--config.core=rnn`` gives the paper's core.

For the learned-policy RAM rows (not in the paper), the cluttered60 recipe: glimpse centres
stay within ±0.7 of the canvas centre (±21 pixels; every digit's centre lies within ±16),
REINFORCE also trains the core and glimpse networks at a tenth of the weight
(``reinforce_through_core=True``, ``reinforce_weight=0.1``), and each step adds the
cross-entropy of the deterministic episode (``mean_rollout_weight=1``, twice the compute).
Besides, each training digit is turned by up to ±10 degrees and scaled by 0.9-1.1 before it is
placed (``train_rotation=10``, ``train_scale=0.1``; the validation and test canvases are not).

Expected with ``--config.num_epochs=140`` (seed 0, 2-core Intel Xeon CPU, 1 h 24 min of training,
nearly alone; shipped as ``checkpoints/translated60``): validation 0.87% (epoch 130), test 0.84%
with one deterministic rollout and 0.60% averaging 10 sampled rollouts (target 1.0%, paper
1.20-1.84%). Seeds 1-3 of the same command (``--config.seed=1 --config.num_seeds=3``, one
NVIDIA H100, 4 min 23 s of training for the three) gave test 1.02 / 0.94 / 0.92% (validation
1.03 / 0.85 / 0.90%); over the four seeds 0.93 +- 0.07% (MC10 0.67 +- 0.09%). Without the
turned and scaled digits, seed 0 gave 0.94 / 1.18 / 0.79% (validation, test, test averaging
10; 2 h 6 min beside another run) and seed 1 (``--config.seed=1``, 1 h 42 min) 1.01 / 1.18 /
0.87%. Before the recipe (whole canvas,
REINFORCE on the policy only), 400 epochs gave 1.23 / 1.45 / 0.89% (AMD EPYC, 2 h 49 min), 160
epochs 1.39 / 1.37 / 0.90%, 60 epochs 1.57 / 1.57 / 1.16%; with ±0.7 alone 60 epochs gave 1.41 /
1.40 / 1.01% and 160 epochs 1.26 / 1.26 / 0.81%, and with REINFORCE into the core besides 60
epochs gave 1.28 / 1.29 / 0.88%. With 60 epochs over the whole canvas, ``:glimpses=4`` gave
2.52 / 2.36 / 1.79% (8 minutes alone on the CPU) and ``:glimpses=6`` 1.97 / 2.07 / 1.38% (11
minutes). BUILD_NOTES.md records every run made with this file.
"""

import ml_collections

from ram_jax.config import (
    RECIPE_60X60,
    apply_learned_ram_recipe,
    apply_row_args,
    default_config,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.task = "translated60"
    config.num_glimpses = 8
    config.glimpse_size = 12
    config.glimpse_scales = 3
    config.loc_std = 0.2
    config.core = "lstm"
    config.num_epochs = 400
    config = apply_row_args(config, arg)
    # Chosen on the validation split (BUILD_NOTES.md, "The generated tasks: the cluttered60
    # recipe on translated60, and longer runs" and "... turned and scaled training digits").
    # The FC and conv rows keep the settings they were run with.
    return apply_learned_ram_recipe(config, **RECIPE_60X60, train_rotation=10.0, train_scale=0.1)
