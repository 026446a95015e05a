"""Per-user click sequences in flat arrays, and the training windows cut from them.

The trainer and the evaluator both work on a :class:`Corpus`: every user's items in time order,
concatenated, with offsets. Item indices are 0-based rows of the item table; model inputs shift
them by one so that 0 is padding.

>>> c = tiny_corpus(n_users=3, n_items=5, n_categories=2, length=4, seed=0)
>>> c.n_users, c.n_items, len(c.items)
(3, 5, 12)
>>> seq, length = windows(c, np.array([c.offsets[1] + 2]), seq_len=3)
>>> seq.shape, int(length[0]), int(seq[0, 0])
((1, 3), 2, 0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "Corpus",
    "corpus_from_prepared",
    "in_vocabulary",
    "events_before",
    "training_cut",
    "trained_until",
    "training_corpus",
    "tiny_corpus",
    "windows",
    "prefix_signals",
    "future_entropy",
    "DIV_WINDOW",
    "DIV_MIN_ITEMS",
    "DIV_QUANTILES",
    "diversity_quantiles",
]


@dataclass(frozen=True)
class Corpus:
    """All users' click sequences, flat. ``items[offsets[u]:offsets[u+1]]`` is user u's history."""

    name: str
    users: np.ndarray  # [U] str, sorted
    offsets: np.ndarray  # [U+1] int64
    items: np.ndarray  # [E] int64 item row, per user in time order
    ts: np.ndarray  # [E] int64 epoch ms
    item_ids: np.ndarray  # [N] str
    item_cat: np.ndarray  # [N] int32 primary category, -1 unknown
    category_names: list[str]
    truth: dict[str, tuple[int, float]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    item_titles: list[str] | None = None
    """[N] each item's title ("" unknown), None when the source has none; the checkpoint
    keeps it (``item_titles.json``) so that serving can show titles."""

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_categories(self) -> int:
        return max(1, len(self.category_names))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def corpus_from_prepared(ds: Any, titles: Mapping[str, str] | None = None) -> Corpus:
    """Build a :class:`Corpus` from a ``PreparedDataset`` (online_model.datasets, contracts).
    ``titles``: ``{item_id: title}`` (items.tsv's, ``datasets.read_item_titles``, or the
    catalogue's), kept as ``item_titles`` when any item has one.

    Events are already sorted by (ts, user, item); a stable sort by user keeps each user's
    time order, so equal timestamps keep the loader's deterministic tie-break.
    """
    item_ids = np.asarray(ds.items.ids)
    rows = getattr(ds, "item_index", None)
    if rows is None:  # built by hand: look the ids up
        index = {str(i): k for k, i in enumerate(item_ids.tolist())}
        rows = np.fromiter((index.get(str(i), -1) for i in ds.item_ids), dtype=np.int64,
                           count=len(ds.item_ids))
    rows = np.asarray(rows, dtype=np.int64)
    keep = rows >= 0  # events of items missing from items.tsv cannot be embedded
    users_all = np.asarray(ds.user_ids)[keep]
    ts = np.asarray(ds.ts_ms, dtype=np.int64)[keep]
    rows = rows[keep]
    users, inverse = np.unique(users_all, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(users))
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    info = {
        "name": ds.name,
        "events": int(len(rows)),
        "ts_min": int(ts.min()) if len(ts) else 0,
        "ts_max": int(ts.max()) if len(ts) else 0,
    }
    return Corpus(
        name=ds.name,
        users=users,
        offsets=offsets,
        items=rows[order],
        ts=ts[order],
        item_ids=item_ids,
        item_cat=np.asarray(ds.items.primary, dtype=np.int32),
        category_names=list(ds.items.category_names),
        truth=ds.truth,
        info=info,
        item_titles=_titles(item_ids, titles),
    )


def _titles(item_ids: np.ndarray, titles: Mapping[str, str] | None) -> list[str] | None:
    """``titles`` aligned with ``item_ids`` ("" unknown); None when none of them has one.

    >>> _titles(np.array(["1", "2"]), {"2": "Two", "9": "Nine"}), _titles(np.array(["1"]), {})
    (['', 'Two'], None)
    """
    if not titles:
        return None
    out = [titles.get(str(i), "") for i in item_ids.tolist()]
    return out if any(out) else None


def in_vocabulary(corpus: Corpus, item_ids: np.ndarray, item_cat: np.ndarray,
                  category_names: list[str]) -> tuple[Corpus, int]:
    """``corpus`` over another item table (a checkpoint's: ``item_ids`` [N] in its order, their
    primary categories ``item_cat`` [N] indexing ``category_names``), and how many clicks were
    left out because their item is not in it. Every user is kept, with no events when all of
    theirs were left out, so that a seeded split of ``users`` (``evaluate.split_users``) is the
    one the corpus gives without the table change.

    >>> c = tiny_corpus(n_users=2, n_items=3, n_categories=1, length=3, seed=0)
    >>> c.item_ids[c.items].tolist(), c.offsets.tolist()
    (['i2', 'i1', 'i1', 'i0', 'i0', 'i0'], [0, 3, 6])
    >>> got, left_out = in_vocabulary(c, np.array(["i9", "i1", "i2"]), np.zeros(3), ["c0"])
    >>> left_out, got.items.tolist(), got.offsets.tolist(), got.users.tolist()
    (3, [2, 1, 1], [0, 3, 3], ['u0000', 'u0001'])
    """
    ids = np.asarray(item_ids).astype(str)
    row_of = {i: r for r, i in enumerate(ids.tolist())}
    mapped = np.fromiter((row_of.get(i, -1) for i in corpus.item_ids.astype(str).tolist()),
                         dtype=np.int64, count=corpus.n_items)
    rows = mapped[corpus.items]  # [E] row in the new table, -1 when it has no such item
    keep = rows >= 0
    user_of = np.repeat(np.arange(corpus.n_users), corpus.lengths())
    offsets = np.zeros(corpus.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_of[keep], minlength=corpus.n_users), out=offsets[1:])
    ts = corpus.ts[keep]
    info = {**corpus.info, "events": int(keep.sum()),
            "ts_min": int(ts.min()) if len(ts) else 0, "ts_max": int(ts.max()) if len(ts) else 0}
    return replace(corpus, offsets=offsets, items=rows[keep], ts=ts, item_ids=ids,
                   item_cat=np.asarray(item_cat, dtype=np.int32),
                   category_names=list(category_names), info=info,
                   item_titles=None), int((~keep).sum())


def events_before(corpus: Corpus, cut: int) -> Corpus:
    """``corpus`` less its events at or after ``cut`` (event time), and less the users left
    with none: the training corpus of ``diam train --leave-newest`` (``retrain.time_split``
    with the cut it recorded), which ``diam evaluate`` rebuilds so the seeded user split is
    the checkpoint's own. The item table is kept.

    >>> c = tiny_corpus(n_users=3, n_items=4, n_categories=1, length=2, seed=0)
    >>> c.ts.tolist(), c.offsets.tolist()
    ([0, 60000, 1, 60001, 2, 60002], [0, 2, 4, 6])
    >>> got = events_before(c, 2)
    >>> got.users.tolist(), got.offsets.tolist(), got.ts.tolist(), got.info["events"]
    (['u0000', 'u0001'], [0, 1, 2], [0, 1], 2)
    """
    keep = corpus.ts < cut
    user_of = np.repeat(np.arange(corpus.n_users), corpus.lengths())
    counts = np.bincount(user_of[keep], minlength=corpus.n_users)
    has = counts > 0
    offsets = np.zeros(int(has.sum()) + 1, dtype=np.int64)
    np.cumsum(counts[has], out=offsets[1:])
    info = {**corpus.info, "events": int(keep.sum()), "holdout_from_ts": int(cut)}
    return replace(corpus, users=corpus.users[has], offsets=offsets, items=corpus.items[keep],
                   ts=corpus.ts[keep], info=info)


def training_cut(config: dict[str, Any]) -> int | None:
    """The event time a checkpoint's training left out from (``config.json``): the retrain
    service records it as ``data.holdout_from_ts`` (:func:`events_before`'s info), ``diam train
    --leave-newest`` as ``left_out_from_ts``; None when training read every event. A value that
    is not an integer time is a ValueError naming the key.

    >>> training_cut({"data": {"holdout_from_ts": 5}}), training_cut({"left_out_from_ts": 7})
    (5, 7)
    >>> training_cut({"data": {"name": "ml-100k"}}) is None
    True
    """
    info = config.get("data")
    key, cut = "data.holdout_from_ts", info.get("holdout_from_ts") if isinstance(info, dict) else None
    if cut is None:
        key, cut = "left_out_from_ts", config.get("left_out_from_ts")
    if cut is not None and type(cut) is not int:
        raise ValueError(f"{key}={cut!r} is not a time")
    return cut


def trained_until(config: dict[str, Any]) -> int | None:
    """The latest event time a checkpoint's training may have read (``config.json``): the
    corpus's ``data.ts_max`` (what :func:`corpus_from_prepared` records), below its
    :func:`training_cut` when one is recorded (``data.ts_max`` is the corpus's before the cut
    left events out). None when the config records neither: checkpoints written before the
    data range was. A value that is not an integer time is a ValueError naming the key.
    ``diam evaluate-stream`` refuses a checkpoint trained on its evaluated period with it.

    >>> trained_until({"data": {"ts_max": 9}}), trained_until({"data": {"ts_max": 9,
    ...     "holdout_from_ts": 5}}), trained_until({"left_out_from_ts": 7})
    (9, 4, 6)
    >>> trained_until({"data": {"name": "ml-100k"}}) is None
    True
    """
    info = config.get("data")
    ts_max = info.get("ts_max") if isinstance(info, dict) else None
    if ts_max is not None and type(ts_max) is not int:
        raise ValueError(f"data.ts_max={ts_max!r} is not a time")
    cut = training_cut(config)
    bounds = [t for t in (ts_max, None if cut is None else cut - 1) if t is not None]
    return min(bounds) if bounds else None


def training_corpus(corpus: Corpus, config: dict[str, Any]) -> tuple[Corpus, int | None]:
    """``corpus`` (the data a checkpoint recorded, read again) as training saw it: less the
    newest events its training left out (:func:`training_cut` of its ``config``), so that the
    seeded user split is the checkpoint's own. Returns the corpus and the cut (None: all of it).

    >>> c = tiny_corpus(n_users=3, n_items=4, n_categories=1, length=2, seed=0)
    >>> got, cut = training_corpus(c, {"left_out_from_ts": 2})
    >>> cut, got.n_users, training_corpus(c, {})[0] is c
    (2, 2, True)
    """
    cut = training_cut(config)
    return (corpus, None) if cut is None else (events_before(corpus, cut), cut)


def tiny_corpus(n_users: int = 40, n_items: int = 60, n_categories: int = 4, length: int = 30,
                seed: int = 0, n_interests: np.ndarray | None = None) -> Corpus:
    """A small clustered corpus for tests: each user clicks inside 1..n_categories categories.

    Items of category c are rows with ``row % n_categories == c``; a user with k interests
    draws uniformly among k of them, so sequence models have structure to learn.
    """
    rng = np.random.default_rng(seed)
    item_cat = (np.arange(n_items) % n_categories).astype(np.int32)
    by_cat = [np.flatnonzero(item_cat == c) for c in range(n_categories)]
    k_true = (n_interests if n_interests is not None
              else rng.integers(1, n_categories + 1, size=n_users))
    items, ts, truth = [], [], {}
    for u in range(n_users):
        cats = rng.choice(n_categories, size=int(k_true[u]), replace=False)
        c_seq = rng.choice(cats, size=length)
        items.append(np.array([rng.choice(by_cat[c]) for c in c_seq], dtype=np.int64))
        ts.append(np.arange(length, dtype=np.int64) * 60_000 + u)
        truth[f"u{u:04d}"] = (int(k_true[u]), float(k_true[u]) / n_categories)
    users = np.array([f"u{u:04d}" for u in range(n_users)])
    offsets = np.arange(n_users + 1, dtype=np.int64) * length
    flat_ts = np.concatenate(ts)
    return Corpus(
        name="tiny", users=users, offsets=offsets, items=np.concatenate(items), ts=flat_ts,
        item_ids=np.array([f"i{i}" for i in range(n_items)]), item_cat=item_cat,
        category_names=[f"c{c}" for c in range(n_categories)], truth=truth,
        info={"name": "tiny", "events": int(n_users * length), "ts_min": int(flat_ts.min()),
              "ts_max": int(flat_ts.max())},
    )


def windows(corpus: Corpus, pos: np.ndarray, seq_len: int,
            users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The history before each flat position ``pos``: ``(seq [B, L] int64, length [B] int64)``.

    ``seq`` holds item row + 1, right-aligned (the newest item is last), 0 is padding.
    ``length`` is the full history length |I_u| before ``pos`` (MIND's K' uses it), not capped.
    ``users`` names each position's user when ``pos`` may be one past a user's last event
    (a whole-history window); by default the user owning ``pos`` is used.
    """
    pos = np.asarray(pos, dtype=np.int64)
    user = (np.searchsorted(corpus.offsets, pos, side="right") - 1 if users is None
            else np.asarray(users, dtype=np.int64))
    start = corpus.offsets[user]
    rel = np.arange(-seq_len, 0, dtype=np.int64)[None, :]  # [1, L]
    idx = pos[:, None] + rel  # [B, L]
    valid = idx >= start[:, None]
    seq = np.where(valid, corpus.items[np.clip(idx, 0, None)] + 1, 0)
    return seq.astype(np.int64), (pos - start).astype(np.int64)


def prefix_signals(corpus: Corpus) -> np.ndarray:
    """``[E, 4]`` float32: the four diversity signals of each user *before* each of their events.

    Row p is what ``online_model.signals.batch_signals`` returns for the user's events before p
    (fed incrementally through ``SignalState``, which the signals module keeps equal to the batch
    form), so a training example at p sees only its past.
    """
    from online_model.signals import SignalState

    out = np.empty((len(corpus.items), 4), dtype=np.float32)
    cats = corpus.item_cat[corpus.items]
    c = corpus.n_categories
    for u in range(corpus.n_users):
        state = SignalState(c)
        for p in range(corpus.offsets[u], corpus.offsets[u + 1]):
            out[p] = state.values()
            state.update(int(cats[p]), int(corpus.ts[p]))
    return out


DIV_WINDOW = 20
"""Items over which d_u's target measures realised category diversity (training: the next 20
items; the stream's d_u step: the last 20 clicks)."""
DIV_MIN_ITEMS = 5
"""Fewer items than this give no diversity reading (no target, no d_u step)."""
DIV_QUANTILES = 101
"""Points of the quantile table that carries d_u's scale from training to the stream."""


def diversity_quantiles(div: np.ndarray) -> np.ndarray:
    """``[DIV_QUANTILES]`` float32, non-decreasing: the realised diversity at each percentile
    (0, 1, ..., 100) of ``div`` (NaN ignored; the identity 0..1 when nothing is left).

    d_u is a percentile of realised diversity among training examples (the fusion layer's
    auxiliary target, ``train.quantile_target``); the checkpoint carries this table as
    ``online.div_quantiles`` so that the stream's d_u step aims at the same scale
    (``kernels.diversity_target``).

    >>> diversity_quantiles(np.array([0.0, 1.0, np.nan]))[[0, 50, 100]].tolist()
    [0.0, 0.5, 1.0]
    """
    ref = np.asarray(div, dtype=np.float64)
    ref = ref[~np.isnan(ref)]
    grid = np.linspace(0.0, 1.0, DIV_QUANTILES)
    if ref.size == 0:
        return grid.astype(np.float32)
    return np.quantile(ref, grid).astype(np.float32)


def future_entropy(corpus: Corpus, window: int = DIV_WINDOW,
                   min_items: int = DIV_MIN_ITEMS) -> np.ndarray:
    """``[E]`` float32: realised category diversity of the next ``window`` items from p on.

    Normalised entropy of the primary categories of items p..p+window-1 of the same user
    (see ``online_model.metrics.realised_entropy``); NaN when fewer than ``min_items`` remain.
    This is the auxiliary target that gives d_u a measurable meaning.
    """
    from online_model.metrics import realised_entropy

    out = np.full(len(corpus.items), np.nan, dtype=np.float32)
    cats = corpus.item_cat[corpus.items]
    for u in range(corpus.n_users):
        a, b = int(corpus.offsets[u]), int(corpus.offsets[u + 1])
        for p in range(a, b - min_items + 1):
            out[p] = realised_entropy(cats[p:min(b, p + window)], corpus.n_categories)
    return out
