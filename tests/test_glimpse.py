"""Tests for ram_jax.glimpse: the multi-scale retina.

The expected patches are written out by hand (slices of an image whose pixel values encode their
own row and column) or built by ``_reference``, a deliberately naive per-pixel numpy loop that
follows the module docstring's pixel convention:

    u = (l + 1) / 2 * n,  start = floor(u - s / 2 + 0.5),  patch = pixels start .. start + s - 1,

scale k is the crop of side ``size * factor**k`` centred in the largest patch (offset
``(largest - side + 1) // 2``), block-averaged down to ``size``; pixels outside the image are 0.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.glimpse import (
    batched_glimpse,
    glimpse,
    glimpse_from_padded,
    glimpse_pad,
    glimpse_sides,
    pad_images,
    validate_retina,
)


def coded_image(height: int, width: int, channels: int = 1) -> np.ndarray:
    """f32[H, W, C] whose value 1 + 1000 r + 10 c + ch names its pixel (never 0, so padding
    shows up as 0)."""
    r, c, ch = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    return (1 + 1000 * r + 10 * c + ch).astype(np.float32)


def _reference(image, loc, size, scales=1, factor=2) -> np.ndarray:
    """Per-pixel numpy retina, straight from the docstring; f64[scales, size, size, C]."""
    image = np.asarray(image, np.float64)
    height, width, channels = image.shape
    sides = [size * factor**k for k in range(scales)]
    largest = sides[-1]
    loc = np.clip(np.asarray(loc, np.float64), -1.0, 1.0)
    starts = [
        math.floor((loc[axis] + 1) / 2 * n - largest / 2 + 0.5)
        for axis, n in enumerate((height, width))
    ]
    out = np.zeros((scales, size, size, channels))
    for k, side in enumerate(sides):
        offset = (largest - side + 1) // 2
        crop = np.zeros((side, side, channels))
        for i in range(side):
            for j in range(side):
                r, c = starts[0] + offset + i, starts[1] + offset + j
                if 0 <= r < height and 0 <= c < width:
                    crop[i, j] = image[r, c]
        block = factor**k
        out[k] = crop.reshape(size, block, size, block, channels).mean(axis=(1, 3))
    return out


def _glimpse(image, loc, **kw):
    """Eager ``glimpse`` on numpy inputs."""
    return np.asarray(glimpse(jnp.asarray(image), jnp.asarray(loc, jnp.float32), **kw))


@functools.cache
def _jitted(size, scales=1, factor=2):
    """A jitted ``glimpse`` (one compilation for the many locations of a test)."""
    fn = jax.jit(functools.partial(glimpse, size=size, scales=scales, factor=factor))
    return lambda image, loc: np.asarray(fn(jnp.asarray(image), jnp.asarray(loc, jnp.float32)))


# ------------------------------------------------------------------------------------------
# Sides and padding


def test_sides_and_pad():
    assert glimpse_sides(8, 1) == (8,)
    assert glimpse_sides(4, 3, 2) == (4, 8, 16)
    assert glimpse_sides(3, 3, 3) == (3, 9, 27)
    # Half the largest side plus one: enough for the largest patch centred on a corner.
    assert glimpse_pad(8, 1) == 5
    assert glimpse_pad(4, 3, 2) == 9
    assert glimpse_pad(3, 1) == 2


# ------------------------------------------------------------------------------------------
# Known pattern at known locations (28x28, size 8, one scale)


def test_centre_covers_pixels_10_to_17():
    image = coded_image(28, 28)
    patch = _glimpse(image, (0.0, 0.0), size=8)
    assert patch.shape == (1, 8, 8, 1)
    np.testing.assert_array_equal(patch[0], image[10:18, 10:18])


def test_top_left_corner_is_three_quarters_padding():
    # u = 0, start = floor(0 - 4 + 0.5) = -4: patch rows/cols 0..3 are outside the image, the
    # bottom-right quarter is image[0:4, 0:4].
    image = coded_image(28, 28)
    patch = _glimpse(image, (-1.0, -1.0), size=8)[0]
    np.testing.assert_array_equal(patch[4:, 4:], image[0:4, 0:4])
    np.testing.assert_array_equal(patch[:4, :], 0.0)
    np.testing.assert_array_equal(patch[:, :4], 0.0)


@pytest.mark.parametrize(
    ("loc", "rows", "cols"),
    [
        # u_y = 1.5 / 2 * 28 = 21 -> start 17; u_x = 0.75 / 2 * 28 = 10.5 -> 10.5 - 4 = 6.5,
        # which rounds up (halves round up) to 7.
        ((0.5, -0.25), (17, 25), (7, 15)),
        # u_y = 1.3 * 14 = 18.2 -> floor(14.7) = 14; u_x = 0.6 * 14 = 8.4 -> floor(4.9) = 4.
        ((0.3, -0.4), (14, 22), (4, 12)),
        # u_y = 1.25 * 14 = 17.5 -> floor(14.0) = 14; u_x = 0.25 * 14 = 3.5 -> floor(0.0) = 0.
        ((0.25, -0.75), (14, 22), (0, 8)),
    ],
)
def test_off_centre_locations_by_hand(loc, rows, cols):
    image = coded_image(28, 28)
    patch = _glimpse(image, loc, size=8)[0]
    np.testing.assert_array_equal(patch, image[rows[0] : rows[1], cols[0] : cols[1]])


def test_y_is_rows_and_x_is_columns():
    # Moving only y must move the patch down the rows, not along the columns.
    image = coded_image(28, 28)
    down = _glimpse(image, (0.5, 0.0), size=8)[0]
    right = _glimpse(image, (0.0, 0.5), size=8)[0]
    np.testing.assert_array_equal(down, image[17:25, 10:18])
    np.testing.assert_array_equal(right, image[10:18, 17:25])


# ------------------------------------------------------------------------------------------
# Borders: zero padding on all four sides; clipping outside [-1, 1]


@pytest.mark.parametrize(
    ("loc", "inside", "image_slice", "outside"),
    [
        # Top border: u_y = 0, rows -4..3.
        ((-1.0, 0.0), np.s_[4:, :], np.s_[0:4, 10:18], np.s_[:4, :]),
        # Bottom border: u_y = 28, rows 24..31.
        ((1.0, 0.0), np.s_[:4, :], np.s_[24:28, 10:18], np.s_[4:, :]),
        # Left border.
        ((0.0, -1.0), np.s_[:, 4:], np.s_[10:18, 0:4], np.s_[:, :4]),
        # Right border.
        ((0.0, 1.0), np.s_[:, :4], np.s_[10:18, 24:28], np.s_[:, 4:]),
        # Bottom-right corner.
        ((1.0, 1.0), np.s_[:4, :4], np.s_[24:28, 24:28], np.s_[4:, :]),
    ],
)
def test_zero_padding_at_borders(loc, inside, image_slice, outside):
    image = coded_image(28, 28)
    patch = _glimpse(image, loc, size=8)[0]
    np.testing.assert_array_equal(patch[inside], image[image_slice])
    np.testing.assert_array_equal(patch[outside], 0.0)


@pytest.mark.parametrize(
    ("loc", "clipped"),
    [
        ((5.0, -3.0), (1.0, -1.0)),
        ((-1.5, 0.25), (-1.0, 0.25)),
        ((0.5, 1.3), (0.5, 1.0)),
        ((-100.0, -100.0), (-1.0, -1.0)),
    ],
)
@pytest.mark.parametrize(("size", "scales"), [(8, 1), (4, 3)])
def test_locations_outside_are_clipped(loc, clipped, size, scales):
    image = coded_image(28, 28)
    got = _glimpse(image, loc, size=size, scales=scales)
    np.testing.assert_array_equal(got, _glimpse(image, clipped, size=size, scales=scales))
    # And not all padding: the clipped patch still touches the image.
    assert np.any(got != 0)


# ------------------------------------------------------------------------------------------
# Scales and pooling


def test_pooling_at_each_scale_centre_by_hand():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(40, 40, 1)).astype(np.float32)
    patches = _glimpse(image, (0.0, 0.0), size=4, scales=3, factor=2)
    assert patches.shape == (3, 4, 4, 1)
    # u = 20: sides 4, 8, 16 start at 18, 16, 12.
    for k, start in enumerate((18, 16, 12)):
        side = 4 * 2**k
        crop = image[start : start + side, start : start + side, 0].astype(np.float64)
        block = 2**k
        expected = np.array(
            [
                [
                    crop[i * block : (i + 1) * block, j * block : (j + 1) * block].mean()
                    for j in range(4)
                ]
                for i in range(4)
            ]
        )
        np.testing.assert_allclose(patches[k, :, :, 0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("hw", "size", "scales", "factor"),
    [
        ((40, 40), 4, 3, 2),
        ((28, 28), 8, 3, 2),  # the largest patch (32) is wider than the image
        ((30, 30), 3, 2, 3),  # odd size, factor 3
        ((21, 17), 3, 2, 2),  # odd (largest - side): centred crop falls half a pixel right
        ((28, 28), 5, 1, 2),
    ],
)
def test_matches_reference_everywhere(hw, size, scales, factor):
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(*hw, 2)).astype(np.float32)
    locs = np.concatenate(
        [
            rng.uniform(-1.0, 1.0, size=(12, 2)),
            # The extreme locations: padding must be wide enough for the largest patch here
            # (dynamic_slice would silently clamp and shift the patch otherwise).
            np.array([[-1, -1], [-1, 1], [1, -1], [1, 1], [0, 0], [-1, 0], [0, 1]]),
        ]
    ).astype(np.float32)
    for loc in locs:
        got = _jitted(size, scales, factor)(image, loc)
        want = _reference(image, loc, size, scales, factor)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"loc={loc}")


def test_constant_image_inside_and_partly_outside():
    image = np.full((40, 40, 1), 0.7, np.float32)
    # Largest patch (16) fully inside: every scale reads exactly the constant.
    for loc in [(0.0, 0.0), (0.1, -0.2), (-0.5, 0.5), (0.55, 0.55)]:
        patches = _glimpse(image, loc, size=4, scales=3)
        np.testing.assert_allclose(patches, 0.7, rtol=1e-6)
    # Near a corner, the smallest patch is still inside but the pooled largest one averages
    # in zero padding.
    patches = _glimpse(image, (-0.9, -0.9), size=4, scales=3)
    np.testing.assert_allclose(patches[0], 0.7, rtol=1e-6)
    assert patches[2].min() < 0.7 - 1e-3
    assert patches[2].min() >= 0.0


# ------------------------------------------------------------------------------------------
# Shapes: non-square images, several channels, batches


def test_non_square_with_channels_by_hand():
    image = coded_image(20, 36, 3)
    # u_y = 1.5 / 2 * 20 = 15 -> start floor(15 - 3 + 0.5) = 12; u_x = 0.5 / 2 * 36 = 9 ->
    # floor(9 - 3 + 0.5) = 6.
    patch = _glimpse(image, (0.5, -0.5), size=6)
    assert patch.shape == (1, 6, 6, 3)
    np.testing.assert_array_equal(patch[0], image[12:18, 6:12, :])
    # Channels stay separate (value 1 + 1000 r + 10 c + ch).
    np.testing.assert_array_equal(patch[0, 0, 0], [12001 + 60, 12002 + 60, 12003 + 60])


def test_non_square_matches_reference_with_scales():
    rng = np.random.default_rng(2)
    image = rng.uniform(size=(20, 36, 3)).astype(np.float32)
    for loc in rng.uniform(-1.2, 1.2, size=(10, 2)).astype(np.float32):
        got = _jitted(4, 3)(image, loc)
        np.testing.assert_allclose(got, _reference(image, loc, 4, 3), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    images = rng.uniform(size=(5, 20, 36, 3)).astype(np.float32)
    locs = rng.uniform(-1.1, 1.1, size=(5, 2)).astype(np.float32)
    return jnp.asarray(images), jnp.asarray(locs)


@pytest.mark.parametrize("as_bytes", [True, False])
def test_batched_equals_loop(batch, as_bytes):
    images, locs = batch
    if as_bytes:
        images = jnp.round(images * 255).astype(jnp.uint8)
    kw = dict(size=4, scales=3, factor=2)
    got = np.asarray(batched_glimpse(images, locs, **kw))
    assert got.shape == (5, 3, 4, 4, 3)
    one = jax.jit(functools.partial(glimpse, **kw))
    loop = np.stack([one(images[i], locs[i]) for i in range(len(images))])
    if as_bytes:
        # Bytes are pooled as exact integer sums: identical whatever order XLA adds them in.
        np.testing.assert_array_equal(got, loop)
    else:
        # Float sums may be added in another order once batched: equal to rounding.
        np.testing.assert_allclose(got, loop, rtol=1e-6, atol=0)


def test_from_padded_equals_batched(batch):
    images, locs = batch
    kw = dict(size=4, scales=3, factor=2)
    padded = pad_images(images, **kw)
    pad = glimpse_pad(4, 3, 2)
    assert padded.shape == (5, 20 + 2 * pad, 36 + 2 * pad, 3)
    got = glimpse_from_padded(padded, locs, (20, 36), **kw)
    # Against the per-pixel reference, not batched_glimpse (which calls this very function).
    want = np.stack([_reference(images[i], locs[i], **kw) for i in range(len(images))])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)


def test_jit_and_vmap(batch):
    images, locs = batch
    kw = dict(size=4, scales=2, factor=2)
    eager = np.asarray(batched_glimpse(images, locs, **kw))
    single = functools.partial(glimpse, **kw)
    np.testing.assert_array_equal(np.asarray(jax.vmap(single)(images, locs)), eager)
    np.testing.assert_array_equal(np.asarray(jax.jit(single)(images[1], locs[1])), eager[1])
    jitted = jax.jit(functools.partial(batched_glimpse, **kw))
    np.testing.assert_array_equal(np.asarray(jitted(images, locs)), eager)


def test_no_per_sample_loop():
    # A Python loop over the batch would make the traced program grow with B; the vectorised
    # retina traces to the same number of operations for any batch size.
    def count(b):
        images = jnp.zeros((b, 28, 28, 1))
        locs = jnp.zeros((b, 2))
        jaxpr = jax.make_jaxpr(functools.partial(batched_glimpse, size=8, scales=2))(images, locs)
        return len(jaxpr.jaxpr.eqns)

    assert count(2) == count(32)


# ------------------------------------------------------------------------------------------
# Argument checks


_IMAGE = jnp.zeros((28, 28, 1))
_LOC = jnp.zeros((2,))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(size=0), "size must be an integer >= 1"),
        (dict(size=-3), "size must be an integer >= 1"),
        (dict(size=2.5), "size must be an integer"),
        (dict(size=8.0), "size must be an integer"),
        (dict(size=True), "size must be an integer"),
        (dict(size=8, scales=0), "scales must be an integer >= 1"),
        (dict(size=8, scales=1.5), "scales must be an integer"),
        (dict(size=8, factor=0), "factor must be an integer >= 1"),
        (dict(size=29), "larger than the 28x28 canvas"),
    ],
)
def test_bad_retina_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        glimpse(_IMAGE, _LOC, **kwargs)


def test_glimpse_larger_than_non_square_canvas():
    # The smaller side decides.
    with pytest.raises(ValueError, match="larger than the 20x36 canvas"):
        glimpse(jnp.zeros((20, 36, 1)), _LOC, size=21)
    glimpse(jnp.zeros((20, 36, 1)), _LOC, size=20)  # fits exactly


@pytest.mark.parametrize("shape", [(28, 28), (2, 28, 28, 1), (28,)])
def test_image_of_wrong_ndim(shape):
    with pytest.raises(ValueError, match=r"shape \(H, W, C\)"):
        glimpse(jnp.zeros(shape), _LOC, size=4)


@pytest.mark.parametrize("shape", [(3,), (1, 2), (), (2, 1)])
def test_location_of_wrong_shape(shape):
    with pytest.raises(ValueError, match="location must have shape"):
        glimpse(_IMAGE, jnp.zeros(shape), size=4)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_location_of_integer_dtype(dtype):
    with pytest.raises(ValueError, match="floating point"):
        glimpse(_IMAGE, jnp.zeros((2,), dtype), size=4)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint16, jnp.bool_])
def test_images_of_a_dtype_without_a_scale_rejected(dtype):
    # Only uint8 is divided by 255: an int32 image of bytes would be read 255 times too bright.
    image = jnp.zeros((28, 28, 1), dtype)
    with pytest.raises(ValueError, match=f"images must be uint8 .* got dtype {jnp.dtype(dtype)}"):
        glimpse(image, _LOC, size=4)
    with pytest.raises(ValueError, match="images must be uint8"):
        batched_glimpse(image[None], _LOC[None], size=4)
    side = 28 + 2 * glimpse_pad(4, 1, 2)
    padded = jnp.zeros((1, side, side, 1), dtype)
    with pytest.raises(ValueError, match="images must be uint8"):
        glimpse_from_padded(padded, _LOC[None], (28, 28), size=4)


def test_batched_argument_checks():
    images = jnp.zeros((3, 28, 28, 1))
    with pytest.raises(ValueError, match=r"shape \(B, H, W, C\)"):
        batched_glimpse(jnp.zeros((28, 28, 1)), jnp.zeros((28, 2)), size=4)
    with pytest.raises(ValueError, match="location must have shape"):
        batched_glimpse(images, jnp.zeros((2, 2)), size=4)
    with pytest.raises(ValueError, match="floating point"):
        batched_glimpse(images, jnp.zeros((3, 2), jnp.int32), size=4)
    with pytest.raises(ValueError, match="use pad_images"):
        glimpse_from_padded(images, jnp.zeros((3, 2)), (28, 28), size=4)
    with pytest.raises(ValueError, match="larger than"):
        batched_glimpse(images, jnp.zeros((3, 2)), size=30)


def test_validate_retina_accepts_valid():
    validate_retina((28, 28, 1), size=8, scales=3, factor=2)
    validate_retina((5, 7, 4), size=5, scales=1)


def test_uint8_images_read_as_float_over_255_at_every_scale():
    # The rollout pads and crops bytes, converting only the crop: the glimpse must not change.
    raw = np.random.default_rng(3).integers(0, 256, size=(4, 33, 41, 2), dtype=np.uint8)
    locs = jnp.asarray([[-1.0, -1.0], [0.3, -0.7], [0.0, 0.0], [1.0, 0.9]])
    as_bytes = batched_glimpse(jnp.asarray(raw), locs, size=5, scales=3)
    as_float = batched_glimpse(jnp.asarray(raw, jnp.float32) / 255.0, locs, size=5, scales=3)
    assert as_bytes.dtype == jnp.float32
    np.testing.assert_allclose(as_bytes, as_float, rtol=1e-6, atol=1e-7)
    assert float(as_bytes.max()) <= 1.0


@pytest.mark.parametrize("extra", [-3, -1, 0, 2])
def test_pad_images_pads_only_what_a_margin_lacks(batch, extra):
    images, _ = batch
    kw = dict(size=4, scales=3, factor=2)
    margin = glimpse_pad(4, 3, 2) + extra
    framed = jnp.pad(images, ((0, 0), (margin, margin), (margin, margin), (0, 0)))
    got = pad_images(framed, margin=margin, **kw)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(pad_images(images, **kw)))
    if extra == 0:
        assert got is framed  # the margin is the padding: nothing is copied


def test_pad_images_rejects_a_bad_margin(batch):
    images, _ = batch  # (5, 20, 36, 3)
    for margin in (-1, 1.0, True):
        with pytest.raises(ValueError, match="margin must be an integer >= 0"):
            pad_images(images, size=4, margin=margin)
    with pytest.raises(ValueError, match="margin of 10 zero pixels"):
        pad_images(images, size=4, margin=10)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        pad_images(images[0], size=4)
