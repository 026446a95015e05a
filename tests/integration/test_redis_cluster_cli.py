"""``DIAM_REDIS_CLUSTER=true`` with settings that reach no cluster: every command says one
``Error:`` line, as with a single Redis, never a traceback (redis-py's cluster client connects
at once and raises ``RedisClusterException``, which is no ``RedisError``); ``diam serve`` waits
for the cluster instead of exiting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from diam.cli import main
from serving_cache import RedisConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url_with_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def _cases(stack) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    """name: (URL, what its one error line says)."""
    return {
        "unreachable": (f"redis://127.0.0.1:{_free_port()}/0", "is not usable"),
        "single server": (stack.redis_url, "is not a node of a Redis Cluster"),
        "db 1": (_url_with_db(stack.redis_url, 1), "has db 0 only"),
    }


@pytest.mark.parametrize("case", ["unreachable", "single server", "db 1"])
@pytest.mark.parametrize("args", [["inspect", "namespace", "--namespace", "redisfixb-x"],
                                  ["recommend", "1", "-n", "3"]])
def test_a_cluster_no_command_can_use_is_one_error_line(stack, case: str, args: list[str]) -> None:
    url, says = _cases(stack)[case]
    s = stack.settings.model_copy(update={"redis": RedisConfig(url=url, cluster=True)})
    r = CliRunner().invoke(main, args, obj={"settings": s})
    assert r.exit_code == 1, (r.output, r.exception)
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # not a traceback
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and says in errors[0], r.output
    if case == "unreachable":
        assert "Redis Cluster cannot be connected" in errors[0], errors


def test_diam_serve_waits_for_a_cluster_that_does_not_answer(stack) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    env = {**os.environ, "DIAM_CONFIG": "", "DIAM_REDIS_URL": url, "DIAM_REDIS_CLUSTER": "true",
           "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap}
    proc = subprocess.Popen([sys.executable, "-m", "diam", "serve", "--port", str(_free_port())],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first thing it says
        assert "does not answer" in line and "waiting for it" in line, line
        time.sleep(3)
        assert proc.poll() is None, proc.stderr.read()  # still waiting, not exited
    finally:
        proc.terminate()
        proc.wait(timeout=30)
