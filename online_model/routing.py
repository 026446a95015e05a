"""The geometry of a user's interests: routing a click, the sampled-softmax direction, negatives
from a counter-based hash, deterministic centroids, split and merge. Pure numpy, no state.

>>> stable_hash64("alice") == stable_hash64("alice"), stable_hash64("alice") == stable_hash64("bob")
(True, False)
>>> negatives(stable_hash64("alice"), 7, 5, 100).tolist() == negatives(stable_hash64("alice"), 7, 5, 100).tolist()
True
"""

from __future__ import annotations

import numpy as np

from online_model import kernels as K

__all__ = [
    "stable_hash64",
    "negatives",
    "event_key",
    "NegativeTable",
    "route",
    "softmax_direction",
    "centroids",
    "split_worst",
    "merge_closest",
]

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_EPS = 1e-12


def stable_hash64(text: str) -> int:
    """FNV-1a 64 of the UTF-8 bytes: stable across processes (``hash()`` is salted per process)."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def event_key(user_hash: int, offset: int) -> int:
    """SplitMix64 of (user, offset): the counter-based seed of one event's randomness."""
    return _splitmix64(user_hash ^ ((offset * 0xD1B54A32D192ED03) & _M64))


class NegativeTable:
    """Negatives as a window of a fixed pseudo-random table of item rows, placed by the event's
    key: ``table[key % (T - n) : ... + n]``. One slice per event (seeding
    ``numpy.random.default_rng`` per event would cost more than the step, DESIGN §5), deterministic for a given
    (user, offset) and base, and each window is n uniform draws over ``rows``.

    >>> t = NegativeTable(np.arange(100), size=1024)
    >>> a = t.draw(event_key(stable_hash64("u"), 7), 5)
    >>> a.tolist() == t.draw(event_key(stable_hash64("u"), 7), 5).tolist(), bool(a.min() >= 0)
    (True, True)
    """

    def __init__(self, rows: np.ndarray, size: int = 1 << 16, seed: int = 0x5EED) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            rows = np.zeros(1, dtype=np.int64)
        # built once per base; a fixed seed keeps every process's table identical
        self.table = rows[np.random.default_rng(seed).integers(0, len(rows), size)]

    def draw(self, key: int, n: int) -> np.ndarray:
        start = key % (len(self.table) - n)
        return self.table[start : start + n]  # a view: callers must not write into it


def negatives(user_hash: int, offset: int, n: int, n_items: int) -> np.ndarray:
    """``n`` rows in [0, n_items) hashed from (user, offset, j) one by one (SplitMix64 over a
    Weyl sequence): the table-free form, for callers without a :class:`NegativeTable`."""
    key = np.uint64(event_key(user_hash, offset))
    steps = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
    x = (steps + key) * _C2  # uint64 arrays wrap silently: the arithmetic is mod 2^64
    return ((x >> np.uint64(32)) % np.uint64(n_items)).astype(np.int64)


def route(vecs: np.ndarray, e: np.ndarray, norms: np.ndarray | None = None) -> int:
    """``argmax_k cos(v_k, e)``, the first on ties (the item's norm is common to all k, so it
    is left out). ``norms``, if given, receives the rows' norms."""
    out = np.empty(len(vecs)) if norms is None else norms
    return int(K.route(np.ascontiguousarray(vecs), np.ascontiguousarray(e), out))


def softmax_direction(v: np.ndarray, cand: np.ndarray, inv_temp: float) -> np.ndarray:
    """Minus the gradient of the sampled-softmax loss ``−log softmax(z)[0]`` w.r.t. ``v``,
    times the temperature·scale² that makes it an embedding-space direction:
    ``e_pos − Σ_j p_j e_j``. ``cand`` [S+1, d]: the positive item first, then the negatives."""
    cand = np.ascontiguousarray(cand)
    negs = np.arange(1, len(cand), dtype=np.int64)
    return K.softmax_step(np.array(v, dtype=np.float64), cand, 0, negs, float(inv_temp), np.inf)


def _cos_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)[:, None] + _EPS
    nb = np.linalg.norm(b, axis=1)[None, :] + _EPS
    return (a @ b.T) / (na * nb)


def centroids(items: np.ndarray, k: int, iters: int = 5) -> np.ndarray:
    """Deterministic spherical k-means of ``items`` [n, d] into ``min(k, n)`` centroids [k', d].

    Seeds: the item closest in direction to the mean, then farthest-first (lowest max-cosine to
    the seeds, ties to the earliest row). Centroids are plain means of their members, so their
    norm says how concentrated the interest is. No randomness, so anchors are reproducible.
    Compiled (:func:`online_model.kernels.centroids`): it runs once per new user.
    """
    items = np.ascontiguousarray(items, dtype=np.float32)
    return K.centroids(items, int(k), int(iters)).astype(np.float32)


def split_worst(vecs: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The new interest when K_u grows: route ``items`` [n, d] to ``vecs`` [K, d]; the interest
    whose members it covers worst (lowest mean cosine) gives up its less-covered half, whose
    mean becomes the new vector [d]."""
    cos = _cos_matrix(items, vecs)  # [n, K]
    assign = np.argmax(cos, axis=1)
    best = cos[np.arange(len(items)), assign]
    worst, worst_cover = -1, np.inf
    for j in range(vecs.shape[0]):
        m = assign == j
        if m.sum() >= 2 and best[m].mean() < worst_cover:
            worst, worst_cover = j, best[m].mean()
    if worst < 0:  # no interest has two members: start from the worst-covered item itself
        return items[int(np.argmin(best))].astype(np.float32)
    members = np.flatnonzero(assign == worst)
    c = best[members]
    far = members[c <= np.median(c)]
    return items[far].mean(axis=0).astype(np.float32)


def merge_closest(vecs: np.ndarray) -> tuple[int, int]:
    """The pair (i, j), i < j, of the two most similar interests (ties: first in row order)."""
    cos = _cos_matrix(vecs, vecs)
    iu = np.triu_indices(vecs.shape[0], k=1)
    flat = int(np.argmax(cos[iu]))
    return int(iu[0][flat]), int(iu[1][flat])
