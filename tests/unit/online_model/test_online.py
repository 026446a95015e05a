"""The online learner: constraints after any event sequence, determinism, bursts, K_u changes."""

from __future__ import annotations

import json
import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.base import BaseView, toy_base
from online_model.config import OnlineConfig
from online_model.online import DriftEvent, OnlineLearner, UserState

BASE = toy_base(n_items=60, dim=8, n_categories=4, k_max=4)
GATED = toy_base(n_items=60, dim=8, n_categories=4, k_max=4, gate=True, version="gated")


def cfg(**kw) -> OnlineConfig:
    return OnlineConfig(dim=8, k_max=4, **kw)


def check_constraints(learner: OnlineLearner, s) -> None:
    c, base = learner.cfg, learner.base
    assert 1 <= s.k <= c.k_max
    assert 0.0 < s.d < 1.0
    assert s.V.dtype == np.float32 and s.V.shape == s.A.shape == (s.k, c.dim)
    assert np.all(np.isfinite(s.V))
    assert len(s.recent) <= c.recent_len and s.recent.dtype == np.int32
    tol = 1e-4 * base.scale
    assert np.all(np.linalg.norm(s.V, axis=1) <= c.max_norm * base.scale + tol)
    if s.anchored:
        assert np.all(np.linalg.norm(s.V - s.A, axis=1) <= c.trust_radius * base.scale + tol)
        if c.guards and c.learn:
            rms = np.sqrt(np.mean(np.sum((s.V - s.A) ** 2, axis=1)))
            assert rms <= c.drift_cap * base.scale + tol


# one event: (item row or -1 for an unknown id, gap in ms, session)
_event = st.tuples(
    st.integers(-1, 59),
    st.sampled_from([0, 10, 1_000, 60_000, 3_600_000]),
    st.sampled_from([None, None, "s1", "s2"]),
)


def replay(learner: OnlineLearner, events, user: str = "u"):
    s = learner.new_state(user)
    out, ts = [], 1_700_000_000_000
    for off, (row, gap, sess) in enumerate(events):
        ts += gap
        item = "unknown-item" if row < 0 else f"i{row}"
        out += learner.apply(s, item, ts, off, sess)
        check_constraints(learner, s)
    return s, out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(_event, max_size=80),
    st.booleans(),
    st.sampled_from(["clamp", "rollback"]),
    st.booleans(),
    st.sampled_from([0.05, 0.6, 2.0]),
)
def test_constraints_hold_after_any_sequence(events, guards, policy, gated, drift_cap):
    c = cfg(
        guards=guards,
        drift_policy=policy,
        regate_every=2,
        k_hysteresis=2,
        lr=0.5,
        drift_cap=drift_cap,
        rate_burst=20,
    )
    replay(OnlineLearner(GATED if gated else BASE, c), events)


@settings(max_examples=15, deadline=None)
@given(st.lists(_event, min_size=1, max_size=60), st.integers(0, 59))
def test_same_events_same_bytes_and_resume_after_pickle(events, cut):
    learner = OnlineLearner(GATED, cfg(regate_every=3, k_hysteresis=1))
    a, ev_a = replay(learner, events)
    b, ev_b = replay(OnlineLearner(GATED, cfg(regate_every=3, k_hysteresis=1)), events)
    assert a.V.tobytes() == b.V.tobytes() and a.d_logit == b.d_logit and ev_a == ev_b
    # snapshot mid-way (as Bytewax recovery does), resume from the copy
    cut = min(cut, len(events))
    s = learner.new_state("u")
    ts = 1_700_000_000_000
    times = []
    for off, (row, gap, sess) in enumerate(events):
        ts += gap
        times.append(ts)
        if off == cut:  # the dataflow's snapshot (pack) and pickle, both round trips
            s = pickle.loads(pickle.dumps(UserState.unpack(s.pack())))
        learner.apply(s, "unknown-item" if row < 0 else f"i{row}", ts, off, sess)
    assert s.V.tobytes() == a.V.tobytes() and s.k == a.k and s.d == a.d
    assert np.array_equal(s.signals.values(), a.signals.values())


