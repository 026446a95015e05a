"""One check suite for every learner the stream can run, in the manner of ``river.checks``.

River checks each estimator with the same generic functions (pickling, determinism, inputs left
alone, ...) instead of trusting every estimator's own tests to remember them. Here the "estimators"
are the online learner's configurations the product and the evaluations run: on a k-means base
(plain and with a light gate), on a DIAM checkpoint (the served settings, the ablation arms of
``bench/prequential.py``), guarded, unguarded and frozen. Every check runs on every one of them,
over seeded random click streams with unknown items, bursts and sessions, so a new configuration
or a new field of the state is checked by adding one line to ``LEARNERS``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable

import numpy as np
import pytest

from online_model.base import BaseView, toy_base
from online_model.config import OnlineConfig
from online_model.online import DriftEvent, OnlineLearner, UserState
from online_model.testing import tiny_diam_checkpoint

DIM, K_MAX = 8, 4

# name -> (base, OnlineConfig overrides)
LEARNERS: dict[str, tuple[str, dict]] = {
    "toy-guarded": ("toy", {}),
    "toy-unguarded": ("toy", {"guards": False}),
    "toy-frozen": ("toy", {"learn": False}),
    "gated-guarded": ("gated", {}),
    "gated-rollback": ("gated", {"drift_policy": "rollback"}),
    "diam-served": ("diam", {"reanchor_every": 3}),
    "diam-nosteps": ("diam", {"learn": False, "reanchor_every": 3}),
    "diam-unguarded": ("diam", {"guards": False, "reanchor_every": 3}),
    "diam-reinfer": ("diam", {"learn": False, "guards": False, "reanchor_every": 1}),
    "diam-no-refresh": ("diam", {"refresh_global": False, "reanchor_residual": False}),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, BaseView]:
    ck, _ = tiny_diam_checkpoint(tmp_path_factory.mktemp("ck") / "diam")
    return {"toy": toy_base(n_items=60, dim=DIM, n_categories=4, k_max=K_MAX),
            "gated": toy_base(n_items=60, dim=DIM, n_categories=4, k_max=K_MAX, gate=True,
                              version="gated"),
            "diam": BaseView.from_checkpoint(ck)}


def make(bases: dict[str, BaseView], name: str) -> OnlineLearner:
    base, kw = LEARNERS[name]
    return OnlineLearner(bases[base], OnlineConfig(dim=DIM, k_max=K_MAX, **kw))


def stream(learner: OnlineLearner, seed: int, n: int = 60) -> list[tuple]:
    """Seeded clicks: known and unknown items, gaps from 0 ms (a burst) to an hour, sessions."""
    rng = np.random.default_rng(seed)
    ids = [str(x) for x in learner.base.item_ids]
    ts, out = 1_700_000_000_000, []
    for off in range(n):
        ts += int(rng.choice([0, 10, 1_000, 60_000, 3_600_000]))
        item = "not-in-the-base" if rng.random() < 0.1 else ids[int(rng.integers(len(ids)))]
        out.append((item, ts, off, [None, "s1", "s2"][int(rng.integers(3))]))
    return out


def state_bytes(s: UserState) -> tuple:
    return s.pack()


# -- the checks --------------------------------------------------------------------------------
def check_constraints(learner: OnlineLearner, seed: int) -> None:
    """After every event: K_u in [1, K_max], d_u in (0, 1), finite float32 vectors shaped like
    their anchors, the ring within its length, and the guards' bounds where they are on."""
    c, base = learner.cfg, learner.base
    s = learner.new_state("u")
    tol = 1e-4 * base.scale
    for item, ts, off, sess in stream(learner, seed):
        learner.apply(s, item, ts, off, sess)
        assert 1 <= s.k <= c.k_max
        assert 0.0 < s.d < 1.0
        assert s.V.dtype == np.float32 and s.V.shape == s.A.shape == (s.k, c.dim)
        assert np.all(np.isfinite(s.V)) and np.all(np.isfinite(s.A))
        assert len(s.recent) <= c.recent_len
        if s.anchored and c.learn:
            assert np.all(np.linalg.norm(s.V - s.A, axis=1) <= c.trust_radius * base.scale + tol)
            if c.guards:
                assert s.drift() <= c.drift_cap * base.scale + tol
        if not c.learn and s.anchored:
            assert np.array_equal(s.V, s.A)  # learning off: the vectors are the anchors


