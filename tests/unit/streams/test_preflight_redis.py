"""``streams.preflight.check_redis`` on a server that is not there: a service waits for it (the
sink's retries), a bounded run is refused at once in one line (it read its whole input and
then hung on its first write, a stop signal waiting behind it)."""

from __future__ import annotations

import socket

import pytest

from diam.settings import load_settings
from streams.preflight import ServiceConfigError, check_redis


def _closed_port() -> int:
    with socket.socket() as s:  # bound then released: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_redis_refuses_a_bounded_run_and_waits_for_a_service() -> None:
    cfg = load_settings().redis.model_copy(
        update={"url": f"redis://127.0.0.1:{_closed_port()}/0"})
    check_redis(cfg)  # a service: left to the retries
    with pytest.raises(ServiceConfigError, match=r"is not reachable .*bounded run does not wait"):
        check_redis(cfg, wait=False)
