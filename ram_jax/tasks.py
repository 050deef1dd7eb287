"""The paper's MNIST tasks, generated on the device (Mnih et al., 2014, section 4.1).

* ``mnist28``: the 28x28 digits as they are.
* ``translated60``: each digit placed at a uniformly random position on a blank 60x60 canvas,
  always fully inside it.
* ``cluttered60`` / ``cluttered100``: as translated (on 60x60 / 100x100), plus 4 / 8 clutter
  pieces: 8x8 patches cut at a uniformly random offset from uniformly random ``sources`` digits,
  each placed at a uniformly random position fully inside the canvas.

Combination rule: the digit and all pieces are ADDED, and the total is clipped to [0, 1] once.
Images stay uint8 here: each piece is added in int32 and clipped to 255 before the cast back.
Every addend is non-negative, so clipping after each addition gives the same bytes as clipping
the total once (add-then-clip on ``x / 255``), and the order of the pieces does not matter.

``margin`` writes each canvas already surrounded by that many zero pixels on every side: the
retina reads glimpses from a zero-padded canvas, and a canvas made with its margin saves the
training step a padding copy of every image (``rollout``'s ``image_margin``).

Only integer randomness (``jax.random.randint``) is used, so a key gives the same bytes on every
platform. Every example draws from its own key, which is what makes ``fixed_set`` independent of
the chunk size it is generated in.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "TASKS",
    "Placement",
    "TaskSpec",
    "fixed_set",
    "fixed_set_with_placement",
    "generate",
    "get_task",
    "make_batch",
]

DIGIT = 28  # side of an MNIST digit


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task; frozen and hashable, so it can be a static argument of ``jax.jit``.

    Attributes:
      name: the task's name.
      canvas: side of the square canvas; 0 means the 28x28 digits are used as they are.
      clutter_pieces: number of clutter pieces added to each canvas.
      piece_size: side of each square clutter piece.
    """

    name: str
    canvas: int = 0
    clutter_pieces: int = 0
    piece_size: int = 8

    def __post_init__(self) -> None:
        if self.canvas != 0 and self.canvas < DIGIT:
            raise ValueError(f"canvas must be 0 or >= {DIGIT}, got {self.canvas}")
        if self.clutter_pieces < 0:
            raise ValueError(f"clutter_pieces must be >= 0, got {self.clutter_pieces}")
        if not 1 <= self.piece_size <= DIGIT:
            raise ValueError(f"piece_size must be in 1..{DIGIT}, got {self.piece_size}")
        if self.clutter_pieces and not self.canvas:
            raise ValueError("clutter_pieces > 0 needs a canvas (canvas >= 28), got canvas=0")

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the task's images."""
        side = self.canvas or DIGIT
        return (side, side)

    @property
    def generated(self) -> bool:
        """Whether images are built on a canvas (False: the digits are used as they are)."""
        return self.canvas > 0


TASKS: dict[str, TaskSpec] = {
    "mnist28": TaskSpec("mnist28"),
    "translated60": TaskSpec("translated60", 60),
    "cluttered60": TaskSpec("cluttered60", 60, 4),
    "cluttered100": TaskSpec("cluttered100", 100, 8),
}


