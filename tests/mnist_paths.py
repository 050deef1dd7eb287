"""Where the tests find the four original MNIST files.

``$RAM_JAX_MNIST_DIR`` (read once, at import: some tests clear it), else ``../shared/data/mnist``
beside the checkout, as CI lays it out. Tests that need the files skip, naming the folder, only
when neither holds all four.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from ram_jax.data import MNIST_SHA256

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_ENV_DIR = os.environ.get("RAM_JAX_MNIST_DIR")
MNIST_DIR = pathlib.Path(_ENV_DIR) if _ENV_DIR else REPO_ROOT.parent / "shared" / "data" / "mnist"
HAVE_MNIST = all((MNIST_DIR / name).is_file() for name in MNIST_SHA256)
NO_MNIST = f"the four MNIST .gz files are not in {MNIST_DIR} (set RAM_JAX_MNIST_DIR)"
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)
