"""On a DIAM checkpoint the online learner anchors users on the network's interests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.online import OnlineLearner, UserState
from online_model.testing import tiny_diam_checkpoint


@pytest.fixture(scope="module")
def diam_base(tmp_path_factory):
    ck, c = tiny_diam_checkpoint(tmp_path_factory.mktemp("ck") / "diam")
    return BaseView.from_checkpoint(ck), c


def _clicks(c, n=30, seed=1):
    rng = np.random.default_rng(seed)
    return [str(x) for x in rng.choice(c.item_ids, size=n)]


def test_diam_checkpoint_gives_diam_anchors(diam_base) -> None:
    base, c = diam_base
    assert base.anchor_kind == "diam" and base.head is not None
    learner = OnlineLearner(base, OnlineConfig(dim=8, k_max=4, reanchor_every=5))
    st = learner.new_state("u")
    items = _clicks(c)
    for off, it in enumerate(items[:1]):
        learner.apply(st, it, 1_000 * off, off)
    # anchored at the first known item, on the network's output for that history
    want = base.head.infer(st.recent, st.signals.values())
    assert st.anchored and st.k == min(want.k, 4)
    assert np.array_equal(st.A, want.vecs[: st.k])
    for off, it in enumerate(items[1:], start=1):
        learner.apply(st, it, 1_000 * off, off)
    assert st.since_anchor < 5  # re-anchored on schedule


def test_reinfer_arm_is_the_network_after_every_event(diam_base) -> None:
    base, c = diam_base
    cfg = OnlineConfig(dim=8, k_max=4, learn=False, guards=False, reanchor_every=1)
    learner = OnlineLearner(base, cfg)
    st = learner.new_state("u")
    for off, it in enumerate(_clicks(c, 20)):
        learner.apply(st, it, 1_000 * off, off)
        want = base.head.infer(st.recent, st.signals.values())
        assert st.k == want.k and np.array_equal(st.V, want.vecs[: want.k])


def test_infer_items_runs_the_network_on_the_last_items_only(diam_base) -> None:
    base, c = diam_base
    assert base.head.seq_len > 3
    cfg = OnlineConfig(dim=8, k_max=4, learn=False, guards=False, reanchor_every=1,
                       infer_items=3)
    learner = OnlineLearner(base, cfg)
    st = learner.new_state("u")
    before = learner.inferences
    items = _clicks(c, 20)
    for off, it in enumerate(items):
        learner.apply(st, it, 1_000 * off, off)
        want = base.head.infer(st.recent[-3:], st.signals.values())
        assert st.k == want.k and np.array_equal(st.V, want.vecs[: want.k])
    assert learner.inferences - before == len(items)
    # and the global slot's refresh between inferences reads the same window
    cfg = cfg.model_copy(update={"reanchor_every": 100})
    learner = OnlineLearner(base, cfg)
    st = learner.new_state("u")
    for off, it in enumerate(items):
        learner.apply(st, it, 1_000 * off, off)
    mean = base.item_emb[st.recent[-3:]].mean(0)
    assert base.head.global_slot_on
    np.testing.assert_allclose(st.A[0], base.head.global_slot(mean, st.hseq), atol=1e-5)


def test_residual_reanchoring_keeps_the_steps_within_the_guards(diam_base) -> None:
    base, c = diam_base
    cfg = OnlineConfig(dim=8, k_max=4, reanchor_every=3, reanchor_residual=True)
    learner = OnlineLearner(base, cfg)
    st = learner.new_state("u")
    for off, it in enumerate(_clicks(c, 60, seed=4)):
        learner.apply(st, it, 60_000 * off, off)
        rms = np.sqrt(((st.V - st.A) ** 2).sum(1).mean())
        assert rms <= cfg.drift_cap * base.scale + 1e-5
        assert np.all(np.linalg.norm(st.V - st.A, axis=1) <= cfg.trust_radius * base.scale + 1e-4)


def test_same_events_same_bytes_and_pack_round_trip(diam_base) -> None:
    base, c = diam_base
    cfg = OnlineConfig(dim=8, k_max=4, reanchor_every=4)
    runs = []
    for _ in range(2):
        learner = OnlineLearner(base, cfg)
        st = learner.new_state("u")
        for off, it in enumerate(_clicks(c, 40, seed=7)):
            learner.apply(st, it, 5_000 * off, off)
            if off == 20:  # a snapshot and restore mid-stream changes nothing
                st = UserState.unpack(st.pack())
        runs.append((st.V.tobytes(), st.A.tobytes(), st.d_logit, st.k))
    assert runs[0] == runs[1]


def test_new_snapshot_reanchors_on_the_new_network(diam_base, tmp_path) -> None:
    base, c = diam_base
    ck2, _ = tiny_diam_checkpoint(tmp_path / "diam2", seed=5)
    base2 = BaseView.from_checkpoint(ck2)
    learner = OnlineLearner(base, OnlineConfig(dim=8, k_max=4, reanchor_every=0))
    st = learner.new_state("u")
    for off, it in enumerate(_clicks(c, 10)):
        learner.apply(st, it, 1_000 * off, off)
    events = learner.reanchor(st, base2)
    assert events[0].kind == "reanchor" and st.version == base2.version
    want = base2.head.infer(st.recent, st.signals.values())
    assert np.array_equal(st.A, want.vecs[: st.k])


def test_baseline_checkpoint_keeps_kmeans_anchors(tmp_path) -> None:
    ck, _ = tiny_diam_checkpoint(tmp_path / "mind", model="mind")
    assert BaseView.from_checkpoint(ck).anchor_kind == "kmeans"


def test_global_slot_follows_every_event_between_inferences(diam_base) -> None:
    base, c = diam_base
    learner = OnlineLearner(base, OnlineConfig(dim=8, k_max=4, reanchor_every=50,
                                               learn=False, guards=False))
    st = learner.new_state("u")
    items = _clicks(c, 12, seed=9)
    for off, it in enumerate(items):
        learner.apply(st, it, 1_000 * off, off)
    mean = base.item_emb[st.recent[-10:]].astype(np.float64).mean(0)  # the model's window
    want = base.head.global_slot(mean, st.hseq)
    assert np.allclose(st.A[0], want, atol=1e-5) and np.allclose(st.V[0], want, atol=1e-5)
    # the summary is the last inference's, and the global slot is exact at an inference
    assert st.hseq.any()
    out = base.head.infer(st.recent, st.signals.values())
    assert np.allclose(base.head.global_slot(base.item_emb[st.recent[-10:]].mean(0), out.h_seq),
                       out.vecs[0], atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(1, 12), n_items=st.integers(1, 40), window=st.integers(1, 15))
def test_ring_window_is_the_last_recent_items(cap, n_items, window) -> None:
    """The re-anchoring path reads the ring through kernels.ring_window: the same rows as
    ``UserState.recent[-window:]``, across the ring's wrap."""
    from online_model import kernels as K

    state = UserState("u", 4, 2, "v", "fp", cap, 5.0)
    rows = np.arange(100, 100 + n_items, dtype=np.int32)
    for r in rows:  # as the kernel fills the ring: at ring_pos, which then advances
        pos = int(state.rec["ring_pos"][0])
        state.ring[pos] = r
        state.rec["ring_pos"] = (pos + 1) % cap
        state.rec["n_recent"] = min(int(state.rec["n_recent"][0]) + 1, cap)
    got = K.ring_window(state.ring, state.n_recent, int(state.rec["ring_pos"][0]), window)
    assert got.dtype == np.int64
    assert got.tolist() == state.recent[-window:].tolist() == rows[-min(cap, window):].tolist()
    # the stream's pushes list them in slices (UserState.last_items): the same rows, int32
    last = state.last_items(window)
    assert last.dtype == np.int32 and last.tolist() == got.tolist()
    assert state.recent.dtype == np.int32 and state.recent.tolist() == rows[-cap:].tolist()


