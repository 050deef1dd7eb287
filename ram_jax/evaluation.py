"""Classification error of a trained RAM over a whole dataset, in one jitted call.

Two modes: ``"mean"`` (one deterministic rollout: centre first, then the policy mean) and
``"mc"`` (class probabilities averaged over ``mc_samples`` sampled rollouts, Ba et al. 2015).
``mean_paths``, ``digit_distances``, ``glimpse_tracking`` and ``path_report`` say where the
deterministic rollout looked, relative to the digit; ``averaging_curve`` compares one sampled
rollout with the average of several (``experiments.diagnose``).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ram_jax.networks import RAM
from ram_jax.rollout import (
    RolloutSpec,
    mc_class_probs,
    rollout,
    sampled_class_probs,
    to_float_images,
)

__all__ = [
    "averaging_curve",
    "digit_distances",
    "error_pct",
    "glimpse_tracking",
    "mean_paths",
    "path_report",
    "predict",
    "rollout_probs",
]


def _batched(images: jax.Array, batch_size: int) -> tuple[jax.Array, int]:
    """[N, ...] zero-padded to a multiple of ``batch_size``, as [batches, batch_size, ...]."""
    n = images.shape[0]
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    padded = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]), images.dtype)])
    return padded.reshape(num_batches, batch_size, *images.shape[1:]), n


def _check_eval_inputs(model: nn.Module, images: jax.Array, labels, batch_size: int) -> np.ndarray:
    """The labels on the host, once checked: a positive batch size, at least one image, and
    one integer class index per image in the model's range."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if len(images) == 0:
        raise ValueError("need at least one image to evaluate, got none")
    if np.shape(labels) != (len(images),):
        raise ValueError(
            f"labels must have shape ({len(images)},), one per image, got {np.shape(labels)}"
        )
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    # A label no class can match would count as an error silently.
    num_classes = getattr(model, "num_classes", None)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), the model's classes; got {low}..{high}"
        )
    return labels


@functools.partial(jax.jit, static_argnames=("model", "spec", "batch_size", "mc_samples"))
def predict(
    model: nn.Module,
    params,
    images: jax.Array,
    key: jax.Array,
    spec: RolloutSpec,
    *,
    batch_size: int,
    mc_samples: int = 0,
) -> jax.Array:
    """Predicted classes int32[N] for images u8/f32[N, H, W(, C)].

    ``mc_samples == 0`` runs one deterministic rollout; ``> 0`` averages that many sampled ones.
    ``model`` may also be a whole-image baseline (``ram_jax.baselines``): ``spec`` and
    ``mc_samples`` then change nothing.
    The dataset is processed in batches of ``batch_size`` by ``lax.map`` (padded at the end), so
    memory stays bounded and one compiled program serves the whole set.
    """
    batches, n = _batched(images, batch_size)
    keys = jax.random.split(key, batches.shape[0])

    def classify(args):
        batch, batch_key = args
        if not isinstance(model, RAM):
            logits = model.apply({"params": params}, to_float_images(batch))
        elif mc_samples == 0:
            logits = rollout(model, params, batch, batch_key, spec, mode="mean").logits
        else:
            logits = mc_class_probs(model, params, batch, batch_key, spec, mc_samples)
        return jnp.argmax(logits, axis=-1)

    return jax.lax.map(classify, (batches, keys)).reshape(-1)[:n]


def error_pct(
    model: nn.Module,
    params,
    images: jax.Array,
    labels: jax.Array,
    spec: RolloutSpec,
    *,
    key: jax.Array | None = None,
    batch_size: int = 1000,
    mc_samples: int = 0,
) -> float:
    """Percentage of misclassified images (see ``predict`` for the modes)."""
    labels = _check_eval_inputs(model, images, labels, batch_size)
    if key is None:
        key = jax.random.key(0)
    batch_size = min(batch_size, len(images))
    predicted = predict(
        model, params, images, key, spec, batch_size=batch_size, mc_samples=mc_samples
    )
    wrong = int(np.sum(np.asarray(predicted) != labels))
    return round(100.0 * wrong / len(labels), 4)


