"""28x28 MNIST (the paper's first table): RAM, 6 glimpses of 8x8 at 1 scale, by default.

    python -m experiments.train --config=experiments/configs/mnist28.py --workdir=runs/mnist28

Other rows as arguments (``ram_jax.config.apply_row_args``): ``:glimpses=4`` (RAM 2-7 glimpses),
``:glimpses=1,policy=random`` (one random glimpse), ``:model=fc,hidden=256`` (FC, 2 layers),
``:model=conv`` (the convolutional baseline). ``--config.num_seeds=3`` trains three seeds at once.

The RAM recipe: momentum SGD (0.9) at 0.01 with a cosine decay over 400 epochs, the location
network's steps a tenth of the rest (``location_lr_scale``: at the full rate SGD drives the
policy's tanh mean to the canvas border), and glimpses read inside the central half of each axis
(``location_range=0.5``: centres within 7 pixels of the image centre, where MNIST puts its
digits; not in the paper, the Torch reproduction reads within 0.43). The baselines and the
random-glimpse row keep Adam at 1e-3 and the whole canvas, as they were run. Rows of RAM with
2-7 glimpses recorded before 2026-11-26 (BUILD_NOTES.md) ran Adam over the whole canvas.

Expected (seed 0, 2-core Intel Xeon CPU, 58 minutes of training in two stretches, the first
150 epochs beside other runs; BUILD_NOTES.md has the run, shipped as
``checkpoints/mnist28``): validation error 0.78% with one deterministic rollout (epoch
379), test error 1.00% deterministic and 0.50% averaging 10 sampled rollouts (target 1.0%; paper
1.12-1.29%). Seed 1 (``--config.seed=1``, 39 minutes of training nearly alone) gave 0.73 /
0.95 / 0.52%. Adam at 1e-3 with glimpses within 0.4 and std 0.5
(``--config.optimizer=adam --config.learning_rate=1e-3 --config.location_lr_scale=1
--config.location_range=0.4 --config.loc_std=0.5``) gave validation 1.11%, test 1.15% / 0.49% at
400 epochs; with glimpses within 0.5 and std 0.4, 120 epochs of Adam gave validation 1.25 +- 0.02%,
test 1.29 +- 0.12% deterministic and 0.52 +- 0.03% averaging 10 over seeds 0, 1 and 2, against
1.67 +- 0.05%, 1.69 +- 0.11% and 0.62 +- 0.07% over the whole canvas (std 0.2).

In about ten minutes of wall time on a 2-core CPU, Adam at batch 256 with turned and scaled
training digits and a few other changes gets to 1.06 +- 0.06% (seeds 0-2):
``experiments/configs/mnist28_ten_minutes.py`` has the recipe and its results, BUILD_NOTES.md
(the sections "28x28 in ten minutes") how it was found.
"""

import ml_collections

from ram_jax.config import apply_learned_ram_recipe, apply_row_args, default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.task = "mnist28"
    config.num_glimpses = 6
    config.glimpse_size = 8
    config.glimpse_scales = 1
    config.loc_std = 0.2
    config.num_epochs = 400
    config = apply_row_args(config, arg)
    # Chosen on the validation split (BUILD_NOTES.md, "28x28 MNIST: glimpses kept inside the
    # digit's part of the canvas"). The FC, conv and random-glimpse rows keep Adam at 1e-3 over
    # the whole canvas, the settings they were run with.
    return apply_learned_ram_recipe(
        config,
        optimizer="sgd",
        learning_rate=0.01,
        location_lr_scale=0.1,
        location_range=0.5,
    )