def test_slot0_refresh_reads_the_last_items_of_a_wrapped_ring(diam_base) -> None:
    """With a full ring that has wrapped, the refresh reads the last ``infer_items`` items in
    place: the same slot 0 as the global slot of their mean."""
    base, c = diam_base
    cfg = OnlineConfig(dim=8, k_max=4, learn=False, guards=False, reanchor_every=100,
                       infer_items=3, recent_len=7)
    learner = OnlineLearner(base, cfg)
    st = learner.new_state("u")
    for off, it in enumerate(_clicks(c, 30, seed=6)):
        learner.apply(st, it, 1_000 * off, off)
    assert st.n_recent == 7 and int(st.rec["ring_pos"][0]) != 0  # full, and wrapped
    mean = base.item_emb[st.recent[-3:]].astype(np.float64).mean(0)
    np.testing.assert_allclose(st.A[0], base.head.global_slot(mean, st.hseq), atol=1e-5)


def test_reanchoring_carries_the_share_of_the_offsets_it_is_told() -> None:
    """``reanchor_keep``: the new vectors are the network's output plus that share of each kept
    interest's learnt offset; d_u's logit keeps its whole offset with ``reanchor_residual``
    and restarts at the prior without it."""
    from online_model import kernels as K

    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(4, 8)).astype(np.float32)
    Af = rng.normal(size=16).astype(np.float32)
    Vf = (Af + rng.normal(size=16)).astype(np.float32)
    for residual, keep in ((True, 1.0), (True, 0.5), (True, 0.0), (False, 1.0)):
        user = K.new_user(7, 30.0)
        user["k_proposal"] = 2
        user["d_prior"], user["d_logit"] = 0.2, 0.7
        A, V = K.reanchor_vectors(user, vecs, 2, 1, 1, Vf, Af, 2, residual, np.float32(keep),
                                  -0.1, 4.0)
        np.testing.assert_array_equal(A, vecs[:2])
        share = keep if residual else 0.0
        np.testing.assert_allclose(V - A, share * (Vf - Af).reshape(2, 8), atol=1e-6)
        assert user["d_logit"][0] == pytest.approx(-0.1 + (0.5 if residual else 0.0))


