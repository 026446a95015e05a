"""Fixtures of the integration tests: the real Kafka broker and Redis server.

``stack`` (session) uses ``DIAM_KAFKA_BOOTSTRAP`` / ``DIAM_REDIS_URL`` when either is set, else
starts the local stack (``diam stack up``, idempotent: a running one is reused). It never skips:
when the services cannot be reached, every integration test errors with the reason and the tail
of the broker's log. Each test gets a fresh uuid ``topic`` and Redis ``namespace``, removed after.

Every test under tests/integration is marked ``integration`` (``pytest -m "not integration"``
runs the rest without services).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from diam.settings import Settings, load_settings

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Stack:
    """The services the integration tests talk to."""

    bootstrap: str
    redis_url: str
    settings: Settings
    """Settings whose ``kafka.bootstrap`` and ``redis.url`` point at this stack."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "partitions(n): number of partitions of the test's `topic` fixture (default 4)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _with_addresses(s: Settings, bootstrap: str, redis_url: str) -> Settings:
    return s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"bootstrap": bootstrap}),
        "redis": s.redis.model_copy(update={"url": redis_url}),
    })


def _check_external(s: Settings) -> None:
    """Fail (not skip) when the services do not answer."""
    from diam.stack_kafka import metadata
    from serving_cache import redis_client

    if metadata(s.kafka.client_config(), timeout_s=10.0) is None:
        pytest.fail(f"Kafka at {s.kafka.bootstrap} (DIAM_KAFKA_BOOTSTRAP) does not answer a "
                    "metadata request", pytrace=False)
    try:
        redis_client(s.redis).ping()
    except Exception as exc:
        pytest.fail(f"Redis at {s.redis.url} (DIAM_REDIS_URL) does not answer PING: {exc}",
                    pytrace=False)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The real Kafka + Redis: from the environment, or the local stack started on demand."""
    from diam.stack import StackError, ensure_stack

    s = load_settings()
    if "DIAM_KAFKA_BOOTSTRAP" in os.environ or "DIAM_REDIS_URL" in os.environ:
        _check_external(s)
        return Stack(s.kafka.bootstrap, s.redis.url, s)
    try:
        bootstrap, redis_url = ensure_stack(s)
    except StackError as exc:
        reason = str(exc)
    else:
        return Stack(bootstrap, redis_url, _with_addresses(s, bootstrap, redis_url))
    pytest.fail(f"the local stack did not start (integration tests never skip):\n{reason}",
                pytrace=False)


def _admin(stack: Stack):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = dict(stack.settings.kafka.client_config())
    return AdminClient(conf)


def create_topic(stack: Stack, name: str, partitions: int, timeout: float = 30.0) -> None:
    """Create ``name`` and wait until the broker reports a leader for every partition."""
    from confluent_kafka.admin import NewTopic

    admin = _admin(stack)
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name].result(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = admin.list_topics(name, timeout=timeout).topics.get(name)
        if (t is not None and t.error is None and len(t.partitions) == partitions
                and all(p.leader >= 0 for p in t.partitions.values())):
            return
        time.sleep(0.05)
    raise TimeoutError(f"topic {name} has no leaders after {timeout:.0f} s")


def delete_topics(stack: Stack, names: list[str]) -> None:
    """Delete topics, skipping ones already gone (``streams.kafka_io.delete_topics``)."""
    from streams.kafka_io import delete_topics as delete

    delete(stack.settings.kafka, names)


@pytest.fixture
def new_topic(stack: Stack) -> Iterator:
    """Factory: ``new_topic(partitions=4, prefix="t") -> name``; every topic made is deleted
    after the test."""
    made: list[str] = []

    def make(partitions: int = 4, prefix: str = "t") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:16]}"
        create_topic(stack, name, partitions)
        made.append(name)
        return name

    yield make
    # Also the side topics a test derived from its topic (``<topic>.drift``, ``<topic>.dlq``...).
    existing = _admin(stack).list_topics(timeout=30).topics
    derived = [t for t in existing for m in made if t.startswith(f"{m}.")]
    delete_topics(stack, made + derived)


@pytest.fixture
def topic(request: pytest.FixtureRequest, new_topic) -> str:  # type: ignore[no-untyped-def]
    """A fresh topic, 4 partitions unless the test says ``@pytest.mark.partitions(n)``."""
    mark = request.node.get_closest_marker("partitions")
    return str(new_topic(mark.args[0] if mark else 4))


@pytest.fixture
def redis_client(stack: Stack):  # type: ignore[no-untyped-def]
    """A Redis client of the stack (security settings applied)."""
    from serving_cache import redis_client as make_client

    client = make_client(stack.settings.redis)
    yield client
    client.close()


@pytest.fixture
def namespace(redis_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh Redis key namespace; every ``diam:{ns}:*`` key is deleted after the test."""
    ns = f"t{uuid.uuid4().hex[:16]}"
    yield ns
    keys = list(redis_client.scan_iter(match=f"diam:{ns}:*", count=1000))
    for i in range(0, len(keys), 500):
        redis_client.delete(*keys[i:i + 500])
