"""Diversity-aware merge of per-interest candidate lists into one top-n list (DESIGN.md §4.5).

Numpy only: serving (serving_cache) and the offline evaluation both call :func:`aggregate`, so
what is measured offline is what users get.

Three regimes by the diversity preference d_u, all expressed as *quotas* over interests that
are filled greedily in interleaved order:

- ``d_u <= 0.3``: the top interest only (the others only back-fill when it runs dry);
- ``0.3 < d_u <= 0.7``: quotas proportional to ``softmax(strength_k / tau)``, the deterministic
  (noise-free) form of the Gumbel-softmax used in training, where ``strength_k`` is interest k's
  best candidate similarity and the temperature *rises* with d_u (``tau = tau_min +
  d_u (tau_max - tau_min)``, the seed correction: flatter weights mix more interests);
- ``d_u > 0.7``: round-robin, equal quotas.

Inside a quota an interest takes its best remaining candidate by ``score + lam * (1 - max
similarity to the items already selected)`` with ``lam = 0.3 * d_u`` (scores min-max normalised
to [0, 1] so the bonus has a fixed meaning). Similarity is the cosine of the item vectors,
averaged with "same category" when ``item_categories`` is given.

Greedy selection is not monotone in d_u for every possible input, and the contract asks that
the realised diversity of a user's list never falls when d_u rises. So the list for d_u is the
most diverse of the raw lists at the grid points ``0, 0.1, ..., 1`` not above d_u (ties go to
the larger grid point): a running maximum over a growing set, hence monotone by construction.
Diversity is :func:`list_diversity` (embedding ILD, averaged with category ILD when categories
are given).

>>> rng = np.random.default_rng(0)
>>> vecs = rng.normal(size=(30, 8)).astype(np.float32)
>>> items = np.arange(30).reshape(3, 10)
>>> scores = np.sort(rng.random((3, 10)), axis=1)[:, ::-1].astype(np.float32)
>>> low = aggregate(scores, items, vecs, d_u=0.1, n=5)
>>> high = aggregate(scores, items, vecs, d_u=0.9, n=5)
>>> len(set(low.tolist())), list_diversity(high, vecs) >= list_diversity(low, vecs)
(5, True)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LOW",
    "HIGH",
    "LAMBDA_SCALE",
    "GRID",
    "aggregate",
    "aggregate_raw",
    "manual_d",
    "merge_by_score",
    "controllable",
    "list_diversity",
    "temperature",
]

LOW = 0.3
"""At or below: top interest only (DESIGN §4.5)."""
HIGH = 0.7
"""Above: round-robin over interests."""
LAMBDA_SCALE = 0.3
"""Diversity bonus ``lam = LAMBDA_SCALE * d_u``."""
TAU_MIN, TAU_MAX = 0.05, 0.5
"""Temperature range on min-max normalised strengths: 0.05 is nearly one-hot, 0.5 nearly flat."""
GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
"""d_u grid of the monotone envelope; a 0.1 step keeps the serving cost at a few greedy runs."""


def temperature(d_u: float) -> float:
    """Interest-mixing temperature; rises with d_u (the seed's ``1 - d_u`` was backwards)."""
    return TAU_MIN + float(d_u) * (TAU_MAX - TAU_MIN)


def manual_d(d_u: float, delta: float) -> float:
    """Manual mode: ``clip(d_u * (1 + delta), 0, 1)``; delta in [-0.5, 0.5] from the UI slider.

    >>> manual_d(0.6, 0.5), manual_d(0.6, -0.5)
    (0.8999999999999999, 0.3)
    """
    return float(np.clip(d_u * (1.0 + delta), 0.0, 1.0))


def _unique(scores: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct candidates ``[C]`` and their per-interest scores ``[K, C]`` (-inf if absent)."""
    scores = np.asarray(scores, dtype=np.float64)
    items = np.asarray(items, dtype=np.int64)
    valid = (items >= 0) & np.isfinite(scores)
    uniq, inv = np.unique(items[valid], return_inverse=True)
    mat = np.full((items.shape[0], len(uniq)), -np.inf)
    rows = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)[valid]
    np.maximum.at(mat, (rows, inv), scores[valid])
    return uniq, mat


def merge_by_score(scores: np.ndarray, items: np.ndarray, n: int) -> np.ndarray:
    """ComiRec's merge: all candidates by their best score over interests, de-duplicated.

    >>> merge_by_score(np.array([[3., 1.], [2., 0.5]]), np.array([[7, 8], [8, 9]]), 3)
    array([7, 8, 9])
    """
    uniq, mat = _unique(scores, items)
    best = mat.max(axis=0)
    order = np.lexsort((uniq, -best))  # ties broken by item index: deterministic
    return uniq[order[:n]]


def _normalise(mat: np.ndarray) -> np.ndarray:
    fin = np.isfinite(mat)
    lo, hi = mat[fin].min(), mat[fin].max()
    out = np.where(fin, (mat - lo) / (hi - lo) if hi > lo else 1.0, -np.inf)
    return out


def _similarity(uniq: np.ndarray, item_vecs: np.ndarray,
                item_categories: np.ndarray | None) -> np.ndarray:
    """Pairwise similarity of the candidates ``[C, C]``: cosine of the item vectors, averaged
    with "same primary category" when categories are given (the same mix as
    :func:`list_diversity`, so the bonus rewards exactly what is measured)."""
    v = np.asarray(item_vecs, dtype=np.float32)[uniq]
    v = v / np.maximum(np.sqrt((v * v).sum(axis=1, keepdims=True)), 1e-12)
    sim = (v @ v.T).astype(np.float64)
    if item_categories is not None:
        cats = np.asarray(item_categories)[uniq]
        same = (cats[:, None] == cats[None, :]) & (cats[:, None] >= 0)
        sim = 0.5 * (sim + same)
    return sim


def _quota_weights(norm: np.ndarray, d_u: float) -> np.ndarray:
    k = norm.shape[0]
    strength = norm.max(axis=1)
    live = np.isfinite(strength)
    w = np.zeros(k)
    if d_u <= LOW:
        w[int(np.argmax(np.where(live, strength, -np.inf)))] = 1.0
    elif d_u <= HIGH:
        z = np.where(live, strength / temperature(d_u), -np.inf)
        z = np.exp(z - z[live].max())
        w = z / z.sum()
    else:
        w[live] = 1.0 / live.sum()
    return w


def _greedy(uniq: np.ndarray, norm: np.ndarray, cos: np.ndarray, d_u: float, n: int) -> np.ndarray:
    k, c = norm.shape
    n = min(n, c)
    member = np.isfinite(norm)  # [K, C]
    cols = [np.flatnonzero(member[i]) for i in range(k)]
    vals = [norm[i, cols[i]] for i in range(k)]
    member_t = np.ascontiguousarray(member.T)
    left = member.sum(axis=1).astype(np.float64)  # free candidates per interest
    quota = _quota_weights(norm, d_u) * n
    active = quota > 0
    taken = np.zeros(k)
    lam = LAMBDA_SCALE * d_u
    free = np.ones(c, dtype=bool)
    bonus = np.full(c, lam)  # lam * (1 - max cosine to the selected items)
    rel = norm.max(axis=0)
    out = np.empty(n, dtype=np.int64)
    for step in range(n):
        deficit = np.where(active & (left > 0), quota - taken, -np.inf)
        kk = int(np.argmax(deficit))  # ties: the lower interest index
        if np.isfinite(deficit[kk]):
            ix = cols[kk]
            cand = np.where(free[ix], vals[kk] + bonus[ix], -np.inf)
            j = int(ix[int(np.argmax(cand))])
            taken[kk] += 1
        else:  # the quota interests ran dry: back-fill from everything left
            j = int(np.argmax(np.where(free, rel + bonus, -np.inf)))
        out[step] = uniq[j]
        free[j] = False
        left -= member_t[j]
        if lam > 0:
            np.minimum(bonus, lam * (1.0 - cos[j]), out=bonus)
    return out


def aggregate_raw(scores: np.ndarray, items: np.ndarray, item_vecs: np.ndarray, d_u: float,
                  n: int, item_categories: np.ndarray | None = None) -> np.ndarray:
    """The greedy list at exactly d_u, without the monotone envelope (for analysis)."""
    uniq, mat = _unique(scores, items)
    if len(uniq) == 0:
        return np.empty(0, dtype=np.int64)
    sim = _similarity(uniq, item_vecs, item_categories)
    return _greedy(uniq, _normalise(mat), sim, float(d_u), n)


def list_diversity(items: np.ndarray, item_vecs: np.ndarray,
                   item_categories: np.ndarray | None = None) -> float:
    """Realised diversity of a list: embedding ILD, averaged with category ILD when given."""
    from online_model.metrics import ild_category, ild_embedding

    items = np.asarray(items, dtype=np.int64)
    emb = ild_embedding(np.asarray(item_vecs, dtype=np.float64)[items])
    if item_categories is None:
        return emb
    return 0.5 * (emb + ild_category(np.asarray(item_categories)[items]))


def aggregate(scores: np.ndarray, items: np.ndarray, item_vecs: np.ndarray, d_u: float, n: int,
              item_categories: np.ndarray | None = None) -> np.ndarray:
    """Merge ``[K, M]`` per-interest candidates into a de-duplicated top-n list ``[n]`` int64.

    ``scores[k, m]`` is the similarity of interest k to its candidate ``items[k, m]`` (item rows;
    negative rows are padding). ``item_vecs`` [N, d] gives the cosines of the diversity bonus.
    The list's :func:`list_diversity` is non-decreasing in ``d_u`` for fixed inputs.
    """
    uniq, mat = _unique(scores, items)
    if len(uniq) == 0:
        return np.empty(0, dtype=np.int64)
    norm = _normalise(mat)
    cos = _similarity(uniq, item_vecs, item_categories)
    d_u = float(np.clip(d_u, 0.0, 1.0))
    best, best_div = None, -np.inf
    for g in GRID[GRID <= d_u + 1e-9]:
        lst = _greedy(uniq, norm, cos, float(g), n)
        div = list_diversity(lst, item_vecs, item_categories)
        if div >= best_div - 1e-12:  # ties go to the larger grid point
            best, best_div = lst, max(div, best_div)
    assert best is not None
    return best


def controllable(scores: np.ndarray, items: np.ndarray, item_categories: np.ndarray, lam: float,
                 n: int) -> np.ndarray:
    """ComiRec's controllable aggregation: greedy on ``f(i) + lam * sum_{j in S} [cat_i != cat_j]``.

    Scores are min-max normalised first so that ``lam`` is comparable across models.

    >>> controllable(np.array([[1.0, 0.9, 0.1]]), np.array([[0, 1, 2]]), np.array([0, 0, 1]), 0.0, 2)
    array([0, 1])
    >>> controllable(np.array([[1.0, 0.9, 0.1]]), np.array([[0, 1, 2]]), np.array([0, 0, 1]), 1.0, 2)
    array([0, 2])
    """
    uniq, mat = _unique(scores, items)
    rel = _normalise(mat).max(axis=0)
    cats = np.asarray(item_categories)[uniq]
    n = min(n, len(uniq))
    gain = np.zeros(len(uniq))
    free = np.ones(len(uniq), dtype=bool)
    out = np.empty(n, dtype=np.int64)
    for step in range(n):
        j = int(np.argmax(np.where(free, rel + lam * gain, -np.inf)))
        out[step] = uniq[j]
        free[j] = False
        gain += cats != cats[j]
    return out
