"""Interest matching of ``diam diff`` against brute force, and its CSV (no services)."""

from __future__ import annotations

import csv
import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from serving_cache.diff import DiffSummary, NamespaceDiff, UserDiff, match_interests


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    return a @ b.T


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 10_000))
def test_matching_maximises_total_cosine_like_brute_force(ka, kb, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(ka, 8)).astype(np.float32)
    b = rng.normal(size=(kb, 8)).astype(np.float32)
    pairs = match_interests(a, b)
    assert len(pairs) == min(ka, kb)
    assert len({i for i, _, _ in pairs}) == len({j for _, j, _ in pairs}) == len(pairs)
    c = _cos(a.astype(np.float64), b.astype(np.float64))
    if ka <= kb:
        best = max(sum(c[i, p[i]] for i in range(ka)) for p in itertools.permutations(range(kb), ka))
    else:
        best = max(sum(c[p[j], j] for j in range(kb)) for p in itertools.permutations(range(ka), kb))
    assert abs(sum(x for _, _, x in pairs) - best) < 1e-6


def test_permuted_and_scaled_interests_match_with_cosine_one():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 16)).astype(np.float32)
    perm = [2, 0, 3, 1]
    pairs = match_interests(a, 3.0 * a[perm])
    assert [(i, perm[j]) for i, j, _ in pairs] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert all(abs(c - 1.0) < 1e-6 for _, _, c in pairs)


def test_zero_vectors_have_cosine_zero():
    z = np.zeros((2, 3), dtype=np.float32)
    assert [c for _, _, c in match_interests(z, np.eye(3, dtype=np.float32))] == [0.0, 0.0]


def test_csv_has_a_row_per_user_of_either_side(tmp_path):
    u = UserDiff("u1", 2, 3, 0.9, 0.8, 0.4, 0.5, 10, 12, False)
    s = DiffSummary(2, 2, 1, 1, 1, 0, 0.0, 0.9, 0.8, 0.1, 0)
    path = tmp_path / "d.csv"
    NamespaceDiff("a", "b", [u], ["only-a"], ["only-b"], s).write_csv(path)
    rows = list(csv.DictReader(open(path)))
    assert [(r["user_id"], r["in_a"], r["in_b"], r["dk"]) for r in rows] == [
        ("u1", "1", "1", "1"), ("only-a", "1", "0", ""), ("only-b", "0", "1", "")]
    assert float(rows[0]["dd"]) == 0.1


def test_the_same_state_under_another_model_label_is_told_apart_from_a_difference():
    from serving_cache.codec import UserVectors, encode_user
    from serving_cache.diff import _compare

    vecs = np.arange(8, dtype=np.float32).reshape(2, 4)
    a = UserVectors(seq=5, model="diam-d737161396d1", k=2, d=0.4, dim=4, vecs=vecs, ts=9, n=3)
    b = UserVectors(seq=5, model="20261205T221001-d7371613", k=2, d=0.4, dim=4, vecs=vecs.copy(),
                    ts=9, n=3)
    u = _compare("u", encode_user(a), encode_user(b), a, b)
    assert not u.identical and u.relabelled and (u.model_a, u.model_b) == (a.model, b.model)
    c = UserVectors(seq=5, model=b.model, k=2, d=0.41, dim=4, vecs=vecs, ts=9, n=3)
    assert not _compare("u", encode_user(a), encode_user(c), a, c).relabelled  # d_u differs too
    same = _compare("u", encode_user(a), encode_user(a), a, a)
    assert same.identical and not same.relabelled
