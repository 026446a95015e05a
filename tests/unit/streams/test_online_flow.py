"""The online dataflow under Bytewax's TestingSource: dead-lettering, per-user state equal to the
offline learner, same result on one and two workers, and after an abort and resume."""

from __future__ import annotations

import hashlib
import pickle
from datetime import timedelta

import numpy as np
import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from online_model.online import OnlineLearner
from online_model.testing import BEFORE
from serving_cache.codec import UserVectors, decode_user, encode_user
from streams.config import FlowConfig
from streams.events import ClickEvent
from streams.kafka_io import RawRecord
from streams.online import FlowSinks, FlowStats, Learn, LearnerHolder, _UserLogic, build_flow
from streams.runner import prepare_recovery
from tests.flowkit import (
    as_records,
    click_stream,
    expected_states,
    failing_kernel,
    tiny_base,
    tiny_config,
    tiny_learner,
)

CFG = FlowConfig(push_every_events=3, push_every_ms=60_000, epoch_interval_s=0.05)


def _run(items, workers: int = 1, recovery=None, stats=None, vecs=None, epoch_s: float = 0.05,
         batch_size: int = 7, learner=None):
    vecs = [] if vecs is None else vecs
    dead, drift = [], []
    learner = tiny_learner() if learner is None else learner
    holder = LearnerHolder(learner, learner.base.version)
    flow = build_flow(TestingSource(items, batch_size=batch_size), FlowSinks(TestingSink(vecs), TestingSink(dead),
                      TestingSink(drift)), CFG, holder, stats=stats)
    if workers == 1:
        run_main(flow, epoch_interval=timedelta(seconds=epoch_s), recovery_config=recovery)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers, epoch_interval=timedelta(seconds=0.05))
    # dead letters and drift events travel as (key, record) pairs to their Kafka sinks
    assert all(isinstance(k, str) for k, _ in dead + drift)
    return vecs, [r for _, r in dead], [r for _, r in drift]


def _final(vecs) -> dict[str, bytes]:
    """Last pushed value per user, as the Redis writer would keep it (highest seq wins)."""
    best: dict[str, tuple[int, bytes]] = {}
    for user, uv in vecs:
        if user not in best or uv.seq > best[user][0]:
            best[user] = (uv.seq, encode_user(uv))
    return {u: raw for u, (_, raw) in best.items()}


def test_final_state_equals_offline_learner_and_bad_input_is_dead_lettered() -> None:
    events = click_stream(n_users=5, n_events=120)
    records = as_records(events)
    bad = [
        RawRecord("t", 0, 1000, b"x", b"\xc1garbage", 0),
        RawRecord("t", 0, 1001, b"user1", b'{"user_id": "a:b", "item_id": 1, "ts": 880000000000}', 0),
        RawRecord("t", 0, 1002, None, None, 0),
    ]
    items = records[:40] + bad[:2] + records[40:80] + bad[2:] + records[80:]
    stats = FlowStats()
    vecs, dead, _ = _run(items, stats=stats)

    reasons = sorted(dict(d.headers)["diam.reason"].decode() for d in dead)
    assert reasons == [
        "payload: empty (tombstone or null value)",
        "undecodable: neither msgpack nor JSON",
        "user_id: contains ':' (allowed: letters and digits and _ . @ + - and the equals sign)",
    ]
    assert dead[0].value in {b"\xc1garbage", b'{"user_id": "a:b", "item_id": 1, "ts": 880000000000}', b""}
    assert {dict(d.headers)["diam.offset"] for d in dead} == {b"1000", b"1001", b"1002"}

    learner = tiny_learner()
    want = expected_states(events, learner)
    got = _final(vecs)
    assert set(got) == set(want)
    for user, st in want.items():
        uv = decode_user(got[user])
        assert uv.seq == st.seq and uv.n == st.n_events and uv.k == st.vectors().shape[0]
        assert np.array_equal(uv.vecs, st.vectors().astype(np.float16).astype(np.float32))
    assert stats.as_dict()["valid"] == 120 and stats.as_dict()["rejected"] == 3
    # pushes and drift events are counted per output batch: the counts are those emitted
    again, pushed = FlowStats(), []
    _, _, drift = _run(items, stats=again, vecs=pushed)
    assert again.as_dict()["pushes"] == len(pushed) > 0
    assert again.as_dict()["drift_events"] == len(drift)
    assert again.as_dict()["users"] == len(want)


