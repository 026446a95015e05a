"""The rules of ``serving_cache.holders`` against the real Redis: one owner of a stale claim's
takeover (``claim_holder``, ``release_claim``) for ``diam run`` and ``diam replay``."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from serving_cache.keys import claim_key


@pytest.fixture
def holders_ns(redis_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh namespace of this helper's prefix; its keys are deleted after the test."""
    ns = f"holders_{uuid.uuid4().hex[:12]}"
    yield ns
    keys = list(redis_client.scan_iter(match=f"diam:{ns}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


def _gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_claim_holder_takes_over_a_stale_claim_only(redis_client, holders_ns) -> None:
    from serving_cache.holders import claim_holder, release_claim

    ns = holders_ns
    assert claim_holder(redis_client, ns) == (None, None)
    live = "diam replay pid 1 on elsewhere since 2026-01-01T00:00:00Z (test)"
    redis_client.set(claim_key(ns), live)
    assert claim_holder(redis_client, ns) == (live, None)  # another host's: never stale here
    assert redis_client.get(claim_key(ns)) == live.encode()
    stale = (f"diam replay pid {_gone_pid()} on {socket.gethostname()} since "
             "2026-01-01T00:00:00Z (test)")
    redis_client.set(claim_key(ns), stale)
    assert claim_holder(redis_client, ns) == (None, stale)
    assert redis_client.get(claim_key(ns)) is None
    # a claim taken by another holder since it was read is not deleted
    redis_client.set(claim_key(ns), live)
    assert release_claim(redis_client, ns, stale) is False
    assert redis_client.get(claim_key(ns)) == live.encode()
    assert release_claim(redis_client, ns, live) is True
    assert redis_client.get(claim_key(ns)) is None


def test_one_owner_of_the_claim_script() -> None:
    """The commands use the holders' rule, with no Lua script of their own."""
    import inspect

    from diam.commands import replay, run

    for module in (run, replay):
        assert "redis.call(" not in inspect.getsource(module), module.__name__