@settings(max_examples=200, deadline=None)
@given(g=st.floats(0.0, 1.0), k_old=st.integers(1, 8), margin=st.floats(0.0, 0.9))
def test_gate_proposal_holds_k_within_the_margin_of_its_bucket(g, k_old, margin) -> None:
    """``k_gate_margin``: the gate proposes the current K_u while g · K lies within the margin
    of K_u's bucket, its own K elsewhere; without a margin it is the gate's K."""
    from online_model import kernels as K

    k_net = min(int(np.floor(g * 8)) + 1, 8)
    got = K.gate_proposal(g, 8, k_net, k_old, margin)
    assert K.gate_proposal(g, 8, k_net, k_old, 0.0) == k_net
    inside = k_old - 1 - margin <= g * 8 < k_old + margin
    assert got == (k_old if inside else k_net)


@pytest.mark.parametrize(("x", "want"), [(2.3, 2), (2.6, 3), (0.6, 2), (0.4, 1), (1.0, 2),
                                         (2.49, 2), (3.7, 4)])
def test_gate_proposal_at_k_2_with_half_a_k_of_margin(x, want) -> None:
    """K_u = 2 owns g · 8 in [1, 2); with a margin of 0.5 the gate proposes 2 on [0.5, 2.5)."""
    from online_model import kernels as K

    g = x / 8
    assert K.gate_proposal(g, 8, int(np.floor(x)) + 1, 2, 0.5) == want


def test_k_rises_and_falls_after_their_own_number_of_proposals() -> None:
    """``k_hysteresis_up`` equal proposals raise K_u, ``k_hysteresis`` lower it; a different
    proposal restarts the count."""
    from online_model import kernels as K

    user = K.new_user(7, 30.0)
    user["k_proposal"] = 2
    assert [K.propose_k(user, 2, 3, 4, 2) for _ in range(2)] == [2, 3]
    assert [K.propose_k(user, 3, 2, 4, 2) for _ in range(3)] == [3, 3, 3]
    assert K.propose_k(user, 3, 1, 4, 2) == 3  # another proposal: the streak restarts
    assert [K.propose_k(user, 3, 2, 4, 2) for _ in range(4)] == [3, 3, 3, 2]
    assert OnlineConfig(k_hysteresis=3, k_hysteresis_up=None).k_hysteresis_pair() == (3, 3)
    assert OnlineConfig(k_hysteresis=3, k_hysteresis_up=1).k_hysteresis_pair() == (3, 1)
    assert OnlineConfig().k_hysteresis_pair() == (3, 1)  # served: up at once, down after 3
    assert OnlineConfig(k_hysteresis=3, guards=False).k_hysteresis_pair() == (1, 1)


@pytest.mark.parametrize("cos", [-0.2, 0.3, 0.8])
def test_surprising_click_reruns_the_network_at_once(diam_base, cos) -> None:
    """``reanchor_cos``: the network re-runs on exactly the clicks whose cosine to their routed
    interest (before the step) is below the threshold, whatever the cadence says."""
    base, c = diam_base
    cfg = OnlineConfig(dim=8, k_max=4, reanchor_every=100, reanchor_cos=cos, rate_burst=1000,
                       reanchor_explore=False)
    learner = OnlineLearner(base, cfg)
    st = learner.new_state("u")
    items = _clicks(c, 60, seed=3)
    learner.apply(st, items[0], 0, 0)
    assert st.anchored
    ran = []
    for off, it in enumerate(items[1:], start=1):
        e = base.item_emb[base.index_of(it)]
        cosines = st.V @ e / (np.linalg.norm(st.V, axis=1) * np.linalg.norm(e) + 1e-30)
        surprised = bool(cosines.max() < cos - 1e-6)
        clear = bool(cosines.max() > cos + 1e-6)
        before = learner.inferences
        learner.apply(st, it, 1_000 * off, off)
        reran = learner.inferences - before == 1
        if surprised or clear:  # not within rounding of the threshold
            assert reran == surprised
            ran.append(reran)
    assert ran and (any(ran) or cos < 0)  # some clicks re-ran (none need to below 0)


