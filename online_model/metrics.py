"""Ranking and diversity metrics of one recommended list, numpy only.

Accuracy follows ComiRec's protocol with its corrected NDCG: the gain of a hit is discounted by
its position *in the ranked list* (ComiRec's released code discounted by the position in the
ground-truth list), and the ideal DCG puts min(|truth|, n) hits on top.

>>> ranked = np.array([5, 1, 9, 7])
>>> truth = np.array([1, 7, 3])
>>> recall_at(ranked, truth, 4), hit_rate_at(ranked, truth, 1)
(0.6666666666666666, 0.0)
>>> round(ndcg_at(ranked, truth, 4), 4)  # (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3) + 1/log2(4))
0.4982
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "bootstrap_ci",
    "recall_at",
    "ndcg_at",
    "hit_rate_at",
    "category_entropy",
    "realised_entropy",
    "ild_embedding",
    "ild_category",
    "category_coverage",
    "spearman",
    "pareto_front",
    "front_at",
]


def _hits(ranked: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    return np.isin(np.asarray(ranked)[:n], np.asarray(truth))


def recall_at(ranked: np.ndarray, truth: np.ndarray, n: int) -> float:
    """Share of the (distinct) ground-truth items found in the top n."""
    truth = np.unique(truth)
    if len(truth) == 0:
        return 0.0
    return float(_hits(ranked, truth, n).sum()) / len(truth)


def hit_rate_at(ranked: np.ndarray, truth: np.ndarray, n: int) -> float:
    """1.0 when at least one ground-truth item is in the top n."""
    return float(_hits(ranked, truth, n).any())


def ndcg_at(ranked: np.ndarray, truth: np.ndarray, n: int) -> float:
    """Binary-gain NDCG@n over positions in the ranked list."""
    truth = np.unique(truth)
    if len(truth) == 0:
        return 0.0
    hits = _hits(ranked, truth, n)
    disc = 1.0 / np.log2(np.arange(2, len(hits) + 2))
    dcg = float((hits * disc).sum())
    ideal = float((1.0 / np.log2(np.arange(2, min(len(truth), n) + 2))).sum())
    return dcg / ideal


def category_entropy(cats: np.ndarray) -> float:
    """Shannon entropy (nats) of the category histogram of a list; unknown (<0) ignored."""
    cats = np.asarray(cats)
    cats = cats[cats >= 0]
    if len(cats) == 0:
        return 0.0
    p = np.bincount(cats) / len(cats)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def realised_entropy(cats: np.ndarray, n_categories: int) -> float:
    """Category entropy normalised to [0, 1] by its maximum for this many items.

    The maximum is log(min(len, n_categories)): twenty items cannot spread over more than
    twenty categories, so lists of different lengths stay comparable.

    >>> realised_entropy(np.array([0, 1, 2, 3]), 10), realised_entropy(np.array([2, 2]), 10)
    (1.0, 0.0)
    """
    cats = np.asarray(cats)
    cats = cats[cats >= 0]
    top = min(len(cats), n_categories)
    if top < 2:
        return 0.0
    return category_entropy(cats) / math.log(top)


def ild_embedding(vecs: np.ndarray) -> float:
    """Intra-list distance: mean over pairs of (1 - cosine) of the rows of ``vecs`` [n, d]."""
    n = len(vecs)
    if n < 2:
        return 0.0
    x = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    return float((n * n - sim.sum()) / (n * (n - 1)))  # diagonal of 1 - sim is 0


def ild_category(cats: np.ndarray) -> float:
    """Share of pairs of the list whose primary categories differ."""
    cats = np.asarray(cats)
    n = len(cats)
    if n < 2:
        return 0.0
    same = (cats[:, None] == cats[None, :]).sum() - n
    return float(1.0 - same / (n * (n - 1)))


def category_coverage(cats: np.ndarray, n_categories: int) -> float:
    """Distinct known categories in the list over the number of categories."""
    cats = np.asarray(cats)
    return float(len(np.unique(cats[cats >= 0]))) / max(1, n_categories)


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 0-based."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties; NaN if a side is constant.

    >>> round(spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 25, 40])), 9)
    1.0
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    rx, ry = _rank(x), _rank(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return float("nan")
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Upper-right Pareto front of ``(diversity, accuracy)`` points ``[P, 2]`` -> ``[F, 2]``.

    A point stays when no other point has both at least its diversity and more accuracy (or
    more diversity at equal accuracy). The front is sorted by rising diversity, so its accuracy
    falls: it is what a model can reach, trading one for the other with its re-rankers.

    >>> pareto_front(np.array([[1.4, 0.24], [1.8, 0.22], [1.6, 0.20], [2.0, 0.15]])).tolist()
    [[1.4, 0.24], [1.8, 0.22], [2.0, 0.15]]
    """
    pts = np.asarray(points, dtype=float)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    order = np.lexsort((-pts[:, 1], -pts[:, 0]))  # most diverse first, best accuracy first
    keep, best = [], -np.inf
    for i in order:
        if pts[i, 1] > best:
            keep.append(i)
            best = pts[i, 1]
    return pts[keep][::-1]


def front_at(front: np.ndarray, diversity: float) -> float:
    """Accuracy of a front at ``diversity``, linear between its points (NaN past its end).

    Below the front's least diverse point the answer is that point's accuracy (a list at least
    as diverse as asked, with that accuracy, exists); above its most diverse point the model
    cannot reach the diversity and the answer is NaN.

    >>> f = np.array([[1.4, 0.24], [1.8, 0.22], [2.0, 0.15]])
    >>> round(front_at(f, 1.6), 4), front_at(f, 1.0), front_at(f, 2.1)
    (0.23, 0.24, nan)
    """
    f = np.asarray(front, dtype=float)
    if len(f) == 0 or diversity > f[-1, 0] + 1e-12:
        return float("nan")
    if diversity <= f[0, 0]:
        return float(f[0, 1])
    return float(np.interp(diversity, f[:, 0], f[:, 1]))


def bootstrap_ci(hits: np.ndarray, n: np.ndarray, *, ref: np.ndarray | None = None,
                 reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval over users of ``sum(hits) / sum(n)`` (users resampled with
    replacement), or of its difference to ``ref`` (the same users' hits under another arm,
    resampled together: a paired interval). The prequential evaluation's and the retrain
    gate's one bootstrap. Resamples are drawn a block at a time, so memory stays bounded at
    tens of thousands of users; up to 1,000 users the block is all of them (one draw).

    Over no users the ratio is undefined: ``(nan, nan)``, which ``--json`` writes as null
    (``diam.commands.json_text``), rather than 0/0 divide warnings.

    >>> bootstrap_ci(np.zeros(0), np.zeros(0))
    (nan, nan)
    """
    u = len(n)
    if u == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    block = max(1, min(reps, 2_000_000 // max(u, 1)))
    stats = []
    for r in range(0, reps, block):
        idx = rng.integers(0, u, size=(min(block, reps - r), u))
        nn = n[idx].sum(1)
        stat = hits[idx].sum(1) / nn
        if ref is not None:
            stat = stat - ref[idx].sum(1) / nn
        stats.append(stat)
    lo, hi = np.percentile(np.concatenate(stats), [2.5, 97.5])
    return float(lo), float(hi)
