"""The test errors reported by Mnih et al. (2014), "Recurrent Models of Visual Attention", as data.

Two versions of the paper report different numbers: arXiv v1 (1406.6247v1) and the NIPS 2014
camera-ready. ``PAPER_RESULTS`` maps ``(task, row)`` to ``(arXiv v1, NIPS)`` test error in percent,
``None`` where that version has no such entry. Row labels are built from a run's config by
``row_label`` so that a result and the paper's number for the same model meet under one key:

- ``"RAM {g} glimpses"``: the RAM with its learned location policy and ``g`` glimpses
  (``"RAM 1 glimpse"`` for one);
- ``"RAM {g} random glimpses"``: the same network with glimpse locations drawn at random
  (the paper's "1 random glimpse" on 28x28 MNIST, here ``"RAM 1 random glimpse"``, and
  "RAM 8 random glimpses" on cluttered MNIST);
- ``"FC {h}"``: the fully connected baseline, two hidden layers of ``h`` ReLU units each;
- ``"Conv"``: the paper's two-layer convolutional baseline ("Convolutional, 2 layers").

The 100x100 cluttered NIPS column is the camera-ready's figures as quoted by the DRAW paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "MODELS",
    "PAPER_RESULTS",
    "POLICIES",
    "TASK_ORDER",
    "paper_numbers",
    "row_label",
]

# The paper's tasks, in the order its tables appear.
TASK_ORDER: tuple[str, ...] = ("mnist28", "translated60", "cluttered60", "cluttered100")
MODELS: tuple[str, ...] = ("ram", "fc", "conv")
POLICIES: tuple[str, ...] = ("learned", "random")

PaperPair = tuple[float | None, float | None]

PAPER_RESULTS: dict[tuple[str, str], PaperPair] = {
    # 28x28 MNIST (8x8 glimpses, 1 scale).
    ("mnist28", "FC 256"): (1.35, 1.69),
    ("mnist28", "Conv"): (None, 1.21),
    ("mnist28", "RAM 1 random glimpse"): (42.85, None),
    ("mnist28", "RAM 2 glimpses"): (6.27, 3.79),
    ("mnist28", "RAM 3 glimpses"): (2.7, 1.51),
    ("mnist28", "RAM 4 glimpses"): (1.73, 1.54),
    ("mnist28", "RAM 5 glimpses"): (1.55, 1.34),
    ("mnist28", "RAM 6 glimpses"): (1.29, 1.12),
    ("mnist28", "RAM 7 glimpses"): (1.47, 1.07),
    # 60x60 translated MNIST (12x12 glimpses, 3 scales).
    ("translated60", "FC 64"): (7.56, 6.42),
    ("translated60", "FC 256"): (3.7, 2.63),
    ("translated60", "Conv"): (2.31, 1.62),
    ("translated60", "RAM 4 glimpses"): (2.29, 1.54),
    ("translated60", "RAM 6 glimpses"): (1.86, 1.22),
    ("translated60", "RAM 8 glimpses"): (1.84, 1.20),
    # 60x60 cluttered translated MNIST (4 clutter pieces, 12x12 glimpses, 3 scales).
    ("cluttered60", "FC 64"): (28.96, 28.58),
    ("cluttered60", "FC 256"): (13.2, 11.96),
    ("cluttered60", "Conv"): (7.83, 8.09),
    ("cluttered60", "RAM 4 glimpses"): (7.1, 4.96),
    ("cluttered60", "RAM 6 glimpses"): (5.88, 4.08),
    ("cluttered60", "RAM 8 glimpses"): (5.23, 4.04),
    ("cluttered60", "RAM 8 random glimpses"): (None, 14.4),
    # 100x100 cluttered translated MNIST (8 clutter pieces, 12x12 glimpses, 4 scales);
    # the NIPS column as quoted by DRAW (Gregor et al. 2015).
    ("cluttered100", "Conv"): (16.51, 14.35),
    ("cluttered100", "RAM 4 glimpses"): (14.95, 9.41),
    ("cluttered100", "RAM 6 glimpses"): (11.58, 8.31),
    ("cluttered100", "RAM 8 glimpses"): (10.83, 8.11),
    ("cluttered100", "RAM 8 random glimpses"): (42.25, 28.4),
}


def _field(config: Mapping[str, Any], name: str) -> Any:
    value = config.get(name)
    if value is None:
        raise ValueError(f"config has no {name!r}, needed for its row label")
    return value


def row_label(config: Mapping[str, Any]) -> str:
    """The paper-table row a config belongs to, e.g. ``"RAM 6 glimpses"`` or ``"FC 256"``.

    Missing (or null) ``model`` counts as ``"ram"`` and missing ``policy`` as ``"learned"``
    (results saved before those fields existed). Raises ``ValueError`` for an unknown model or
    policy, or when a field the label needs (``num_glimpses``, ``fc_hidden``) is absent.
    """
    model = config.get("model") or "ram"
    if model == "ram":
        policy = config.get("policy") or "learned"
        glimpses = _field(config, "num_glimpses")
        noun = "glimpse" if glimpses == 1 else "glimpses"
        if policy == "learned":
            return f"RAM {glimpses} {noun}"
        if policy == "random":
            return f"RAM {glimpses} random {noun}"
        raise ValueError(f"unknown policy {policy!r}; known: {POLICIES}")
    if model == "fc":
        return f"FC {_field(config, 'fc_hidden')}"
    if model == "conv":
        return "Conv"
    raise ValueError(f"unknown model {model!r}; known: {MODELS}")


def paper_numbers(task: str, row: str) -> PaperPair:
    """``(arXiv v1, NIPS)`` test error in % for a row; ``(None, None)`` where the paper has none."""
    return PAPER_RESULTS.get((task, row), (None, None))
