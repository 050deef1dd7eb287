# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Where does RAM look?
#
# Loads the trained 28x28 MNIST model shipped in `checkpoints/mnist28/`, runs one deterministic
# episode (centre first, then the policy mean) on a few test digits and draws the glimpse path.
# On Colab: `!pip install git+<this repository>` first, and set `RAM_JAX_MNIST_DIR` or let the
# loader download MNIST.

# %%
import json
import pathlib

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax

from ram_jax import checkpoint, train
from ram_jax.config import config_from_saved
from ram_jax.data import load_mnist
from ram_jax.rollout import rollout
from ram_jax.viz import plot_glimpses

workdir = pathlib.Path("../checkpoints/mnist28")
if not workdir.exists():
    workdir = pathlib.Path("checkpoints/mnist28")
config = config_from_saved(json.loads((workdir / "config.json").read_text()))
model, spec = train.build_model(config), train.rollout_spec(config)
target = train.init_train_state(model, spec, optax.identity(), jax.random.key(0), (28, 28)).params
params = checkpoint.load_params(workdir, target)

# %%
mnist = load_mnist(config.data_dir, backend="numpy")
images, labels = mnist.test_images[:8], mnist.test_labels[:8]
traj = rollout(model, params, images, jax.random.key(0), spec, mode="mean")
predicted = np.asarray(traj.logits.argmax(-1))

fig, axes = plt.subplots(2, 4, figsize=(10, 5.5))
for i, ax in enumerate(axes.flat):
    plot_glimpses(
        ax,
        images[i],
        np.asarray(traj.locations[:, i]),
        size=spec.size,
        scales=spec.scales,
        factor=spec.factor,
        title=f"label {labels[i]}, predicted {predicted[i]}",
    )
fig.tight_layout()