def test_new_users_share_no_arrays_with_each_other():
    # new states are copies of one template per learner: a user's learning must not leak
    learner = OnlineLearner(BASE, cfg())
    a = learner.new_state("a")
    for off in range(8):
        learner.apply(a, f"i{off}", 1000 * off, off, "s1")
    b = learner.new_state("b")
    fresh = UserState("b", 8, BASE.n_categories, BASE.version, BASE.fingerprint,
                      learner.cfg.recent_len, float(learner.cfg.rate_burst))
    assert pickle.dumps(b) == pickle.dumps(fresh)
    assert a.uhash != b.uhash and a.signals.last_session == "s1" and b.signals.last_session is None
    for name in ("V", "A", "rec", "ring"):
        assert not np.shares_memory(getattr(a, name), getattr(b, name))
    assert not np.shares_memory(a.signals.buf, b.signals.buf)


def test_replayed_offsets_are_ignored():
    learner = OnlineLearner(BASE, cfg())
    s = learner.new_state("u")
    for off in range(6):
        learner.apply(s, f"i{off}", 1000 * off, off)
    before = pickle.dumps(s)
    assert learner.apply(s, "i9", 99_000, 3) == []
    assert pickle.dumps(s) == before


def test_unknown_items_counts_the_ids_the_base_does_not_know():
    """str ids through the base's index, others as ``BaseView.index_of`` reads them."""
    learner = OnlineLearner(BASE, cfg())
    clicks = [("i3", 1, 0, None), ("never-seen", 2, 1, "s"), (7, 3, 2, None), ("i59", 4, 3, None),
              ("i60", 5, 4, None)]
    assert learner.unknown_items(clicks) == 3 and learner.unknown_items([]) == 0
    assert learner.unknown_items([(BASE.item_ids[5], 0, 0, None)]) == 0


def test_cold_item_changes_no_vector():
    learner = OnlineLearner(BASE, cfg())
    s = learner.new_state("u")
    for off in range(5):
        learner.apply(s, f"i{4 * off}", 1000 * off, off)
    v = s.vectors()
    learner.apply(s, "never-seen", 10_000, 5)
    assert np.array_equal(v, s.vectors()) and s.n_events == 6 and s.seq == 5


def test_state_is_small_and_pickles():
    learner = OnlineLearner(
        BaseView(  # a 64-d base, like production
            np.array([str(i) for i in range(100)]),
            np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32),
            np.arange(100) % 18,
            [str(c) for c in range(18)],
        ),
        OnlineConfig(),
    )
    s = learner.new_state("user-1")
    for off in range(200):
        learner.apply(s, str((off * 7) % 100), 60_000 * off, off)
    raw = pickle.dumps(s)
    assert len(raw) < 8_000 + 2 * 4 * 64 * s.k  # vectors and anchors dominate
    r = pickle.loads(raw)
    assert r.vectors().tobytes() == s.vectors().tobytes() and r.k == s.k and r.d == s.d


def test_bot_burst_cannot_pass_the_drift_cap():
    c = cfg(lr=1.0)
    learner = OnlineLearner(BASE, c)
    s = learner.new_state("bot")
    for off in range(12):  # a normal history in category 0
        learner.apply(s, f"i{4 * (off % 15)}", 600_000 * off, off)
    assert s.anchored
    events = []
    t0 = 600_000 * 12
    for j in range(2_000):  # 2000 clicks on category 3 in 20 seconds
        events += learner.apply(s, f"i{4 * (j % 15) + 3}", t0 + 10 * j, 12 + j)
        rms = np.sqrt(np.mean(np.sum((s.V - s.A) ** 2, axis=1)))
        assert rms <= c.drift_cap * BASE.scale * (1 + 1e-5)
    assert any(e.kind == "freeze" for e in events)
    assert s.n_learned < 40  # the burst was frozen after the bucket ran dry
    # slower than the rate limit, the drift cap alone holds the line
    s2 = learner.new_state("slowbot")
    for off in range(12):
        learner.apply(s2, f"i{4 * (off % 15)}", 600_000 * off, off)
    for j in range(300):
        learner.apply(s2, f"i{4 * (j % 15) + 3}", t0 + 3_000 * j, 12 + j)
        rms = np.sqrt(np.mean(np.sum((s2.V - s2.A) ** 2, axis=1)))
        assert rms <= c.drift_cap * BASE.scale * (1 + 1e-5)
    assert s2.capped


