"""Several processes as one run: ``--config.distributed=True`` with the layout given by hand.

Two processes of this machine, each with two fake CPU devices, join through
``parallel.initialize_distributed`` (``JAX_COORDINATOR_ADDRESS``, ``RAM_JAX_NUM_PROCESSES``,
``RAM_JAX_PROCESS_ID``) into one mesh of four, and exchange gradients through gloo, as hosts of a
cluster would. They must train as one process of four devices does, write the workdir once, and
resume together from their checkpoint. Each process runs ``tests/multihost_script.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import pytest
from mnist_paths import REPO_ROOT

from ram_jax import checkpoint, parallel

SCRIPT = REPO_ROOT / "tests" / "multihost_script.py"
NUM_EPOCHS = 2
LAYOUT_VARS = (parallel.COORDINATOR_ENV, parallel.NUM_PROCESSES_ENV, parallel.PROCESS_ID_ENV)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(workdir, *args, processes: int = 2, devices_each: int = 2) -> list[tuple[dict, str]]:
    """Runs the script as ``processes`` processes of one run; for each, its JSON report and all
    it printed (stdout, then stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in LAYOUT_VARS}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_each}"
    if processes > 1:
        env[parallel.COORDINATOR_ENV] = f"localhost:{free_port()}"
        env[parallel.NUM_PROCESSES_ENV] = str(processes)
    command = [sys.executable, str(SCRIPT), str(workdir), str(NUM_EPOCHS), *map(str, args)]
    running = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT / "tests",
            env={**env, parallel.PROCESS_ID_ENV: str(i)} if processes > 1 else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outputs = []
    try:
        for process in running:
            outputs.append(process.communicate(timeout=400))
    finally:
        for process in running:  # one that failed leaves the others waiting for it
            process.kill()
    for process, (_, err) in zip(running, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    return [(json.loads(out.strip().splitlines()[-1]), out + err) for out, err in outputs]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_process")
    [(report, _)] = launch(workdir, processes=1, devices_each=4)
    return workdir, report


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_processes")
    return workdir, launch(workdir)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("killed_and_resumed")
    killed = launch(workdir, NUM_EPOCHS)  # stopped at its last checkpoint, before writing it
    return workdir, killed, launch(workdir)


def best_params(workdir) -> dict:
    return flax.serialization.msgpack_restore((workdir / checkpoint.BEST_PARAMS).read_bytes())


def records(workdir) -> list[dict]:
    timing = ("train_seconds", "train_images_per_s")
    return [
        {k: v for k, v in r.items() if k not in timing}
        for r in checkpoint.read_jsonl(workdir / "metrics.jsonl")
    ]


RESULT_FIELDS = ("epochs", "best_epoch", "val_error_pct", "test_error_pct", "test_error_mc_pct")


def test_processes_join_one_mesh(two_processes):
    _, runs = two_processes
    assert sorted(report["process_index"] for report, _ in runs) == [0, 1]
    for report, _ in runs:
        assert (report["process_count"], report["devices"], report["local_devices"]) == (2, 4, 2)
        assert report["device"].endswith("x4 over 2 processes"), report["device"]


def test_two_processes_train_as_one_process_of_four_devices(one_process, two_processes):
    single_dir, single = one_process
    multi_dir, runs = two_processes
    assert single["devices"] == 4 and single["process_count"] == 1
    for report, _ in runs:
        assert {k: report[k] for k in RESULT_FIELDS} == {k: single[k] for k in RESULT_FIELDS}
    multi, reference = records(multi_dir), records(single_dir)
    assert [r["epoch"] for r in multi] == list(range(1, NUM_EPOCHS + 1))
    for a, b in zip(multi, reference, strict=True):
        # Gloo sums the two processes' gradients in another order than one process does.
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        best_params(multi_dir),
        best_params(single_dir),
    )


def test_only_the_first_process_writes_and_reports(two_processes):
    workdir, runs = two_processes
    # One line per epoch: the second process appended none.
    assert len(records(workdir)) == NUM_EPOCHS
    assert sorted(p.name for p in workdir.iterdir()) == [
        "best_params.msgpack",
        "checkpoints",
        "config.json",
        "metrics.jsonl",
        "results.json",
    ]
    # What train_and_evaluate prints: progress with its ETA, the results, the time spent. (Gloo
    # prints its own connection messages, which may break into other lines: not counted.)
    marks = ("ETA ", "done: best epoch", "training time", "this process:")
    printed = {report["process_index"]: out for report, out in runs}
    assert all(mark in printed[0] for mark in marks), printed[0]
    assert not any(mark in printed[1] for mark in marks), printed[1]


