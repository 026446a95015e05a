"""``OnlineLearner.apply_many`` (one compiled call for a user's clicks of a Bytewax batch) is
``apply`` click by click, bit for bit: states, drift events, the network's runs, sessions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model import kernels as K
from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.online import OnlineLearner
from online_model.testing import tiny_diam_checkpoint
from tests.flowkit import failing_kernel


@pytest.fixture(scope="module")
def diam_base(tmp_path_factory):
    # seed 2: a network whose gate moves, so K_u changes on the stream
    ck, c = tiny_diam_checkpoint(tmp_path_factory.mktemp("ck") / "diam", seed=2)
    return BaseView.from_checkpoint(ck), c


# a tight rate limit, caps that bind, a gate free to move K_u: every kind of click the kernel
# hands back (freezes, guard trips, rollbacks, first anchorings, new K_u) occurs
CONFIGS = {
    "served": {},
    "edges": {"rate_burst": 4.0, "rate_per_s": 2.0, "step_cap": 0.02, "reanchor_cos": 0.8,
              "k_settle_items": 0, "k_gate_margin": 0.0, "k_hysteresis": 1},
    "drift": {"drift_cap": 0.005, "reanchor_every": 40, "reanchor_cos": -1.0,
              "reanchor_explore": False},
    "rollback": {"drift_policy": "rollback", "drift_cap": 0.005, "reanchor_cos": 0.8},
}


def _clicks(c, seed: int, n: int) -> list[tuple[str, int, int, str | None]]:
    """Clicks of one user: known and unknown items, sessions (and none), repeated offsets,
    bursts and pauses in event time."""
    rng = np.random.default_rng(seed)
    out, ts, off = [], 1_000, 0
    for _ in range(n):
        item = str(rng.choice(c.item_ids)) if rng.random() > 0.1 else "not-an-item"
        sess = None if rng.random() < 0.2 else f"s{int(rng.integers(3))}"
        ts += int(rng.choice([10, 200, 5_000, 3_600_000]))
        off = off + 1 if rng.random() > 0.05 else max(0, off - 2)  # a replayed offset
        out.append((item, ts, off, sess))
    return out


def _drifts(results) -> list:
    return [[(d.kind, d.user_id, d.ts_ms, d.offset, d.detail) for d in r] for r in results]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 15), min_size=1, max_size=40),
       config=st.sampled_from(sorted(CONFIGS)))
def test_apply_many_is_apply_click_by_click(diam_base, seed, cuts, config) -> None:
    base, c = diam_base
    cfg = OnlineConfig(dim=8, k_max=4, **{"reanchor_every": 4, **CONFIGS[config]})
    clicks = _clicks(c, seed, 120)
    one, many = OnlineLearner(base, cfg), OnlineLearner(base, cfg)
    sa, sb = one.new_state("u"), many.new_state("u")
    want = [one.apply(sa, *click) for click in clicks]
    got, pos, i = [], 0, 0
    while pos < len(clicks):  # the batches Bytewax might hand over
        m = cuts[i % len(cuts)]
        got += many.apply_many(sb, clicks[pos:pos + m])
        pos, i = pos + m, i + 1
    assert not any(isinstance(r, Exception) for r in got)
    assert _drifts(got) == _drifts(want)
    assert pickle.dumps(sb.pack()) == pickle.dumps(sa.pack())
    assert sb.signals.last_session == sa.signals.last_session
    assert many.inferences == one.inferences


def test_every_kind_of_handed_back_click_occurs(diam_base) -> None:
    """The equality above is not vacuous: over its clicks the kernel hands back freezes,
    guard trips, first anchorings and K_u changes, and runs the network in place too."""
    base, c = diam_base
    kinds: set[str] = set()
    runs = 0
    for config in ("edges", "drift", "rollback"):
        cfg = OnlineConfig(dim=8, k_max=4, **{"reanchor_every": 4, **CONFIGS[config]})
        learner = OnlineLearner(base, cfg)
        for seed in range(6):
            state = learner.new_state(f"u{seed}")
            for r in learner.apply_many(state, _clicks(c, seed, 120)):
                kinds.update(d.kind if d.kind != "guard_trip" else d.detail["guard"] for d in r)
        runs += learner.inferences
    assert {"freeze", "step_cap", "drift_cap", "rollback", "k_change"} <= kinds
    assert runs > 100


def test_a_failing_click_is_handed_back_as_its_exception(diam_base, monkeypatch) -> None:
    """Should the compiled call raise, the click it was applying comes back as the exception
    (its offset applied, as with ``apply``), the clicks before it are learnt, and the ones
    after it go on from the state it left."""
    base, c = diam_base
    cfg = OnlineConfig(dim=8, k_max=4, reanchor_every=4)
    clicks = [(str(x), 1_000 * (i + 1), i, "s") for i, x in
              enumerate(np.random.default_rng(3).choice(c.item_ids, 12))]
    poison = 7
    monkeypatch.setattr(K, "learn_events_diam", failing_kernel(K.learn_events_diam, poison))
    learner = OnlineLearner(base, cfg)
    state = learner.new_state("u")
    res = learner.apply_many(state, clicks)
    assert [i for i, r in enumerate(res) if isinstance(r, Exception)] == [poison]
    assert isinstance(res[poison], ZeroDivisionError)
    assert state.seq == clicks[-1][2] and state.n_events == len(clicks)
