"""Workarounds for XLA bugs that would otherwise hang a run.

**Two replicates on the CPU** (jax/jaxlib 0.10.2): ``jax.jit(jax.vmap(init_train_state))`` over
exactly two replicates of the 60x60 RAM configs (LSTM core, three scales) dispatches, then never
finishes: the process sits idle and every later XLA computation waits behind it. One, three or
four replicates finish in seconds, and so does the same computation run op by op without
``jit``. XLA's concurrency-optimised scheduler for the CPU causes it: with
``--xla_cpu_enable_concurrency_optimized_scheduler=false`` it finishes 6 times out of 6
(BUILD_NOTES.md, "Two replicates of the 60x60 models hang on this CPU"). The flag only acts on
CPU compilations and is read once, when XLA starts, so it has to be in ``XLA_FLAGS`` before the
first computation; passing it to ``Lowered.compile(compiler_options=...)`` does not help.

Two defences: ``train.init_replicates`` initialises replicates one at a time (no ``vmap``), which
removes the computation that hung, and ``train_and_evaluate`` with ``num_seeds > 1`` calls
``avoid_replicate_deadlock`` in case the same scheduler bug meets another vmapped program.
"""

from __future__ import annotations

import os

SCHEDULER_FIELD = "xla_cpu_enable_concurrency_optimized_scheduler"
SCHEDULER_FLAG = f"--{SCHEDULER_FIELD}=false"


def xla_started() -> bool:
    """Whether XLA's backends exist already (``XLA_FLAGS`` is read when they are created)."""
    from jax._src import xla_bridge  # no public API says this; a jax without it: assume started

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return True if started is None else bool(started())


def add_flag_before_start(field: str, flag: str) -> bool:
    """Appends ``flag`` to ``XLA_FLAGS`` unless it already names ``field`` (the user's choice
    wins) or XLA has started (too late to take effect). Returns whether ``flag`` is now there."""
    if field not in os.environ.get("XLA_FLAGS", "") and not xla_started():
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    return flag in os.environ.get("XLA_FLAGS", "").split()


def avoid_replicate_deadlock() -> bool:
    """Turns XLA's concurrency-optimised CPU scheduler off, if XLA has not started yet.

    Leaves ``XLA_FLAGS`` alone when it already says something about that scheduler, or when XLA
    has started (too late to take effect). Returns whether ``XLA_FLAGS`` now turns it off. Call
    it before the first JAX computation (``train_and_evaluate`` does, for runs of several seeds).
    """
    return add_flag_before_start(SCHEDULER_FIELD, SCHEDULER_FLAG)
