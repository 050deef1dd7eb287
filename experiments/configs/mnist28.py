"""RAM, 6 glimpses of 8x8 at 1 scale, on 28x28 MNIST (the paper's table 1 setting).

    python -m experiments.train --config=experiments/configs/mnist28.py --workdir=runs/mnist28

Table rows as arguments: ``--config=experiments/configs/mnist28.py:glimpses=4``.
Expected result: see BUILD_NOTES.md ("28x28 MNIST") for the measured errors and wall time.
"""

from ram_jax.config import default_config


def get_config(arg: str | None = None):
    config = default_config()
    config.task = "mnist28"
    if arg:
        for item in arg.split(","):
            name, _, value = item.partition("=")
            if name != "glimpses":
                raise ValueError(f"unknown config argument {name!r}; expected 'glimpses=N'")
            config.num_glimpses = int(value)
    return config