def get_task(name: str) -> TaskSpec:
    """The ``TaskSpec`` called ``name``; ValueError listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


class Placement(NamedTuple):
    """What ``generate`` drew, for tests and visualisation (P = ``spec.clutter_pieces``)."""

    digit_offsets: jax.Array  # int32[B, 2]: (row, col) of the digit's top-left on the canvas
    piece_offsets: jax.Array  # int32[B, P, 2]: top-left of each clutter piece on the canvas
    piece_sources: jax.Array  # int32[B, P]: index into `sources` of each piece's digit
    piece_crops: jax.Array  # int32[B, P, 2]: top-left of each crop inside its source digit


def _check(name: str, images: jax.Array) -> None:
    if images.ndim != 3 or images.shape[1:] != (DIGIT, DIGIT) or images.dtype != jnp.uint8:
        raise ValueError(
            f"{name} must be uint8[N, {DIGIT}, {DIGIT}], got {images.dtype}{list(images.shape)}"
        )


def _check_inputs(spec: TaskSpec, digits: jax.Array, sources: jax.Array) -> None:
    _check("digits", digits)
    _check("sources", sources)
    if spec.clutter_pieces and sources.shape[0] == 0:
        raise ValueError(f"task {spec.name!r} cuts clutter from `sources`, which is empty")


def _generate_each(
    keys: jax.Array, spec: TaskSpec, digits: jax.Array, sources: jax.Array, margin: int = 0
) -> tuple[jax.Array, Placement]:
    """``generate`` with one key per example: keys [B], digits uint8[B, 28, 28]."""
    height, width = spec.image_shape
    size, pieces = spec.piece_size, spec.clutter_pieces

    def one(key: jax.Array, digit: jax.Array) -> tuple[jax.Array, Placement]:
        k_digit, k_offset, k_source, k_crop = jax.random.split(key, 4)
        # randint's maxval is exclusive: +1 makes the last position that still fits reachable.
        digit_offset = jax.random.randint(k_digit, (2,), 0, height - DIGIT + 1)
        piece_offsets = jax.random.randint(k_offset, (pieces, 2), 0, height - size + 1)
        piece_sources = jax.random.randint(k_source, (pieces,), 0, max(sources.shape[0], 1))
        piece_crops = jax.random.randint(k_crop, (pieces, 2), 0, DIGIT - size + 1)

        canvas = jnp.zeros((height + 2 * margin, width + 2 * margin), jnp.uint8)
        canvas = jax.lax.dynamic_update_slice(canvas, digit, tuple(digit_offset + margin))

        def add_piece(p: int, canvas: jax.Array) -> jax.Array:
            source = (piece_sources[p], piece_crops[p, 0], piece_crops[p, 1])
            piece = jax.lax.dynamic_slice(sources, source, (1, size, size))[0]
            at = (piece_offsets[p, 0] + margin, piece_offsets[p, 1] + margin)
            under = jax.lax.dynamic_slice(canvas, at, (size, size))
            total = jnp.minimum(under.astype(jnp.int32) + piece.astype(jnp.int32), 255)
            return jax.lax.dynamic_update_slice(canvas, total.astype(jnp.uint8), at)

        # One canvas per example, updated piece by piece: memory stays O(H * W), not O(P * H * W).
        if pieces:  # the body is traced even for zero trips, and would index empty arrays
            canvas = jax.lax.fori_loop(0, pieces, add_piece, canvas)
        return canvas, Placement(digit_offset, piece_offsets, piece_sources, piece_crops)

    return jax.vmap(one)(keys, digits)


@functools.partial(jax.jit, static_argnames=("spec", "margin"))
def generate(
    key: jax.Array, spec: TaskSpec, digits: jax.Array, sources: jax.Array, margin: int = 0
) -> tuple[jax.Array, Placement]:
    """Builds one batch of task images around ``digits``.

    Args:
      key: PRNG key; each example draws from its own key split from it.
      spec: the task (static under jit).
      digits: uint8[B, 28, 28], the digits to place (labels are unchanged: image i holds digit i).
      sources: uint8[N, 28, 28], digits that clutter pieces are cut from (N >= 1 if the task has
        clutter; unused otherwise).
      margin: zero pixels around every image, on each side (static; not part of the canvas:
        placements stay relative to the canvas, and the bytes inside are those of margin 0).

    Returns:
      images: uint8[B, H + 2 * margin, W + 2 * margin] with (H, W) = ``spec.image_shape``.
      placement: what was drawn (``Placement``). For ``canvas == 0`` the images are ``digits``
        (zero-padded by ``margin``), ``digit_offsets`` is zeros and the piece fields have P = 0.
    """
    _check_inputs(spec, digits, sources)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be an integer >= 0, got {margin!r}")
    if not spec.generated:
        padded = jnp.pad(digits, ((0, 0), (margin, margin), (margin, margin)))
        return padded, _no_placement(spec, digits.shape[0])
    return _generate_each(jax.random.split(key, digits.shape[0]), spec, digits, sources, margin)


def make_batch(
    key: jax.Array, spec: TaskSpec, digits: jax.Array, sources: jax.Array, margin: int = 0
) -> jax.Array:
    """The images of ``generate``: uint8[B, H + 2 * margin, W + 2 * margin]; called by the
    training step with fresh keys."""
    return generate(key, spec, digits, sources, margin)[0]


def _split_id(split: str) -> int:
    # A stable integer (unlike hash(), which is salted per process) that fold_in accepts (uint32).
    return zlib.crc32(split.encode("utf-8"))


@functools.partial(jax.jit, static_argnames=("spec", "batch_size"))
def _fixed_set(
    key: jax.Array, spec: TaskSpec, digits: jax.Array, sources: jax.Array, batch_size: int
) -> tuple[jax.Array, Placement]:
    count = digits.shape[0]
    chunks = -(-count // batch_size)
    padded = chunks * batch_size
    # Example i always draws from fold_in(key, i), whatever chunk it falls in.
    indices = jnp.arange(padded, dtype=jnp.uint32)
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(indices)
    digits = jnp.pad(digits, ((0, padded - count), (0, 0), (0, 0)))

    def chunk(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, Placement]:
        keys, digits = args
        return _generate_each(keys, spec, digits, sources)

    images, placement = jax.lax.map(
        chunk, (keys.reshape(chunks, batch_size), digits.reshape(chunks, batch_size, DIGIT, DIGIT))
    )

    def merge(x: jax.Array) -> jax.Array:
        return x.reshape(padded, *x.shape[2:])[:count]

    return merge(images), jax.tree.map(merge, placement)


def _no_placement(spec: TaskSpec, batch: int) -> Placement:
    pieces = spec.clutter_pieces  # 0 without a canvas
    return Placement(
        jnp.zeros((batch, 2), jnp.int32),
        jnp.zeros((batch, pieces, 2), jnp.int32),
        jnp.zeros((batch, pieces), jnp.int32),
        jnp.zeros((batch, pieces, 2), jnp.int32),
    )


def fixed_set_with_placement(
    spec: TaskSpec,
    digits: jax.Array,
    sources: jax.Array,
    *,
    seed: int,
    split: str,
    batch_size: int = 500,
) -> tuple[jax.Array, Placement]:
    """A fixed validation / test set and what was drawn for it (see ``fixed_set``).

    Returns:
      images: uint8[N, H, W], the bytes of ``fixed_set`` with the same arguments.
      placement: ``Placement`` with B = N (where each digit and clutter piece lies); all zeros
        when ``spec.canvas == 0`` (the digit is the whole image).
    """
    digits, sources = jnp.asarray(digits), jnp.asarray(sources)
    _check_inputs(spec, digits, sources)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not spec.generated:
        return digits, _no_placement(spec, digits.shape[0])
    if digits.shape[0] == 0:
        return jnp.zeros((0, *spec.image_shape), jnp.uint8), _no_placement(spec, 0)
    key = jax.random.fold_in(jax.random.key(seed), _split_id(split))
    return _fixed_set(key, spec, digits, sources, min(batch_size, digits.shape[0]))


def fixed_set(
    spec: TaskSpec,
    digits: jax.Array,
    sources: jax.Array,
    *,
    seed: int,
    split: str,
    batch_size: int = 500,
) -> jax.Array:
    """A fixed validation / test set, a pure function of (seed, split, digits, sources).

    Args:
      spec: the task.
      digits: uint8[N, 28, 28]; image i of the set holds digits[i], so labels keep their order.
      sources: uint8[M, 28, 28], digits that clutter pieces are cut from.
      seed: seed of the set.
      split: name of the split (e.g. "validation", "test"); different names give different sets.
      batch_size: examples generated at once (bounds memory); does not change the result.

    Returns:
      uint8[N, H, W]; ``digits`` unchanged when ``spec.canvas == 0``.
    """
    images, _ = fixed_set_with_placement(
        spec, digits, sources, seed=seed, split=split, batch_size=batch_size
    )
    return images
