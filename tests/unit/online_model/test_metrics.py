"""Every metric against hand-computed cases."""

import math

import numpy as np
import pytest

from online_model import metrics as M


def test_recall_hit_rate():
    ranked = np.array([4, 8, 15, 16, 23, 42])
    truth = np.array([15, 42, 99, 99])  # duplicates in the truth count once
    assert M.recall_at(ranked, truth, 3) == pytest.approx(1 / 3)
    assert M.recall_at(ranked, truth, 6) == pytest.approx(2 / 3)
    assert M.hit_rate_at(ranked, truth, 2) == 0.0
    assert M.hit_rate_at(ranked, truth, 3) == 1.0
    assert M.recall_at(ranked, np.array([], dtype=int), 3) == 0.0


def test_ndcg_positions_in_ranked_list():
    ranked = np.array([7, 1, 2, 3])
    truth = np.array([2, 7])
    # hits at ranks 1 and 3: 1/log2(2) + 1/log2(4); ideal: 1 + 1/log2(3)
    want = (1 + 0.5) / (1 + 1 / math.log2(3))
    assert M.ndcg_at(ranked, truth, 4) == pytest.approx(want)
    # truth longer than n: the ideal has n hits on top
    assert M.ndcg_at(np.array([1, 2]), np.array([1, 2, 3, 4]), 2) == pytest.approx(1.0)
    # order of the truth does not matter (ComiRec's bug used positions in the truth list)
    assert M.ndcg_at(ranked, truth[::-1], 4) == pytest.approx(want)
    assert M.ndcg_at(ranked, np.array([99]), 4) == 0.0


def test_entropy_ild_coverage():
    cats = np.array([0, 0, 1, 1])
    assert M.category_entropy(cats) == pytest.approx(math.log(2))
    assert M.category_entropy(np.array([3, 3, 3])) == 0.0
    assert M.realised_entropy(np.array([0, 1, 2, 3, 4]), 3) == pytest.approx(
        M.category_entropy(np.array([0, 1, 2, 3, 4])) / math.log(3))
    # pairs: (0,0) same, 4 cross pairs differ, (1,1) same -> 4/6 ordered pairs... per pair 4/6
    assert M.ild_category(cats) == pytest.approx(4 / 6)
    assert M.category_coverage(np.array([0, 2, 2, -1]), 4) == 0.5
    v = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    # cosines: (0,1)=0, (0,2)=-1, (1,2)=0 -> distances 1, 2, 1 -> mean 4/3
    assert M.ild_embedding(v) == pytest.approx(4 / 3)
    assert M.ild_embedding(v[:1]) == 0.0


def test_spearman():
    assert M.spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    # ties get average ranks: x ranks [0, 1.5, 1.5, 3]
    x = np.array([1, 2, 2, 3])
    y = np.array([1, 2, 3, 4])
    rx, ry = np.array([0, 1.5, 1.5, 3]), np.array([0, 1, 2, 3])
    want = np.corrcoef(rx, ry)[0, 1]
    assert M.spearman(x, y) == pytest.approx(want)
    assert math.isnan(M.spearman(np.array([1, 1]), np.array([1, 2])))


def test_pareto_front_is_undominated_and_sorted():
    rng = np.random.default_rng(0)
    pts = rng.random((40, 2))
    f = M.pareto_front(pts)
    assert np.all(np.diff(f[:, 0]) > 0) and np.all(np.diff(f[:, 1]) < 0)
    for p in pts:  # every point is weakly dominated by some front point
        assert np.any((f[:, 0] >= p[0] - 1e-12) & (f[:, 1] >= p[1] - 1e-12))
    for q in f:  # no point strictly dominates a front point
        assert not np.any((pts[:, 0] >= q[0]) & (pts[:, 1] > q[1]))


def test_front_at_interpolates_and_refuses_unreached_diversity():
    f = M.pareto_front(np.array([[1.0, 0.3], [2.0, 0.1], [1.5, 0.05]]))
    assert M.front_at(f, 1.5) == pytest.approx(0.2)
    assert M.front_at(f, 0.5) == pytest.approx(0.3)
    assert math.isnan(M.front_at(f, 2.5))
    assert math.isnan(M.front_at(np.empty((0, 2)), 1.0))
