"""Data parallelism with ``jax.sharding``: one mesh axis over devices, the batch split along it.

The training step is written for one device. Placing its inputs (parameters and optimiser state
replicated, each step's batch split over the ``"data"`` axis) lets XLA's SPMD partitioner run it
on every device of the mesh at once and insert the gradient all-reduce itself, so one device and
many run the same code. On several hosts (or several processes of one), call
``initialize_distributed`` first (every process with the same config and data):
``jax.devices()`` then lists every process's devices and the mesh spans them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "check_divisible",
    "data_mesh",
    "initialize_distributed",
    "process_layout",
    "replicate_on",
    "shard_batch",
]

DATA_AXIS = "data"


COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "RAM_JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "RAM_JAX_PROCESS_ID"


def process_layout(environ: Mapping[str, str]) -> tuple[str, int, int] | None:
    """``(coordinator, num_processes, process_id)`` set by hand in ``environ``, or None.

    None when neither ``RAM_JAX_NUM_PROCESSES`` nor ``RAM_JAX_PROCESS_ID`` is set: JAX then
    finds the layout itself where a cluster manager started the processes. Raises
    ``ValueError`` naming the variable when the layout is incomplete or inconsistent.
    """
    count, index = environ.get(NUM_PROCESSES_ENV), environ.get(PROCESS_ID_ENV)
    if count is None and index is None:
        return None
    usage = (
        f"to start processes by hand, set {COORDINATOR_ENV}=host:port (a free port on the host "
        f"of process 0), {NUM_PROCESSES_ENV}=N and {PROCESS_ID_ENV}=0..N-1 on every process"
    )
    if count is None or index is None:
        missing = NUM_PROCESSES_ENV if count is None else PROCESS_ID_ENV
        raise ValueError(f"{missing} is not set; {usage}")
    try:
        num_processes, process_id = int(count), int(index)
    except ValueError:
        raise ValueError(
            f"{NUM_PROCESSES_ENV}={count!r} and {PROCESS_ID_ENV}={index!r} must be integers; "
            f"{usage}"
        ) from None
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"{PROCESS_ID_ENV}={process_id} is not in 0..{num_processes - 1} "
            f"({NUM_PROCESSES_ENV}={num_processes}); {usage}"
        )
    coordinator = environ.get(COORDINATOR_ENV, "")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{COORDINATOR_ENV}={coordinator!r} is not host:port; {usage}")
    return coordinator, num_processes, process_id


def initialize_distributed(environ: Mapping[str, str] | None = None) -> None:
    """Joins this process to a multi-process run; call before any JAX computation.

    Under a cluster manager JAX knows (SLURM, Open MPI, Kubernetes, Cloud TPU) the coordinator,
    the process count and this process's id are found by ``jax.distributed.initialize()``
    itself. Elsewhere, give them in the environment: ``JAX_COORDINATOR_ADDRESS``,
    ``RAM_JAX_NUM_PROCESSES`` and ``RAM_JAX_PROCESS_ID`` (``process_layout``). Every process
    must run the same config on the same data, with a workdir on a filesystem they all see
    (orbax writes each checkpoint from all of them). CPU processes exchange gradients through
    gloo (JAX's default CPU collectives; set here where an older JAX has none).
    """
    layout = process_layout(os.environ if environ is None else environ)
    is_initialized = getattr(jax.distributed, "is_initialized", None)  # newer JAX only
    if is_initialized is not None and is_initialized():  # a second run in one process
        return
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        # Older JAX leaves CPU processes without collectives, and their all-reduce fails.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if layout is None:
        try:
            jax.distributed.initialize()
        except ValueError as e:
            raise ValueError(
                f"{e} (jax.distributed.initialize found no cluster manager's settings). To start "
                f"processes by hand, set {COORDINATOR_ENV}=host:port, {NUM_PROCESSES_ENV}=N "
                f"and {PROCESS_ID_ENV}=0..N-1 on every process"
            ) from e
        return
    coordinator, num_processes, process_id = layout
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (``"data"``) over ``devices``, by default every device JAX sees."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_divisible(batch_size: int, mesh: Mesh) -> None:
    """Each device must get the same number of images per step."""
    count = mesh.devices.size
    if batch_size % count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {count} devices of the data mesh; "
            f"use a multiple of {count}"
        )


def replicate_on(mesh: Mesh, tree: Any) -> Any:
    """Puts every array of ``tree`` on every device of ``mesh`` (parameters, datasets)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(mesh: Mesh, tree: Any) -> Any:
    """Inside ``jit``: asks for every array's leading (batch) axis to be split over the mesh."""
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, PartitionSpec(DATA_AXIS))
        ),
        tree,
    )