def test_reanchor_cos_one_is_the_network_on_every_click(diam_base) -> None:
    """Every click is below a cosine of 1, so the trigger at 1 is the cadence of 1, bit for
    bit; at -1 it never fires and the cadence alone decides."""
    base, c = diam_base
    runs = {}
    for name, over in {"cos1": {"reanchor_cos": 1.0}, "every1": {"reanchor_every": 1},
                       "off": {"reanchor_cos": -1.0}}.items():
        cfg = OnlineConfig(dim=8, k_max=4, reanchor_every=50, rate_burst=1000,
                           reanchor_explore=False)
        learner = OnlineLearner(base, cfg.model_copy(update=over))
        st = learner.new_state("u")
        for off, it in enumerate(_clicks(c, 40, seed=9)):
            learner.apply(st, it, 5_000 * off, off)
        runs[name] = (st.V.tobytes(), st.A.tobytes(), st.d_logit, learner.inferences)
    assert runs["cos1"] == runs["every1"]
    assert runs["cos1"][3] == 40 and runs["off"][3] == 1


@pytest.mark.parametrize("learn", [True, False])
def test_the_gap_spaces_triggered_runs(diam_base, learn) -> None:
    """``reanchor_gap``: with every click surprising (the trigger at cosine 1), the network
    runs on every g-th click after the last run and on no other, with steps and without, and
    the cadence still runs it when it is due sooner than the gap. (That the default gap of 1
    leaves the served bytes as they were is the pins' job: ``test_state_pin.py``,
    ``test_online_flow.py``, ``test_redis_value.py``.)"""
    base, c = diam_base
    clicks = _clicks(c, 40, seed=9)

    def replay(**over):
        cfg = OnlineConfig(dim=8, k_max=4, reanchor_every=50, reanchor_cos=1.0, rate_burst=1000,
                           reanchor_explore=False, learn=learn).model_copy(update=over)
        learner = OnlineLearner(base, cfg)
        st = learner.new_state("u")
        ran = []
        for off, it in enumerate(clicks):
            before = learner.inferences
            learner.apply(st, it, 5_000 * off, off)
            ran.append(learner.inferences - before)
        return ran, (st.V.tobytes(), st.d_logit)

    one, _ = replay()
    assert one == [1] * 40  # every click surprises: gap 1 runs the network on each
    for gap in (2, 3):
        ran, _ = replay(reanchor_gap=gap)
        assert ran[0] == 1  # the first anchoring
        assert ran[1:] == [1 if k % gap == 0 else 0 for k in range(1, 40)]
    cadence, _ = replay(reanchor_gap=5, reanchor_every=2)
    assert cadence[1:] == [1 if k % 2 == 0 else 0 for k in range(1, 40)]


def test_the_trigger_fires_without_steps_too(diam_base) -> None:
    """The network alone (``learn`` off: the nosteps ablation) re-runs on surprising clicks as
    the served learner does, so the ablation differs from it by the steps only."""
    base, c = diam_base
    runs = {}
    for name, over in {"cos1": {"reanchor_cos": 1.0}, "every1": {"reanchor_every": 1}}.items():
        cfg = OnlineConfig(dim=8, k_max=4, reanchor_every=50, learn=False, rate_burst=1000,
                           reanchor_explore=False)
        learner = OnlineLearner(base, cfg.model_copy(update=over))
        st = learner.new_state("u")
        for off, it in enumerate(_clicks(c, 30, seed=4)):
            learner.apply(st, it, 5_000 * off, off)
        runs[name] = (st.V.tobytes(), st.d_logit, learner.inferences)
    assert runs["cos1"] == runs["every1"] and runs["cos1"][2] == 30


def test_exploring_click_reruns_the_network_when_asked(diam_base) -> None:
    """``reanchor_explore``: with the cadence and the cosine trigger out of the way, the network
    re-runs on exactly the clicks whose category none of the user's previous 20 clicks had
    (the exploration signal's flag); off, those clicks run nothing."""
    base, c = diam_base
    cats = np.asarray(base.item_categories)
    for on in (True, False):
        cfg = OnlineConfig(dim=8, k_max=4, reanchor_every=1000, reanchor_cos=-1.0,
                           reanchor_explore=on, rate_burst=1000)
        learner = OnlineLearner(base, cfg)
        st = learner.new_state("u")
        items = _clicks(c, 80, seed=5)
        learner.apply(st, items[0], 0, 0)
        assert st.anchored
        history = [int(cats[base.index_of(items[0])])]
        explored = []
        for off, it in enumerate(items[1:], start=1):
            cat = int(cats[base.index_of(it)])
            new = cat not in history[-20:]
            before = learner.inferences
            learner.apply(st, it, 1_000 * off, off)
            assert (learner.inferences - before == 1) == (new and on)
            history.append(cat)
            explored.append(new)
        assert any(explored) and not all(explored)
