"""Redis Cluster faults the dataflow's sink lives through, on a real 3-master cluster of its own
(``diam stack up --redis-cluster``'s launcher; these tests stop nodes and move slots, so they do
not share ``test_redis_cluster``'s): one primary losing its data alone (a FLUSHALL, a restart
without its files, a restart that lost its last writes) is noticed and everything the run holds
is re-pushed; a slot being migrated (ASK) or moved (MOVED) is followed, and the values written
are byte for byte the ones written without the fault."""

from __future__ import annotations

import os
import shutil
import signal
import time
from typing import Any

import numpy as np
import pytest
import redis as redis_py
from redis.crc import key_slot

from serving_cache import RedisWriter, UserVectors
from serving_cache.keys import generation_key, user_key
from streams.redis_sink import _Partition
from tests.flowkit import click_stream
from tests.integration.helpers import click_payloads, produce, redis_state
from tests.integration.test_redis_cluster import (  # noqa: F401 (fixtures)
    _holder,
    _job,
    redis_client_of,
)
from tests.integration.test_redis_cluster import cluster as cluster  # noqa: F401
from tests.integration.test_redis_cluster import cluster_stack as cluster_stack  # noqa: F401


def _uv(seq: int, user: str) -> UserVectors:
    vecs = np.arange(8, dtype=np.float32).reshape(2, 4) * seq + len(user)
    return UserVectors(seq=seq, model="m", k=2, d=0.5, dim=4, vecs=vecs, ts=seq)


def _partition(rc: Any, ns: str) -> _Partition:
    # every write checks the markers; the writer thread's own checks wait an hour
    part = _Partition(RedisWriter(rc, ns, keys_per_call=7), max_backoff_s=0.2,
                      check_every_s=3600.0)
    part._next_check = 0.0
    return part


def _write(part: _Partition, items: list[tuple[str, UserVectors]]) -> None:
    part._next_check = 0.0  # check the markers at this write
    part._write(items)  # type: ignore[arg-type]


def _other_primary(rc: Any, key: str) -> Any:
    """A primary that does not hold ``key``."""
    owner = rc.nodes_manager.get_node_from_slot(key_slot(key.encode())).name
    return next(n for n in rc.get_primaries() if n.name != owner)


def _node_keys(rc: Any, node: Any, ns: str) -> set[bytes]:
    return set(rc.get_redis_connection(node).scan_iter(match=f"diam:{ns}:u:*", count=1000))


USERS = [f"u{i:03d}" for i in range(100)]


def test_a_primary_that_alone_lost_its_keys_gets_every_held_user_again(cluster) -> None:
    rc = redis_client_of(cluster)
    ns = "cl-flush"
    part = _partition(rc, ns)
    _write(part, [(u, _uv(5, u)) for u in USERS])  # the first check sets the markers
    before = redis_state(rc, ns)
    assert len(before) == 100
    node = _other_primary(rc, generation_key(ns))  # the namespace's own marker survives
    assert _node_keys(rc, node, ns)
    rc.get_redis_connection(node).flushall()
    _write(part, [("u000", _uv(6, "u000"))])  # one click: every held user comes back
    after = redis_state(rc, ns)
    assert set(after) == set(before) and part.repushed == 100
    assert {u: v for u, v in after.items() if u != "u000"} == {
        u: v for u, v in before.items() if u != "u000"}  # byte for byte
    repushed = part.repushed
    _write(part, [("u001", _uv(6, "u001"))])  # nothing lost since: no re-push
    assert part.repushed == repushed
    part.close()


def _restart(cfg: Any, node: Any, drop_data: bool) -> None:
    """kill -9 the node and start it again as ``cluster_up`` starts it (its nodes.conf kept:
    the same node), without its AOF files when ``drop_data``."""
    from diam.stack_cluster import _node_dir
    from diam.stack_proc import pid_alive, read_pid, spawn

    port = int(node.port)
    d = _node_dir(cfg, port)
    pid = read_pid(d.parent / f"{port}.pid")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # the node is this process's child (the cluster_stack fixture started it): killed, it
    # stays in /proc as a zombie until reaped, which pid_alive does (waiting for /proc/<pid>
    # to go always ran out its 10 s)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if drop_data:
        shutil.rmtree(d / "data" / "appendonlydir", ignore_errors=True)
    spawn([shutil.which(cfg.redis_server) or "redis-server", str(d / "redis.conf")],
          d / "redis.out", d.parent / f"{port}.pid")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the node serves its slots again
        try:
            if redis_py.Redis(port=port).cluster("info").get("cluster_state") == "ok":
                return
        except redis_py.RedisError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"cluster node {port} did not come back")


