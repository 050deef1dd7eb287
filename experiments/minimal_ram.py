r"""RAM on 28x28 MNIST in one file of plain JAX: an independent cross-check of ``ram_jax``.

Written from the paper without the library's modules (only its MNIST reader), to test whether
the library's 28x28 result is held back by an implementation detail. The recipe that
``experiments/configs/mnist28.py`` held when this was written (6 glimpses of 8x8 at one scale,
ReLU RNN of 256 units, std 0.2, Adam 1e-3 with one warm-up epoch and cosine decay, batch 64,
clip 5, REINFORCE kept off the core, glimpses anywhere on the canvas, a uniformly random first
glimpse in training and the centre at evaluation; the file now trains with momentum SGD and
glimpses within 0.5: ``--config.optimizer=adam --config.learning_rate=1e-3
--config.location_lr_scale=1 --config.location_range=1`` gives this one back), but
PyTorch-style uniform initialisation, biases everywhere and its own retina:

    python -m experiments.minimal_ram --epochs=120 --seed=0

Expected (seed 0, 2-core AMD EPYC CPU, 16 minutes beside another run; BUILD_NOTES.md):
best validation error 1.77% with one deterministic rollout (epoch 99), test 1.96% and 0.69%
averaging 10 sampled rollouts; the library's recipe gives 1.61% validation at 120 epochs.
The last line of stdout is JSON.
"""

from __future__ import annotations

import json
import math
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from ram_jax.data import load_mnist, split_train_validation

_EPOCHS = flags.DEFINE_integer("epochs", 120, "Training epochs.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per step.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam's peak learning rate.")
_STD = flags.DEFINE_float("loc_std", 0.2, "Std of the Gaussian location policy.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_SUBSET = flags.DEFINE_integer("train_subset", 0, "> 0: train on that many images (smoke runs).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "MNIST folder (else $RAM_JAX_MNIST_DIR).")

SIDE, GLIMPSE, GLIMPSES, HIDDEN = 28, 8, 6, 256


def dense(key: jax.Array, n_in: int, n_out: int) -> dict:
    """Weights and bias uniform in +-1/sqrt(n_in) (PyTorch's ``nn.Linear`` default)."""
    bound = 1.0 / math.sqrt(n_in)
    w_key, b_key = jax.random.split(key)
    return {
        "w": jax.random.uniform(w_key, (n_in, n_out), minval=-bound, maxval=bound),
        "b": jax.random.uniform(b_key, (n_out,), minval=-bound, maxval=bound),
    }


def linear(layer: dict, x: jax.Array) -> jax.Array:
    return x @ layer["w"] + layer["b"]


def init_params(key: jax.Array) -> dict:
    shapes = {
        "patch": (GLIMPSE * GLIMPSE, 128),
        "where": (2, 128),
        "what_out": (128, 256),
        "where_out": (128, 256),
        "recurrent": (HIDDEN, HIDDEN),
        "input": (256, HIDDEN),
        "location": (HIDDEN, 2),
        "baseline": (HIDDEN, 1),
        "classify": (HIDDEN, 10),
    }
    keys = jax.random.split(key, len(shapes))
    return {name: dense(k, *shape) for k, (name, shape) in zip(keys, shapes.items(), strict=True)}


def crop(image: jax.Array, loc: jax.Array) -> jax.Array:
    """f32[SIDE, SIDE], (y, x) in [-1, 1] -> f32[GLIMPSE * GLIMPSE], zeros outside the image.

    (-1, -1) is the top-left corner of the image: the patch starts at pixel
    round((loc + 1) / 2 * SIDE - GLIMPSE / 2), halves rounded up.
    """
    padded = jnp.pad(image, GLIMPSE)
    start = jnp.floor((loc + 1) / 2 * SIDE - GLIMPSE / 2 + 0.5).astype(jnp.int32) + GLIMPSE
    return jax.lax.dynamic_slice(padded, (start[0], start[1]), (GLIMPSE, GLIMPSE)).reshape(-1)


def episode(params: dict, images: jax.Array, key: jax.Array, loc_std: float, sample: bool):
    """One episode over f32[B, SIDE, SIDE].

    Returns logits f32[B, 10], and log-probabilities and baselines f32[T - 1, B].
    """
    batch = images.shape[0]
    first_key, step_keys = jax.random.split(key)
    if sample:
        loc = jax.random.uniform(first_key, (batch, 2), minval=-1.0, maxval=1.0)
    else:
        loc = jnp.zeros((batch, 2))

    def step(carry, step_key):
        h, loc = carry
        patches = jax.vmap(crop)(images, loc)
        what = jax.nn.relu(linear(params["patch"], patches))
        where = jax.nn.relu(linear(params["where"], loc))
        g = jax.nn.relu(linear(params["what_out"], what) + linear(params["where_out"], where))
        h = jax.nn.relu(linear(params["recurrent"], h) + linear(params["input"], g))
        frozen = jax.lax.stop_gradient(h)
        mean = jnp.tanh(linear(params["location"], frozen))
        baseline = linear(params["baseline"], frozen)[:, 0]
        noise = loc_std * jax.random.normal(step_key, mean.shape) if sample else 0.0
        chosen = jax.lax.stop_gradient(mean + noise)
        log_prob = (-0.5 * ((chosen - mean) / loc_std) ** 2).sum(-1)
        return (h, jnp.clip(chosen, -1.0, 1.0)), (log_prob, baseline)

    h0 = jnp.zeros((batch, HIDDEN))
    (h, _), (log_probs, baselines) = jax.lax.scan(
        step, (h0, loc), jax.random.split(step_keys, GLIMPSES)
    )
    # The last step's location would choose no glimpse.
    return linear(params["classify"], h), log_probs[:-1], baselines[:-1]