def test_unguarded_burst_moves_further():
    c = cfg(lr=1.0, guards=False)
    learner = OnlineLearner(BASE, c)
    s = learner.new_state("bot")
    for off in range(12):
        learner.apply(s, f"i{4 * (off % 15)}", 600_000 * off, off)
    for j in range(300):
        learner.apply(s, f"i{4 * (j % 15) + 3}", 7_200_000 + 10 * j, 12 + j)
    rms = np.sqrt(np.mean(np.sum((s.V - s.A) ** 2, axis=1)))
    assert rms > cfg().drift_cap * BASE.scale


def test_split_when_user_broadens_and_merge_when_it_narrows():
    learner = OnlineLearner(BASE, cfg(regate_every=5, k_hysteresis=2))
    s = learner.new_state("u")
    off = 0
    events = []
    for _ in range(40):  # one taste: category 0
        events += learner.apply(s, f"i{4 * (off % 15)}", 60_000 * off, off)
        off += 1
    assert s.k == 1
    for _ in range(120):  # now two tastes, alternating
        cat = off % 2
        events += learner.apply(s, f"i{4 * (off % 15) + cat}", 60_000 * off, off)
        off += 1
    grow = [e for e in events if e.kind == "k_change"]
    assert s.k == 2 and grow and {k: v for k, v in grow[0].detail.items() if k != "d"} == {"k_from": 1, "k_to": 2}
    assert 0.0 < grow[0].detail["d"] < 1.0
    centre1 = BASE.item_emb[1::4].mean(axis=0)
    cos = s.V @ centre1 / (np.linalg.norm(s.V, axis=1) * np.linalg.norm(centre1))
    assert cos.max() > 0.8  # one interest now covers the new taste
    for _ in range(400):  # back to one taste
        events += learner.apply(s, f"i{4 * (off % 15)}", 60_000 * off, off)
        off += 1
    assert s.k == 1
    last = [e.detail for e in events if e.kind == "k_change"][-1]
    assert (last["k_from"], last["k_to"]) == (2, 1)


def test_hysteresis_makes_k_changes_rarer():
    rng = np.random.default_rng(3)  # tastes whose breadth hovers around 2.5 categories
    rows = 4 * rng.integers(0, 15, 600) + rng.choice(4, 600, p=[0.6, 0.3, 0.1, 0.0])
    counts = {}
    for guards in (True, False):
        # the same count both ways (the served K_u rises at the first proposal)
        learner = OnlineLearner(BASE, cfg(guards=guards, regate_every=2, k_hysteresis=4,
                                          k_hysteresis_up=None))
        s = learner.new_state("u")
        ev = []
        for off, r in enumerate(rows):
            ev += learner.apply(s, f"i{r}", 60_000 * off, off)
        counts[guards] = sum(e.kind == "k_change" for e in ev)
    assert 5 * counts[True] <= counts[False]


def _ten_clicks(learner: OnlineLearner) -> tuple[UserState, list[str]]:
    """User ``u`` after clicks on items i0..i9 a minute apart, and the ids of its recent items."""
    s = learner.new_state("u")
    for off in range(10):
        learner.apply(s, f"i{off}", 60_000 * off, off)
    return s, [BASE.item_ids[r] for r in s.recent]


