"""Prepared datasets: the on-disk format every area reads, its writer and its loader.

A prepared dataset is a directory (``data/<name>/``) holding

- ``events.tsv``  header ``user_id\\titem_id\\tts_ms``, sorted by (ts_ms, user_id, item_id);
  ties are broken by user then item, compared as integers when every id of that column is an
  integer and as strings otherwise, so the order never depends on how the input was read;
- ``items.tsv``   header ``item_id\\tcategories\\ttitle``, categories ``|``-joined names, the
  first one being the item's primary category; row order is the item index;
- ``meta.json``   source, counts, time range (and the planted-truth file of synthetic data);
- ``truth.tsv``   synthetic data only: ``user_id\\tn_interests\\tdiversity``;
- ``events.npz``  a cache of the parsed events (integer codes), rebuilt when the TSV changes, so
  that loading a million events takes well under a second.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> items = ItemRows(ids=["10", "2"], titles=["Ten", "Two"], categories=[["Drama"], ["Comedy", "Drama"]])
>>> _ = write_prepared(d, name="tiny", users=np.array(["b", "a", "a"]), items_of_events=np.array(["2", "10", "2"]),
...                    ts_ms=np.array([5, 5, 1]), items=items, meta={"source": "doctest"})
>>> ds = load_prepared(d)
>>> list(zip(ds.user_ids.tolist(), ds.item_ids.tolist(), ds.ts_ms.tolist()))
[('a', '2', 1), ('a', '10', 5), ('b', '2', 5)]
>>> ds.items.ids.tolist(), ds.items.category_names, ds.items.primary.tolist()
(['2', '10'], ['Comedy', 'Drama'], [0, 1])
>>> {u: s.tolist() for u, s in user_sequences(ds).items()}
{'a': [0, 1], 'b': [0]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DatasetError",
    "ItemRows",
    "dataset_from_events",
    "read_item_titles",
    "ItemTable",
    "PreparedDataset",
    "load_prepared",
    "user_sequences",
    "write_prepared",
]

EVENTS_FILE = "events.tsv"
ITEMS_FILE = "items.tsv"
META_FILE = "meta.json"
TRUTH_FILE = "truth.tsv"
CACHE_FILE = "events.npz"
_EVENTS_HEADER = "user_id\titem_id\tts_ms"
_ITEMS_HEADER = "item_id\tcategories\ttitle"
_TRUTH_HEADER = "user_id\tn_interests\tdiversity"
_UNKNOWN_CATEGORY = "unknown"
_WRITE_CHUNK = 250_000
_CACHE_VERSION = 1


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or not in the expected format; the message names
    the file and what was wrong."""


@dataclass(frozen=True)
class ItemTable:
    """The item vocabulary. Row ``i`` of every array is item index ``i``."""

    ids: np.ndarray  # [N] str
    primary: np.ndarray  # [N] int32 index into category_names (first genre)
    category_names: list[str]
    categories: list[list[int]]  # all genres per item, primary first


@dataclass(frozen=True)
class PreparedDataset:
    """Events in time order plus the item table (and, for synthetic data, the planted truth)."""

    name: str
    user_ids: np.ndarray  # [E] str
    item_ids: np.ndarray  # [E] str
    ts_ms: np.ndarray  # [E] int64, non-decreasing
    items: ItemTable
    truth: dict[str, tuple[int, float]] | None = None
    item_index: np.ndarray | None = field(default=None, repr=False, compare=False)
    """[E] int64 row of each event's item in ``items`` (an addition to the contract that saves
    every reader a string lookup; None only when built by hand)."""


@dataclass(frozen=True)
class ItemRows:
    """Item table as a writer receives it: any order, category names rather than indices."""

    ids: Sequence[str]
    titles: Sequence[str]
    categories: Sequence[Sequence[str]]


# ----------------------------------------------------------------------------- ordering