@pytest.mark.parametrize("drop_data", [True, False], ids=["without-its-files", "lost-last-writes"])
def test_a_restarted_primary_gets_every_held_user_again(cluster_stack, drop_data: bool) -> None:
    cfg, rcfg = cluster_stack
    rc = redis_client_of(rcfg)
    ns = f"cl-restart-{int(drop_data)}"
    part = _partition(rc, ns)
    _write(part, [(u, _uv(5, u)) for u in USERS])
    before = redis_state(rc, ns)
    node = _other_primary(rc, generation_key(ns))
    rc.get_redis_connection(node).execute_command("BGREWRITEAOF")  # on disk, whatever appendfsync
    time.sleep(0.5)
    _restart(cfg, node, drop_data)
    if not drop_data:
        # the restarted node kept its markers, but not (as with appendfsync everysec) its last
        # second of writes: no marker tells; the node's new run id does
        conn = redis_py.Redis(port=int(node.port))
        lost = _node_keys(rc, node, ns)
        assert lost
        for k in lost:  # keys of many slots: one DEL each
            conn.delete(k)
    _write(part, [("u000", _uv(6, "u000"))])
    after = redis_state(rc, ns)
    assert set(after) == set(before) and part.repushed == 100
    assert {u: v for u, v in after.items() if u != "u000"} == {
        u: v for u, v in before.items() if u != "u000"}
    part.close()


def _migrating(rc: Any, key: str) -> tuple[int, Any, Any]:
    """Mark the slot of ``key`` as migrating from its node to another primary, as
    ``redis-cli --cluster reshard`` does before it moves the keys; the slot, the source
    node's and the target node's clients."""
    slot = key_slot(key.encode())
    src = rc.nodes_manager.get_node_from_slot(slot)
    a, b = rc.get_redis_connection(src), rc.get_redis_connection(_other_primary(rc, key))
    b.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", a.cluster("myid"))
    a.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", b.cluster("myid"))
    return slot, a, b


def _finish(rc: Any, slot: int, a: Any, b: Any) -> None:
    """End the migration: the source's keys of the slot move, the slot goes to the target."""
    host, port = b.get_connection_kwargs()["host"], b.get_connection_kwargs()["port"]
    for k in a.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
        a.execute_command("MIGRATE", host, port, k, 0, 5000)
    dst_id = b.cluster("myid")
    for n in rc.get_primaries():
        rc.get_redis_connection(n).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def test_a_slot_being_migrated_is_written_through_asking_then_moved(cluster) -> None:
    rc = redis_client_of(cluster)
    ns, plain_ns = "cl-ask", "cl-plain"
    plain = RedisWriter(rc, plain_ns)
    plain.write_batch([(u, _uv(5, u)) for u in USERS])
    slot, a, b = _migrating(rc, user_key(ns, "u001"))
    try:
        # the slot's keys, not on the source, go to the importing node after ASKING
        part = _partition(rc, ns)
        _write(part, [(u, _uv(5, u)) for u in USERS])
        assert part.repushed == 0 and part.written == 100
        assert b.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) >= 1  # on the target
        assert redis_state(rc, ns) == redis_state(rc, plain_ns)  # byte for byte
    finally:
        _finish(rc, slot, a, b)
    # the writer's slot map still names the source: MOVED, learnt again
    users = [u for u in USERS if key_slot(user_key(ns, u).encode()) == slot]
    assert part.writer.write_batch([(u, _uv(7, u)) for u in users]) == len(users)
    plain.write_batch([(u, _uv(7, u)) for u in users])
    assert redis_state(rc, ns) == redis_state(rc, plain_ns)
    part.close()


def test_diam_run_writes_through_a_slot_being_migrated(stack, topic, cluster) -> None:
    from streams.runner import run_online

    rc = redis_client_of(cluster)
    events = click_stream(n_users=40, n_events=600, seed=5)
    produce(stack.settings.kafka, topic, click_payloads(events))
    ns, plain_ns = "cl-run", "cl-run-plain"
    run_online(_job(stack, topic, plain_ns, cluster), _holder())
    want = redis_state(rc, plain_ns)
    slot, a, b = _migrating(rc, user_key(ns, sorted(want)[0]))
    try:
        run_online(_job(stack, topic, ns, cluster), _holder())
        assert redis_state(rc, ns) == want
    finally:
        _finish(rc, slot, a, b)
    assert redis_state(rc, ns) == want
