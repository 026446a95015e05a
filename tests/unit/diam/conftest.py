"""Fixtures of the CLI tests: an isolated settings environment and ports nothing listens on."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


def closed_port() -> int:
    """A loopback port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """Settings that read no diam.toml and keep snapshots and data under ``tmp_path``."""
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


@pytest.fixture
def offline_cli(isolated_env):
    """``invoke(*args)``: the ``diam`` CLI in-process, its Redis and Kafka on ports nothing
    listens on (a command that reaches for them fails as with the stack down)."""
    from click.testing import CliRunner

    from diam.cli import main
    from diam.settings import load_settings

    isolated_env.setenv("DIAM_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    isolated_env.setenv("DIAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{closed_port()}")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), obj={"settings": load_settings()})

    return invoke


@pytest.fixture
def run(isolated_env):
    """``invoke(*args)``: the ``diam`` CLI in-process with the isolated settings; its Redis on
    a port it never reaches (commands that need no Redis)."""
    from click.testing import CliRunner

    from diam.cli import main

    isolated_env.setenv("DIAM_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args))

    return invoke


@pytest.fixture
def synth(run, tmp_path) -> Path:
    """A small synthetic dataset (60 users, 200 items) written by ``diam data synth``."""
    out = tmp_path / "syn"
    r = run("data", "synth", "--users", "60", "--items", "200", "--categories", "10",
            "--events-per-user", "20", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    return out