def test_one_and_two_workers_give_the_same_state() -> None:
    items = as_records(click_stream(n_users=7, n_events=150, seed=3))
    one, _, d1 = _run(items, workers=1)
    two, _, d2 = _run(items, workers=2)
    assert _final(one) == _final(two)
    assert sorted(str(x.value) for x in d1) == sorted(str(x.value) for x in d2)


def test_abort_and_resume_gives_the_uninterrupted_state(tmp_path) -> None:
    items = as_records(click_stream(n_users=6, n_events=160, seed=5))
    clean, _, _ = _run(items)
    recovery = prepare_recovery(tmp_path / "rec")
    aborting = items[:70] + [TestingSource.ABORT()] + items[70:]
    first: list = []
    # zero-length epochs (one per batch of 7): the store has a snapshot just before the abort;
    # with 50 ms epochs the whole first run could fit in one epoch, and the "resume" would
    # read everything again from the start, which gives the same bytes and tests nothing
    _run(aborting, recovery=recovery, vecs=first, epoch_s=0.0)
    stats = FlowStats()
    second, _, _ = _run(aborting, recovery=recovery, epoch_s=0.0, stats=stats)
    assert second, "the resumed run produced no pushes"
    assert first and _final(first) != _final(clean), "the abort did not interrupt the first run"
    assert stats.total().records <= len(items) - 70 + 7, "the run started over instead of resuming"
    assert _final(first + second) == _final(clean)


def test_users_with_only_unknown_items_are_not_pushed() -> None:
    from streams.events import ClickEvent
    from tests.flowkit import T0

    events = [ClickEvent("cold", f"unknown{j}", T0 + j) for j in range(5)]
    events += [ClickEvent("warm", "i3", T0 + 10), ClickEvent("cold", "i7", T0 + 20)]
    stats = FlowStats()
    vecs, dead, _ = _run(as_records(events), stats=stats)
    assert not dead
    # valid clicks, counted for what they are: the summary and /metrics say how many
    assert stats.as_dict()["valid"] == 7 and stats.as_dict()["unknown_items"] == 5
    final = {u: decode_user(raw) for u, raw in _final(vecs).items()}
    assert set(final) == {"cold", "warm"}
    assert final["cold"].seq == 6 and final["cold"].n == 6  # pushed once a known item arrived
    assert all(decode_user(encode_user(uv)).vecs.any() for _, uv in vecs)


def test_resumed_users_are_pushed_again_even_without_new_events(tmp_path) -> None:
    # Redis writes are asynchronous, so a crash can lose pushes made before the last snapshot;
    # the resumed run alone must therefore rebuild every user's vectors. user0 clicks only
    # early, a multiple of push_every_events times (its last click is pushed, so it is clean
    # at the snapshot), then the run aborts several epochs later: its vectors in the resumed
    # run can only come from the re-push of resumed users.
    items = as_records(click_stream(n_users=6, n_events=160, seed=5))
    u0 = [i for i, r in enumerate(items[:40]) if r.key == b"user0"]
    keep_u0 = set(u0[: len(u0) - len(u0) % CFG.push_every_events])
    assert keep_u0
    stream = [r for i, r in enumerate(items) if r.key != b"user0" or i in keep_u0]
    clean, _, _ = _run(stream)
    recovery = prepare_recovery(tmp_path / "rec")
    cut = 100  # zero-length epochs: one per batch of 7, so the snapshot before the abort is late
    aborting = stream[:cut] + [TestingSource.ABORT()] + stream[cut:]
    first: list = []
    _run(aborting, recovery=recovery, vecs=first, epoch_s=0.0)
    assert first and "user0" in {u for u, _ in first}, "the first run pushed nothing of user0"
    stats = FlowStats()
    second, _, _ = _run(aborting, recovery=recovery, epoch_s=0.0, stats=stats)
    # resumed at the cut: user0's early clicks are not read again, so its vectors below can
    # only come from the re-push of the users the snapshot held
    assert stats.total().records <= len(stream) - cut + 7, "the run started over instead of resuming"
    assert "user0" in {u for u, _ in second}, "user0 was not pushed again on resume"
    assert _final(second) == _final(clean)
    # every user the snapshot held is counted as resumed (diam run says its re-pushes so)
    assert stats.as_dict()["resumed"] == 6 and stats.as_dict()["forgets"] == 0
    # user0's re-push is marked as the state it was resumed with (the Redis sink counts it
    # apart from stale pushes when Redis holds it already); a push of what a user learnt
    # after the resume is an ordinary one
    from streams.redis_sink import ResumedPush

    assert all(type(uv) is ResumedPush for u, uv in second if u == "user0")
    last = {u: uv for u, uv in second}
    assert all(type(uv) is UserVectors for u, uv in last.items() if u != "user0")


