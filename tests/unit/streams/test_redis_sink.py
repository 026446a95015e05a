"""The Redis sink's bookkeeping without a server: what one merged write sends, what the
partition keeps for re-pushes, and when a lost key set is re-pushed. The real-server paths
(refusals, outages, FLUSHALL) are in ``tests/integration/test_faults.py``."""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from serving_cache import UserVectors
from serving_cache.keys import generation_key
from streams.redis_sink import RELEASED, _Partition


class _Client:
    """The calls the sink's marker check makes, on a dict."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.kv.get(key)

    def set(self, key: str, value: bytes, nx: bool = False) -> bool:
        if nx and key in self.kv:
            return False
        self.kv[key] = value
        return True

    def exists(self, *keys: str) -> int:
        return sum(k in self.kv for k in keys)

    def delete(self, *keys: str) -> int:
        return sum(self.kv.pop(k, None) is not None for k in keys)

    def info(self, section: str) -> dict[str, int]:  # the eviction watch's INFO stats
        return {"evicted_keys": 0}


class _Writer:
    """Records each write the partition sends."""

    def __init__(self) -> None:
        self.client, self.ns = _Client(), "t"
        self.sent: list[list[tuple[str, int]]] = []
        self.kept: set[str] = set()  # users whose value the fake Redis holds at a newer seq
        self.last_skipped: list[tuple[str, UserVectors]] = []
        self.last_refused = 0
        self.last_refused_entries: list[tuple[str, UserVectors]] = []

    def write_batch(self, entries: list[tuple[str, UserVectors]]) -> int:
        self.sent.append(sorted((u, uv.seq) for u, uv in entries))
        newest = dict(sorted(entries, key=lambda e: e[1].seq))
        self.last_skipped = [(u, uv) for u, uv in newest.items() if u in self.kept]
        return len(newest) - len(self.last_skipped)


def _uv(seq: int) -> UserVectors:
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=seq)


def _partition() -> tuple[_Partition, _Writer]:
    w = _Writer()
    # an hour between the writer thread's own checks: the test drives every write itself
    return _Partition(w, max_backoff_s=0.01, check_every_s=3600.0), w  # type: ignore[arg-type]


def test_a_released_user_is_written_then_no_longer_held() -> None:
    part, w = _partition()
    part._write([("a", _uv(1)), ("b", _uv(2)), ("a", _uv(3)), ("a", RELEASED)])
    assert w.sent == [[("a", 1), ("a", 3), ("b", 2)]]  # the writer keeps the newest per user
    assert set(part._held) == {"b"}
    part._write([("a", _uv(9))])  # a returning user: a new state, held again
    assert set(part._held) == {"a", "b"} and part._held["a"].seq == 9
    part.close()


def test_a_lost_marker_re_pushes_the_held_users_and_a_released_users_last_push() -> None:
    part, w = _partition()
    part._write([("b", _uv(2))])  # the first check sets the marker
    marker = w.client.kv[generation_key("t")]
    del w.client.kv[generation_key("t")]  # the key set was lost (a FLUSHALL)
    part._next_check = 0.0
    part._write([("a", _uv(5)), ("a", RELEASED)])
    assert w.sent[-1] == [("a", 5), ("b", 2)]  # b re-pushed; a's last push still written
    assert part.repushed == 1 and set(part._held) == {"b"}
    assert w.client.kv[generation_key("t")] != marker  # a new marker for the others to see
    part._next_check = 0.0
    part._write([])  # the marker unchanged since: nothing re-pushed
    assert w.sent[-1] == [] and part.repushed == 1
    part.close()


def test_a_forget_deletes_the_key_and_is_not_held() -> None:
    part, w = _partition()
    w.client.kv["diam:t:u:c"] = b"old"
    part._write([("c", _uv(1)), ("c", None)])
    assert "diam:t:u:c" not in w.client.kv and "c" not in part._held
    assert w.sent == [[]]  # the write before the forget is dropped with it
    part.close()


def test_pushes_redis_kept_out_are_counted_on_the_writer_threads_counters() -> None:
    from streams.online import FlowStats

    part, w = _partition()
    stats = FlowStats()
    part.counts = stats.counts
    w.kept = {"a", "b"}  # another run's newer state for two users
    part._write([("a", _uv(1)), ("b", _uv(2)), ("c", _uv(3))])
    assert stats.as_dict()["stale_pushes"] == 2
    part._write([("c", _uv(4))])
    assert stats.as_dict()["stale_pushes"] == 2  # written
    part._suspect = True  # Redis may have lost writes: everything held is pushed again
    w.client.kv.clear()
    part._write([("d", _uv(5))])
    assert w.sent[-1] == [("a", 1), ("b", 2), ("c", 4), ("d", 5)]
    assert stats.as_dict()["stale_pushes"] == 2  # a re-push's are expected


def test_a_resumed_users_re_push_redis_kept_out_is_counted_apart_from_stale_pushes() -> None:
    from streams.online import FlowStats
    from streams.redis_sink import ResumedPush, resumed_push

    part, w = _partition()
    stats = FlowStats()
    part.counts = stats.counts
    w.kept = {"a", "b", "c"}  # Redis holds a, b and c at their seq or newer
    again = resumed_push(_uv(1))
    assert isinstance(again, ResumedPush) and again == _uv(1)  # the same value, byte for byte
    part._write([("a", again), ("b", resumed_push(_uv(2))), ("c", _uv(3)), ("d", _uv(4))])
    got = stats.as_dict()
    assert (got["resumed_repushes"], got["stale_pushes"]) == (2, 1)
    part.close()


def test_an_outage_says_when_it_began_then_how_long_it_lasted(caplog: Any) -> None:
    import redis

    class _Down(_Writer):
        fails = 2

        def write_batch(self, entries: list[tuple[str, UserVectors]]) -> int:
            if self.fails:
                self.fails -= 1
                raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
            return super().write_batch(entries)

    w = _Down()
    part = _Partition(w, max_backoff_s=0.01, check_every_s=3600.0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="streams.redis_sink"):
        part._write([("a", _uv(1))])
    part.close()
    lines = [r.getMessage() for r in caplog.records if "reachable" in r.getMessage()]
    assert len(lines) == 2  # one when it began, one when it ended; not one per try
    # the first line has no duration to give (the failed call's own time, 0.0 s on a refusal)
    assert re.search(r"unreachable since \d\d:\d\d:\d\d \(Error 111 .*\); writes wait and retry",
                     lines[0]), lines[0]
    assert " for " not in lines[0]
    assert re.search(r"reachable again after \d+\.\d s of outage", lines[1]), lines[1]
