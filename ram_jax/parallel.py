"""Data parallelism with ``jax.sharding``: one mesh axis over devices, the batch split along it.

The training step is written for one device. Placing its inputs (parameters and optimiser state
replicated, each step's batch split over the ``"data"`` axis) lets XLA's SPMD partitioner run it
on every device of the mesh at once and insert the gradient all-reduce itself, so one device and
many run the same code. On several hosts, call ``initialize_distributed`` first (every process
with the same config and data): ``jax.devices()`` then lists every host's devices and the mesh
spans them all.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "check_divisible",
    "data_mesh",
    "initialize_distributed",
    "replicate_on",
    "shard_batch",
]

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """``jax.distributed.initialize()`` from the environment (coordinator, process count and id,
    as set by SLURM, Cloud TPU, or ``JAX_COORDINATOR_ADDRESS`` and friends)."""
    jax.distributed.initialize()


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
