"""Diversity-aware merge of per-interest candidate lists into one top-n list (DESIGN.md §4.5).

Numpy and a numba kernel, no I/O: serving (serving_cache) and the offline evaluation both call
:func:`aggregate`, so what is measured offline is what users get.

The list has two parts, interleaved greedily (the part furthest below its quota goes next):

- a *relevance* part, ``1 - INTEREST_SHARE * d_u`` of the list, filled by each candidate's best
  normalised score over all interests (ComiRec's merge by score);
- an *interests* part, ``INTEREST_SHARE * d_u`` of the list (at most half), split into quotas
  over interests by three regimes of d_u:

  - ``d_u <= 0.3``: the top interest only;
  - ``0.3 < d_u <= 0.7``: quotas proportional to ``softmax(strength_k / tau)``, the
    deterministic (noise-free) form of the Gumbel-softmax used in training, where
    ``strength_k`` is interest k's best candidate similarity and the temperature *rises* with
    d_u (``tau = tau_min + d_u (tau_max - tau_min)``, the seed correction: flatter weights mix
    more interests);
  - ``d_u > 0.7``: round-robin, equal quotas.

Each pick takes the best remaining candidate (of its interest, or of all for the relevance
part) by ``score + lam * (1 - redundancy)`` with ``lam = LAMBDA_SCALE * d_u`` (scores min-max
normalised to [0, 1] so the bonus has a fixed meaning). The redundancy of a candidate whose
category already holds ``m`` selected items is ``m / (1 + m)``, so its bonus is
``lam / (1 + m)``: diminishing returns per category (the first item of a category earns the
whole bonus, the second half, the third a third), which balances categories. Without categories (or for an item of unknown category) it is the maximum cosine to
the selected items (MMR). At ``d_u = 0`` the list is exactly the merge by score.

Why this form (chosen on validation users, then read on test users; the figures are in
``bench/results/model_quality_round2.md``): DESIGN §4.5's quotas over *all* of the list, with a
bonus on ``1 - max similarity``, cost recall, because the diverse interests are weak retrievers
next to DIAM's global slot; and the max-similarity bonus saturates: once a category holds one
item, it no longer tells a category with one item from one with ten, so it does not balance
categories. Relevance for at least half the list, with the diminishing-returns bonus at
``lam = 0.45 d_u`` (the largest of {0.2, 0.3, 0.45, 0.6} that met the recall goal on
validation), kept the recall and raised the diversity.

Greedy selection is not monotone in d_u for every possible input, and the contract asks that
the realised diversity of a user's list never falls when d_u rises. So the list for d_u is the
most diverse of the raw lists at the grid points ``0, 0.1, ..., 1`` not above d_u (ties go to
the larger grid point): a running maximum over a growing set, hence monotone by construction.
Diversity is :func:`list_diversity` (embedding ILD, averaged with category ILD when categories
are given); the kernel computes it from the same cosines, equal up to summation order (~1e-15,
far inside the envelope's 1e-12 tie tolerance).

Cost: one compiled kernel (numba, no fastmath, so results are deterministic) runs the greedy
at every grid point. The cosine row of an item is computed once, when some grid point's list
first selects it, and shared by every later grid point and by the diversity of every list; the
grid points' lists overlap heavily (about 40 distinct items over 11 lists of 20), so the work is
a few dozen rows of C cosines instead of the C x C matrix (``bench/serve.py`` times the
whole request, the aggregator included). ``nogil``: concurrent requests can aggregate on both cores.

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

from typing import Any

import numpy as np
from numba import njit

__all__ = [
    "LOW",
    "HIGH",
    "LAMBDA_SCALE",
    "INTEREST_SHARE",
    "GRID",
    "aggregate",
    "aggregate_raw",
    "manual_d",
    "merge_by_score",
    "controllable",
    "list_diversity",
    "serve_list",
    "MIN_CANDIDATES",
    "temperature",
    "warm_up",
]

LOW = 0.3
"""At or below: top interest only (DESIGN §4.5)."""
HIGH = 0.7
"""Above: round-robin over interests."""
LAMBDA_SCALE = 0.45
"""Diversity bonus ``lam = LAMBDA_SCALE * d_u`` (chosen on validation users, see the module
docstring)."""
INTEREST_SHARE = 0.5
"""The interests' quotas fill ``INTEREST_SHARE * d_u`` of the list; the rest goes by relevance."""
TAU_MIN, TAU_MAX = 0.05, 0.5
"""Temperature range on min-max normalised strengths: 0.05 is nearly one-hot, 0.5 nearly flat."""
GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
"""d_u grid of the monotone envelope; a 0.1 step keeps the serving cost at a few greedy runs."""
# The kernels below read LOW, HIGH, LAMBDA_SCALE, INTEREST_SHARE and TAU_* as compile-time
# constants: changing them at run time does not reach compiled code.


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
    return _candidates(np.asarray(scores, dtype=np.float64), np.asarray(items, dtype=np.int64))


