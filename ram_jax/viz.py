"""Pictures of where the model looked (matplotlib, imported lazily)."""

from __future__ import annotations

import numpy as np

from ram_jax.glimpse import glimpse_sides

__all__ = ["glimpse_boxes", "plot_glimpses"]


def glimpse_boxes(
    loc: np.ndarray, image_hw: tuple[int, int], *, size: int, scales: int = 1, factor: int = 2
) -> list[tuple[float, float, int]]:
    """Boxes ``(top, left, side)`` in pixels of each scale of a glimpse at ``loc`` (y, x).

    Uses the retina's pixel convention (``ram_jax.glimpse``): start = round(u - side / 2).
    """
    loc = np.clip(np.asarray(loc, np.float64), -1.0, 1.0)
    centre = (loc + 1.0) / 2.0 * np.asarray(image_hw, np.float64)
    largest = glimpse_sides(size, scales, factor)[-1]
    top, left = np.floor(centre - largest / 2 + 0.5)
    boxes = []
    for side in glimpse_sides(size, scales, factor):
        offset = (largest - side + 1) // 2
        boxes.append((float(top + offset), float(left + offset), side))
    return boxes


def plot_glimpses(
    ax,
    image: np.ndarray,
    locations: np.ndarray,
    *,
    size: int,
    scales: int = 1,
    factor: int = 2,
    title: str | None = None,
):
    """Draws ``image`` (H, W[, C]) with the glimpse path ``locations`` f32[T, 2] on ``ax``."""
    from matplotlib import patches

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray", interpolation="nearest")
    hw = image.shape[:2]
    colours = [f"C{t % 10}" for t in range(len(locations))]
    centres = []
    for t, loc in enumerate(np.asarray(locations)):
        for top, left, side in glimpse_boxes(loc, hw, size=size, scales=scales, factor=factor):
            # Pixel i spans [i - 0.5, i + 0.5] in imshow's coordinates.
            ax.add_patch(
                patches.Rectangle(
                    (left - 0.5, top - 0.5),
                    side,
                    side,
                    fill=False,
                    edgecolor=colours[t],
                    linewidth=1.2,
                )
            )
        centres.append((np.asarray(loc) + 1.0) / 2.0 * np.asarray(hw) - 0.5)
    centres = np.asarray(centres)
    ax.plot(centres[:, 1], centres[:, 0], "-o", color="yellow", markersize=3, linewidth=0.8)
    ax.set_xlim(-0.5, hw[1] - 0.5)
    ax.set_ylim(hw[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax
