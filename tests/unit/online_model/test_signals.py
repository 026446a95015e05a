"""Oracle tests: the incremental signals equal a recomputation from the full history."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.signals import SESSION_GAP_MS, SignalState, batch_signals

# gaps straddle the session cut so that sessions both continue and break
_gaps = st.sampled_from([0, 1_000, 60_000, SESSION_GAP_MS, SESSION_GAP_MS + 1, 10 * SESSION_GAP_MS])


@st.composite
def histories(draw):
    n_cat = draw(st.integers(1, 6))
    n = draw(st.integers(0, 60))
    cats = draw(st.lists(st.integers(-1, n_cat - 1), min_size=n, max_size=n))
    gaps = draw(st.lists(_gaps, min_size=n, max_size=n))
    ts = np.cumsum(np.asarray(gaps, dtype=np.int64)) + 1_600_000_000_000
    return n_cat, np.asarray(cats, dtype=np.int64), ts


@settings(max_examples=60, deadline=None)
@given(histories())
def test_incremental_equals_batch_on_every_prefix(h):
    n_cat, cats, ts = h
    s = SignalState(n_cat)
    np.testing.assert_allclose(s.values(), batch_signals(cats[:0], ts[:0], n_cat), atol=1e-6)
    for t in range(len(cats)):
        s.update(int(cats[t]), int(ts[t]))
        inc = s.values()
        assert inc.dtype == np.float32 and inc.shape == (4,)
        assert np.all((inc >= 0) & (inc <= 1))
        np.testing.assert_allclose(inc, batch_signals(cats[: t + 1], ts[: t + 1], n_cat), atol=1e-5)


def test_session_ids_override_the_gap():
    s, t = SignalState(3), SignalState(3)
    for i, c in enumerate([0, 1, 2, 0]):
        s.update(c, i * 1000, session_id="a" if i < 2 else "b")
        t.update(c, i * 1000)
    assert s.n_sessions == 2 and t.n_sessions == 1


def test_exploration_flag_and_pickle_round_trip():
    s = SignalState(4)
    assert s.update(0, 0) == 0.5  # the first click is not scored
    assert s.update(0, 1) == 0.0
    assert s.update(3, 2) == 1.0
    r = pickle.loads(pickle.dumps(s))
    assert np.array_equal(r.values(), s.values())
    assert r.update(1, 3) == s.update(1, 3)
    assert np.array_equal(r.values(), s.values())
    assert np.array_equal(pickle.loads(pickle.dumps(r)).buf, r.buf)  # bit for bit
    with pytest.raises(ValueError, match="expected"):
        SignalState.from_bytes(4, None, r.to_bytes()[:-1])


def test_focused_user_scores_lower_than_browser():
    focused, browser = SignalState(8), SignalState(8)
    for i in range(40):
        focused.update(0, i * 60_000)
        browser.update(i % 8, i * 60_000)
    assert np.all(focused.values()[1:] < browser.values()[1:])


def test_exponential_means_follow_river_ewmean():
    # The compiled update keeps the exploration rate as River's EWMean would (seeded with the
    # 0.5 prior, then one update per scored click).
    from river import stats

    from online_model import kernels as K
    from online_model.signals import EXPLORE_FADING

    rng = np.random.default_rng(3)
    s = SignalState(12)
    ref = stats.EWMean(EXPLORE_FADING)
    ref.update(0.5)
    for i, c in enumerate(rng.integers(0, 12, size=300)):
        flag = s.update(int(c), 1000 * i)
        if i:  # the first click is not scored
            ref.update(flag)
    assert abs(s.buf[K.S_EXPLORE] - ref.get()) < 1e-12
    assert abs(s.values()[2] - ref.get()) < 1e-6


def test_the_head_record_names_what_the_kernels_update() -> None:
    """The scalar head is one named record (kernels.SIG_HEAD) over the buffer the kernels
    update in place: its fields read what the properties read, and a write by name is seen
    by them."""
    from online_model import kernels as K

    s = SignalState(3)
    for i, c in enumerate([0, 1, 1, 2, 0]):
        s.update(c, 1_000 * i)
    h = s.head
    assert K.S_HEAD * 8 == K.SIG_HEAD.itemsize and K.S_LAST_EXPLORE == 11
    assert (h["n"], h["distinct"], h["last_cat"]) == (5.0, 3.0, 0.0)
    assert h["n"] == s.n and h["last_explore"] == s.last_explore
    h["sessions"] = 4.0
    assert s.n_sessions == 4