def test_reanchor_on_a_new_base_maps_items_by_id():
    learner = OnlineLearner(BASE, cfg())
    s, ids = _ten_clicks(learner)
    perm = np.random.default_rng(0).permutation(60)
    new = BaseView(
        BASE.item_ids[perm],
        BASE.item_emb[perm] * 2,
        BASE.item_categories[perm],
        BASE.category_names,
        k_max=4,
        version="v2",
    )
    evs = learner.reanchor(s, new)
    assert [e.kind for e in evs] == ["reanchor"] and evs[0].detail["version"] == "v2"
    assert s.version == "v2" and [new.item_ids[r] for r in s.recent] == ids
    assert np.allclose(s.V, s.A) and s.anchored


def test_a_learner_that_succeeds_another_maps_items_of_the_older_base_by_id():
    # a hot reload builds a new learner; users recorded under the old base keep their items
    old = OnlineLearner(BASE, cfg())
    s, ids = _ten_clicks(old)
    perm = np.random.default_rng(1).permutation(60)
    new_base = BaseView(BASE.item_ids[perm], BASE.item_emb[perm], BASE.item_categories[perm],
                        BASE.category_names, k_max=4, version="v2")
    alone = OnlineLearner(new_base, cfg())
    lost = pickle.loads(pickle.dumps(s))
    assert alone.apply(lost, "i10", 600_000, 10)[0].kind == "reanchor"
    assert [new_base.item_ids[r] for r in lost.recent] == ["i10"]  # the old table is unknown
    new = OnlineLearner(new_base, cfg())
    new.succeed(old)
    assert new.apply(s, "i10", 600_000, 10)[0].kind == "reanchor"
    assert [new_base.item_ids[r] for r in s.recent] == ids + ["i10"]


def test_drift_event_round_trips_through_json():
    e = DriftEvent("k_change", "u", 5, 7, {"k_from": 1, "k_to": 2})
    assert DriftEvent.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_the_served_network_is_trained_on_the_window_the_stream_reads() -> None:
    """One owner of the training window: DIAM's network is trained on ``infer_items`` (its
    whole window, ``recent_len``, when the stream reads all of it); extractor-less models on
    ``recent_len``."""
    from online_model.config import OnlineConfig

    cfg = OnlineConfig()
    assert cfg.train_seq_len("diam") == cfg.infer_items == 10
    assert cfg.train_seq_len("mind") == cfg.recent_len == 50
    assert OnlineConfig(infer_items=0).train_seq_len("diam") == 50
    assert OnlineConfig(infer_items=20, recent_len=15).train_seq_len("diam") == 15


def _grown(base: BaseView, ids: list[str], seed: int) -> BaseView:
    """``base`` with ``ids`` appended under the same version (a catalogue or click-first
    growth, ``BaseView.with_items``)."""
    emb = np.random.default_rng(seed).standard_normal((len(ids), base.dim)).astype(np.float32)
    return base.with_items(ids, emb, np.arange(len(ids), dtype=np.int32) % 4)


def _reload(current: OnlineLearner, base: BaseView) -> OnlineLearner:
    nxt = OnlineLearner(base, cfg())  # what diam run's reload hook does (diam.app)
    nxt.succeed(current)
    return nxt