@njit(cache=True, nogil=True)
def _candidates(scores: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_unique` on float64 scores and int64 items [K, M]: padding (negative items) and
    non-finite scores are skipped; an item listed twice by one interest keeps its best score."""
    n_int, m = items.shape
    flat = np.empty(n_int * m, dtype=np.int64)
    n_valid = 0
    for k in range(n_int):
        for i in range(m):
            if items[k, i] >= 0 and np.isfinite(scores[k, i]):
                flat[n_valid] = items[k, i]
                n_valid += 1
    uniq = np.unique(flat[:n_valid])
    mat = np.full((n_int, len(uniq)), -np.inf)
    for k in range(n_int):
        for i in range(m):
            if items[k, i] >= 0 and np.isfinite(scores[k, i]):
                c = np.searchsorted(uniq, items[k, i])
                mat[k, c] = max(mat[k, c], scores[k, i])
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


@njit(cache=True, nogil=True)
def _normalise_quotas(mat: np.ndarray, grid: np.ndarray,
                      n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores min-max normalised to [0, 1] (as :func:`_normalise`) ``[K, C]`` and the
    interests' quotas ``[G, K]`` at each d_u of ``grid`` for a list of ``n`` items; they sum to
    the interests' part ``INTEREST_SHARE * d_u * n`` (the rest of the list goes by relevance).

    ``strength_k`` is interest k's best normalised score; interests with no candidate get no
    quota. Top interest only at or below LOW, ``softmax(strength / temperature(d_u))`` up to
    HIGH, equal shares above.
    """
    n_int, n_cand = mat.shape
    lo, hi = np.inf, -np.inf
    for k in range(n_int):
        for c in range(n_cand):
            if np.isfinite(mat[k, c]):
                lo, hi = min(lo, mat[k, c]), max(hi, mat[k, c])
    norm = np.full((n_int, n_cand), -np.inf)
    strength = np.full(n_int, -np.inf)
    for k in range(n_int):
        for c in range(n_cand):
            if np.isfinite(mat[k, c]):
                norm[k, c] = (mat[k, c] - lo) / (hi - lo) if hi > lo else 1.0
                strength[k] = max(strength[k], norm[k, c])
    live = np.isfinite(strength)
    n_live = live.sum()
    top = np.argmax(strength)  # the first of the strongest
    quotas = np.zeros((len(grid), n_int))
    z = np.empty(n_int)
    for g in range(len(grid)):
        share = INTEREST_SHARE * grid[g] * n  # the interests' part of the list
        if grid[g] <= LOW:
            quotas[g, top] = share
        elif grid[g] <= HIGH:
            tau = TAU_MIN + grid[g] * (TAU_MAX - TAU_MIN)
            z_max = -np.inf
            for k in range(n_int):
                z[k] = strength[k] / tau if live[k] else -np.inf
                z_max = max(z_max, z[k])
            total = 0.0
            for k in range(n_int):
                z[k] = np.exp(z[k] - z_max)
                total += z[k]
            for k in range(n_int):
                quotas[g, k] = z[k] / total * share
        else:
            for k in range(n_int):
                if live[k]:
                    quotas[g, k] = 1.0 / n_live * share
    return norm, quotas


@njit(cache=True, nogil=True)
def _cos_row(unit_t: np.ndarray, j: int, cos: np.ndarray) -> None:
    """Row j of the candidates' cosines ``cos[c] = <u_j, u_c>`` (``unit_t`` is [d, C]). The
    cosine is summed over d in the same order for every pair, so it is exactly symmetric."""
    cos[:] = 0.0
    for a in range(unit_t.shape[0]):
        x = unit_t[a, j]
        for c in range(unit_t.shape[1]):
            cos[c] += x * unit_t[a, c]


@njit(cache=True, nogil=True)
def _envelope(mat: np.ndarray, vecs: np.ndarray, cats: np.ndarray, grid: np.ndarray,
              n: int) -> np.ndarray:
    """The greedy list at each grid point; returns the running-maximum-diversity one ``[n]``.

    ``mat`` [K, C] raw scores (-inf: not a candidate of that interest); ``vecs`` [C, d] the
    candidates' vectors; ``cats`` [C] their categories, or empty for none; ``grid`` the d_u
    grid points, ascending. Returns candidate columns. A cosine row is computed once, when some
    list first selects its item, and serves the bonus of every later grid point and the
    diversity of every list.
    """
    n_int, n_cand = mat.shape
    n = min(n, n_cand)
    norm, quotas = _normalise_quotas(mat, grid, n)
    unit_t = np.empty((vecs.shape[1], n_cand))  # [d, C]
    for c in range(n_cand):
        sq = 0.0
        for a in range(vecs.shape[1]):
            sq += vecs[c, a] * vecs[c, a]
        scale = 1.0 / max(np.sqrt(sq), 1e-12)
        for a in range(vecs.shape[1]):
            unit_t[a, c] = vecs[c, a] * scale
    use_cats = cats.shape[0] == n_cand
    n_cats = 1
    if use_cats:
        for c in range(n_cand):
            n_cats = max(n_cats, cats[c] + 1)
    in_cat = np.empty(n_cats)  # selected items per category
    cols = np.empty((n_int, n_cand), dtype=np.int64)  # each interest's columns, ascending
    count = np.zeros(n_int, dtype=np.int64)
    rel = np.full(n_cand, -np.inf)  # best normalised score over interests: back-fill order
    for k in range(n_int):
        for c in range(n_cand):
            if np.isfinite(norm[k, c]):
                cols[k, count[k]] = c
                count[k] += 1
                rel[c] = max(rel[c], norm[k, c])
    slot = np.full(n_cand, -1)
    n_rows = min(n_cand, len(grid) * n)
    cos = np.empty((n_rows, n_cand))  # rows of the selected items, by first use
    used = 0
    free = np.empty(n_cand, dtype=np.bool_)
    bonus = np.empty(n_cand)
    max_cos = np.empty(n_cand)
    left = np.empty(n_int, dtype=np.int64)
    taken = np.empty(n_int)
    cur = np.empty(n, dtype=np.int64)
    prev = np.full(n, -1)
    best = np.empty(n, dtype=np.int64)
    best_div, div = -np.inf, 0.0
    for g in range(len(grid)):
        lam = LAMBDA_SCALE * grid[g]
        by_rel = n * (1.0 - INTEREST_SHARE * grid[g])  # the relevance part of the list
        rel_taken = 0.0
        free[:] = True
        bonus[:] = lam  # lam * (1 - redundancy with the items already selected)
        max_cos[:] = 0.0
        in_cat[:] = 0.0
        left[:] = count  # free candidates per interest
        taken[:] = 0.0
        for step in range(n):
            # the most under-quota part; ties: relevance first, then the lower interest index
            kk, deficit = -1, by_rel - rel_taken
            for k in range(n_int):
                if quotas[g, k] > 0 and left[k] > 0 and quotas[g, k] - taken[k] > deficit:
                    kk, deficit = k, quotas[g, k] - taken[k]
            j, val = -1, -np.inf
            if kk >= 0:
                for i in range(count[kk]):  # its best free candidate; ties: the lower column
                    c = cols[kk, i]
                    if free[c] and norm[kk, c] + bonus[c] > val:
                        j, val = c, norm[kk, c] + bonus[c]
                taken[kk] += 1.0
            else:  # by relevance (also the back-fill when the quota interests ran dry)
                for c in range(n_cand):
                    if free[c] and rel[c] + bonus[c] > val:
                        j, val = c, rel[c] + bonus[c]
                rel_taken += 1.0
            cur[step] = j
            free[j] = False
            for k in range(n_int):
                if np.isfinite(norm[k, j]):
                    left[k] -= 1
            if slot[j] < 0:
                slot[j] = used
                _cos_row(unit_t, j, cos[used])
                used += 1
            if lam > 0:
                row = cos[slot[j]]
                if use_cats and cats[j] >= 0:
                    in_cat[cats[j]] += 1.0
                for c in range(n_cand):
                    max_cos[c] = max(max_cos[c], row[c])
                    if use_cats and cats[c] >= 0:  # diminishing returns per category
                        bonus[c] = lam / (1.0 + in_cat[cats[c]])
                    else:
                        bonus[c] = lam * (1.0 - max_cos[c])
        changed = False
        for step in range(n):
            changed = changed or cur[step] != prev[step]
        if changed:  # list_diversity(cur), from the cached rows
            div = 0.0
            if n >= 2:
                total, same = 0.0, 0.0
                for a in range(n):
                    row = cos[slot[cur[a]]]
                    for b in range(n):
                        total += row[cur[b]]
                        if use_cats and a != b and cats[cur[a]] == cats[cur[b]]:
                            same += 1.0
                pairs = n * (n - 1.0)
                div = (n * n - total) / pairs
                if use_cats:
                    div = 0.5 * (div + 1.0 - same / pairs)
            prev[:] = cur
        if div >= best_div - 1e-12:  # ties go to the larger grid point
            best[:] = cur
            best_div = max(div, best_div)
    return best


def _run(scores: np.ndarray, items: np.ndarray, item_vecs: np.ndarray, grid: np.ndarray, n: int,
         item_categories: np.ndarray | None) -> np.ndarray:
    """The envelope over ``grid`` (d_u ascending) as item rows ``[min(n, C)]`` int64."""
    uniq, mat = _unique(scores, items)
    if len(uniq) == 0:
        return np.empty(0, dtype=np.int64)
    vecs = np.asarray(item_vecs)[uniq].astype(np.float64)  # only the candidates' rows: [C, d]
    cats = (np.empty(0, dtype=np.int64) if item_categories is None
            else np.asarray(item_categories)[uniq].astype(np.int64))
    return uniq[_envelope(mat, vecs, cats, grid.astype(np.float64), int(n))]


def aggregate_raw(scores: np.ndarray, items: np.ndarray, item_vecs: np.ndarray, d_u: float,
                  n: int, item_categories: np.ndarray | None = None) -> np.ndarray:
    """The greedy list at exactly d_u, without the monotone envelope (for analysis)."""
    return _run(scores, items, item_vecs, np.array([float(d_u)]), n, item_categories)


def list_diversity(items: np.ndarray, item_vecs: np.ndarray,
                   item_categories: np.ndarray | None = None) -> float:
    """Realised diversity of a list: embedding ILD, averaged with category ILD when given."""
    from online_model.metrics import ild_category, ild_embedding

    items = np.asarray(items, dtype=np.int64)
    emb = ild_embedding(np.asarray(item_vecs)[items].astype(np.float64))
    if item_categories is None:
        return emb
    return 0.5 * (emb + ild_category(np.asarray(item_categories)[items]))


def aggregate(scores: np.ndarray, items: np.ndarray, item_vecs: np.ndarray, d_u: float, n: int,
              item_categories: np.ndarray | None = None) -> np.ndarray:
    """Merge ``[K, M]`` per-interest candidates into a de-duplicated top-n list ``[n]`` int64.

    ``scores[k, m]`` is the similarity of interest k to its candidate ``items[k, m]`` (item rows;
    negative rows are padding). ``item_vecs`` [N, d] gives the cosines of the diversity bonus
    (only the candidates' rows are read). The list's :func:`list_diversity` is non-decreasing
    in ``d_u`` for fixed inputs.
    """
    d_u = float(np.clip(d_u, 0.0, 1.0))
    return _run(scores, items, item_vecs, GRID[GRID <= d_u + 1e-9], n, item_categories)


MIN_CANDIDATES = 50
"""Candidates searched per interest: ``max(2n, 50)`` plus the items to exclude."""


def serve_list(search: Any, vecs: np.ndarray, d_u: float, n: int, banned: np.ndarray,
               item_vecs: np.ndarray, item_categories: np.ndarray | None = None) -> np.ndarray:
    """The list a user is served, ``[<= n]`` item rows: ``search`` each interest's candidates,
    drop ``banned`` rows (the items the user has seen), then :func:`aggregate` at ``d_u``.

    ``search(vecs [K, d], m) -> (scores [K, m], items [K, m])`` is the snapshot's FAISS search
    in serving (``serving_cache.recommend``) and an exact inner-product search in the
    prequential evaluation (``online_model.prequential``); both call this one function, so what
    is measured is what users get.
    """
    m = min(max(2 * n, MIN_CANDIDATES) + len(banned), len(item_vecs))
    scores, items = search(vecs, m)
    if len(banned):
        # banned candidates become padding (-1), which the aggregator skips, as it skips the
        # -1 slots IVF returns when the probed lists hold fewer than m items
        items = np.where(np.isin(items, banned), -1, items)
    return aggregate(scores, items, item_vecs, d_u, n, item_categories)


def warm_up() -> None:
    """Compile the kernels (or load them from numba's on-disk cache) now, so that a server's
    first request does not pay for it."""
    aggregate(np.array([[1.0, 0.5]]), np.array([[0, 1]]), np.eye(2, dtype=np.float32), 0.9, 2,
              np.array([0, 1]))


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
