"""A whole Redis Cluster down for a while is an outage like a single Redis's, on a real 3-master
cluster of its own (every node is stopped, so it shares no other test's): the sink's write
waits and retries until the nodes are back, then writes byte for byte what it would have
written; a live run's announcement thread lives through it and its close does not raise.
redis-py's cluster client says such an outage as ``RedisClusterUnreachableError``, no
``RedisError`` (``serving_cache.outage``)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from typing import Any

import redis as redis_py

from serving_cache.holders import RunAnnouncement
from serving_cache.keys import runs_key
from tests.integration.helpers import redis_state
from tests.integration.test_redis_cluster import cluster_stack as cluster_stack  # noqa: F401
from tests.integration.test_redis_cluster import redis_client_of
from tests.integration.test_redis_cluster_faults import USERS, _partition, _uv, _write


def _kill_all(cfg: Any) -> list[int]:
    """SIGKILL every node of the cluster (its files kept); the ports killed."""
    from diam.stack_cluster import cluster_ports
    from diam.stack_proc import pid_alive, read_pid

    ports = list(cluster_ports(cfg))
    for port in ports:
        pid = read_pid(_pid_file(cfg, port))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:  # reaps the zombie child
            time.sleep(0.05)
    return ports


def _pid_file(cfg: Any, port: int) -> Any:
    from diam.stack_cluster import _node_dir

    return _node_dir(cfg, port).parent / f"{port}.pid"


def _start_all(cfg: Any, ports: list[int]) -> None:
    """Start the nodes again as ``cluster_up`` starts them (their nodes.conf kept) and wait
    until each serves its slots."""
    from diam.stack_cluster import _node_dir
    from diam.stack_proc import spawn

    for port in ports:
        d = _node_dir(cfg, port)
        spawn([shutil.which(cfg.redis_server) or "redis-server", str(d / "redis.conf")],
              d / "redis.out", _pid_file(cfg, port))
    deadline = time.monotonic() + 30
    for port in ports:
        while True:
            try:
                if redis_py.Redis(port=port).cluster("info").get("cluster_state") == "ok":
                    break
            except redis_py.RedisError:
                pass
            assert time.monotonic() < deadline, f"cluster node {port} did not come back"
            time.sleep(0.2)


def test_a_whole_cluster_down_is_waited_out_and_the_announcement_lives(cluster_stack,
                                                                      caplog) -> None:
    cfg, rcfg = cluster_stack
    rc = redis_client_of(rcfg)
    ns = "cl-down"
    part = _partition(rc, ns)
    _write(part, [(u, _uv(5, u)) for u in USERS])
    ann = RunAnnouncement(rc, ns, refresh_s=0.1)
    ann.start()
    for node in rc.get_primaries():  # on disk before the kill, whatever appendfsync
        rc.get_redis_connection(node).execute_command("BGREWRITEAOF")
    time.sleep(0.5)
    ports = _kill_all(cfg)
    back = threading.Timer(2.0, _start_all, (cfg, ports))
    back.start()
    try:
        time.sleep(0.5)  # a few refreshes fail meanwhile
        assert ann._thread is not None and ann._thread.is_alive()
        t0 = time.monotonic()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _write(part, [(u, _uv(6, u)) for u in USERS[:10]])  # waits for the nodes, writes
        assert time.monotonic() - t0 > 1.0  # it did wait (the nodes were down)
        # said once when it began and once when it ended; redis-py's own line per retry
        # (ERROR redis.cluster: Topology refresh failed) is not shown. The primaries came
        # back with new run ids, so the sink may also say once that they restarted and
        # re-push the users it holds (a restarted node may have lost its newest writes); and
        # a write that redis-py's own retries carried past the restart sees only that (a race
        # on a loaded box): at least one of the two, each at most once. The outage begins as
        # "unreachable" (no node answers) or, when a node is back before the cluster is
        # whole, as "refusing writes" (CLUSTERDOWN): both are waited out
        lines = [f"{r.name}: {r.getMessage()}" for r in caplog.records]
        began = sum("unreachable since" in x or "refusing writes since" in x for x in lines)
        restarted = sum("restarted or gave way to another node" in x for x in lines)
        assert began <= 1 and restarted <= 1 and began + restarted >= 1, lines
        assert sum("reachable again" in x for x in lines) == began, lines
        assert not any(x.startswith("redis.cluster") for x in lines), lines
    finally:
        back.join()
    assert ann._thread.is_alive()  # lived through the outage
    after = redis_state(rc, ns)
    assert len(after) == 100
    # byte for byte what a write without the outage gives
    clean = _partition(rc, "cl-clean")
    _write(clean, [(u, _uv(5, u)) for u in USERS])
    _write(clean, [(u, _uv(6, u)) for u in USERS[:10]])
    assert after == redis_state(rc, "cl-clean")
    # a close while the whole cluster is down again: no error (the member ages out)
    ports = _kill_all(cfg)
    try:
        ann.close()
    finally:
        _start_all(cfg, ports)
    part.close()
    clean.close()
    assert rc.exists(runs_key(ns)) in (0, 1)  # the cluster answers again


def test_a_sink_built_while_the_whole_cluster_is_down_waits_for_it(cluster_stack, caplog) -> None:
    """A partition built while no node answers (the cluster client asks for the slot map when
    made) waits, said once, instead of raising in the dataflow's build."""
    import logging

    from streams.redis_sink import RedisVectorSink

    cfg, rcfg = cluster_stack
    sink = RedisVectorSink(rcfg, namespace="cl-build", max_backoff_s=0.2)
    ports = _kill_all(cfg)
    back = threading.Timer(1.5, _start_all, (cfg, ports))
    back.start()
    try:
        with caplog.at_level(logging.WARNING, logger="streams.redis_sink"):
            part = sink.build("sink", 0, 1)
    finally:
        back.join()
    said = [r.getMessage() for r in caplog.records if "unreachable at the sink's start" in
            r.getMessage()]
    assert len(said) == 1, said
    _write(part, [(u, _uv(5, u)) for u in USERS[:10]])
    assert len(redis_state(redis_client_of(rcfg), "cl-build")) == 10
    part.close()
