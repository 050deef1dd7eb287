"""Run state on disk: orbax checkpoints for resuming, and small atomic files for results.

A workdir holds:
  config.json          the run's configuration
  checkpoints/<epoch>/ orbax checkpoints of the full training state (written atomically by orbax)
  best_params.msgpack  parameters of the epoch with the lowest validation error
                       (best_params_seed<N>.msgpack for each seed of a several-seed run)
  metrics.jsonl        one JSON line of metrics per finished epoch
  results.json         the final report
  last_good_params*.msgpack  only if a non-finite loss stopped the run
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import warnings
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "CheckpointStore",
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_params",
    "read_json",
    "read_jsonl",
    "save_params",
]

BEST_PARAMS = "best_params.msgpack"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file a normal file's mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a file that does not parse is an error naming it."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}): corrupt or not written by ram_jax"
        ) from e


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; [] if there is none.

    A last line that does not parse (a write cut off by a crash: the epoch it describes was
    not checkpointed either) is dropped with a warning; a bad line elsewhere is an error.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{number} is not valid JSON ({e})") from e
            warnings.warn(f"{path}:{number}: dropped a cut-off last line", stacklevel=2)
    return records


def save_params(workdir: str | os.PathLike, params: Any, name: str = BEST_PARAMS) -> None:
    atomic_write_bytes(pathlib.Path(workdir) / name, flax.serialization.to_bytes(params))


def load_params(workdir: str | os.PathLike, target: Any, name: str = BEST_PARAMS) -> Any:
    """Parameters saved by ``save_params``, restored into the structure of ``target``."""
    path = pathlib.Path(workdir) / name
    if not path.exists():
        raise FileNotFoundError(
            f"no trained parameters at {path}: train (or resume) the run first with "
            f"python -m experiments.train --config=<its config file> --workdir={workdir}"
        )
    problem = f"{path} does not hold parameters for this model (was config.json changed?)"
    try:
        params = flax.serialization.from_bytes(target, path.read_bytes())
    except Exception as e:
        raise ValueError(f"{problem}: {e}") from e
    # from_bytes matches names only: check every array's shape and dtype too.
    expected = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    mismatched = [
        f"{jax.tree_util.keystr(key)}: saved {np.shape(value)} {np.asarray(value).dtype}, "
        f"model {np.shape(expected[key])} {np.asarray(expected[key]).dtype}"
        for key, value in jax.tree_util.tree_flatten_with_path(params)[0]
        if np.shape(value) != np.shape(expected[key])
        or np.asarray(value).dtype != np.asarray(expected[key]).dtype
    ]
    if mismatched:
        raise ValueError(f"{problem}: {'; '.join(mismatched)}")
    return params


class CheckpointStore:
    """Orbax checkpoints of ``(state, meta)`` keyed by epoch; keeps the newest few."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
        )

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def epochs(self) -> list[int]:
        """The epochs whose checkpoints are kept, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """``(epoch, state, meta)`` of the newest checkpoint that restores, or None if none is
        kept. One that fails (cut off, or written for another state) is skipped with a warning
        for the one before it; if every one fails, the error names the directory."""
        epochs = self.epochs()
        failures = []
        for epoch in reversed(epochs):
            try:
                return (epoch, *self.restore(epoch, abstract_state))
            except Exception as e:  # orbax raises many kinds; each is reported below
                failures.append(f"epoch {epoch}: {type(e).__name__}: {e}")
                warnings.warn(
                    f"checkpoint of epoch {epoch} in {self.directory} did not restore ({e}); "
                    "trying an older one",
                    stacklevel=2,
                )
        if failures:
            raise ValueError(
                f"no checkpoint in {self.directory} restores ({'; '.join(failures)}); was it "
                "written for another config? Use a new --workdir, or move the checkpoints away "
                "to start this run again"
            )
        return None

    def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.meta

    def close(self) -> None:
        self._manager.close()
