"""The Docker path of the local stack: ``docker compose`` on the repository's
``docker-compose.yml``, used only when a Docker engine answers ``docker info``.

Only the ``kafka`` and ``redis`` services are started here; the application services
(online, snapshotter, serve) are in the compose file's ``app`` profile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from diam.settings import StackConfig
from diam.stack_kafka import StackError

PROJECT = "diam"
"""Compose project name, so ``down`` finds the containers whatever the working directory."""


def engine_answers() -> bool:
    """Whether a Docker engine answers (``docker info`` succeeds within 15 s)."""
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=15,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def compose_file() -> Path:
    """``docker-compose.yml`` of the source tree (editable install), else of the working dir."""
    here = Path(__file__).resolve().parents[1] / "docker-compose.yml"
    return here if here.is_file() else Path("docker-compose.yml").resolve()


def _compose(cfg: StackConfig, *args: str) -> subprocess.CompletedProcess[str]:
    if not engine_answers():
        raise StackError("no Docker engine answers (`docker info` failed); "
                         "drop --docker to run Kafka and Redis as local processes")
    base = ["docker", "compose"]
    if subprocess.run(base + ["version"], capture_output=True).returncode != 0:
        if shutil.which("docker-compose") is None:
            raise StackError("neither `docker compose` nor `docker-compose` is installed")
        base = ["docker-compose"]
    path = compose_file()
    if not path.is_file():
        raise StackError(f"{path} not found: run from the diam-stream checkout")
    env = dict(os.environ,
               DIAM_STACK_KAFKA_PORT=str(cfg.kafka_port),
               DIAM_STACK_REDIS_PORT=str(cfg.redis_port),
               DIAM_STACK_KAFKA_VERSION=cfg.kafka_version)
    proc = subprocess.run(base + ["-f", str(path), "-p", PROJECT, *args], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise StackError(f"docker compose {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def up(cfg: StackConfig, echo: Callable[[str], None]) -> None:
    """Start the kafka and redis containers and wait for their healthchecks."""
    echo("starting kafka and redis containers (docker compose)")
    _compose(cfg, "up", "-d", "--wait", "--wait-timeout", str(int(cfg.start_timeout_s)),
             "kafka", "redis")


def down(cfg: StackConfig, echo: Callable[[str], None]) -> None:
    """Stop and remove the compose project's containers (volumes are kept)."""
    _compose(cfg, "down", "--remove-orphans")
    echo("containers of compose project 'diam' removed")
