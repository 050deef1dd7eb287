"""ram_jax.tasks: translated and cluttered MNIST, checked against a NumPy rebuild (no MNIST)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ram_jax.tasks import (
    TASKS,
    Placement,
    TaskSpec,
    fixed_set,
    fixed_set_with_placement,
    generate,
    get_task,
    make_batch,
)

GENERATED = ["translated60", "cluttered60", "cluttered100"]


def random_digits(n: int, seed: int) -> np.ndarray:
    """uint8[n, 28, 28] with no zero pixel, so a placed digit's whole square is identifiable."""
    return np.random.default_rng(seed).integers(1, 256, size=(n, 28, 28), dtype=np.uint8)


def full(n: int, value: int) -> np.ndarray:
    return np.full((n, 28, 28), value, np.uint8)


def rebuild(spec: TaskSpec, digits, sources, placement: Placement) -> np.ndarray:
    """The task images re-made in NumPy from what ``generate`` says it drew."""
    height, width = spec.image_shape
    size = spec.piece_size
    offsets, piece_offsets, piece_sources, crops = (np.asarray(x) for x in placement)
    out = np.zeros((len(digits), height, width), np.int64)
    for b, digit in enumerate(digits):
        r, c = offsets[b]
        out[b, r : r + 28, c : c + 28] += digit
        for (pr, pc), s, (cr, cc) in zip(piece_offsets[b], piece_sources[b], crops[b], strict=True):
            out[b, pr : pr + size, pc : pc + size] += sources[s, cr : cr + size, cc : cc + size]
    return np.minimum(out, 255).astype(np.uint8)


def coverage(spec: TaskSpec, placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """bool[B, H, W]: where the digit lies; int[B, H, W]: how many clutter pieces cover a pixel."""
    digit = np.zeros((len(placement.digit_offsets), *spec.image_shape), bool)
    pieces = np.zeros(digit.shape, np.int64)
    size = spec.piece_size
    for b, ((r, c), piece_offsets) in enumerate(
        zip(np.asarray(placement.digit_offsets), np.asarray(placement.piece_offsets), strict=True)
    ):
        digit[b, r : r + 28, c : c + 28] = True
        for pr, pc in piece_offsets:
            pieces[b, pr : pr + size, pc : pc + size] += 1
    return digit, pieces


# --- specs -------------------------------------------------------------------------------------


def test_registry():
    assert {name: (s.canvas, s.clutter_pieces, s.piece_size) for name, s in TASKS.items()} == {
        "mnist28": (0, 0, 8),
        "translated60": (60, 0, 8),
        "cluttered60": (60, 4, 8),
        "cluttered100": (100, 8, 8),
    }
    for name, spec in TASKS.items():
        assert spec.name == name and get_task(name) is spec
        hash(spec)  # a jit static argument must be hashable
    assert TASKS["mnist28"].image_shape == (28, 28) and not TASKS["mnist28"].generated
    assert TASKS["cluttered100"].image_shape == (100, 100) and TASKS["cluttered100"].generated


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError, match="cluttered100"):
        get_task("cluttered61")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"canvas": 27}, "canvas"),
        ({"canvas": -1}, "canvas"),
        ({"canvas": 60, "clutter_pieces": -1}, "clutter_pieces"),
        ({"canvas": 60, "piece_size": 0}, "piece_size"),
        ({"canvas": 60, "piece_size": 29}, "piece_size"),
        ({"clutter_pieces": 2}, "canvas"),
    ],
)
def test_bad_spec_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec("bad", **kwargs)


@pytest.mark.parametrize(
    ("digits", "sources", "message"),
    [
        (np.zeros((2, 28, 27), np.uint8), full(3, 1), "digits"),
        (np.zeros((2, 28, 28), np.float32), full(3, 1), "digits"),
        (np.zeros((28, 28), np.uint8), full(3, 1), "digits"),
        (full(2, 1), np.zeros((3, 28, 28), np.int32), "sources"),
        (full(2, 1), np.zeros((0, 28, 28), np.uint8), "empty"),
    ],
)
def test_bad_inputs_raise(digits, sources, message):
    spec = TASKS["cluttered60"]
    with pytest.raises(ValueError, match=message):
        generate(jax.random.key(0), spec, digits, sources)
    with pytest.raises(ValueError, match=message):
        fixed_set(spec, digits, sources, seed=0, split="test")


def test_bad_batch_size_raises():
    with pytest.raises(ValueError, match="batch_size"):
        fixed_set(TASKS["translated60"], full(2, 1), full(2, 1), seed=0, split="t", batch_size=0)


# --- generate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_shapes_and_dtypes(name):
    spec = TASKS[name]
    batch, pieces = 5, spec.clutter_pieces
    images, placement = generate(jax.random.key(0), spec, random_digits(batch, 0), full(3, 9))
    assert images.shape == (batch, *spec.image_shape) and images.dtype == np.uint8
    expected = [(batch, 2), (batch, pieces, 2), (batch, pieces), (batch, pieces, 2)]
    assert [x.shape for x in placement] == expected
    assert all(x.dtype == np.int32 for x in placement)