def natural_rank(ids: np.ndarray) -> np.ndarray:
    """Rank of each id in the dataset's canonical order: numeric when every id is an integer
    (so user 10 follows user 9), string order otherwise. Equal ids share a rank.

    >>> natural_rank(np.array(["10", "9", "10"])).tolist()
    [1, 0, 1]
    >>> natural_rank(np.array(["b10", "b9"])).tolist()
    [0, 1]
    """
    uniq, inv = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    return _vocab_rank(uniq)[inv.ravel()]


def _vocab_rank(uniq: np.ndarray) -> np.ndarray:
    """Natural rank of each entry of a string-sorted unique vocabulary."""
    if uniq.size and all(s.isdigit() and len(s) <= 18 for s in uniq.tolist()):
        order = np.argsort(uniq.astype(np.int64), kind="stable")
        rank = np.empty(uniq.size, dtype=np.int64)
        rank[order] = np.arange(uniq.size)
        return rank
    return np.arange(uniq.size, dtype=np.int64)


# Tabs and newlines would break the TSV; '|' separates categories.
_TSV_SAFE = str.maketrans({"\t": " ", "\n": " ", "\r": " "})
_CATEGORY_SAFE = str.maketrans({"\t": " ", "\n": " ", "\r": " ", "|": "/"})


# ----------------------------------------------------------------------------- writing


def write_prepared(
    out: str | Path,
    *,
    name: str,
    users: np.ndarray,
    items_of_events: np.ndarray,
    ts_ms: np.ndarray,
    items: ItemRows,
    meta: Mapping[str, Any],
    truth: Mapping[str, tuple[int, float]] | None = None,
    progress: bool = False,
) -> Path:
    """Write a prepared dataset directory and its load cache; returns the directory.

    Items referenced by events but missing from ``items`` are added with the category
    ``unknown``; items without any category get ``unknown`` too, so every item has a primary
    category. Each file is written to a temporary name and renamed, so a crash never leaves a
    half-written file that looks complete.
    """
    users = np.asarray(users, dtype=str)
    items_of_events = np.asarray(items_of_events, dtype=str)
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    if not (users.shape == items_of_events.shape == ts_ms.shape) or users.ndim != 1:
        raise ValueError("users, items_of_events and ts_ms must be 1-D arrays of equal length")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    table_ids, table_titles, table_cats, item_idx = _complete_items(items, items_of_events)
    names = sorted({c for cats in table_cats for c in cats})
    uvocab, ucodes = np.unique(users, return_inverse=True)
    ucodes = ucodes.ravel()
    order = np.lexsort(
        (item_idx, _vocab_rank(uvocab)[ucodes], ts_ms)
    )  # last key is the primary one
    users, ucodes, item_idx, ts_ms = users[order], ucodes[order], item_idx[order], ts_ms[order]

    _write_text(
        out / ITEMS_FILE,
        _ITEMS_HEADER,
        (
            f"{i}\t{'|'.join(c)}\t{t}"
            for i, c, t in zip(table_ids.tolist(), table_cats, table_titles, strict=True)
        ),
    )
    _write_events(out / EVENTS_FILE, users, table_ids[item_idx], ts_ms, progress)
    if truth is not None:
        _write_text(
            out / TRUTH_FILE,
            _TRUTH_HEADER,
            (f"{u}\t{int(k)}\t{float(d):.6f}" for u, (k, d) in sorted(truth.items())),
        )
    full_meta = {
        "name": name,
        **meta,
        "events": int(ts_ms.size),
        "users": int(uvocab.size),
        "items": int(table_ids.size),
        "categories": names,
        "ts_min": int(ts_ms[0]) if ts_ms.size else None,
        "ts_max": int(ts_ms[-1]) if ts_ms.size else None,
    }
    if truth is not None:
        full_meta["truth"] = TRUTH_FILE
    _atomic_write(out / META_FILE, json.dumps(full_meta, indent=2, sort_keys=False) + "\n")
    _write_cache(out, uvocab, ucodes, item_idx, ts_ms)
    return out


