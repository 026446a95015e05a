"""Constraint projections and guards keep the feasible set; the token bucket runs on event time."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from online_model.guards import TokenBucket, cap_drift, cap_step, clip_norm, feasible, push_apart
from online_model.routing import centroids, merge_closest, negatives, split_worst

_vec = arrays(np.float64, 6, elements=st.floats(-5, 5))


@settings(max_examples=200, deadline=None)
@given(_vec, _vec, st.floats(0.01, 3), st.floats(0.5, 4))
def test_feasible_lands_in_both_balls_on_the_segment(v, a, rho, m):
    a = clip_norm(a, m)  # anchors are always feasible
    w = feasible(v, a, rho, m)
    assert np.linalg.norm(w - a) <= rho * (1 + 1e-9) + 1e-12
    assert np.linalg.norm(w) <= m * (1 + 1e-9) + 1e-12
    d = v - a
    if np.linalg.norm(d) > 0:  # on the segment from a toward v
        t = float((w - a) @ d / (d @ d))
        assert -1e-9 <= t <= 1 + 1e-9 and np.allclose(w, a + t * d, atol=1e-7)


@settings(max_examples=100, deadline=None)
@given(_vec, _vec, st.floats(0.01, 3))
def test_cap_step(new, old, cap):
    out, bit = cap_step(new, old, cap)
    assert np.linalg.norm(out - old) <= cap * (1 + 1e-9)
    assert bit == (np.linalg.norm(new - old) > cap)


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.float64, (3, 4), elements=st.floats(-5, 5)),
    arrays(np.float64, (3, 4), elements=st.floats(-5, 5)),
    st.floats(0.01, 3),
)
def test_cap_drift_bounds_rms(v, a, cap):
    out, rms = cap_drift(v, a, cap)
    after = np.sqrt(np.mean(np.sum((out - a) ** 2, axis=1)))
    assert after <= cap * (1 + 1e-9) + 1e-12
    assert np.isclose(rms, np.sqrt(np.mean(np.sum((v - a) ** 2, axis=1))))


@settings(max_examples=100, deadline=None)
@given(_vec, _vec, st.floats(0.0, 0.9))
def test_push_apart_brings_one_overlap_to_the_threshold(v, u, thr):
    vecs = np.vstack([v, u])
    out = push_apart(v.copy(), vecs, 0, thr)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu < 1e-6 or nv < 1e-6:
        return
    before = v @ u / (nv * nu)
    perp = v - (v @ u) / (nu * nu) * u
    after = out @ u / (np.linalg.norm(out) * nu)
    if before <= thr or np.linalg.norm(perp) < 1e-9 * nv:
        assert np.array_equal(out, v)  # nothing to do, or no direction to push along
    else:
        assert abs(after - thr) < 1e-6
        assert np.allclose(out - (out @ u) / (nu * nu) * u, perp)  # orthogonal part kept


def test_token_bucket_freezes_bursts_then_thaws():
    tb = TokenBucket(burst=5, per_s=1.0, freeze_ms=60_000)
    st_ = tb.initial()
    res = [tb.admit(st_, 1_000 + i) for i in range(10)]  # 10 events in 10 ms
    assert [ok for ok, _ in res] == [True] * 5 + [False] * 5
    assert [froze for _, froze in res].count(True) == 1
    assert tb.admit(st_, 30_000) == (False, False)  # still frozen
    assert tb.admit(st_, 62_000) == (True, False)  # thawed with a full bucket
    slow = tb.initial()
    assert all(tb.admit(slow, 2_000 * i)[0] for i in range(100))  # one event per 2 s is fine


def test_negatives_are_deterministic_and_spread():
    a = negatives(12345, 9, 2000, 100)
    assert np.array_equal(a, negatives(12345, 9, 2000, 100))
    assert not np.array_equal(a, negatives(12345, 10, 2000, 100))
    assert not np.array_equal(a, negatives(12346, 9, 2000, 100))
    counts = np.bincount(a, minlength=100)
    assert counts.min() > 5 and counts.max() < 45  # roughly uniform (mean 20)


def _centroids_full_matrix(items: np.ndarray, k: int, iters: int) -> np.ndarray:
    """The k-means as it was first written: farthest-first seeding read from the full n×n
    cosine matrix (the kernel now computes only the cosines to the seeds)."""
    from online_model import kernels as K

    n, d = items.shape
    k = max(1, min(k, n))
    mean = np.zeros((1, d))
    for r in range(n):
        mean[0] += items[r]  # row by row: the kernel's order of additions
    mean /= n
    cos_all, to_mean = K._cosines(items, items), K._cosines(items, mean)
    seeds = [int(np.argmax(to_mean[:, 0]))]
    best = cos_all[:, seeds[0]].copy()
    for _ in range(1, k):
        best[seeds] = np.inf
        nxt = int(np.argmin(best))
        seeds.append(nxt)
        best = np.maximum(best, cos_all[:, nxt])
    cents = items[seeds].astype(np.float64)
    for _ in range(iters):
        assign = np.argmax(K._cosines(items, cents), axis=1)
        for j in range(k):
            members = items[assign == j]
            if len(members):
                acc = np.zeros(d)
                for row in members:
                    acc += row
                cents[j] = acc / len(members)
    return cents


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 50), st.integers(1, 8), st.integers(0, 2**32 - 1), st.booleans())
def test_centroids_seed_like_the_full_cosine_matrix(n, k, seed, repeats):
    from online_model import kernels as K

    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n, 8)).astype(np.float32)
    if repeats and n > 2:
        items[n // 2] = items[0]  # a tie for the farthest-first choice
    assert np.array_equal(K.centroids(items, k, 5), _centroids_full_matrix(items, k, 5))


def test_centroids_split_and_merge():
    rng = np.random.default_rng(0)
    c = np.eye(4)[:2] * 3
    items = np.vstack(
        [c[0] + 0.1 * rng.standard_normal((10, 4)), c[1] + 0.1 * rng.standard_normal((10, 4))]
    )
    cents = centroids(items.astype(np.float32), 2)
    assert np.array_equal(cents, centroids(items.astype(np.float32), 2))
    assert sorted(np.argmax(cents, axis=1).tolist()) == [0, 1]
    # one interest covering both clusters: the split yields the worse-covered cluster
    new = split_worst(np.array([c[0] + 0.2 * c[1]], dtype=np.float32), items.astype(np.float32))
    assert np.argmax(new) == 1
    i, j = merge_closest(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.9, 0.1, 0, 0]], dtype=np.float32))
    assert (i, j) == (0, 2)


def test_negative_table_windows_are_keyed_and_stay_in_rows():
    from online_model.routing import NegativeTable, event_key

    rows = np.arange(10, 60)
    t = NegativeTable(rows, size=4096)
    a = t.draw(event_key(1, 2), 17)
    assert np.array_equal(a, NegativeTable(rows, size=4096).draw(event_key(1, 2), 17))
    assert not np.array_equal(a, t.draw(event_key(1, 3), 17))
    assert np.isin(a, rows).all() and len(a) == 17
    counts = np.bincount(t.table - 10, minlength=50)
    assert counts.min() > 40 and counts.max() < 130  # ~82 each


def test_kernel_negatives_window_is_the_negative_tables():
    # the learner's kernel places an event's negatives itself; it must pick the very window
    # NegativeTable.draw(event_key(user, offset), n) documents
    from online_model import kernels as K
    from online_model.routing import NegativeTable, event_key, stable_hash64

    t = NegativeTable(np.arange(500), size=4096)
    for user in ("alice", "bob", "u123456"):
        h = stable_hash64(user)
        h64 = h - (1 << 64) if h >= 1 << 63 else h
        for offset in (0, 7, 123_456_789, 2**40 + 3):
            start = K._event_start(h64, offset, len(t.table), 17)
            assert np.array_equal(t.table[start:start + 17], t.draw(event_key(h, offset), 17))
