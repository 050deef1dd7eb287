"""Fixtures for every test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _xla_flags_restored():
    """The entry points add to ``XLA_FLAGS`` for the XLA they are about to start
    (``cpu_dots.use_eigen_dots``, ``xla_workarounds``). A test that runs one must not leave
    those flags to the subprocesses that later tests of the same worker start, whose numbers
    would then depend on the order the tests ran in."""
    before = os.environ.get("XLA_FLAGS")
    yield
    if before is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = before
