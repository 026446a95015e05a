"""User lifecycle in the online dataflow: a tombstone keyed by a user forgets them (state dropped,
their key deleted, later clicks start a new state), and idle users start over and are evicted from the state, idleness read on the partition's event
clock (``RawRecord.clock_ms``) so that a replay learns what the live run learnt."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import numpy as np
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, run_main

from streams.config import FlowConfig
from streams.events import encode_event
from streams.kafka_io import RawRecord
from streams.online import (
    FlowSinks,
    FlowStats,
    Learn,
    LearnerHolder,
    _UserLogic,
    build_flow,
    forget_target,
)
from streams.redis_sink import RELEASED
from tests.flowkit import as_records, click_stream, expected_states, tiny_learner

CFG = FlowConfig(push_every_events=3, push_every_ms=60_000, epoch_interval_s=0.05)


def _run(items, cfg: FlowConfig = CFG, stats: FlowStats | None = None):
    vecs: list = []
    dead: list = []
    learner = tiny_learner()
    flow = build_flow(TestingSource(items, batch_size=5),
                      FlowSinks(TestingSink(vecs), TestingSink(dead), TestingSink([])),
                      cfg, LearnerHolder(learner, learner.base.version),
                      stats=stats if stats is not None else FlowStats())
    run_main(flow, epoch_interval=timedelta(seconds=0.05))
    return vecs, dead


def test_a_tombstone_forgets_the_user_and_later_clicks_start_over() -> None:
    events = click_stream(n_users=3, n_events=90, seed=5)
    recs = as_records(events)
    tomb = RawRecord("t", 0, 60, b"user1", None, 0)
    after = [r._replace(offset=r.offset + 1) for r in recs[60:]]
    stats = FlowStats()
    vecs, dead = _run(recs[:60] + [tomb] + after, stats=stats)
    assert dead == []
    # user1's state ended at the tombstone and started again: three users held at the end
    assert (stats.as_dict()["users"], stats.as_dict()["in_state"]) == (4, 3)
    # user1's key is deleted at the tombstone, in order with its pushes
    mine = [uv for u, uv in vecs if u == "user1"]
    cut = mine.index(None)
    assert all(uv is not None and uv.seq < 60 for uv in mine[:cut])
    assert all(uv is not None and uv.seq > 60 for uv in mine[cut + 1:])
    # after the tombstone, user1's state is what their later clicks alone give
    later = [(ev, r.offset) for ev, r in zip(events[60:], after, strict=True) if ev.user_id == "user1"]
    want = expected_states([e for e, _ in later], tiny_learner(), [o for _, o in later])["user1"]
    last = mine[-1]
    assert (last.seq, last.n) == (want.seq, want.n_events)
    # the others are untouched: their last values are the offline learner's over all events
    others = expected_states([e for e in events if e.user_id != "user1"], tiny_learner(),
                             [(r.offset if i < 60 else r.offset + 1) for i, (e, r) in
                              enumerate(zip(events, recs, strict=True)) if e.user_id != "user1"])
    for u, st in others.items():
        got = [uv for x, uv in vecs if x == u][-1]
        assert (got.seq, got.n) == (st.seq, st.n_events)


def test_a_tombstone_for_a_user_without_state_deletes_the_key_and_a_bad_key_is_dead_lettered() -> None:
    stats = FlowStats()
    vecs, dead = _run([RawRecord("t", 0, 0, b"ghost", None, 0), RawRecord("t", 0, 1, b"a:b", None, 0)],
                      stats=stats)
    assert vecs == [("ghost", None)]
    t = stats.total()
    assert (t.users, t.ended) == (0, 0)  # no state was held, none ended
    assert len(dead) == 1
    assert forget_target(b"a:b") is None and forget_target(b"\xff") is None


def _learns(events, recs) -> list[Learn]:
    return [Learn(r, (e.user_id, e.item_id, e.ts, None)) for r, e in zip(recs, events, strict=True)]


def _idle_user(idle_s: float, n_events: int) -> tuple[LearnerHolder, FlowConfig, _UserLogic, list]:
    """A user who clicked ``n_events`` times (one second apart), with eviction at ``idle_s``."""
    learner = tiny_learner()
    holder = LearnerHolder(learner, learner.base.version)
    cfg = FlowConfig(push_every_events=100, push_every_ms=60_000, evict_idle_s=idle_s)
    events = click_stream(n_users=1, n_events=n_events, seed=4)
    logic = _UserLogic(holder, cfg, None, None)
    logic.on_batch(_learns(events, as_records(events)))
    return holder, cfg, logic, events


def test_an_idle_user_is_evicted_once_the_partitions_clock_has_passed() -> None:
    learner = tiny_learner()
    holder = LearnerHolder(learner, learner.base.version)
    cfg = FlowConfig(push_every_events=100, push_every_ms=60_000, evict_idle_s=2.0)
    clocks: dict[int, int] = {}
    logic = _UserLogic(holder, cfg, None, None, clocks)
    ev = click_stream(n_users=1, n_events=3)  # one second apart
    recs = as_records(ev)
    before = time.time()  # the batch's first call may compile the learner's kernels
    out, keep = logic.on_batch(_learns(ev, recs))
    after = time.time()
    assert keep == StatefulBatchLogic.RETAIN and out == []
    due = logic.notify_at()
    assert due is not None and before + 1.95 < due.timestamp() < after + 2.05
    logic._drop.at = 0.0  # idle on the wall clock
    # ... but nothing of the partition has come later on its event clock: a click arriving
    # now could still continue the user, so the user stays (pushed, as a due push would),
    # and is looked at again later
    out, keep = logic.on_notify()
    assert keep == StatefulBatchLogic.RETAIN and [uv.n for uv in out] == [3]
    assert logic._drop.at - time.time() > 0.9
    # another user's record of the same partition, 2 s later on the partition's clock
    other = dataclasses.replace(click_stream(n_users=1, n_events=1, seed=9)[0], user_id="other")
    late = RawRecord("t", 0, 3, b"other", encode_event(other), recs[-1].ts_ms + 2_000)
    _UserLogic(holder, cfg, None, None, clocks).on_batch(_learns([other], [late]))
    logic._drop.at = 0.0
    out, keep = logic.on_notify()
    assert keep == StatefulBatchLogic.DISCARD
    assert out == [RELEASED]  # nothing unpushed: the sink is told to let go of the user
    c = logic.counts
    assert (c.users, c.ended, c.evictions, c.restarts) == (1, 1, 1, 0)


def test_an_evicted_user_is_pushed_one_last_time() -> None:
    _holder, _cfg, logic, events = _idle_user(2.0, 3)
    logic.clocks[0] = events[-1].ts + 2_000  # a later record of the partition, processed here
    logic._drop.at = 0.0
    out, keep = logic.on_notify()
    assert keep == StatefulBatchLogic.DISCARD
    # the unpushed events, pushed; then the sink is told to let go of the user
    assert len(out) == 2 and out[0].n == 3 and out[1] is RELEASED


def test_a_click_after_an_idle_gap_starts_over_whether_or_not_the_user_was_dropped() -> None:
    # the same records give the same vectors in a run that dropped the user in the gap (live,
    # slow) and in one that never did (a fast replay): idleness is read on the records' clock
    events = click_stream(n_users=1, n_events=12, seed=3)
    recs = as_records(events)
    gap = 5_000
    recs = [r._replace(ts_ms=r.ts_ms + (gap if i >= 7 else 0)) for i, r in enumerate(recs)]
    cfg = FlowConfig(push_every_events=100, push_every_ms=60_000, evict_idle_s=gap / 1000 - 1)
    # one batch: never dropped, the gap is found inside the batch
    stats = FlowStats()
    vecs, dead = _run(recs, cfg, stats)
    assert dead == []
    replayed = [uv for _, uv in vecs]
    # counted: one start-over, two states started, one ended, one held, nobody dropped
    assert {k: stats.as_dict()[k] for k in ("users", "in_state", "evictions", "restarts")} \
        == {"users": 2, "in_state": 1, "evictions": 0, "restarts": 1}
    # what the clicks after the gap alone give, as a new user
    want = expected_states(events[7:], tiny_learner(), list(range(7, 12)))["user0"]
    assert (replayed[-1].seq, replayed[-1].n) == (want.seq, want.n_events)
    assert np.array_equal(replayed[-1].vecs, want.V)
    # the first seven clicks pushed before the user starts over
    assert replayed[0].n == 7
    # dropped in the gap: the logic is discarded and a new one learns the later clicks
    learner = tiny_learner()
    holder = LearnerHolder(learner, learner.base.version)
    clocks: dict[int, int] = {}
    first = _UserLogic(holder, cfg, None, None, clocks)
    first.on_batch(_learns(events[:7], recs[:7]))
    _UserLogic(holder, cfg, None, None, clocks).on_batch(
        _learns([dataclasses.replace(events[7], user_id="other")], [recs[7]._replace(key=b"other")]))
    first._drop.at = 0.0  # the wall clock's check is due
    out, keep = first.on_notify()
    assert keep == StatefulBatchLogic.DISCARD and out[0].n == 7 and out[-1] is RELEASED
    assert (first.counts.evictions, first.counts.restarts) == (1, 0)
    second = _UserLogic(holder, cfg, None, None, clocks)
    out, _ = second.on_batch(_learns(events[7:], recs[7:]))
    out, _ = second.on_eof()
    live = out[-1]
    assert (live.seq, live.n) == (replayed[-1].seq, replayed[-1].n)
    assert np.array_equal(live.vecs, replayed[-1].vecs) and live.d == replayed[-1].d


def test_the_idle_clock_survives_a_resume() -> None:
    learner = tiny_learner()
    holder = LearnerHolder(learner, learner.base.version)
    cfg = FlowConfig(push_every_events=100, push_every_ms=60_000, evict_idle_s=1.5)  # the clicks are 1 s apart
    events = click_stream(n_users=1, n_events=4, seed=4)
    recs = as_records(events)
    logic = _UserLogic(holder, cfg, None, None)
    logic.on_batch(_learns(events[:2], recs[:2]))
    snap = logic.snapshot()
    assert snap[4:] == (recs[1].ts_ms, 0)
    resumed = _UserLogic(holder, cfg, snap, None)
    assert resumed.counts.users == 1  # held again in this process
    late = recs[2]._replace(ts_ms=recs[1].ts_ms + 1_500)
    out, _ = resumed.on_batch(_learns(events[2:3], [late]))
    assert resumed.state is not None and resumed.state.n_events == 1  # started over
    c = resumed.counts
    assert (c.users, c.ended, c.restarts, c.evictions) == (2, 1, 1, 0)
    # a store written before the clock was kept: the clock is unknown, the user goes on
    old = _UserLogic(holder, cfg, snap[:4], None)
    old.on_batch(_learns(events[2:3], [late]))
    assert old.state is not None and old.state.n_events == 3


def test_without_eviction_an_idle_user_stays() -> None:
    learner = tiny_learner()
    logic = _UserLogic(LearnerHolder(learner, learner.base.version), CFG, None, None)
    ev = click_stream(n_users=1, n_events=1)
    logic.on_batch([Learn(as_records(ev)[0], (ev[0].user_id, ev[0].item_id, ev[0].ts, None))])
    _out, keep = logic.on_notify()
    assert keep == StatefulBatchLogic.RETAIN


def test_tombstones_need_a_value_of_none_not_an_empty_payload() -> None:
    # an empty value is a malformed click, dead-lettered as before; only a null value forgets
    vecs, dead = _run([RawRecord("t", 0, 0, b"user1", b"", 0),
                       RawRecord("t", 0, 1, b"user0", encode_event(click_stream(1, 1)[0]), 0)])
    assert len(dead) == 1 and all(uv is not None for _, uv in vecs)


def test_an_evicted_user_who_never_pushed_sends_the_sink_nothing() -> None:
    # only unknown items: no vectors, never pushed, so the sink holds nothing to let go of
    learner = tiny_learner()
    cfg = FlowConfig(push_every_events=1, push_every_ms=60_000, evict_idle_s=0.05)
    logic = _UserLogic(LearnerHolder(learner, learner.base.version), cfg, None, None)
    ev = click_stream(n_users=1, n_events=1)[0]
    rec = as_records([ev])[0]
    out, keep = logic.on_batch([Learn(rec, (ev.user_id, "no-such-item", ev.ts, None))])
    assert out == [] and keep == StatefulBatchLogic.RETAIN
    logic.clocks[0] = rec.ts_ms + 50  # a later record of the partition, processed here
    time.sleep(0.1)
    out, keep = logic.on_notify()
    assert out == [] and keep == StatefulBatchLogic.DISCARD


def test_a_user_resumed_without_a_clock_is_dropped_on_the_wall_clock() -> None:
    # a store written before the clock was kept: until they click, such a user's idleness is
    # the wall clock's, as in the run that wrote the store (they would otherwise stay forever)
    holder, cfg, logic, _ = _idle_user(1.5, 2)
    old = _UserLogic(holder, cfg, logic.snapshot()[:4], None)
    out, keep = old.on_notify()
    assert keep == StatefulBatchLogic.RETAIN  # not idle on the wall clock yet
    old._drop.at = 0.0
    out, keep = old.on_notify()
    assert keep == StatefulBatchLogic.DISCARD and out[-1] is RELEASED


def test_an_idle_user_whose_partition_is_still_is_looked_at_ever_less_often() -> None:
    _holder, _cfg, logic, events = _idle_user(2.0, 1)
    waits = []
    for _ in range(6):
        logic._drop.at = 0.0
        _out, keep = logic.on_notify()
        assert keep == StatefulBatchLogic.RETAIN
        waits.append(round(logic._drop.at - time.time()))
    assert waits == [1, 2, 4, 8, 16, 16]  # doubling, up to 8 times evict_idle_s
    logic.on_batch(_learns(events, [as_records(events)[0]._replace(offset=1)]))
    assert logic._drop.wait_s == 0.0  # a click starts the waits over