def test_mnist28_is_the_digits_unchanged():
    digits = random_digits(4, 1)
    images, placement = generate(jax.random.key(0), TASKS["mnist28"], digits, digits)
    np.testing.assert_array_equal(images, digits)
    np.testing.assert_array_equal(placement.digit_offsets, 0)
    np.testing.assert_array_equal(
        fixed_set(TASKS["mnist28"], digits, digits, seed=0, split="t"), digits
    )


@pytest.mark.parametrize(
    "spec", [*(TASKS[n] for n in GENERATED), TaskSpec("odd", 41, 3, piece_size=5)], ids=str
)
def test_images_match_numpy_rebuild_from_placement(spec):
    digits, sources = random_digits(16, 1), random_digits(7, 2)
    images, placement = generate(jax.random.key(3), spec, digits, sources)
    np.testing.assert_array_equal(images, rebuild(spec, digits, sources, placement))
    # Everything drawn lies fully inside the canvas / source digit.
    offsets, piece_offsets, piece_sources, crops = (np.asarray(x) for x in placement)
    assert offsets.min() >= 0 and offsets.max() <= spec.canvas - 28
    if spec.clutter_pieces:
        assert piece_offsets.min() >= 0 and piece_offsets.max() <= spec.canvas - spec.piece_size
        assert piece_sources.min() >= 0 and piece_sources.max() < len(sources)
        assert crops.min() >= 0 and crops.max() <= 28 - spec.piece_size


def test_translated_digit_sits_at_its_offset_on_a_blank_canvas():
    spec = TASKS["translated60"]
    digits = random_digits(32, 4)
    images, placement = generate(jax.random.key(5), spec, digits, digits)
    for image, digit, (r, c) in zip(
        np.array(images), digits, np.asarray(placement.digit_offsets), strict=True
    ):
        assert 0 <= r <= 32 and 0 <= c <= 32
        np.testing.assert_array_equal(image[r : r + 28, c : c + 28], digit)
        image[r : r + 28, c : c + 28] = 0
        assert not image.any()


@pytest.mark.parametrize(("digit_value", "piece_value"), [(200, 200), (100, 50), (0, 130)])
def test_digit_and_pieces_are_added_then_clipped(digit_value, piece_value):
    # Constant digit and pieces: each pixel is fixed by what covers it. Overlaps tell adding
    # from overwriting or max-ing (100 + 50 = 150), and show the clip (200 + 200 -> 255).
    spec = TASKS["cluttered60"]
    images, placement = generate(
        jax.random.key(6), spec, full(64, digit_value), full(3, piece_value)
    )
    images = np.asarray(images)
    digit, pieces = coverage(spec, placement)
    expected = np.minimum(digit * digit_value + pieces * piece_value, 255)
    np.testing.assert_array_equal(images, expected)
    # The overlaps the test is about did occur, with the values worked out by hand.
    digit_and_piece, two_pieces = digit & (pieces == 1), ~digit & (pieces == 2)
    assert digit_and_piece.any() and two_pieces.any()
    assert (images[digit_and_piece] == min(digit_value + piece_value, 255)).all()
    assert (images[two_pieces] == min(2 * piece_value, 255)).all()
    assert (images[digit & (pieces == 0)] == digit_value).all()


@pytest.mark.parametrize("name", ["cluttered60", "cluttered100"])
def test_clutter_piece_count(name):
    # A blank digit and all-ones sources: no clipping, so each canvas sums to P * 8 * 8.
    spec = TASKS[name]
    images = make_batch(jax.random.key(7), spec, full(20, 0), full(4, 1))
    sums = np.asarray(images).astype(np.int64).sum(axis=(1, 2))
    np.testing.assert_array_equal(sums, spec.clutter_pieces * 64)


@pytest.mark.parametrize("name", GENERATED)
def test_deterministic_per_key(name):
    spec = TASKS[name]
    digits, sources = random_digits(8, 8), random_digits(5, 9)
    a = np.asarray(make_batch(jax.random.key(1), spec, digits, sources))
    b = np.asarray(make_batch(jax.random.key(1), spec, digits, sources))
    c = np.asarray(make_batch(jax.random.key(2), spec, digits, sources))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Examples within a batch draw independently.
    _, placement = generate(jax.random.key(1), spec, digits, sources)
    assert len({tuple(o) for o in np.asarray(placement.digit_offsets)}) > 1


def test_make_batch_under_jit_is_generate():
    spec = TASKS["cluttered60"]
    digits, sources = random_digits(4, 10), random_digits(3, 11)
    step = jax.jit(lambda key: make_batch(key, spec, digits, sources))
    np.testing.assert_array_equal(
        step(jax.random.key(4)), generate(jax.random.key(4), spec, digits, sources)[0]
    )