def _complete_items(
    items: ItemRows, used: np.ndarray
) -> tuple[np.ndarray, list[str], list[list[str]], np.ndarray]:
    """The item table in natural id order, completed with the items only the events name, and
    the row of each event's item."""
    ids = [str(i) for i in items.ids]
    if len(set(ids)) != len(ids):
        raise DatasetError("item table has duplicate item ids")
    titles = [str(t).translate(_TSV_SAFE).strip() for t in items.titles]
    cats = [
        [n for n in (str(c).translate(_CATEGORY_SAFE).strip() for c in cs) if n]
        or [_UNKNOWN_CATEGORY]
        for cs in items.categories
    ]
    idx, found = _lookup(np.asarray(ids, dtype=str), used)
    for extra in np.unique(used[~found]).tolist():
        ids.append(extra)
        titles.append("")
        cats.append([_UNKNOWN_CATEGORY])
    arr = np.asarray(ids, dtype=str)
    order = np.argsort(natural_rank(arr), kind="stable")
    table = arr[order]
    if found.all():  # remap instead of a second string lookup over every event
        new_row = np.empty(order.size, dtype=np.int64)
        new_row[order] = np.arange(order.size)
        idx = new_row[idx]
    else:
        idx = _lookup(table, used)[0]
    return table, [titles[i] for i in order], [cats[i] for i in order], idx