def test_a_tombstone_is_counted_as_a_forget_not_a_valid_click() -> None:
    items = as_records(click_stream(n_users=3, n_events=30, seed=1))
    tomb = RawRecord("t", 0, 0, b"user1", None, items[19].ts_ms)
    stream = [r._replace(offset=i) for i, r in enumerate(items[:20] + [tomb] + items[20:])]
    stats = FlowStats()
    vecs, dead, _ = _run(stream, stats=stats)
    got = stats.as_dict()
    assert (got["records"], got["forgets"], got["rejected"], got["valid"]) == (31, 1, 0, 30)
    assert ("user1", None) in vecs and not dead  # the key was deleted, nothing dead-lettered


def test_a_tombstone_whose_key_is_no_user_id_is_dead_lettered_as_a_refused_forget() -> None:
    items = as_records(click_stream(n_users=3, n_events=30, seed=1))
    tombs = [RawRecord("t", 0, 0, b"a:b", None, items[19].ts_ms),
             RawRecord("t", 0, 0, b"\xff", None, items[19].ts_ms)]
    stream = [r._replace(offset=i) for i, r in enumerate(items[:20] + tombs + items[20:])]
    stats = FlowStats()
    _, dead, _ = _run(stream, stats=stats)
    got = stats.as_dict()
    assert (got["records"], got["forgets"], got["rejected"], got["valid"]) == (32, 0, 2, 30)
    assert sorted(dict(d.headers)["diam.reason"].decode() for d in dead) == [
        "forget: the tombstone's key b'\\xff' is not a valid user id (user_id: not UTF-8)",
        "forget: the tombstone's key b'a:b' is not a valid user id (user_id: contains ':' "
        "(allowed: letters and digits and _ . @ + - and the equals sign))",
    ]


def test_a_user_resumes_from_the_one_snapshot_form() -> None:
    learner = tiny_learner()
    holder = LearnerHolder(learner, learner.base.version)
    logic = _UserLogic(holder, CFG, None, None)
    ev = click_stream(n_users=1, n_events=5)
    logic.on_batch([Learn(r, (e.user_id, e.item_id, e.ts, None)) for r, e in zip(as_records(ev), ev, strict=True)])
    snap = logic.snapshot()
    assert type(snap) is tuple and snap[0] == ev[0].user_id  # plain values: cheap to pickle
    again = _UserLogic(holder, CFG, pickle.loads(pickle.dumps(snap)), None)
    assert again.state is not None and again.snapshot() == snap


def test_the_source_batch_size_changes_when_vectors_are_pushed_not_what_they_are() -> None:
    # The batch size decides how a user's clicks are grouped into per-user steps (and so how
    # pushes coalesce); the final vectors, counts and dead letters must not depend on it.
    events = click_stream(n_users=6, n_events=150)
    items = as_records(events) + [RawRecord("t", 0, 5000, b"x", b"\xc1", 0)]
    runs = {}
    for batch in (1, 7, 1000):
        stats = FlowStats()
        vecs, dead, _ = _run(items, stats=stats, batch_size=batch)
        runs[batch] = (_final(vecs), [bytes(d.value) for d in dead], stats.as_dict()["valid"], len(vecs))
    assert runs[1][0] == runs[7][0] == runs[1000][0]
    assert runs[1][1:3] == runs[7][1:3] == runs[1000][1:3] == ([b"\xc1"], 150)
    # one batch holds every click: each user's clicks coalesce into fewer pushes
    assert runs[1000][3] < runs[1][3]