def check_deterministic(learner: OnlineLearner, seed: int) -> None:
    """Two learners built alike, fed the same events, end with the same bytes."""
    twin = OnlineLearner(learner.base, learner.cfg)
    a, b = learner.new_state("u"), twin.new_state("u")
    ea, eb = [], []
    for item, ts, off, sess in stream(learner, seed):
        ea += learner.apply(a, item, ts, off, sess)
        eb += twin.apply(b, item, ts, off, sess)
    assert state_bytes(a) == state_bytes(b)
    assert [e.to_dict() for e in ea] == [e.to_dict() for e in eb]


def check_resume_after_snapshot(learner: OnlineLearner, seed: int) -> None:
    """A state packed (the dataflow's snapshot form) or pickled mid-stream, restored and fed the
    rest of the stream, ends with the same bytes as the state that never stopped."""
    events = stream(learner, seed)
    cut = len(events) // 2
    s = learner.new_state("u")
    for item, ts, off, sess in events[:cut]:
        learner.apply(s, item, ts, off, sess)
    resumed = [UserState.unpack(s.pack()), pickle.loads(pickle.dumps(s))]
    for item, ts, off, sess in events[cut:]:
        for r in [s, *resumed]:
            learner.apply(r, item, ts, off, sess)
    for r in resumed:
        assert state_bytes(r) == state_bytes(s)


def check_inputs_not_mutated(learner: OnlineLearner, seed: int) -> None:
    """The base's tables, the head's weights and the settings are read, never written."""
    base = learner.base
    emb, cats = base.item_emb.copy(), base.item_categories.copy()
    head = base.head
    weights = None if head is None else head._buf.copy()
    settings = learner.cfg.model_dump()
    s = learner.new_state("u")
    for item, ts, off, sess in stream(learner, seed):
        learner.apply(s, item, ts, off, sess)
    assert np.array_equal(base.item_emb, emb) and np.array_equal(base.item_categories, cats)
    if head is not None:
        assert np.array_equal(head._buf, weights)
    assert learner.cfg.model_dump() == settings


def check_replays_are_ignored(learner: OnlineLearner, seed: int) -> None:
    """At-least-once input: an offset applied already changes nothing and emits nothing."""
    s = learner.new_state("u")
    events = stream(learner, seed, n=30)
    for item, ts, off, sess in events:
        learner.apply(s, item, ts, off, sess)
        before = state_bytes(s)
        # the same record again, and an older one
        assert learner.apply(s, item, ts, off, sess) == []
        assert learner.apply(s, events[0][0], events[0][1], 0, events[0][3]) == [] or off == 0
        assert state_bytes(s) == before


def check_drift_events_serialise(learner: OnlineLearner, seed: int) -> None:
    """Every drift event the learner emits survives JSON, as the drift topic carries it."""
    s = learner.new_state("u")
    for item, ts, off, sess in stream(learner, seed, n=80):
        for e in learner.apply(s, item, ts, off, sess):
            assert DriftEvent.from_dict(json.loads(json.dumps(e.to_dict()))) == e
            assert e.user_id == "u" and e.offset == off


def check_users_independent(learner: OnlineLearner, seed: int) -> None:
    """A user's vectors do not depend on other users' events in between."""
    events = stream(learner, seed)
    alone = learner.new_state("u")
    for item, ts, off, sess in events:
        learner.apply(alone, item, ts, off, sess)
    fresh = OnlineLearner(learner.base, learner.cfg)
    u, other = fresh.new_state("u"), fresh.new_state("v")
    noise = stream(learner, seed + 1000)
    for (item, ts, off, sess), (i2, t2, o2, s2) in zip(events, noise, strict=True):
        fresh.apply(other, i2, t2, o2, s2)
        fresh.apply(u, item, ts, off, sess)
    assert state_bytes(u) == state_bytes(alone)


CHECKS: list[Callable[[OnlineLearner, int], None]] = [
    check_constraints, check_deterministic, check_resume_after_snapshot,
    check_inputs_not_mutated, check_replays_are_ignored, check_drift_events_serialise,
    check_users_independent,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", list(LEARNERS))
def test_every_learner_passes_every_check(bases, name: str, check) -> None:
    learner = make(bases, name)
    for seed in (0, 1, 2):
        check(learner, seed)
