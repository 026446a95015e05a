"""``streams.preflight.check_redis`` on a Redis Cluster none of whose nodes answers, as on a
single server that is not there: a service (a tailing run) is left to the sink's retries, a
bounded run is refused in one line. redis-py's cluster client raises
``RedisClusterUnreachableError`` when made, no ``RedisError`` (``serving_cache.outage``)."""

from __future__ import annotations

import socket

import pytest

from diam.settings import load_settings
from streams.preflight import ServiceConfigError, check_redis


def _closed_port() -> int:
    with socket.socket() as s:  # bound then released: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_cluster_is_waited_for_by_a_service_and_refuses_a_bounded_run() -> None:
    cfg = load_settings().redis.model_copy(
        update={"url": f"redis://127.0.0.1:{_closed_port()}/0", "cluster": True})
    check_redis(cfg)  # a service: left to the retries
    with pytest.raises(ServiceConfigError, match=r"is not reachable .*bounded run does not wait"):
        check_redis(cfg, wait=False)
