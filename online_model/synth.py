"""Synthetic click streams with planted truth (``diam data synth``).

Every user gets a planted number of interests ``n`` in 1..``max_interests`` and a diversity
preference ``d`` in (0, 1). An interest is a category-centred cluster: a category, chosen with
probability proportional to its popularity, whose items are drawn by their (Zipf) popularity.
A user's click stream is built from sessions:

- a session starts with an interest drawn from the user's interest weights
  ``w_j ∝ exp(-γ j)``, ``γ = 1.5 (1 - d)``: uniform over the ``n`` interests when ``d → 1``,
  concentrated on the first ones when ``d → 0``;
- inside a session the user switches interest (a fresh draw from ``w``) with probability
  ``0.05 + 0.5 d`` per click, so high-diversity users mix categories within sessions too;
- a small share ``noise`` of clicks ignores the interests and follows global popularity;
- gaps are ~45 s inside a session and ~20 h between sessions.

Everything is vectorised numpy from one seeded generator, so the same parameters give the same
files byte for byte, and 10^6 events over 10^5 items take a few seconds.

>>> data = generate(SynthParams(users=50, items=200, categories=10, events_per_user=20, seed=1))
>>> bool((np.diff(data.ts_ms) >= 0).all()), int(data.n_interests.min()) >= 1, int(data.n_interests.max()) <= 8
(True, True, True)
>>> bool(np.array_equal(generate(SynthParams(users=50, items=200, categories=10, events_per_user=20, seed=1)).item, data.item))
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from online_model.datasets import ItemRows, write_prepared

__all__ = ["SynthData", "SynthParams", "generate", "write_synth"]

_SESSION_GAP_MS = 45_000  # mean gap between clicks of one session
_SESSION_MIN_GAP_MS = 2_000
_BREAK_MS = 20 * 3_600_000  # mean gap between sessions
_BREAK_MIN_MS = 30 * 60_000  # a session ends after 30 idle minutes, as in most session definitions
_DRAW_CHUNK = 1 << 20  # events per chunk of the [E, K] interest draw, bounds memory


@dataclass(frozen=True)
class SynthParams:
    """Parameters of the generator; the defaults make a ~100k-event set in about a second."""

    users: int = 2_000
    items: int = 5_000
    categories: int = 20
    events_per_user: float = 50.0
    seed: int = 0
    max_interests: int = 8
    zipf: float = 1.0
    noise: float = 0.03
    session_len: float = 8.0
    start_ms: int = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    span_days: float = 30.0

    def check(self, name: Callable[[str], str] = str) -> None:
        """Raise ValueError naming the first rule the parameters break, each field written
        ``name(field)`` with its value (``diam data synth`` passes its option spelling).

        >>> SynthParams(categories=5).check()
        Traceback (most recent call last):
        ...
        ValueError: max_interests (8) must not exceed categories (5): each planted interest is a different category
        """
        if self.users < 1 or self.items < 1 or self.events_per_user < 1:
            raise ValueError(f"{name('users')}, {name('items')} and {name('events_per_user')} "
                             "must be at least 1")
        if self.max_interests < 1:
            raise ValueError(f"{name('max_interests')} must be at least 1")
        if self.max_interests > self.categories:
            raise ValueError(f"{name('max_interests')} ({self.max_interests}) must not exceed "
                             f"{name('categories')} ({self.categories}): each planted interest "
                             "is a different category")
        if self.categories > self.items:
            raise ValueError(f"{name('categories')} ({self.categories}) must not exceed "
                             f"{name('items')} ({self.items})")
        if not 0 <= self.noise < 1 or self.session_len < 1 or self.zipf < 0:
            raise ValueError(f"need 0 <= {name('noise')} < 1, {name('session_len')} >= 1, "
                             f"{name('zipf')} >= 0")


@dataclass(frozen=True)
class SynthData:
    """Events as integer codes (user index, item index) in (ts, user, item) order, plus truth."""

    user: np.ndarray  # [E] int64
    item: np.ndarray  # [E] int64
    ts_ms: np.ndarray  # [E] int64
    item_primary: np.ndarray  # [N] int64 category of each item
    item_secondary: np.ndarray  # [N] int64 second category, -1 when none
    n_interests: np.ndarray  # [U] int64
    diversity: np.ndarray  # [U] float64
    interest_categories: np.ndarray  # [U, max_interests] int64 (first n_interests are used)


def _catalogue(p: SynthParams, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    c_weight = 1.0 / np.arange(1, p.categories + 1) ** 0.5  # some categories are bigger
    primary = rng.choice(p.categories, size=p.items, p=c_weight / c_weight.sum())
    primary[: p.categories] = np.arange(p.categories)  # no empty category
    has_second = rng.random(p.items) < 0.2
    shift = rng.integers(1, max(p.categories, 2), size=p.items)
    secondary = np.where(has_second & (p.categories > 1), (primary + shift) % p.categories, -1)
    pop = np.empty(p.items)
    pop[rng.permutation(p.items)] = 1.0 / np.arange(1, p.items + 1) ** p.zipf
    return primary, secondary, pop


def _category_sampler(
    primary: np.ndarray, pop: np.ndarray, n_cat: int
) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped by category and a cumulative table where category c's items occupy
    (c, c+1], so one searchsorted draws an item of any category by popularity."""
    order = np.lexsort((np.arange(primary.size), primary))
    cat_sorted = primary[order]
    cum = np.cumsum(pop[order])
    starts = np.searchsorted(cat_sorted, np.arange(n_cat))
    base = np.r_[0.0, cum][starts][cat_sorted]
    totals = np.bincount(cat_sorted, weights=pop[order], minlength=n_cat)[cat_sorted]
    within = (cum - base) / totals
    ends = np.r_[starts[1:], primary.size] - 1
    within[ends] = 1.0  # exact upper edge: no draw can fall past its category
    return order, cat_sorted + within