@functools.partial(
    jax.jit, static_argnames=("model", "spec", "batch_size", "num_samples", "loc_std_scale")
)
def rollout_probs(
    model: RAM,
    params,
    images: jax.Array,
    key: jax.Array,
    spec: RolloutSpec,
    *,
    batch_size: int,
    num_samples: int,
    loc_std_scale: float = 1.0,
) -> jax.Array:
    """Class probabilities f32[num_samples, N, K] of ``num_samples`` sampled rollouts per image.

    The keys are split as ``predict`` splits them with ``mc_samples=num_samples`` (one key per
    batch, then one per rollout), so with ``loc_std_scale=1`` the mean over the first axis is
    what ``predict`` takes the argmax of. ``loc_std_scale`` multiplies the policy's std
    (``rollout``'s argument of that name); near 0, the rollouts differ only in their uniformly
    drawn first glimpse and then follow the policy mean.
    """
    batches, n = _batched(images, batch_size)
    keys = jax.random.split(key, batches.shape[0])

    def per_batch(args):
        batch, batch_key = args
        return sampled_class_probs(
            model, params, batch, batch_key, spec, num_samples, loc_std_scale
        )

    probs = jax.lax.map(per_batch, (batches, keys))  # [batches, S, batch_size, K]
    return jnp.moveaxis(probs, 1, 0).reshape(num_samples, -1, probs.shape[-1])[:, :n]


