"""Eigen for XLA:CPU's products (ram_jax.cpu_dots): when the flag is added, and that it acts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ram_jax import cpu_dots, xla_workarounds

FLAG = cpu_dots.EIGEN_DOTS_FLAG


@pytest.fixture
def fresh_xla(monkeypatch):
    """As if XLA had not started, on a jaxlib that knows the flag, with no XLA_FLAGS set."""
    monkeypatch.setattr(xla_workarounds, "xla_started", lambda: False)
    monkeypatch.setattr(cpu_dots, "jaxlib_version", lambda: (0, 10, 2))
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    return monkeypatch


def test_adds_the_flag_before_xla_starts(fresh_xla):
    fresh_xla.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert cpu_dots.use_eigen_dots()
    assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", FLAG]
    assert cpu_dots.use_eigen_dots()  # idempotent
    assert os.environ["XLA_FLAGS"].split().count(FLAG) == 1


def test_the_users_choice_of_dot_library_wins(fresh_xla):
    fresh_xla.setenv("XLA_FLAGS", f"{FLAG}individual_dot")
    assert not cpu_dots.use_eigen_dots()
    assert os.environ["XLA_FLAGS"] == f"{FLAG}individual_dot"


def test_too_late_once_xla_has_started(fresh_xla):
    fresh_xla.setattr(xla_workarounds, "xla_started", lambda: True)
    assert not cpu_dots.use_eigen_dots()
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize("version", [(0, 4, 30), (0, 10, 0)])
def test_older_jaxlib_is_left_alone(fresh_xla, version):
    # XLA aborts the process on a flag it does not know.
    fresh_xla.setattr(cpu_dots, "jaxlib_version", lambda: version)
    assert not cpu_dots.use_eigen_dots()
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize(
    "version, expected",
    [("0.10.2", (0, 10, 2)), ("0.11.0.dev20260101", (0, 11, 0)), ("0.4.30", (0, 4, 30))],
)
def test_jaxlib_version_parses(monkeypatch, version, expected):
    import jaxlib.version

    monkeypatch.setattr(jaxlib.version, "__version__", version)
    assert cpu_dots.jaxlib_version() == expected


@pytest.mark.skipif(
    cpu_dots.jaxlib_version() < cpu_dots.MIN_JAXLIB, reason="this jaxlib has no YNNPACK dots"
)
@pytest.mark.parametrize("eigen", [True, False])
def test_in_a_fresh_process_the_products_leave_ynnpack(eigen):
    # XLA reads its flags once per process, so the check needs a process of its own.
    code = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp
        from ram_jax import cpu_dots
        if {eigen}:
            assert cpu_dots.use_eigen_dots()
        x = jnp.ones((64, 64), jnp.float32)
        hlo = jax.jit(lambda a: jnp.tanh(a @ a)).lower(x).compile().as_text()
        print("ynn" in hlo.lower())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == str(not eigen)
