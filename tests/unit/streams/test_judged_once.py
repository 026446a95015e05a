"""With eviction on, the run's source (``streams.runner.job_io``) judges and counts each record
for the partition's event clock, and the dataflow (built ``judged=True``) passes its verdicts on
without judging or counting them again: every record is decoded once, and the run gives the same
vectors, dead letters and counts as the dataflow judging records whose clocks were set by the
rule (the running maximum of the accepted timestamps). A stand-in for the worker's shared
consumer feeds the source, no broker."""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from datetime import timedelta

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

import streams.online as online
from diam.app import online_job
from diam.settings import load_settings
from serving_cache.codec import UserVectors, encode_user
from streams.config import FlowConfig
from streams.kafka_io import RawRecord
from streams.online import FlowSinks, FlowStats, LearnerHolder, _decoder, build_flow, record_judge
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
    """What a partition asks of the worker's shared consumer (its partitions, all of them)."""

    def __init__(self, recs: list[RawRecord]) -> None:
        self.recs, self.buffers = recs, {}  # type: ignore[var-annotated]

    def add(self, part: int, start: int) -> deque:  # type: ignore[type-arg]
        self.buffers[part] = deque(_Msg(r) for r in self.recs
                                   if r.partition == part and r.offset >= start)
        return self.buffers[part]

    def fill(self) -> None:
        pass

    def remove(self, part: int) -> bool:
        return self.buffers.pop(part, None) is not None

    def close(self) -> None:
        pass


def _records(partition: int = 0, prefix: str = "") -> list[RawRecord]:
    """Clicks a second apart, so that users go idle (3 s) and start over, with a garbage record
    stamped 50 minutes ahead (it must not make every user idle), a click refused as unkeyed,
    and a tombstone (users named ``prefix`` + ``userN``)."""
    events = [replace(ev, user_id=prefix + ev.user_id)
              for ev in click_stream(n_users=5, n_events=90, seed=3)]
    recs = as_records(events, partition=partition)
    t = recs[30].ts_ms
    bad = [RawRecord("t", partition, 0, f"{prefix}user1".encode(), b"\xc1garbage", t + 3_000_000),
           RawRecord("t", partition, 0, None, recs[50].value, recs[50].ts_ms),
           RawRecord("t", partition, 0, f"{prefix}user2".encode(), None, recs[60].ts_ms)]
    out = recs[:31] + bad[:1] + recs[31:51] + bad[1:2] + recs[51:61] + bad[2:] + recs[61:]
    return [r._replace(offset=i) for i, r in enumerate(out)]


COUNTED = ("records", "rejected", "forgets", "forgotten_clicks", "valid")
"""What the judging counts (where the records are judged): the same with eviction on or off."""


def _run(source, cfg: FlowConfig, stats: FlowStats | None = None, judged: bool = False,  # type: ignore[no-untyped-def]
         markers: dict[str, int] | None = None, workers: int = 1):
    vecs: list = []  # type: ignore[type-arg]
    dead: list = []  # type: ignore[type-arg]
    learner = tiny_learner()
    stats = stats if stats is not None else FlowStats()
    flow = build_flow(source, FlowSinks(TestingSink(vecs), TestingSink(dead), TestingSink([])),
                      cfg, LearnerHolder(learner, learner.base.version), stats=stats,
                      markers=markers, judged=judged)
    if workers == 1:
        run_main(flow, epoch_interval=timedelta(seconds=0.05))
    else:
        cluster_main(flow, [], 0, epoch_interval=timedelta(seconds=0.05),
                     worker_count_per_proc=workers)
    c = stats.as_dict()
    return ([(u, encode_user(v) if isinstance(v, UserVectors) else repr(v)) for u, v in vecs], dead,
            {k: c[k] for k in ("records", "rejected", "forgets", "users", "restarts", "pushes",
                               "forgotten_clicks", "valid")})


def _job_source(recs: list[RawRecord], evict: bool, stats: FlowStats):  # type: ignore[no-untyped-def]
    """The run's source (``job_io``) over ``recs`` (partitions 0.., offsets from 0), and its
    job: eviction on (3 s) or off."""
    flow = {"push_every_events": 4, "push_every_ms": 600_000}
    job = online_job(load_settings(flow={**flow, "evict_idle_s": 3} if evict else flow),
                     bounded=True)
    source, _ = job_io(job, stats=stats)
    parts = sorted({r.partition for r in recs})
    source._marks = {p: (0, sum(r.partition == p for r in recs)) for p in parts}
    source.list_parts = lambda: [f"{p}-t" for p in parts]  # type: ignore[method-assign]
    shared = _Shared([r._replace(topic=job.topic) for r in recs])
    source._consumer = lambda part: shared  # type: ignore[method-assign]
    return source, job


def test_with_eviction_on_each_record_is_judged_once_with_the_same_result(monkeypatch) -> None:
    recs = _records()
    stats = FlowStats()
    source, job = _job_source(recs, True, stats)
    assert source.judge is not None

    decoded: list[int] = []
    real = online.decode_click

    def counted(raw, **kw):  # type: ignore[no-untyped-def]
        decoded.append(1)
        return real(raw, **kw)
    monkeypatch.setattr(online, "decode_click", counted)
    vecs, dead, counts = _run(source, job.flow, stats, judged=True)
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


def test_counts_with_eviction_on_are_the_counts_with_it_off() -> None:
    """Two partitions on two worker threads, with dead letters, tombstones and clicks below a
    forget marker: the records, dead letters, forgets and forgotten clicks counted where the
    source judges them (eviction on) are those the decode step counts (eviction off), each
    once, and the same records are dead-lettered for the same reasons."""
    recs = _records(0) + _records(1, prefix="p")
    markers = {"user3": 40, "puser4": 70, "nobody": 10**9}
    got = {}
    for evict in (False, True):
        stats = FlowStats()
        source, job = _job_source(recs, evict, stats)
        assert (source.judge is not None) is evict
        _, dead, counts = _run(source, job.flow, stats, judged=evict, markers=markers, workers=2)
        got[evict] = (sorted(repr(d) for d in dead), {k: counts[k] for k in COUNTED})
    dead, counts = got[True]
    assert len(dead) == 4 and counts["forgets"] == 2 and counts["forgotten_clicks"] > 2
    assert counts["records"] == len(recs) and counts["rejected"] == 4
    assert got[True] == got[False]


def test_a_decode_step_built_judged_neither_judges_nor_counts(monkeypatch) -> None:
    """Built with ``judged=True`` (the source judged and counted), the decode step passes the
    verdicts on, less the clicks below a forget marker (counted): no record is decoded again,
    and records, dead letters and forgets are not counted a second time."""
    cfg = FlowConfig()
    verdicts = record_judge(cfg)(_records())[0]
    markers = {"user3": 40}
    learner = tiny_learner()

    def refuse(raw, **kw):  # type: ignore[no-untyped-def]
        raise AssertionError("decoded again")
    monkeypatch.setattr(online, "decode_click", refuse)
    stats = FlowStats()
    step = _decoder(cfg, LearnerHolder(learner, learner.base.version), stats, markers, judged=True)
    out = step(list(verdicts))
    kept, skipped = online.skip_forgotten(verdicts, markers)
    assert out == kept and len(skipped) > 2
    t = stats.total()
    assert (t.records, t.rejected, t.forgets, t.forgotten_clicks) == (0, 0, 0, len(skipped))
    assert step([]) == []
    # the same step unjudged judges the records (and counts them), as without eviction
    with pytest.raises(AssertionError, match="decoded again"):
        _decoder(cfg, LearnerHolder(learner, learner.base.version), stats, markers)(_records())