def averaging_curve(
    model: RAM,
    params,
    images: jax.Array,
    labels: jax.Array,
    spec: RolloutSpec,
    *,
    key: jax.Array | None = None,
    batch_size: int = 1000,
    num_samples: int = 10,
    loc_std_scale: float = 1.0,
) -> dict[str, float | list[float]]:
    """How much averaging sampled rollouts buys over one of them, on a labelled dataset.

    Returns:
      ``single_pct``: the error of one sampled rollout, the mean over ``num_samples`` draws;
      ``single_std_pct``: its standard deviation over the draws;
      ``averaged_pct``: entry ``k - 1`` is the error of the class probabilities averaged over
      the first ``k`` draws (``k = 1 .. num_samples``); with ``loc_std_scale=1`` the last one
      is ``error_pct(..., key=key, mc_samples=num_samples)``.
    """
    if not isinstance(model, RAM):
        raise TypeError(f"averaging_curve needs a RAM model, got {type(model).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if not loc_std_scale > 0:
        raise ValueError(f"loc_std_scale must be positive, got {loc_std_scale!r}")
    labels = _check_eval_inputs(model, images, labels, batch_size)
    if key is None:
        key = jax.random.key(0)
    probs = rollout_probs(
        model,
        params,
        images,
        key,
        spec,
        batch_size=min(batch_size, len(images)),
        num_samples=num_samples,
        loc_std_scale=float(loc_std_scale),
    )
    singles = 100.0 * np.mean(np.argmax(np.asarray(probs), axis=-1) != labels, axis=-1)
    # Summed, not divided: the argmax of a sum is that of the mean.
    totals = np.cumsum(np.asarray(probs, np.float64), axis=0)
    averaged = 100.0 * np.mean(np.argmax(totals, axis=-1) != labels, axis=-1)
    return {
        "single_pct": round(float(singles.mean()), 4),
        "single_std_pct": round(float(singles.std()), 4),
        "averaged_pct": [round(float(e), 4) for e in averaged],
    }


@functools.partial(jax.jit, static_argnames=("model", "spec", "batch_size"))
def mean_paths(
    model: RAM, params, images: jax.Array, key: jax.Array, spec: RolloutSpec, *, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """The deterministic rollout of every image: where it looked and what it predicted.

    Args:
      model, params, spec: a RAM, its parameters and its episode description.
      images: u8/f32[N, H, W(, C)].
      key: split into one key per batch as ``predict`` does; only the ``"random"`` policy's
        locations depend on it (``error_pct`` uses ``jax.random.key(0)``).
      batch_size: images per rollout (``lax.map`` over batches, as in ``predict``).

    Returns:
      locations: f32[T, N, 2], (y, x) in [-1, 1] image coordinates (``Trajectory.locations``).
      predictions: int32[N], the classes ``predict`` gives with ``mc_samples=0`` and the same
        key and batch size.
    """
    if not isinstance(model, RAM):
        raise TypeError(f"mean_paths needs a RAM model, got {type(model).__name__}")
    batches, n = _batched(images, batch_size)
    keys = jax.random.split(key, batches.shape[0])

    def one(args):
        batch, batch_key = args
        trajectory = rollout(model, params, batch, batch_key, spec, mode="mean")
        return trajectory.locations, jnp.argmax(trajectory.logits, axis=-1)

    locations, predictions = jax.lax.map(one, (batches, keys))
    steps = locations.shape[1]  # [batches, T, batch_size, 2]
    locations = jnp.moveaxis(locations, 1, 0).reshape(steps, -1, 2)[:, :n]
    return locations, predictions.reshape(-1)[:n]


def _centres_px(
    locations: np.ndarray, digit_offsets: np.ndarray, image_hw: tuple[int, int], digit_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Glimpse centres f64[T, N, 2] and digit centres f64[N, 2] in pixels, shapes checked."""
    locations = np.asarray(locations, np.float64)
    offsets = np.asarray(digit_offsets, np.float64)
    if locations.ndim != 3 or locations.shape[-1] != 2:
        raise ValueError(f"locations must be [T, N, 2], got shape {locations.shape}")
    if offsets.shape != (locations.shape[1], 2):
        raise ValueError(
            f"digit_offsets must be [N, 2] = [{locations.shape[1]}, 2], got shape {offsets.shape}"
        )
    extent = np.asarray(image_hw, np.float64)
    return (np.clip(locations, -1.0, 1.0) + 1.0) / 2.0 * extent, offsets + digit_size / 2.0


def digit_distances(
    locations: np.ndarray,
    digit_offsets: np.ndarray,
    image_hw: tuple[int, int],
    digit_size: int = 28,
) -> np.ndarray:
    """Distance in pixels from every glimpse centre to the centre of its image's digit.

    Uses the retina's convention (``ram_jax.glimpse``): location ``l`` on an axis of ``n``
    pixels is the point ``(clip(l, -1, 1) + 1) / 2 * n`` (pixel ``i`` spans ``[i, i + 1)``), and
    a digit whose top-left pixel is ``offset`` has its centre at ``offset + digit_size / 2``.

    Args:
      locations: f32[T, N, 2], (y, x) in [-1, 1].
      digit_offsets: int[N, 2], (row, col) of each digit's top-left pixel
        (``ram_jax.tasks.Placement.digit_offsets``; zeros for 28x28 MNIST).
      image_hw: (H, W) of the canvas.
      digit_size: side of the digit's square.

    Returns:
      f32[T, N]: the larger of the row and column distances (so ``<= r`` means the glimpse
      centre lies in the square of half-side ``r`` around the digit's centre).
    """
    glimpses, digits = _centres_px(locations, digit_offsets, image_hw, digit_size)
    return np.abs(glimpses - digits[None]).max(axis=-1).astype(np.float32)


def glimpse_tracking(
    locations: np.ndarray,
    digit_offsets: np.ndarray,
    image_hw: tuple[int, int],
    digit_size: int = 28,
) -> list[dict]:
    """How closely each glimpse follows the digit's position, per axis.

    For glimpse ``t`` and each axis, the least-squares slope and the correlation of the glimpse
    centre on the digit's centre across images (pixel coordinates as in ``digit_distances``).
    A policy that looks straight at every digit has slope 1 and correlation 1; one that ignores
    where the digit is, slope 0. The slope says how far the glimpse moves per pixel the digit
    moves; the correlation, how consistently.

    Args:
      locations: f32[T, N, 2], (y, x) in [-1, 1].
      digit_offsets: int[N, 2], (row, col) of each digit's top-left pixel.
      image_hw: (H, W) of the canvas.
      digit_size: side of the digit's square.

    Returns:
      T dicts ``{"slope": [y, x], "corr": [y, x]}`` (rounded to 3 decimals); an entry is None
      where it is undefined (the digits do not move along that axis, or, for ``corr``, the
      glimpses do not).
    """
    glimpses, digits = _centres_px(locations, digit_offsets, image_hw, digit_size)
    g = glimpses - glimpses.mean(axis=1, keepdims=True)
    d = digits - digits.mean(axis=0)
    cov = (g * d[None]).mean(axis=1)  # [T, 2]
    var_d = (d * d).mean(axis=0)  # [2]
    var_g = (g * g).mean(axis=1)  # [T, 2]

    def entry(num: float, den: float) -> float | None:
        return round(float(num / den), 3) if den > 1e-12 else None

    return [
        {
            "slope": [entry(cov[t, a], var_d[a]) for a in range(2)],
            "corr": [entry(cov[t, a], np.sqrt(var_d[a] * var_g[t, a])) for a in range(2)],
        }
        for t in range(glimpses.shape[0])
    ]


# Width in pixels of the bands of ``by_offset`` (the digit centre's distance from the canvas
# centre, the larger of row and column).
OFFSET_BAND_PX = 4


def path_report(
    distances: np.ndarray, wrong: np.ndarray, offsets_px: np.ndarray, radii: list[float]
) -> dict:
    """Where a set of deterministic rollouts looked, and which images they got wrong.

    Args:
      distances: f32[T, N], glimpse-to-digit distances (``evaluation.digit_distances``).
      wrong: bool[N], misclassified images.
      offsets_px: f32[N], distance of each digit's centre from the canvas centre.
      radii: distances in pixels for ``near``.

    Returns:
      A JSON-ready dict: ``images``, ``errors``, ``error_pct``; ``mean_distance_px`` (per
      glimpse, over all images) and ``mean_distance_px_wrong`` (over misclassified ones, None
      if none); ``near``, for each radius r, the share of images where some glimpse after the
      first (which the deterministic rollout puts at the centre; with T = 1, the first) came
      within r, the error among those and among the rest, and how many errors fall among the
      rest; ``by_offset``, the error in bands of
      ``OFFSET_BAND_PX`` pixels of ``offsets_px``.
    """
    distances, wrong, offsets_px = map(np.asarray, (distances, wrong, offsets_px))
    # A 0/1 integer ``wrong`` would index columns 0 and 1 instead of masking.
    if wrong.dtype != bool:
        raise ValueError(f"wrong must be a bool mask, got dtype {wrong.dtype}")
    if distances.ndim != 2 or not wrong.shape == offsets_px.shape == (distances.shape[1],):
        raise ValueError(
            f"expected distances [T, N], wrong [N] and offsets_px [N], got shapes "
            f"{distances.shape}, {wrong.shape} and {offsets_px.shape}"
        )
    n = wrong.shape[0]

    def pct(mask: np.ndarray) -> float | None:
        return round(100.0 * float(mask.mean()), 3) if mask.size else None

    closest = distances[1:].min(axis=0) if distances.shape[0] > 1 else distances[0]
    near = []
    for radius in radii:
        looked = closest <= radius
        near.append(
            {
                "radius_px": radius,
                "images_pct": pct(looked),
                "error_near_pct": pct(wrong[looked]),
                "error_far_pct": pct(wrong[~looked]),
                "errors_far": int(np.sum(wrong & ~looked)),
            }
        )
    by_offset = []
    for low in range(0, int(offsets_px.max()) + 1 if n else 0, OFFSET_BAND_PX):
        high = low + OFFSET_BAND_PX
        band = (offsets_px >= low) & (offsets_px < high)
        if band.any():
            by_offset.append(
                {
                    "from_px": low,
                    "to_px": high,
                    "images": int(band.sum()),
                    "error_pct": pct(wrong[band]),
                }
            )
    return {
        "images": n,
        "errors": int(wrong.sum()),
        "error_pct": pct(wrong),
        "mean_distance_px": [round(float(d), 2) for d in distances.mean(axis=1)],
        "mean_distance_px_wrong": [round(float(d), 2) for d in distances[:, wrong].mean(axis=1)]
        if wrong.any()
        else None,
        "near": near,
        "by_offset": by_offset,
    }