def test_positions_are_uniform_over_the_full_range():
    # 2000 examples: every allowed value is hit (a miss has probability < 1e-20), none beyond.
    spec = TASKS["cluttered100"]
    sources = 5
    _, placement = generate(jax.random.key(9), spec, full(2000, 0), full(sources, 1))
    offsets, piece_offsets, piece_sources, crops = (np.asarray(x) for x in placement)
    draws = [
        (offsets[:, 0], 72),
        (offsets[:, 1], 72),
        (piece_offsets[..., 0], 92),
        (piece_offsets[..., 1], 92),
        (crops[..., 0], 20),
        (crops[..., 1], 20),
        (piece_sources, sources - 1),
    ]
    for values, top in draws:
        np.testing.assert_array_equal(np.unique(values), np.arange(top + 1))
        assert abs(values.mean() - top / 2) < 0.05 * top  # centred, not skewed


# --- fixed_set ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATED)
def test_fixed_set_is_a_pure_function_of_its_inputs(name):
    spec = TASKS[name]
    digits, sources = random_digits(20, 12), random_digits(6, 13)
    base = np.asarray(fixed_set(spec, digits, sources, seed=0, split="validation"))
    assert base.shape == (20, *spec.image_shape) and base.dtype == np.uint8
    again = fixed_set(spec, digits, sources, seed=0, split="validation")
    chunked = fixed_set(spec, digits, sources, seed=0, split="validation", batch_size=7)
    np.testing.assert_array_equal(again, base)
    np.testing.assert_array_equal(chunked, base)  # 20 = 7 + 7 + 6: padding must not leak in
    for other in [
        fixed_set(spec, digits, sources, seed=0, split="test"),
        fixed_set(spec, digits, sources, seed=1, split="validation"),
    ]:
        assert not np.array_equal(other, base)


def test_fixed_set_keeps_the_digit_order():
    digits = random_digits(9, 14)
    images = np.asarray(fixed_set(TASKS["translated60"], digits, digits, seed=3, split="test"))
    for image, digit in zip(images, digits, strict=True):
        rows, cols = np.nonzero(image)
        r, c = rows.min(), cols.min()
        assert rows.max() == r + 27 and cols.max() == c + 27
        np.testing.assert_array_equal(image[r : r + 28, c : c + 28], digit)


@pytest.mark.parametrize("name", GENERATED)
def test_fixed_set_placement_rebuilds_its_images(name):
    spec = TASKS[name]
    digits = random_digits(11, 15)
    images, placement = fixed_set_with_placement(
        spec, digits, digits, seed=2, split="validation", batch_size=4
    )
    np.testing.assert_array_equal(
        images, fixed_set(spec, digits, digits, seed=2, split="validation")
    )
    assert placement.digit_offsets.shape == (11, 2)
    assert placement.piece_offsets.shape == (11, spec.clutter_pieces, 2)
    np.testing.assert_array_equal(images, rebuild(spec, digits, digits, placement))


def test_fixed_set_placement_of_28x28_is_the_digit_at_the_origin():
    digits = random_digits(3, 16)
    images, placement = fixed_set_with_placement(
        TASKS["mnist28"], digits, digits, seed=0, split="test"
    )
    np.testing.assert_array_equal(images, digits)
    np.testing.assert_array_equal(placement.digit_offsets, np.zeros((3, 2)))
    assert placement.piece_offsets.shape == (3, 0, 2)


@pytest.mark.parametrize("name", list(TASKS))
def test_margin_frames_the_same_canvas_with_zeros(name):
    spec = TASKS[name]
    digits, sources = random_digits(6, 12), random_digits(5, 13)
    plain, placement = generate(jax.random.key(2), spec, digits, sources)
    framed, framed_placement = generate(jax.random.key(2), spec, digits, sources, margin=7)
    plain, framed = np.asarray(plain), np.asarray(framed)
    height, width = plain.shape[1:]
    assert framed.shape == (6, height + 14, width + 14) and framed.dtype == np.uint8
    np.testing.assert_array_equal(framed[:, 7:-7, 7:-7], plain)
    frame = np.ones(framed.shape, bool)
    frame[:, 7:-7, 7:-7] = False
    assert not framed[frame].any()
    # Placements stay relative to the canvas, not to the framed image.
    for a, b in zip(placement, framed_placement, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(make_batch(jax.random.key(2), spec, digits, sources, 7), framed)


@pytest.mark.parametrize("margin", [-1, 2.0, True])
def test_bad_margin_raises(margin):
    spec = TASKS["translated60"]
    with pytest.raises(ValueError, match="margin must be an integer >= 0"):
        generate(jax.random.key(0), spec, full(2, 1), full(2, 1), margin=margin)
