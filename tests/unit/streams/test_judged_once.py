"""With eviction on, the run's source (``streams.runner.job_io``) judges each record for the
partition's event clock, and the dataflow counts its verdicts without judging the record again:
every record is decoded once, and the run gives the same vectors and dead letters as the
dataflow judging records whose clocks were set by the rule (the running maximum of the accepted
timestamps). A stand-in for the worker's shared consumer feeds the source, no broker."""

from __future__ import annotations

from collections import deque
from datetime import timedelta

from bytewax.testing import TestingSink, TestingSource, run_main

import streams.online as online
from diam.app import online_job
from diam.settings import load_settings
from serving_cache.codec import UserVectors, encode_user
from streams.config import FlowConfig
from streams.kafka_io import RawRecord
from streams.online import FlowSinks, FlowStats, LearnerHolder, build_flow
from streams.runner import job_io
from tests.flowkit import as_records, click_stream, tiny_learner


class _Msg:
    def __init__(self, rec: RawRecord) -> None:
        self.rec = rec

    def offset(self) -> int:
        return self.rec.offset

    def key(self) -> bytes | None:
        return self.rec.key

    def value(self) -> bytes | None:
        return self.rec.value

    def timestamp(self) -> tuple[int, int]:
        return 1, self.rec.ts_ms


class _Shared:
    """What a partition asks of the worker's shared consumer (one partition, all of it)."""

    def __init__(self, recs: list[RawRecord]) -> None:
        self.recs, self.buffers = recs, {}  # type: ignore[var-annotated]

    def add(self, part: int, start: int) -> deque:  # type: ignore[type-arg]
        self.buffers[part] = deque(_Msg(r) for r in self.recs if r.offset >= start)
        return self.buffers[part]

    def fill(self) -> None:
        pass

    def remove(self, part: int) -> bool:
        return self.buffers.pop(part, None) is not None

    def close(self) -> None:
        pass


def _records() -> list[RawRecord]:
    """Clicks a second apart, so that users go idle (3 s) and start over, with a garbage record
    stamped 50 minutes ahead (it must not make every user idle), a click refused as unkeyed,
    and a tombstone."""
    recs = as_records(click_stream(n_users=5, n_events=90, seed=3))
    t = recs[30].ts_ms
    bad = [RawRecord("t", 0, 0, b"user1", b"\xc1garbage", t + 3_000_000),
           RawRecord("t", 0, 0, None, recs[50].value, recs[50].ts_ms),
           RawRecord("t", 0, 0, b"user2", None, recs[60].ts_ms)]
    out = recs[:31] + bad[:1] + recs[31:51] + bad[1:2] + recs[51:61] + bad[2:] + recs[61:]
    return [r._replace(offset=i) for i, r in enumerate(out)]


def _run(source, cfg: FlowConfig):  # type: ignore[no-untyped-def]
    vecs: list = []  # type: ignore[type-arg]
    dead: list = []  # type: ignore[type-arg]
    learner = tiny_learner()
    stats = FlowStats()
    flow = build_flow(source, FlowSinks(TestingSink(vecs), TestingSink(dead), TestingSink([])),
                      cfg, LearnerHolder(learner, learner.base.version), stats=stats)
    run_main(flow, epoch_interval=timedelta(seconds=0.05))
    c = stats.as_dict()
    return ([(u, encode_user(v) if isinstance(v, UserVectors) else repr(v)) for u, v in vecs], dead,
            {k: c[k] for k in ("records", "rejected", "forgets", "users", "restarts", "pushes")})


def test_with_eviction_on_each_record_is_judged_once_with_the_same_result(monkeypatch) -> None:
    recs = _records()
    job = online_job(load_settings(flow={"evict_idle_s": 3, "push_every_events": 4,
                                                     "push_every_ms": 600_000}), bounded=True)
    source, _ = job_io(job)
    source._marks = {0: (0, len(recs))}
    source.list_parts = lambda: ["0-t"]  # type: ignore[method-assign]
    shared = _Shared([r._replace(topic=job.topic) for r in recs])
    source._consumer = lambda part: shared  # type: ignore[method-assign]

    decoded: list[int] = []
    real = online.decode_click

    def counted(raw, **kw):  # type: ignore[no-untyped-def]
        decoded.append(1)
        return real(raw, **kw)
    monkeypatch.setattr(online, "decode_click", counted)
    vecs, dead, counts = _run(source, job.flow)
    # every record with a value is decoded once (the tombstone is not decoded)
    assert len(decoded) == len(recs) - 1
    monkeypatch.setattr(online, "decode_click", real)

    # the reference: the records with the accepted clock, judged by the dataflow's decode step
    clock, want = -1, []
    for r in recs:
        if r.ts_ms > clock and r.value != b"\xc1garbage" and r.key is not None:
            clock = r.ts_ms
        want.append(r._replace(topic=job.topic, clock_ms=clock))
    ref_vecs, ref_dead, ref_counts = _run(TestingSource(want, batch_size=job.flow.batch_size),
                                          job.flow)
    assert counts["restarts"] > 0 and counts["rejected"] == 2 and counts["forgets"] == 1
    assert (vecs, dead, counts) == (ref_vecs, ref_dead, ref_counts)
