"""A loaded snapshot for serving: the FAISS item index, item ids, vectors, categories and the
cold-start list.

Loading reads only safe formats (``faiss.read_index``, and the checkpoint files through their
one reader, ``online_model.checkpoint``). It does not check hashes: the caller hands in a
directory the snapshot store has verified (``snapshotter.ActiveWatcher`` does, before returning a version).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SnapshotIndex", "cold_order", "limit_threads"]

COLD_POOL = 1000
_omp_threads: int | None = None  # set by limit_threads, applied per searching thread


def limit_threads(n: int) -> None:
    """Cap FAISS (OpenMP) and numpy's BLAS thread pools at ``n`` for this process.

    BLAS limits are process-wide. OpenMP's are per calling thread: ``omp_set_num_threads`` in
    the main thread does not reach a web server's request threads, whose searches then ran on
    a full OpenMP pool, several times slower, so :meth:`SnapshotIndex.search` re-applies the
    limit in whichever thread searches."""
    global _omp_threads
    import faiss
    from threadpoolctl import threadpool_limits

    _omp_threads = max(1, n)
    faiss.omp_set_num_threads(_omp_threads)
    threadpool_limits(limits=_omp_threads, user_api="blas")  # persists: not used as a context


def cold_order(popularity: np.ndarray, categories: np.ndarray, pool: int = COLD_POOL) -> np.ndarray:
    """The most popular items, spread over categories: the most popular item of each category
    in turn (categories ordered by their best item), then the second of each, and so on.
    Ties in popularity keep item order. Returns up to ``pool`` item indices.

    >>> cold_order(np.array([5, 9, 1, 8, 7]), np.array([0, 0, 1, 1, 2])).tolist()
    [1, 3, 4, 0, 2]
    """
    popularity = np.asarray(popularity)
    categories = np.asarray(categories)
    # Per category, its `pool` most popular items in (popularity, item) order; a pass over the
    # catalogue per category and small sorts, never a Python loop over items nor a sort of the
    # catalogue: serving rebuilds this list from live clicks while it answers requests.
    heads = []
    for c in np.flatnonzero(np.bincount(categories.astype(np.int64) + 1)) - 1:
        idx = np.flatnonzero(categories == c)  # increasing item order
        if len(idx) > pool:  # all items at least as popular as the pool-th (ties kept)
            thr = np.partition(popularity[idx], len(idx) - pool)[len(idx) - pool]
            idx = idx[popularity[idx] >= thr]
        top = idx[np.argsort(-popularity[idx], kind="stable")][:pool]
        heads.append(top)
    # categories in the order of their best item (most popular first, then lowest index)
    heads.sort(key=lambda t: (-popularity[t[0]], t[0]))
    out = []
    for r in range(pool):
        for t in heads:
            if r < len(t):
                out.append(t[r])
                if len(out) == pool:
                    return np.array(out, dtype=np.int64)
    return np.array(out, dtype=np.int64)


@dataclass
class SnapshotIndex:
    """Everything serving needs from one snapshot version, in memory."""

    version: str
    path: Path
    index: Any  # faiss.Index
    item_ids: np.ndarray  # [N] str
    item_vecs: np.ndarray  # [N, d] float32
    item_categories: np.ndarray  # [N] int32, -1 unknown
    category_names: list[str]
    popularity: np.ndarray | None  # [N] or None (uniform)
    kind: str
    nprobe: int | None
    tower: Any = None  # online_model.models.content.ContentTower, or None
    content_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Rows added after publish with a content-tower embedding (issue 16: new items)."""
    live_pop: np.ndarray | None = None
    """[N] decayed live click counts (set by :meth:`set_live_popularity`), or None."""
    weights: tuple[str | None, str] = (None, "")
    """``(model, sha256 of its weights)``, the manifest's, which a checkpoint's label names
    (``diam run --checkpoint``: :meth:`has_weights_of`); empty when the manifest has none."""
    lineage: tuple[str, ...] = ()
    """The versions its weights descend from by warm starts, newest first
    (``online_model.checkpoint_config.warm_lineage``): their vectors live in its space."""
    item_titles: list[str] | None = None
    """[N] titles ("" unknown): the snapshot's ``item_titles.json`` and the catalogue's titles
    of items added since; None when none is known (an older snapshot). Read per returned item
    by :meth:`titles_of`."""
    cold: np.ndarray = field(init=False)  # [<=COLD_POOL] item indices
    _id_index: dict[str, int] | None = field(default=None, init=False, repr=False)
    _names: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        pop = self.popularity if self.popularity is not None else np.zeros(len(self.item_ids))
        self.cold = cold_order(pop, self.item_categories)

    @property
    def dim(self) -> int:
        return int(self.item_vecs.shape[1])

    @property
    def n_items(self) -> int:
        return int(self.item_vecs.shape[0])

    @classmethod
    def load(cls, path: str | Path, version: str | None = None) -> SnapshotIndex:
        """Load a (verified) snapshot directory."""
        import faiss

        from online_model.checkpoint import read_checkpoint
        from online_model.checkpoint_config import CONTENT_TOWER, warm_lineage

        path = Path(path)
        manifest = json.loads((path / "manifest.json").read_text())
        ck = read_checkpoint(path, verify=False)  # the store verified the snapshot's hashes
        item_vecs, item_ids = ck.item_emb, ck.item_ids.astype(str)
        n = len(item_ids)
        cats = ck.item_categories if ck.item_categories is not None else np.zeros(n, np.int32)
        names = ck.category_names if ck.category_names is not None else ["all"]
        pop = ck.item_pop.astype(np.float64) if ck.item_pop is not None else None
        index = faiss.read_index(str(path / "items.faiss"))
        info = manifest.get("index", {})
        nprobe = info.get("nprobe")
        if nprobe:
            faiss.extract_index_ivf(index).nprobe = int(nprobe)
        if index.ntotal != n or index.d != item_vecs.shape[1]:
            raise ValueError(
                f"{path}: index holds {index.ntotal}x{index.d}, items are {item_vecs.shape}"
            )
        tower = None
        if CONTENT_TOWER in ck.files:
            from online_model.models.content import ContentTower

            tower = ContentTower.load(path / CONTENT_TOWER)
        return cls(
            tower=tower,
            version=version or str(manifest.get("version", path.name)),
            path=path,
            index=index,
            item_ids=item_ids,
            item_vecs=item_vecs,
            item_categories=cats,
            category_names=list(names),
            popularity=pop,
            kind=str(info.get("kind", "flat")),
            nprobe=int(nprobe) if nprobe else None,
            lineage=tuple(warm_lineage(ck.config)),
            item_titles=ck.item_titles,
            weights=(manifest.get("model"),
                     str((manifest.get("source") or {}).get("weights_sha256") or "")),
        )

    def has_weights_of(self, label: str) -> bool:
        """Whether ``label``, a checkpoint's (``online_model.checkpoint_config.checkpoint_label``),
        names this snapshot's weights: vectors it labels live in this snapshot's space and item
        table."""
        from online_model.checkpoint_config import label_names

        return label_names(label, *self.weights)

    def search(self, queries: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """One batched search of the [K, d] queries: (scores [K, m] float32, items [K, m] int64).
        IVF may return fewer than m hits per row; missing slots hold item -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if _omp_threads is not None:
            import faiss

            faiss.omp_set_num_threads(_omp_threads)  # per thread: see limit_threads
        scores, items = self.index.search(q, min(m, self.n_items))
        return scores, items

    def index_of(self, item_id: str) -> int:
        """Item index of an item id, -1 when unknown. The lookup table is built on first use
        (a million ids take a fraction of a second and ~100 MB, so not at load)."""
        if self._id_index is None:
            self._id_index = {str(i): k for k, i in enumerate(self.item_ids.tolist())}
        return self._id_index.get(str(item_id), -1)

    def category_name(self, idx: int) -> str | None:
        c = int(self.item_categories[idx])
        return self.category_names[c] if 0 <= c < len(self.category_names) else None

    def category_names_of(self, idx: np.ndarray) -> list[str | None]:
        """:meth:`category_name` of each item index in ``idx``, in one vectorised lookup."""
        if self._names is None:  # the names, then None for unknown or out-of-range categories
            self._names = np.array([*self.category_names, None], dtype=object)
        c = self.item_categories[idx]
        c = np.where((c >= 0) & (c < len(self.category_names)), c, len(self.category_names))
        return self._names[c].tolist()

    def titles_of(self, idx: Any) -> list[str | None]:
        """The title of each item index in ``idx``, None where unknown (no title, or an index
        outside the table): only the items asked for are looked at."""
        titles = self.item_titles
        if titles is None:
            return [None] * len(idx)
        n = len(titles)
        return [(titles[i] or None) if 0 <= i < n else None for i in map(int, idx)]

    def with_items(self, items: Any) -> SnapshotIndex:
        """A copy with the catalogue ``items`` (``streams.catalog.CatalogItem``) it does not
        know appended: content-tower embeddings, FAISS rows added with ids ``N..`` (IVF
        ``add_with_ids``; an exact index numbers rows in order, so ``add`` gives the same ids),
        no rebuild, no retrain. ``self`` is left untouched for requests in flight (the index is
        cloned); returns ``self`` when nothing is new or there is no tower."""
        import faiss

        if self.tower is None or self.tower.dim != self.dim:
            return self
        seen: set[str] = set()
        new = []
        for it in items:
            if it.item_id not in seen and self.index_of(it.item_id) < 0:
                seen.add(it.item_id)
                new.append(it)
        if not new:
            return self
        emb = np.ascontiguousarray(
            self.tower.embed([list(it.categories) for it in new], [it.title for it in new]),
            dtype=np.float32)
        pos = {c: i for i, c in enumerate(self.category_names)}
        cats = np.array([pos.get(it.categories[0], -1) if it.categories else -1 for it in new],
                        dtype=np.int32)
        rows = np.arange(self.n_items, self.n_items + len(new), dtype=np.int64)
        index = faiss.clone_index(self.index)
        if self.nprobe:
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = self.nprobe
            index.add_with_ids(emb, rows)
        else:
            index.add(emb)
        # a new item has no clicks yet: popularity 0 until a live count says otherwise
        pop = None if self.popularity is None else np.concatenate(
            [self.popularity, np.zeros(len(new))])
        new_titles = [str(it.title or "") for it in new]
        titles = self.item_titles
        if titles is not None or any(new_titles):
            titles = [*(titles if titles is not None else [""] * self.n_items), *new_titles]
        out = SnapshotIndex(
            version=self.version, path=self.path, index=index,
            item_ids=np.concatenate([self.item_ids, [it.item_id for it in new]]),
            item_vecs=np.concatenate([self.item_vecs, emb]),
            item_categories=np.concatenate([self.item_categories, cats]),
            category_names=self.category_names, popularity=pop, kind=self.kind,
            nprobe=self.nprobe, tower=self.tower,
            content_rows=np.concatenate([self.content_rows, rows]), lineage=self.lineage,
            weights=self.weights, item_titles=titles)
        return out

    def set_live_popularity(self, counts: dict[str, float]) -> None:
        """Cold lists from live decayed click counts (``serving_cache.popularity``): the most
        clicked items lately, spread over categories; the publish-time popularity only breaks
        ties. Swaps two references, so a request sees the old lists or the new ones."""
        live = np.zeros(self.n_items)
        for item, c in counts.items():
            i = self.index_of(item)
            if i >= 0:
                live[i] = c
        static = self.popularity if self.popularity is not None else np.zeros(self.n_items)
        tie = static / (static.max() + 1.0) * 1e-6 * (live[live > 0].min() if (live > 0).any()
                                                     else 1.0)
        self.live_pop = live
        self.cold = cold_order(live + tie, self.item_categories)