def test_killed_run_resumes_on_both_processes_to_the_same_result(killed_and_resumed, two_processes):
    workdir, killed, resumed = killed_and_resumed
    for report, _ in killed:
        assert report["saves"] == [1, 2] and "epochs" not in report
    for report, out in resumed:
        assert report["saves"] == [NUM_EPOCHS]  # it began from the checkpoint of epoch 1
        assert ("resuming" in out) == (report["process_index"] == 0)
    uninterrupted_dir, uninterrupted = two_processes
    for (report, _), (reference, _) in zip(resumed, uninterrupted, strict=True):
        assert {k: report[k] for k in RESULT_FIELDS} == {k: reference[k] for k in RESULT_FIELDS}
    assert records(workdir) == records(uninterrupted_dir)
    jax.tree.map(
        np.testing.assert_array_equal, best_params(workdir), best_params(uninterrupted_dir)
    )


@pytest.mark.parametrize(
    "environ, problem",
    [
        ({"RAM_JAX_NUM_PROCESSES": "2"}, "RAM_JAX_PROCESS_ID is not set"),
        ({"RAM_JAX_PROCESS_ID": "0"}, "RAM_JAX_NUM_PROCESSES is not set"),
        (
            {"RAM_JAX_NUM_PROCESSES": "two", "RAM_JAX_PROCESS_ID": "0"},
            "must be integers",
        ),
        ({"RAM_JAX_NUM_PROCESSES": "2", "RAM_JAX_PROCESS_ID": "2"}, r"not in 0\.\.1"),
        ({"RAM_JAX_NUM_PROCESSES": "2", "RAM_JAX_PROCESS_ID": "-1"}, r"not in 0\.\.1"),
        ({"RAM_JAX_NUM_PROCESSES": "0", "RAM_JAX_PROCESS_ID": "0"}, r"not in 0\.\.-1"),
        ({"RAM_JAX_NUM_PROCESSES": "2", "RAM_JAX_PROCESS_ID": "1"}, "JAX_COORDINATOR_ADDRESS=''"),
        (
            {
                "RAM_JAX_NUM_PROCESSES": "2",
                "RAM_JAX_PROCESS_ID": "1",
                "JAX_COORDINATOR_ADDRESS": "host0",
            },
            "JAX_COORDINATOR_ADDRESS='host0' is not host:port",
        ),
    ],
)
def test_an_incomplete_layout_is_refused_by_name(environ, problem):
    with pytest.raises(ValueError, match=problem):
        parallel.process_layout(environ)


def test_a_layout_given_by_hand_is_read():
    assert parallel.process_layout({}) is None  # left to JAX's cluster detection
    environ = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "RAM_JAX_NUM_PROCESSES": "4",
        "RAM_JAX_PROCESS_ID": "3",
    }
    assert parallel.process_layout(environ) == ("10.0.0.1:1234", 4, 3)


def test_no_layout_and_no_cluster_manager_names_the_variables():
    # In a fresh process: JAX joins processes only before its backend starts.
    code = (
        "from ram_jax import parallel\n"
        "try:\n"
        "    parallel.initialize_distributed({})\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in LAYOUT_VARS}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name in LAYOUT_VARS:
        assert name in done.stdout, done.stdout


@pytest.fixture
def fake_initialize(monkeypatch):
    """Records what ``jax.distributed.initialize`` would be given, without joining anything."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    return calls


def test_the_layout_given_by_hand_reaches_jax(fake_initialize):
    environ = {
        "JAX_COORDINATOR_ADDRESS": "host0:1234",
        "RAM_JAX_NUM_PROCESSES": "3",
        "RAM_JAX_PROCESS_ID": "2",
    }
    parallel.initialize_distributed(environ)
    assert fake_initialize == [
        dict(coordinator_address="host0:1234", num_processes=3, process_id=2)
    ]


def test_a_second_call_in_one_process_joins_nothing(fake_initialize, monkeypatch):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    parallel.initialize_distributed({})
    assert fake_initialize == []


def test_cpu_collectives_are_switched_on_where_jax_has_none(fake_initialize):
    field = "jax_cpu_collectives_implementation"
    before = getattr(jax.config, field)
    try:
        jax.config.update(field, None)  # older JAX: None or "none"
        parallel.initialize_distributed({})
        assert getattr(jax.config, field) == "gloo"
        jax.config.update(field, "mpi")  # a choice of the user's is kept
        parallel.initialize_distributed({})
        assert getattr(jax.config, field) == "mpi"
    finally:
        jax.config.update(field, before)
    assert fake_initialize == [{}, {}]  # left to JAX's cluster detection