def generate(p: SynthParams) -> SynthData:
    """Draw a synthetic dataset (pure, deterministic under ``p.seed``)."""
    p.check()
    rng = np.random.default_rng(p.seed)
    primary, secondary, pop = _catalogue(p, rng)
    by_cat, cat_table = _category_sampler(primary, pop, p.categories)
    global_cum = np.cumsum(pop) / pop.sum()
    cat_pop = np.bincount(primary, weights=pop, minlength=p.categories)

    n_int = rng.integers(1, p.max_interests + 1, size=p.users)
    div = np.clip(rng.beta(2.0, 2.0, size=p.users), 0.02, 0.98)
    # Distinct interest categories per user, popularity-weighted, by Gumbel top-k (chunked to
    # bound the [users, categories] matrix).
    icats = np.empty((p.users, p.max_interests), dtype=np.int64)
    step = max(1, (1 << 22) // p.categories)
    for s in range(0, p.users, step):
        keys = np.log(cat_pop)[None, :] + rng.gumbel(size=(min(step, p.users - s), p.categories))
        icats[s : s + step] = np.argsort(-keys, axis=1, kind="stable")[:, : p.max_interests]
    j = np.arange(p.max_interests)[None, :]
    w = np.where(j < n_int[:, None], np.exp(-1.5 * (1.0 - div)[:, None] * j), 0.0)
    cumw = np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True)
    cumw[np.arange(p.users), n_int - 1] = 1.0

    counts = np.maximum(
        2, np.rint(p.events_per_user * rng.lognormal(-0.125, 0.5, size=p.users))
    ).astype(np.int64)
    n_ev = int(counts.sum())
    user = np.repeat(np.arange(p.users), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.arange(n_ev) - first

    new_session = (pos == 0) | (rng.random(n_ev) < 1.0 / p.session_len)
    switch = new_session | (rng.random(n_ev) < (0.05 + 0.5 * div)[user])
    r = rng.random(n_ev)
    slot = np.empty(n_ev, dtype=np.int64)
    for s in range(0, n_ev, _DRAW_CHUNK):
        sl = slice(s, s + _DRAW_CHUNK)
        slot[sl] = (r[sl, None] >= cumw[user[sl]]).sum(axis=1)
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(n_ev), 0))
    cat = icats[user, slot[last_switch]]  # an interest persists until the next switch

    item = by_cat[np.searchsorted(cat_table, cat + rng.random(n_ev), side="right")]
    noisy = rng.random(n_ev) < p.noise
    item[noisy] = np.searchsorted(global_cum, rng.random(int(noisy.sum())), side="right")
    item = np.minimum(item, p.items - 1)

    gaps = np.where(
        new_session,
        _BREAK_MIN_MS + rng.exponential(_BREAK_MS, n_ev),
        _SESSION_MIN_GAP_MS + rng.exponential(_SESSION_GAP_MS, n_ev),
    ).astype(np.int64)
    gaps[pos == 0] = 0
    cs = np.cumsum(gaps)
    start = p.start_ms + rng.integers(0, int(p.span_days * 86_400_000), size=p.users)
    ts = start[user] + cs - cs[first]

    order = np.lexsort((item, user, ts))
    return SynthData(
        user=user[order],
        item=item[order].astype(np.int64),
        ts_ms=ts[order],
        item_primary=primary.astype(np.int64),
        item_secondary=secondary.astype(np.int64),
        n_interests=n_int.astype(np.int64),
        diversity=div,
        interest_categories=icats,
    )


def _ids(prefix: str, n: int) -> np.ndarray:
    # Zero-padded ids sort the same as strings and as numbers, so every reader agrees on order.
    width = len(str(max(n - 1, 0)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)])


def write_synth(p: SynthParams, out: str | Path, *, progress: bool = False) -> Path:
    """Generate and write a prepared dataset directory with ``truth.tsv``."""
    data = generate(p)
    users, items, cats = _ids("u", p.users), _ids("i", p.items), _ids("c", p.categories)
    item_cats = [
        [cats[a]] if b < 0 else [cats[a], cats[b]]
        for a, b in zip(data.item_primary.tolist(), data.item_secondary.tolist(), strict=True)
    ]
    rows = ItemRows(ids=items.tolist(), titles=[""] * p.items, categories=item_cats)
    seen = np.zeros(p.users, dtype=bool)
    seen[data.user] = True
    truth = {
        users[u]: (int(data.n_interests[u]), float(data.diversity[u]))
        for u in np.flatnonzero(seen).tolist()
    }
    meta = {
        "source": "synthetic",
        "format": "diam synth",
        "params": asdict(p),
        "truth_note": "user_id -> planted n_interests (1..max_interests) and diversity preference in (0,1)",
    }
    return write_prepared(
        out,
        name=Path(out).name,
        users=users[data.user],
        items_of_events=items[data.item],
        ts_ms=data.ts_ms,
        items=rows,
        meta=meta,
        truth=truth,
        progress=progress,
    )
