"""An ACL user with exactly the commands ``streams.preflight`` documents for a Redis Cluster
(``REDIS_COMMANDS`` + ``REDIS_CLUSTER_COMMANDS`` on ``~diam:*``) writes through a slot being
moved by a resharding (redis-py sends ASKING to the importing node), and a user without ASKING
is refused at the start naming it. On a real 3-master cluster of its own (slots are moved)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py

from serving_cache import RedisConfig, RedisWriter
from serving_cache.keys import user_key
from streams.preflight import (
    REDIS_CLUSTER_COMMANDS,
    REDIS_COMMANDS,
    ServiceConfigError,
    check_redis,
)
from tests.integration.helpers import redis_state
from tests.integration.test_redis_cluster import cluster as cluster  # noqa: F401
from tests.integration.test_redis_cluster import cluster_stack as cluster_stack  # noqa: F401
from tests.integration.test_redis_cluster import redis_client_of
from tests.integration.test_redis_cluster_faults import (
    USERS,
    _finish,
    _migrating,
    _partition,
    _uv,
    _write,
)


def _nodes(rc: Any) -> list[redis_py.Redis]:
    return [rc.get_redis_connection(n) for n in rc.get_nodes()]


def _as(cfg: RedisConfig, name: str, password: str) -> RedisConfig:
    scheme, rest = cfg.url.split("://", 1)
    return cfg.model_copy(update={"url": f"{scheme}://{name}:{password}@{rest}"})


@pytest.fixture
def documented_user(cluster) -> Iterator[tuple[RedisConfig, Any]]:  # noqa: F811
    """(settings, admin client): an ACL user, on every node (ACLs are per node), allowed the
    documented commands on ~diam:*; deleted after."""
    rc = redis_client_of(cluster)
    name, password = f"diam-clacl-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    for node in _nodes(rc):
        node.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["diam:*"],
                         commands=[f"+{c.lower()}" for c in REDIS_COMMANDS + REDIS_CLUSTER_COMMANDS])
    try:
        yield _as(cluster, name, password), rc
    finally:
        for node in _nodes(rc):
            node.acl_deluser(name)


def test_the_documented_acl_user_writes_through_a_slot_being_moved(documented_user) -> None:
    ucfg, rc = documented_user
    check_redis(ucfg, namespace="cl-acl")  # nothing missing
    user_rc = redis_client_of(ucfg)
    ns, plain_ns = "cl-acl", "cl-acl-plain"
    RedisWriter(rc, plain_ns).write_batch([(u, _uv(5, u)) for u in USERS])
    slot, a, b = _migrating(rc, user_key(ns, "u001"))
    try:
        part = _partition(user_rc, ns)
        _write(part, [(u, _uv(5, u)) for u in USERS])  # ASKING at the importing node
        assert part.written == 100 and part.error is None
        assert b.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) >= 1
        assert redis_state(rc, ns) == redis_state(rc, plain_ns)  # byte for byte
        part.close()
    finally:
        _finish(rc, slot, a, b)


def test_a_user_without_asking_is_refused_at_the_start_naming_it(documented_user) -> None:
    ucfg, rc = documented_user
    name = ucfg.url.split("://", 1)[1].split(":", 1)[0]
    for node in _nodes(rc):
        node.acl_setuser(name, enabled=True, commands=["-asking"])
    with pytest.raises(ServiceConfigError, match=r"may not run ASKING;.*ASKING"):
        check_redis(ucfg, namespace="cl-acl")
