"""The writer's forget check on a Redis Cluster (``RedisWriter._not_forgotten``: read before
the scripts, the hash being in another slot than most user keys) does what the single Redis
script does: failing closed, it writes nothing while the markers' hash lacks its mark
(``serving_cache.keys.FORGOTTEN_HELD``), and a refused push's key learnt before the tombstone
is deleted.

A cluster of three primaries started for this module (``diam stack up --redis-cluster``'s)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from serving_cache import RedisWriter, UserVectors, user_key
from serving_cache.keys import FORGOTTEN_HELD, forgotten_key
from serving_cache.writer import MarkersMissing
from tests.integration.test_redis_cluster import cluster as cluster  # noqa: F401
from tests.integration.test_redis_cluster import cluster_stack as cluster_stack  # noqa: F401
from tests.integration.test_redis_cluster import redis_client_of


def _uv(seq: int) -> UserVectors:
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32),
                       ts=seq)


@pytest.fixture
def rc(cluster) -> Iterator[Any]:  # type: ignore[no-untyped-def]  # noqa: F811
    client = redis_client_of(cluster)
    yield client
    client.close()


@pytest.fixture
def names(rc) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A namespace and a topic of the test's own; their keys deleted after it."""
    tag = uuid.uuid4().hex[:12]
    ns, topic = f"t{tag}", f"c.{tag}"
    yield ns, topic
    for node in rc.get_primaries():
        conn = rc.get_redis_connection(node)
        for key in conn.scan_iter(match=f"diam:{ns}:*"):
            conn.delete(key)
    rc.delete(forgotten_key(topic, "TID"))


def test_a_hash_without_its_mark_fails_closed_on_a_cluster(  # type: ignore[no-untyped-def]
        rc, names) -> None:
    ns, topic = names
    key = forgotten_key(topic, "TID")
    # a restore half done, or a forget's HSET after the loss: some markers, no mark
    rc.hset(key, mapping={"a": 10**9})
    w = RedisWriter(rc, ns, topic=topic, topic_id="TID", markers_required=True)
    with pytest.raises(MarkersMissing):
        w.write_batch([("b", _uv(5)), ("c", _uv(5))])
    assert rc.get(user_key(ns, "b")) is None and rc.get(user_key(ns, "c")) is None
    rc.hset(key, FORGOTTEN_HELD, 0)  # the restore's last step
    assert w.write_batch([("a", _uv(5)), ("b", _uv(5))]) == 1 and w.last_refused == 1
    # a writer that does not fail closed reads the markers of a hash without the mark too
    loose = RedisWriter(rc, ns, topic=topic, topic_id="TID")
    rc.hdel(key, FORGOTTEN_HELD)
    assert loose.write_batch([("a", _uv(6))]) == 0 and loose.last_refused == 1


def test_a_refused_push_deletes_the_older_key_on_a_cluster(  # type: ignore[no-untyped-def]
        rc, names) -> None:
    """As the single Redis script: a refused push's key holding an older value (learnt before
    the tombstone too) goes; one holding a newer value (learnt after the forget) stays."""
    ns, topic = names
    key = forgotten_key(topic, "TID")
    # users in several slots: one call per slot
    users = [f"u{i}" for i in range(12)]
    rc.hset(key, mapping={FORGOTTEN_HELD: 0, **{u: 100 for u in users}, "new": 100})
    plain = RedisWriter(rc, ns)  # values left before the tombstone (a writer without the check)
    plain.write_batch([(u, _uv(5)) for u in users] + [("new", _uv(150))])
    w = RedisWriter(rc, ns, topic=topic, topic_id="TID", markers_required=True)
    assert w.write_batch([(u, _uv(7)) for u in users] + [("new", _uv(9))]) == 0
    assert w.last_refused == 13
    left = [u for u in users if rc.exists(user_key(ns, u))]
    assert left == [], f"refused pushes left their pre-tombstone keys: {left}"
    assert rc.exists(user_key(ns, "new")) == 1  # newer than the push: not the push's to delete