def test_a_record_that_breaks_the_update_is_dead_lettered_and_learning_goes_on(monkeypatch) -> None:
    """The last line of defence: an exception inside the learner for one event dead-letters
    that event with the exception's type; every other event (the same user's included) is
    learnt, and the dataflow does not stop."""
    from online_model.online import OnlineLearner

    events = click_stream(n_users=3, n_events=60)
    records = as_records(events)
    poison = records[25]
    real = OnlineLearner.apply

    def apply(self, state, item_id, ts_ms, offset, session_id=None):
        if offset == poison.offset:
            raise ZeroDivisionError("a bug nobody foresaw")
        return real(self, state, item_id, ts_ms, offset, session_id)

    monkeypatch.setattr(OnlineLearner, "apply", apply)
    stats = FlowStats()
    vecs, dead, _ = _run(records, stats=stats)
    assert len(dead) == 1
    h = dict(dead[0].headers)
    assert h["diam.reason"] == b"learn: ZeroDivisionError in the online update"
    assert h["diam.offset"] == str(poison.offset).encode() and dead[0].value == poison.value
    assert stats.as_dict()["valid"] == 59 and stats.as_dict()["rejected"] == 1
    # every user still reached Redis with their last event applied
    final = {u: decode_user(raw) for u, raw in _final(vecs).items()}
    last = {ev.user_id: i for i, ev in enumerate(events)}
    assert {u: uv.seq for u, uv in final.items()} == last


def _digest(final: dict[str, object]) -> str:
    """A user's last value per user, field by field (vectors as the float16 Redis stores)."""
    h = hashlib.sha256()
    for user, uv in sorted(final.items()):
        h.update(user.encode())
        if uv is None:  # forgotten: the key is deleted
            h.update(b"-")
            continue
        h.update(repr((uv.seq, uv.model, uv.k, float(uv.d), uv.dim, uv.ts, uv.n, uv.anchor)).encode())
        h.update(np.asarray(uv.vecs, np.float32).astype(np.float16).tobytes())
        h.update(np.asarray(uv.seen, np.int32).tobytes())
    return h.hexdigest()


# The final values of the stream below, as the dataflow before the typed seams produced them.
# A change that moves them changes what readers of Redis see: say so in its commit and update.
# Re-pinned when d_u's step took its target from kernels.diversity_target, and when the served
# d_lr (0.05) and k_hysteresis_up (1) changed (PINNED_BEFORE: the same stream on the settings
# served before, online_model.testing.BEFORE, whose bytes did not move).
PINNED = "7728223ab3a524db3a865636004c9a09a32ce8d58aaf258871c01711cb1c31ec"
PINNED_BEFORE = "d4b6233e4ac9f29bbf320b74b40c083cd439cc96837161b03ff71452cd3d93b8"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_small_stream_s_final_values_are_pinned(workers: int) -> None:
    recs = as_records(click_stream(n_users=9, n_events=400, seed=11))
    recs = recs[:100] + [RawRecord("t", 0, 100, b"user3", None, 0)] + [
        r._replace(offset=r.offset + 1) for r in recs[100:]]  # user3 forgotten at offset 100
    recs.insert(50, RawRecord("t", 0, 5000, b"x", b"\xc1", 0))
    before = OnlineLearner(tiny_base(), tiny_config().model_copy(update=BEFORE))
    for learner, pin in ((before, PINNED_BEFORE), (tiny_learner(), PINNED)):
        vecs, dead, _ = _run(recs, workers=workers, learner=learner)
        last: dict[str, object] = {}
        for user, uv in vecs:  # in order per user: the last item is what Redis keeps
            last[user] = uv
        assert len(dead) == 1 and len(last) == 9
        assert _digest(last) == pin, _digest(last)