def _lookup(table_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each of ``ids`` in ``table_ids`` and whether it was found (vectorised)."""
    if table_ids.size == 0:
        return np.zeros(ids.size, dtype=np.int64), np.zeros(ids.size, dtype=bool)
    sorter = np.argsort(table_ids, kind="stable")
    pos = np.minimum(np.searchsorted(table_ids, ids, sorter=sorter), table_ids.size - 1)
    idx = sorter[pos].astype(np.int64)
    return idx, table_ids[idx] == ids


def _index_into(table_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each of ``ids`` in ``table_ids``; every id must be present."""
    idx, found = _lookup(table_ids, ids)
    if not found.all():
        raise DatasetError(f"item {ids[~found][0]!r} of the events is not in the item table")
    return idx


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_text(path: Path, header: str, lines: Any) -> None:
    _atomic_write(path, header + "\n" + "".join(line + "\n" for line in lines))


def _write_events(
    path: Path, users: np.ndarray, items: np.ndarray, ts: np.ndarray, progress: bool
) -> None:
    from tqdm import tqdm

    tmp = path.with_name(path.name + ".tmp")
    with (
        open(tmp, "w", encoding="utf-8") as f,
        tqdm(
            total=int(ts.size),
            desc=f"write {path.name}",
            unit="ev",
            unit_scale=True,
            disable=not progress,
        ) as bar,
    ):
        f.write(_EVENTS_HEADER + "\n")
        for start in range(0, ts.size, _WRITE_CHUNK):
            sl = slice(start, start + _WRITE_CHUNK)
            rows = zip(users[sl].tolist(), items[sl].tolist(), ts[sl].tolist(), strict=True)
            f.write("".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
            bar.update(min(_WRITE_CHUNK, ts.size - start))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- cache


def _fingerprint(d: Path) -> np.ndarray:
    st_e, st_i = (d / EVENTS_FILE).stat(), (d / ITEMS_FILE).stat()
    return np.array(
        [_CACHE_VERSION, st_e.st_size, st_e.st_mtime_ns, st_i.st_size, st_i.st_mtime_ns],
        dtype=np.int64,
    )


def _write_cache(
    d: Path, uvocab: np.ndarray, ucodes: np.ndarray, item_idx: np.ndarray, ts: np.ndarray
) -> None:
    tmp = d / (CACHE_FILE + ".tmp.npz")
    try:
        np.savez(
            tmp,
            fingerprint=_fingerprint(d),
            user_vocab=uvocab,
            user_codes=ucodes.astype(np.int32),
            item_index=item_idx.astype(np.int32),
            ts_ms=ts.astype(np.int64),
        )
        os.replace(tmp, d / CACHE_FILE)
    except OSError:  # a read-only dataset directory still loads, just from the TSV each time
        tmp.unlink(missing_ok=True)


def _read_cache(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    path = d / CACHE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["fingerprint"], _fingerprint(d)):
                return None
            return z["user_vocab"], z["user_codes"], z["item_index"], z["ts_ms"]
    except (OSError, ValueError, KeyError):
        return None


# ----------------------------------------------------------------------------- loading


def _read_items(path: Path) -> ItemTable:
    if not path.is_file():
        raise DatasetError(f"{path}: missing (prepare the dataset with `diam data prepare` first)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != _ITEMS_HEADER:
        raise DatasetError(f"{path}: expected header {_ITEMS_HEADER!r}")
    ids: list[str] = []
    cat_lists: list[list[str]] = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise DatasetError(f"{path}:{n}: expected item_id, categories, title separated by tabs")
        ids.append(parts[0])
        cat_lists.append(parts[1].split("|"))
    names = sorted({c for cs in cat_lists for c in cs})
    index = {c: i for i, c in enumerate(names)}
    categories = [[index[c] for c in cs] for cs in cat_lists]
    primary = np.array([cs[0] for cs in categories], dtype=np.int32)
    return ItemTable(
        ids=np.asarray(ids, dtype=str), primary=primary, category_names=names, categories=categories
    )


def _parse_events(
    path: Path, items: ItemTable
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    text = path.read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    if header.rstrip("\r") != _EVENTS_HEADER:
        raise DatasetError(f"{path}: expected header {_EVENTS_HEADER!r}, got {header[:80]!r}")
    # Ids are whitespace-free (the event contract forbids it), so one split parses the file.
    tokens = body.split()
    if len(tokens) % 3:
        raise DatasetError(f"{path}: every line must have exactly 3 tab-separated fields")
    users = np.asarray(tokens[0::3], dtype=str)
    try:
        ts = np.asarray(tokens[2::3], dtype=np.int64)
    except ValueError as exc:
        raise DatasetError(f"{path}: ts_ms must be integers ({exc})") from None
    item_idx = _index_into(items.ids, np.asarray(tokens[1::3], dtype=str))
    uvocab, ucodes = np.unique(users, return_inverse=True)
    return uvocab, ucodes.ravel(), item_idx, ts


def _read_truth(path: Path) -> dict[str, tuple[int, float]] | None:
    if not path.is_file():
        return None
    truth: dict[str, tuple[int, float]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        try:
            u, k, d = line.split("\t")
            truth[u] = (int(k), float(d))
        except ValueError:
            raise DatasetError(f"{path}:{n}: expected user_id, n_interests, diversity") from None
    return truth


def load_prepared(path: str | Path) -> PreparedDataset:
    """Load a prepared dataset directory (see the module docstring for its files)."""
    d = Path(path)
    make = "run `diam data prepare` or `diam data synth`"
    if not d.is_dir():
        raise DatasetError(f"{d}: no such dataset directory ({make})")
    if not (d / EVENTS_FILE).is_file():  # an empty folder, or one a prepare did not finish
        raise DatasetError(f"{d / EVENTS_FILE}: missing, not a prepared dataset ({make})")
    items = _read_items(d / ITEMS_FILE)
    cached = _read_cache(d)
    if cached is None:
        cached = _parse_events(d / EVENTS_FILE, items)
        _write_cache(d, *cached)
    uvocab, ucodes, item_idx, ts = cached
    if ts.size and (np.diff(ts) < 0).any():
        raise DatasetError(f"{d / EVENTS_FILE}: ts_ms is not non-decreasing")
    if item_idx.size and (item_idx.min() < 0 or item_idx.max() >= items.ids.size):
        raise DatasetError(f"{d / CACHE_FILE}: item index out of range; delete it to rebuild")
    meta: dict[str, Any] = {}
    if (d / META_FILE).is_file():
        try:
            meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DatasetError(f"{d / META_FILE}: not valid JSON ({exc})") from None
    truth_name = meta.get("truth", TRUTH_FILE)
    return PreparedDataset(
        name=str(meta.get("name", d.name)),
        user_ids=uvocab[ucodes],
        item_ids=items.ids[item_idx],
        ts_ms=ts.astype(np.int64, copy=False),
        items=items,
        truth=_read_truth(d / truth_name),
        item_index=item_idx.astype(np.int64),
    )


def _item_index(ds: PreparedDataset) -> np.ndarray:
    if ds.item_index is not None:
        return np.asarray(ds.item_index, dtype=np.int64)
    return _index_into(ds.items.ids, np.asarray(ds.item_ids, dtype=str))


def user_sequences(ds: PreparedDataset) -> dict[str, np.ndarray]:
    """Each user's item indices (int64) in time order; users in their natural order (numeric
    when every user id is an integer)."""
    idx = _item_index(ds)
    users = np.asarray(ds.user_ids, dtype=str)
    if users.size == 0:
        return {}
    rank = natural_rank(users)
    order = np.argsort(rank, kind="stable")  # stable keeps the time order within a user
    starts = np.flatnonzero(np.r_[True, rank[order][1:] != rank[order][:-1]])
    names = users[order][starts].tolist()
    return dict(zip(names, np.split(idx[order], starts[1:]), strict=True))


# ----------------------------------------------------------------------------- from a stream


def dataset_from_events(
    name: str,
    users: np.ndarray,
    items_of_events: np.ndarray,
    ts_ms: np.ndarray,
    items: ItemRows,
) -> PreparedDataset:
    """A :class:`PreparedDataset` built in memory from events read elsewhere (a Kafka topic),
    with the item table that :func:`write_prepared` then :func:`load_prepared` would give for
    the same ``items``: natural id order, items only the events name added as ``unknown``,
    category names sorted, the first category primary. Events keep the given order (a topic's
    offset order), so each user's sequence is the order the stream delivered it.

    >>> ds = dataset_from_events("t", np.array(["b", "a"]), np.array(["10", "7"]),
    ...                          np.array([5, 6]), ItemRows(["10"], ["Ten"], [["Drama"]]))
    >>> ds.items.ids.tolist(), ds.items.category_names, ds.item_index.tolist()
    (['7', '10'], ['Drama', 'unknown'], [1, 0])
    """
    users = np.asarray(users, dtype=str)
    items_of_events = np.asarray(items_of_events, dtype=str)
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    if not (users.shape == items_of_events.shape == ts_ms.shape) or users.ndim != 1:
        raise ValueError("users, items_of_events and ts_ms must be 1-D arrays of equal length")
    table_ids, _, table_cats, idx = _complete_items(items, items_of_events)
    names = sorted({c for cats in table_cats for c in cats})
    index = {c: i for i, c in enumerate(names)}
    categories = [[index[c] for c in cs] for cs in table_cats]
    table = ItemTable(ids=np.asarray(table_ids, dtype=str),
                      primary=np.array([cs[0] for cs in categories], dtype=np.int32),
                      category_names=names, categories=categories)
    idx = np.asarray(idx, dtype=np.int64)
    return PreparedDataset(name=name, user_ids=users, item_ids=table.ids[idx], ts_ms=ts_ms,
                           items=table, truth=None, item_index=idx)


def read_item_titles(path: str | Path) -> dict[str, str]:
    """``{item_id: title}`` from a prepared dataset's ``items.tsv`` (the loader keeps no titles)."""
    f = Path(path) / ITEMS_FILE
    if not f.is_file():
        raise DatasetError(f"{f}: missing")
    out: dict[str, str] = {}
    for line in f.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 3:
            out[parts[0]] = parts[2]
    return out
