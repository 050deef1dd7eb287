"""Run by tests/test_multihost.py: one process of a multi-process training run on this machine.

    multihost_script.py WORKDIR NUM_EPOCHS [KILL_AT_SAVE]

With ``RAM_JAX_NUM_PROCESSES`` set (and ``JAX_COORDINATOR_ADDRESS``, ``RAM_JAX_PROCESS_ID``), the
config asks for ``distributed`` and the processes join through ``parallel.initialize_distributed``;
without it, the same run in one process. ``KILL_AT_SAVE``: the run stops as if killed at its
``KILL_AT_SAVE``-th checkpoint, before writing it. Prints one JSON line: what this process saw.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import jax
from parallel_script import synthetic, tiny_config

from ram_jax import checkpoint, parallel, train


class Killed(Exception):
    pass


def main() -> None:
    workdir, num_epochs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
    kill_at_save = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    distributed = parallel.NUM_PROCESSES_ENV in os.environ
    if distributed:
        # Before the data below are made: JAX joins the processes before its first computation.
        # (train_and_evaluate calls it again, and finds it done.)
        parallel.initialize_distributed()
    config = tiny_config(distributed=distributed)
    config.num_epochs = num_epochs
    # The same bytes in every process, as every host would load the same MNIST files.
    datasets = train.Datasets(
        synthetic(jax.random.key(1), 4 * config.batch_size),
        synthetic(jax.random.key(3), 48),
        synthetic(jax.random.key(2), 64),
    )
    saves = []
    save = checkpoint.CheckpointStore.save

    def save_or_die(self, epoch, state, meta):
        saves.append(epoch)
        if len(saves) == kill_at_save:
            raise Killed
        return save(self, epoch, state, meta)

    checkpoint.CheckpointStore.save = save_or_die
    try:
        results = train.train_and_evaluate(config, workdir, datasets=datasets)
    except Killed:
        results = None
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "saves": saves,
    }
    if results is not None:
        keys = ("epochs", "best_epoch", "val_error_pct", "test_error_pct", "test_error_mc_pct")
        report.update({k: results[k] for k in keys}, device=results["device"])
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
