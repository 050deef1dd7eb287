"""RAM, 6 glimpses of 8x8 at 1 scale, on 28x28 MNIST (the paper's first table).

    python -m experiments.train --config=experiments/configs/mnist28.py --workdir=runs/mnist28

Other rows of the table as an argument: ``--config=experiments/configs/mnist28.py:glimpses=4``.

Expected (seed 0, 2-core AMD EPYC CPU, 40 minutes of training with the CPU partly shared;
BUILD_NOTES.md has the run): validation error 1.53% with one deterministic rollout, test error
1.74% deterministic and 0.56% averaging 10 sampled rollouts. With ``--config.num_epochs=120``
(17 minutes on a shared CPU, about 10 at the idle machine's 10,300 images/s): 1.61% validation,
1.67% / 0.55% test.
"""

import ml_collections

from ram_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.task = "mnist28"
    # Chosen on the validation split (BUILD_NOTES.md, "28x28 MNIST: search").
    config.loc_std = 0.2
    config.num_epochs = 400
    if arg:
        for item in arg.split(","):
            name, _, value = item.partition("=")
            if name != "glimpses":
                raise ValueError(f"unknown config argument {name!r}; expected 'glimpses=N'")
            config.num_glimpses = int(value)
    return config
