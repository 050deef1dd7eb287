"""Which library runs XLA:CPU's matrix products: Eigen, for RAM's small products.

From jaxlib 0.10 on, XLA:CPU hands each single dot to YNNPACK (its default
``--xla_cpu_experimental_ynn_fusion_type=individual_dot``). YNNPACK is the faster library for
one large product (n=2048 on a 2-core AMD EPYC: 137-163 GFLOP/s against Eigen's 116-132), but
RAM's steps are chains of ``batch x 256 @ 256 x 256`` products, and those Eigen runs a third
faster (133-137 against 91-102 GFLOP/s). On the headline training steps at batch 256 that is
12,081-13,580 against 8,846-11,193 images/s for 28x28 and 6,609-7,560 against 5,323-6,438 for
60x60 (BUILD_NOTES.md, "Eigen for the small products").

``use_eigen_dots()`` adds ``--xla_cpu_experimental_ynn_fusion_type=`` (an empty list: no
YNNPACK fusions) to ``XLA_FLAGS``. The flag is read once, when XLA starts, so the entry points
(``experiments.train``, ``evaluate``, ``diagnose``, ``bench``) call it before their first
computation; code that imports ``ram_jax`` can call it first thing too. It leaves
``XLA_FLAGS`` alone when it already names the option (the user's choice wins: set
``--xla_cpu_experimental_ynn_fusion_type=individual_dot`` to keep YNNPACK), when XLA has started,
and when jaxlib is older than 0.10.1, where the option is unknown and XLA would abort on it. It
changes only CPU products; GPU and TPU computations are compiled without it.
"""

from __future__ import annotations

import os

from ram_jax import xla_workarounds

DOT_LIBRARY_FIELD = "xla_cpu_experimental_ynn_fusion_type"
EIGEN_DOTS_FLAG = f"--{DOT_LIBRARY_FIELD}="
# The oldest jaxlib seen to accept the option (0.10.2 here; 0.10.1 elsewhere); an unknown flag in
# XLA_FLAGS aborts the process, so older versions are left alone.
MIN_JAXLIB = (0, 10, 1)


def jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's version as integers (``(0, 10, 2)``); pre-release tags dropped."""
    import jaxlib.version

    parts = []
    for part in jaxlib.version.__version__.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def eigen_dots_requested() -> bool:
    """Whether ``XLA_FLAGS`` asks for Eigen dots (in effect if it did so before XLA started)."""
    return EIGEN_DOTS_FLAG in os.environ.get("XLA_FLAGS", "").split()


def use_eigen_dots() -> bool:
    """Makes XLA:CPU run matrix products with Eigen, if XLA has not started and jaxlib knows how.

    Returns whether ``XLA_FLAGS`` now asks for Eigen dots (also when it already did).
    """
    if jaxlib_version() < MIN_JAXLIB:
        return eigen_dots_requested()
    return xla_workarounds.add_flag_before_start(DOT_LIBRARY_FIELD, EIGEN_DOTS_FLAG)