def hybrid_loss(params, images, labels, key, loc_std):
    logits, log_probs, baselines = episode(params, images, key, loc_std, sample=True)
    reward = (logits.argmax(-1) == labels).astype(jnp.float32)
    advantage = jax.lax.stop_gradient(reward[None] - baselines)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    reinforce = -(log_probs * advantage).sum(0).mean()
    baseline = ((reward[None] - baselines) ** 2).mean()
    return cross_entropy + reinforce + baseline, reward.mean()


def main(argv: list[str]) -> None:
    del argv
    arrays = load_mnist(_DATA_DIR.value, backend="numpy")
    (train_x, train_y), (val_x, val_y) = split_train_validation(
        arrays.train_images, arrays.train_labels, 10_000
    )
    if _SUBSET.value:
        train_x, train_y = train_x[: _SUBSET.value], train_y[: _SUBSET.value]

    def as_float(x):
        return jnp.asarray(x, jnp.float32).reshape(-1, SIDE, SIDE) / 255.0

    train_x, val_x, test_x = as_float(train_x), as_float(val_x), as_float(arrays.test_images)
    train_y, val_y = jnp.asarray(train_y, jnp.int32), jnp.asarray(val_y, jnp.int32)
    test_y = jnp.asarray(arrays.test_labels, jnp.int32)
    batch, loc_std = _BATCH.value, _STD.value
    steps = len(train_y) // batch
    schedule = optax.warmup_cosine_decay_schedule(0.0, _LR.value, steps, steps * _EPOCHS.value)
    optimizer = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(schedule))

    @jax.jit
    def train_epoch(params, opt_state, key):
        order_key, step_key = jax.random.split(key)
        order = jax.random.permutation(order_key, len(train_y))[: steps * batch]

        def body(carry, inputs):
            params, opt_state = carry
            idx, key = inputs
            grad_fn = jax.value_and_grad(hybrid_loss, has_aux=True)
            (_, accuracy), grads = grad_fn(params, train_x[idx], train_y[idx], key, loc_std)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), accuracy

        inputs = (order.reshape(steps, batch), jax.random.split(step_key, steps))
        (params, opt_state), accuracy = jax.lax.scan(body, (params, opt_state), inputs)
        return params, opt_state, accuracy.mean()

    @jax.jit
    def deterministic_error(params, images, labels):
        logits, _, _ = episode(params, images, jax.random.key(0), loc_std, sample=False)
        return 100.0 * (logits.argmax(-1) != labels).mean()

    @jax.jit
    def mc_error(params, images, labels, key):
        def probs(k):
            return jax.nn.softmax(episode(params, images, k, loc_std, sample=True)[0])

        mean_probs = jax.lax.map(probs, jax.random.split(key, 10)).mean(0)
        return 100.0 * (mean_probs.argmax(-1) != labels).mean()

    init_key, train_key, eval_key = jax.random.split(jax.random.key(_SEED.value), 3)
    params = init_params(init_key)
    opt_state = optimizer.init(params)
    best_error, best_params, best_epoch = math.inf, params, 0
    start = time.time()
    for epoch in range(1, _EPOCHS.value + 1):
        key = jax.random.fold_in(train_key, epoch)
        params, opt_state, accuracy = train_epoch(params, opt_state, key)
        error = float(deterministic_error(params, val_x, val_y))
        if error <= best_error:
            best_error, best_params, best_epoch = error, params, epoch
        print(
            f"epoch {epoch} train acc {float(accuracy):.4f} val err {error:.2f}% "
            f"(best {best_error:.2f}% at {best_epoch}) {time.time() - start:.0f} s",
            flush=True,
        )
    val_key, test_key = jax.random.split(eval_key)
    result = {
        "seed": _SEED.value,
        "epochs": _EPOCHS.value,
        "best_epoch": best_epoch,
        "val_error_pct": best_error,
        "val_error_mc_pct": float(mc_error(best_params, val_x, val_y, val_key)),
        "test_error_pct": float(deterministic_error(best_params, test_x, test_y)),
        "test_error_mc_pct": float(mc_error(best_params, test_x, test_y, test_key)),
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