@pytest.fixture(scope="module")
def diam_learner_factory(tmp_path_factory):
    """Learners on a tiny DIAM checkpoint whose gate moves (K_u changes on the stream), with
    a rate limit and a step cap that bind: the clicks the compiled kernel hands back occur.
    ``make(step_cap=None)``: the served step cap instead, which rarely binds here, so most
    runs of the network happen inside the batched call rather than on a handed-back click."""
    from online_model.base import BaseView
    from online_model.config import OnlineConfig
    from online_model.online import OnlineLearner
    from online_model.testing import tiny_diam_checkpoint

    ck, c = tiny_diam_checkpoint(tmp_path_factory.mktemp("ck") / "diam", seed=2)
    base = BaseView.from_checkpoint(ck)
    common = dict(dim=8, k_max=4, rate_burst=6.0, rate_per_s=4.0, k_settle_items=0,
                  k_gate_margin=0.0, k_hysteresis=1)

    def make(step_cap: float | None = 0.05) -> OnlineLearner:
        cap = {} if step_cap is None else {"step_cap": step_cap}
        return OnlineLearner(base, OnlineConfig(**common, **cap))
    return make, [str(x) for x in c.item_ids]


def _diam_events(items: list[str], n_users: int = 5, n_events: int = 300):
    rng = np.random.default_rng(4)
    return [ClickEvent(f"user{int(rng.integers(n_users))}", str(rng.choice(items)),
                       880_000_000_000 + 50 * i, session_id=f"s{int(rng.integers(2))}")
            for i in range(n_events)]


def test_on_a_diam_base_the_batch_size_changes_nothing_learnt(diam_learner_factory) -> None:
    """On a DIAM base a user's clicks of one batch are learnt in one compiled call
    (``OnlineLearner.apply_many``): batches of 1, 7 and 1000 give the offline learner's
    states click by click, bit for bit, and the same drift events; so do two worker threads
    sharing the learner (its kernels then release the GIL, so both run them at once), with
    as many runs of the network counted (``OnlineLearner.inferences``, which the workers add
    to at once)."""
    make, items = diam_learner_factory
    events = _diam_events(items, n_users=16, n_events=800)
    for cap in (0.05, None):
        _same_with_any_batch_or_workers(events, lambda c=cap: make(step_cap=c))


def _same_with_any_batch_or_workers(events, make) -> None:
    offline = make()
    want = expected_states(events, offline)
    runs, counted = {}, {}
    for batch, workers in ((1, 1), (7, 1), (1000, 1), (7, 2), (1000, 2)):
        learner = make()
        learner.release_gil = workers > 1  # as run_online sets it for shared workers
        vecs, dead, drift = _run(as_records(events), batch_size=batch, learner=learner,
                                 workers=workers)
        final = {u: decode_user(raw) for u, raw in _final(vecs).items()}
        assert dead == []
        assert {u: (uv.seq, uv.k) for u, uv in final.items()} == {
            u: (s.seq, s.k) for u, s in want.items()}
        for u, uv in final.items():  # (Redis keeps float16)
            np.testing.assert_array_equal(uv.vecs, want[u].V.astype(np.float16).astype(uv.vecs.dtype))
        runs[batch, workers] = sorted(bytes(r.value) for r in drift)
        counted[batch, workers] = learner.inferences
    assert len(runs[1, 1]) > 10 and all(r == runs[1, 1] for r in runs.values())
    assert offline.inferences > 100 and set(counted.values()) == {offline.inferences}, counted


def test_on_a_diam_base_a_failing_click_is_dead_lettered_alone(diam_learner_factory,
                                                             monkeypatch) -> None:
    """The compiled call that learns a user's batch fails on one click: that record is
    dead-lettered with the exception's type, the clicks around it (the same user's, in the
    same batch) are learnt."""
    from online_model import kernels as K

    make, items = diam_learner_factory
    events = _diam_events(items)
    records = as_records(events)
    poison = records[120]
    monkeypatch.setattr(K, "learn_events_diam", failing_kernel(K.learn_events_diam,
                                                               poison.offset))
    stats = FlowStats()
    vecs, dead, _ = _run(records, stats=stats, batch_size=1000, learner=make())
    assert len(dead) == 1
    h = dict(dead[0].headers)
    assert h["diam.reason"] == b"learn: ZeroDivisionError in the online update"
    assert h["diam.offset"] == str(poison.offset).encode()
    assert stats.as_dict()["valid"] == len(events) - 1
    final = {u: decode_user(raw) for u, raw in _final(vecs).items()}
    last = {ev.user_id: i for i, ev in enumerate(events)}
    assert {u: uv.seq for u, uv in final.items()} == last