def test_users_keep_their_items_by_id_over_many_growths_then_a_publish_or_rollback():
    # Growth appends rows under the same version, so nobody is re-anchored and every user stays
    # recorded under the table they were re-anchored on; each growth is a new table. After more
    # growths than KnownBases keeps, a version switch must still find each user's table (the
    # newest growth, whose first rows are the recorded table's), not re-anchor them from nothing.
    learner = OnlineLearner(BASE, cfg())
    users = {u: learner.new_state(u) for u in ("a", "b", "c")}
    off = 0
    for i, s in enumerate(users.values()):
        for r in range(8):
            learner.apply(s, f"i{(7 * i + 3 * r) % 60}", 60_000 * off, off)
            off += 1
    base = BASE
    for g in range(4):  # more growths than keep=3
        base = _grown(base, [f"new{g}a", f"new{g}b"], g)
        assert base.version == BASE.version and base.item_ids[:60].tolist() == BASE.item_ids.tolist()
        learner = _reload(learner, base)
        learner.apply(users["b"], f"new{g}a", 60_000 * off, off)  # a grown row, under the old fp
        off += 1
    assert {s.items_fp for s in users.values()} == {BASE.fingerprint}  # never re-anchored
    before = {u: [base.item_ids[r] for r in s.recent] for u, s in users.items()}
    assert all(len(v) >= 8 for v in before.values()) and "new3a" in before["b"]
    perm = np.random.default_rng(2).permutation(len(base.item_ids))
    v2 = BaseView(base.item_ids[perm], base.item_emb[perm], base.item_categories[perm],
                  BASE.category_names, k_max=4, version="v2")
    rollback = _grown(BASE, sorted(base.item_ids[60:].tolist(), reverse=True), 9)  # rebuilt
    for switch in (v2, rollback):  # a publish, then a rollback to the first version
        learner = _reload(learner, switch)
        for u, s in users.items():
            assert learner.apply(s, "i1", 60_000 * off, off)[0].kind == "reanchor"
            off += 1
            before[u] = before[u][-(learner.cfg.recent_len - 1):] + ["i1"]
            assert [switch.item_ids[r] for r in s.recent] == before[u], (switch.version, u)
            assert s.items_fp == switch.fingerprint


def test_known_bases_keeps_one_table_per_version_with_its_growths():
    from online_model.online import KnownBases

    kb = KnownBases(keep=2)
    g1 = _grown(BASE, ["x"], 0)
    g2 = _grown(g1, ["y"], 1)
    for b in (BASE, g1, g2):
        kb.add(b)
    assert kb.get(BASE.fingerprint) is kb.get(g1.fingerprint) is kb.get(g2.fingerprint) is g2
    other = toy_base(n_items=30, dim=8, version="v2")
    kb.add(other)
    assert kb.get(BASE.fingerprint) is g2 and kb.get(other.fingerprint) is other
    # the same version's table that does not extend the known one replaces it: of the older
    # tables only those that are its first rows stay
    fresh = _grown(BASE, ["z"], 2)
    kb.add(fresh)
    assert kb.get(fresh.fingerprint) is fresh and kb.get(BASE.fingerprint) is fresh
    assert kb.get(g2.fingerprint) is None
    kb.add(toy_base(n_items=20, dim=8, version="v3"))  # a third version: the oldest goes
    assert kb.get(other.fingerprint) is None and kb.get(fresh.fingerprint) is fresh


def test_a_publish_after_one_growth_maps_the_grown_items_a_user_clicked():
    # the user's rows include one the growth appended, while it stays recorded under the start
    # table: the old code looked that row up in the start table (IndexError at the publish)
    learner = OnlineLearner(BASE, cfg())
    s = learner.new_state("u")
    for off in range(5):
        learner.apply(s, f"i{off}", 60_000 * off, off)
    grown = _grown(BASE, ["n"], 0)
    learner = _reload(learner, grown)
    learner.apply(s, "n", 600_000, 5)
    assert s.items_fp == BASE.fingerprint and grown.item_ids[s.recent[-1]] == "n"
    v2 = BaseView(grown.item_ids[::-1].copy(), grown.item_emb[::-1].copy(),
                  grown.item_categories[::-1].copy(), BASE.category_names, k_max=4, version="v2")
    learner = _reload(learner, v2)
    assert learner.apply(s, "i9", 700_000, 6)[0].kind == "reanchor"
    assert [v2.item_ids[r] for r in s.recent] == ["i0", "i1", "i2", "i3", "i4", "n", "i9"]
