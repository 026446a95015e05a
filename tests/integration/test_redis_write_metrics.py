"""What the Redis sink tells the metrics, against the real Redis: the acknowledged values and
freshness samples are the pushes Redis wrote (``streams.redis_sink._Partition._acked``), and
a re-push after Redis lost the key set is counted (``lost_repushes``,
``diam_flow_redis_lost_repushes_total``, the summary line's "re-pushed after Redis lost
data"). Before, a clean restart's re-pushes that Redis already held were observed as
freshness samples of their old event time (and acknowledged values), and a loss's re-push
was in no count."""

from __future__ import annotations

import re
import time
import uuid

import numpy as np

from serving_cache import UserVectors
from serving_cache.keys import forgotten_key
from streams.metrics import FlowMetrics
from streams.online import FlowStats
from streams.redis_sink import RedisVectorSink, resumed_push


def _uv(seq: int, age_s: float = 0.0) -> UserVectors:
    ts = int(time.time() * 1000 - age_s * 1000)
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2,
                       vecs=np.ones((1, 2), np.float32), ts=ts)


def _value(text: str, name: str) -> float:
    m = re.search(rf'^{name}{{process="p"}} (\S+)$', text, re.M)
    assert m is not None, f"{name} not in:\n{text}"
    return float(m.group(1))


def _run(redis_cfg, namespace: str, batches, topic: str | None = None,  # type: ignore[no-untyped-def]
         lose_after: int | None = None, redis_client=None) -> tuple[FlowStats, str]:  # type: ignore[no-untyped-def]
    """``batches`` written by one sink partition, as a dataflow's run would, each awaited;
    with ``lose_after``, the namespace's keys are deleted (a loss) after that many batches, and
    the next one waits for the re-push."""
    stats = FlowStats()
    metrics = FlowMetrics(stats, process="p")
    sink = RedisVectorSink(redis_cfg, namespace, check_every_s=0.05, topic=topic)
    sink.counts, sink.observer = stats.counts, metrics.observe_redis_write
    part = sink.build("vectors", 0, 1)
    try:
        for i, batch in enumerate(batches):
            if lose_after is not None and i == lose_after:
                # one DEL, as a FLUSHALL: deleted key by key, the writer's check (every 50 ms)
                # could find the loss half-way and re-push before the rest went
                redis_client.delete(*redis_client.scan_iter(match=f"diam:{namespace}:*"))
                deadline = time.monotonic() + 30  # a quiet writer's own check finds it
                while part.repushed == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
            part.write_batch(batch)
            part._q.join()
        assert part.error is None, part.error
    finally:
        part.close()
    return stats, metrics.exposition().decode()


def test_a_restarts_re_pushes_redis_holds_are_neither_acknowledged_nor_fresh(
        stack, namespace) -> None:
    users = [f"u{i}" for i in range(10)]
    first = [(u, _uv(5)) for u in users]
    _, text = _run(stack.settings.redis, namespace, [first])
    assert _value(text, "diam_flow_redis_acked_total") == 10
    assert _value(text, "diam_flow_freshness_seconds_count") == 10
    # the run started again pushes every user it resumed, with the state Redis holds: an
    # hour-old event time would have been 10 freshness samples of an hour
    again = [(u, resumed_push(_uv(5, age_s=3600))) for u in users]
    stats, text = _run(stack.settings.redis, namespace, [again])
    assert stats.as_dict()["resumed_repushes"] == 10
    assert _value(text, "diam_flow_redis_write_seconds_count") == 1  # the write still timed
    assert _value(text, "diam_flow_redis_acked_total") == 0
    assert _value(text, "diam_flow_freshness_seconds_count") == 0
    assert _value(text, "diam_flow_freshness_seconds_sum") == 0
    assert stats.unwritten() == 0 and stats.as_dict()["redis_answered"] == 10


def test_only_the_pushes_redis_took_are_samples(stack, namespace, redis_client) -> None:
    topic = f"metrics-{uuid.uuid4().hex[:12]}"
    marks = forgotten_key(topic, None)
    redis_client.hset(marks, "gone", 100)  # diam forget forgot "gone" at offset 100
    try:
        _run(stack.settings.redis, namespace, [[("old", _uv(50))]], topic=topic)
        stats, text = _run(stack.settings.redis, namespace, [[
            ("old", _uv(40, age_s=600)),                        # Redis holds a newer seq
            ("gone", _uv(90, age_s=600)),                       # refused: before the forget
            ("twice", _uv(1)), ("twice", _uv(2)),               # both taken: its key is set
            ("back", resumed_push(_uv(1, age_s=600))),          # a restart's re-push, and
            ("back", _uv(2)),                                   # a click after it: one taken
            ("new", _uv(3)),
        ]], topic=topic)
    finally:
        redis_client.delete(marks)
    assert _value(text, "diam_flow_redis_acked_total") == 4  # twice (2), back's click, new
    assert _value(text, "diam_flow_freshness_seconds_count") == 4
    assert _value(text, "diam_flow_freshness_seconds_sum") < 60  # no 600 s old value among them
    got = stats.as_dict()
    assert (got["stale_pushes"], got["forgotten_pushes"], got["redis_answered"]) == (1, 1, 7)


def test_a_re_push_after_redis_lost_the_key_set_is_counted_and_exported(
        stack, namespace, redis_client) -> None:
    first = [(u, _uv(5, age_s=600)) for u in ("a", "b", "c")]
    stats, text = _run(stack.settings.redis, namespace, [first, [("d", _uv(6))]], lose_after=1,
                       redis_client=redis_client)
    assert stats.as_dict()["lost_repushes"] == 3  # every user held: a, b and c
    assert _value(text, "diam_flow_redis_lost_repushes_total") == 3
    # the re-push is not a push: a, b and c's values are not acknowledged twice, and their
    # 600 s old event time is no freshness sample of the second write
    assert _value(text, "diam_flow_redis_acked_total") == 4
    assert _value(text, "diam_flow_freshness_seconds_count") == 4
    assert len(list(redis_client.scan_iter(match=f"diam:{namespace}:u:*"))) == 4
