"""Top-N recommendations from a user's interest vectors in Redis and the snapshot's item index.

Per request: one Redis GET, one batched FAISS search of the user's K_u interest vectors, then
the model's diversity-aware aggregator (``online_model.aggregate``, imported, never re-written)
at a diversity level chosen by the mode:

- ``auto``: the learned d_u stored with the vectors (``delta`` and context are ignored);
- ``manual``: ``clip(d_u·(1+delta))``, delta in [-0.5, 0.5], a product's explicit dial;
- ``context``: d_u shifted by a small, documented context rule (:func:`context_delta`), plus
  ``delta``. It is a heuristic placeholder until a learned context model exists.

Unknown users, users whose stored value does not decode (a corrupted or foreign writer; logged
once per key by the reader) and users whose vectors cannot be used with the loaded index get
popular items spread over categories, marked ``cold``, with the ``reason``.

Seen items: ``exclude_seen`` (the default) removes the user's last seen items that the stream
pushes with the vectors (``s`` in the value, ``FlowConfig.seen_items`` of them, rows of the
vectors' snapshot) and any item ids the caller passes in ``seen`` (a feed knows what it
showed); ``exclude_seen=False`` keeps both. A seen row of the snapshot's published table is
that row here; a row beyond it (a new item: the catalogue's, or one first seen in clicks) is
numbered in the order the dataflow met the new items, not this process's, so it is turned into
an item id through the namespace's list of added ids (``serving_cache.base_record``:
``diam:{ns}:base`` and ``diam:{ns}:added``, one HGETALL more for such a user, the list read
when it changed) and left out wherever this index holds that id. Such rows are not left out
when the namespace has no list (written by a release before it), when its newest writer learns
on another version or another published table than the user's vectors (a user not re-anchored
yet after a new version), or when the list does not match its record (logged): then only
the published rows are. A row read through the newest writer's list was numbered by the run
that pushed the value; a restarted run on the same version that numbered its new items
otherwise writes another list, and the values the earlier run wrote map through it until the
user's next push.

Vectors live in the embedding space of the snapshot they were anchored to (``model`` in the
value). After a new snapshot is published, users re-anchor lazily on their next event, so the
recommender keeps the previous snapshot loaded as well and serves each user from the index of
their vectors' version; given ``load_version`` (``diam serve`` and ``diam recommend``: the
snapshot store, hashes verified), it also loads a version it does not hold from disk (two kept,
the least recently used dropped first; ``diam serve`` reads it on a thread and answers the
user from the active index, ``stale``, until it is in). Only when that
version is gone does it use the active one (``stale``): the stream's seen rows belong to the
other version's item table, so they cannot be left out, and ``reason`` says so. A stale
user whose vectors are another model's (not in the active weights' warm-start lineage) is
answered cold, still ``stale``, ``user_model`` their version, ``reason`` saying until when:
their version has loaded, or (gone) their next click re-anchors them.

Every version held, swapped in or read from disk, has the new items met so far (the
followed catalogue's, those first seen in clicks: :meth:`Recommender.add_items`), whichever
answers a user.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serving_cache.base_record import AddedIds
from serving_cache.codec import CodecError, UserVectors
from serving_cache.reader import UserReader
from serving_cache.retrieval import SnapshotIndex, limit_threads

__all__ = [
    "Recommender",
    "Recommendation",
    "Interests",
    "aggregate_candidates",
    "context_delta",
    "Mode",
    "MAX_DELTA",
    "MAX_N",
    "MAX_TOP",
    "load_verified",
    "majority_category",
    "StoreLoader",
    "store_loader",
]

log = logging.getLogger(__name__)

Mode = Literal["auto", "manual", "context"]
MAX_DELTA = 0.5
MAX_N = 200
"""The most items one answer lists: the API's ``n`` and ``diam recommend -n`` share it."""
MAX_TOP = 50
"""The most top items per interest an interests answer lists: ``/users/{id}/interests?top=``
and the /ui user view share it."""
_ON_DISK_MAX = 2
"""Versions :meth:`Recommender._from_disk` keeps loaded beside the swapped-in ones (the least
recently used is dropped first): a version's index is as large as the catalogue, in every
server process."""
_GONE_MAX = 1024
_GONE_RETRY_S = 60.0
"""How long a version that failed to load (gone from the store, refused, an I/O error) is
answered from the active index before it is asked for again."""
UNDECODABLE = "the stored value does not decode"
"""The ``reason`` of a user whose value does not decode (followed by the codec's complaint)."""
_NO_ITEMS = np.empty(0, dtype=np.int64)
_NO_SCORES = np.empty(0, dtype=np.float32)


DEVICE_DELTA = {"tv": 0.1, "tablet": 0.05, "mobile": 0.05, "desktop": -0.05}
"""The device kinds context mode knows and the diversity shift each adds (the API accepts
these and no other)."""


def context_delta(context: Mapping[str, Any] | None) -> float:
    """Diversity shift from request context, in [-0.15, 0.2].

    Leisure hours (19:00–01:59) and lean-back devices (``tv``, ``tablet``) browse more widely;
    working hours (09:00–16:59) and ``desktop`` sessions are more purposeful. Unknown keys and
    values add nothing.

    >>> context_delta({"hour": 21, "device": "tv"})
    0.2
    >>> context_delta({"hour": 10, "device": "desktop"})
    -0.1
    >>> context_delta(None)
    0.0
    """
    if not context:
        return 0.0
    delta = 0.0
    hour = context.get("hour")
    if isinstance(hour, int) and 0 <= hour <= 23:
        if hour >= 19 or hour <= 1:
            delta += 0.1
        elif 9 <= hour <= 16:
            delta -= 0.05
    device = context.get("device")
    delta += DEVICE_DELTA.get(str(device), 0.0)
    return round(delta, 6)


def majority_category(cats: Sequence[str | None]) -> str | None:
    """The label of an interest: the category most of ``cats`` (its top items as shown, best
    first) have; a tie goes to the one whose first item ranks higher. ``None`` when no item
    has a known category.

    >>> majority_category(["Action", "Drama", "Crime", "Drama", None])
    'Drama'
    >>> majority_category(["Crime", "Drama", "Drama", "Crime"])
    'Crime'
    >>> majority_category([None]) is None
    True
    """
    known = [c for c in cats if c is not None]
    if not known:
        return None
    return max(dict.fromkeys(known), key=known.count)  # max keeps the first of equal counts


@dataclass(frozen=True)
class Recommendation:
    """An answer of :meth:`Recommender.recommend`."""

    user_id: str
    items: list[str]
    scores: list[float]
    """Best inner product over the user's interests; popularity for cold answers."""
    categories: list[str | None]
    cold: bool
    mode: str
    d_user: float | None
    """The learned d_u (None for cold users)."""
    d_used: float | None
    """The diversity level the aggregator ran with."""
    k: int
    snapshot: str
    """Snapshot version whose index answered."""
    user_model: str | None = None
    """Snapshot version the user's vectors were anchored to."""
    stale: bool = False
    """True when that version did not answer (being loaded, or gone from the store): the
    active index answered instead, with the user's vectors when they live in its space, cold
    (``cold``, popular items) when they are another model's."""
    reason: str | None = None
    """Why the answer is cold, when it is; for a stale one, that the user's vectors belong to
    an unloaded snapshot (and that the stream's seen items were therefore not left out), and
    for a cold stale one until when it is cold."""
    titles: list[str | None] = field(default_factory=list)
    """Each item's title, None when unknown (a snapshot without titles, an untitled item)."""


@dataclass(frozen=True)
class Interests:
    """A user's interest vectors as stored, with the top items of each."""

    user_id: str
    cold: bool
    k: int
    d: float | None
    dim: int
    seq: int | None
    ts: int | None
    n: int | None
    model: str | None
    vectors: list[list[float]] = field(default_factory=list)
    top_items: list[list[str]] = field(default_factory=list)
    top_category: list[str | None] = field(default_factory=list)
    """Each interest's label: :func:`majority_category` of its ``top_items``, the items shown."""
    top_titles: list[list[str | None]] = field(default_factory=list)
    """The title of each of ``top_items``, None when unknown."""
    stale: bool = False
    """The top items come from the active index, not from the vectors' own snapshot."""
    reason: str | None = None
    """Why the user is cold, why there are no top items, or why they are stale; the same
    words as :meth:`Recommender.recommend`'s."""


class Recommender:
    """Holds the loaded snapshot(s) and a Redis client; thread-safe for concurrent requests
    (FAISS search and numpy release the GIL; swapping a snapshot is one reference assignment).
    """

    def __init__(
        self,
        snapshot: SnapshotIndex | None,
        redis_client: Any,
        ns: str,
        keep_versions: int = 2,
        threads: int | None = 1,
        load_version: Callable[[str], SnapshotIndex | None] | None = None,
        load_in_background: bool = False,
        breaker: Any = None,
    ) -> None:
        """``load_version(version)`` returns a version's index from disk, or None when it is
        gone or refused (a loader that can tell cheaply that a version is not on disk has an
        ``absent(version)`` method, as :class:`StoreLoader`: such a version is not loaded, at
        once, rather than being loaded on a thread that finds nothing); with it, a user whose vectors belong to a version not swapped in is
        served from that version (loaded once, up to :data:`_ON_DISK_MAX` kept, the least
        recently used dropped first) rather than stale. Without it only the swapped-in versions
        serve. ``load_in_background`` (a server): the request that finds a version missing
        starts its load on a thread and is answered stale meanwhile, so that a load (hashes
        checked, the FAISS index read: about a second on a million items) never holds up the
        server's event loop; else (a one-shot caller) the request waits for it.

        ``threads`` limits, for the whole process (None leaves them), FAISS's OpenMP threads
        and the BLAS threads numpy uses. One is fastest for the small searches and matrix
        products of one request (a pool's start-up and hand-offs cost more than they save at
        this size); concurrency comes from the server's processes (``diam serve
        --processes``), each computing in its event loop.

        ``breaker`` (a :class:`serving_cache.breaker.ReadBreaker`, a server's) guards the
        reads of the users' vectors: after one timed out, the next fail at once for a while."""
        if threads is not None:
            limit_threads(threads)
        self.reader = UserReader(redis_client, ns, breaker=breaker)
        self.client = redis_client
        self._added = AddedIds(redis_client, ns)  # the stream's new-item rows, as ids
        self.keep_versions = max(1, keep_versions)
        self._loaded: dict[str, SnapshotIndex] = {}
        self._active: SnapshotIndex | None = None
        self._catalog: Any = None  # streams.catalog.CatalogFollower, see follow_catalog
        self._click_first: Any = None  # streams.new_items.ClickFirst, see follow_clicks
        self._given: dict[str, Any] = {}  # items handed to add_items by neither follower
        # held versions change under it: _active, _loaded, and what _on_disk holds, so that
        # every version held has every extra item (see _current)
        self._swap_lock = threading.Lock()
        self._load_version = load_version
        self._load_in_background = load_in_background
        self._on_disk: dict[str, SnapshotIndex] = {}
        self._used: dict[str, float] = {}  # version -> last use (monotonic), for LRU
        self._gone: dict[str, float] = {}  # version -> when its load failed
        self._loading: set[str] = set()
        self._disk_lock = threading.Lock()  # one load at a time
        self._cache_lock = threading.Lock()  # _on_disk, _gone and _loading changes
        if snapshot is not None:
            self.swap(snapshot)

    @property
    def active(self) -> SnapshotIndex | None:
        return self._active

    def swap(self, snapshot: SnapshotIndex) -> None:
        """Make ``snapshot`` the active one; keep the previous ``keep_versions - 1`` loaded for
        users not re-anchored yet. It is made current first (:meth:`_current`: the items of
        the catalogue and of clicks it does not know added)."""
        with self._swap_lock:
            self._swap(self._current(snapshot))

    def _extra_items(self) -> list[Any]:
        """Every item known beyond a snapshot's published table, in the order met: the
        followed catalogue's (``follow_catalog``), those first seen in clicks
        (``follow_clicks``), those handed to :meth:`add_items` otherwise. A snapshot skips
        the ones it knows."""
        extra = list(self._catalog.items.values()) if self._catalog is not None else []
        if self._click_first is not None:
            extra += list(self._click_first.added.values())
        return extra + list(self._given.values())

    def _current(self, snap: SnapshotIndex, fresh: Sequence[Any] | None = None
                 ) -> SnapshotIndex:
        """The one rule that keeps a held version current: ``snap`` with every extra item it
        lacks (:meth:`_extra_items`; content embeddings, a copy of its FAISS index grown,
        ``snap`` untouched for requests in flight), or ``snap`` itself. Applied to a version
        swapped in (:meth:`swap`), one read from disk (:meth:`_load_from_disk`), and to every
        version held when items arrive (:meth:`add_items`), so that a new item is
        recommendable whichever loaded version answers a user. ``fresh``: only these are
        looked at, for a version already current before they arrived (not a pass over the
        whole catalogue per version at each new item)."""
        extra = self._extra_items() if fresh is None else fresh
        return snap.with_items(extra) if extra else snap

    def _swap(self, snapshot: SnapshotIndex) -> None:
        loaded = dict(self._loaded)
        loaded.pop(snapshot.version, None)
        loaded[snapshot.version] = snapshot  # insertion order = age
        while len(loaded) > self.keep_versions:
            loaded.pop(next(iter(loaded)))
        self._loaded = loaded
        self._active = snapshot
        if snapshot.version in self._on_disk:  # read from disk before the swap: one copy
            with self._cache_lock:
                on_disk = dict(self._on_disk)
                on_disk.pop(snapshot.version, None)
                self._used.pop(snapshot.version, None)
                self._on_disk = on_disk

    def add_items(self, items: Sequence[Any]) -> int:
        """Make catalogue ``items`` (``streams.catalog.CatalogItem``) recommendable now, in
        every version held (the swapped-in ones and those read from disk): content embeddings
        added to a copy of each FAISS index, no rebuild; a version loaded later gets them
        too (:meth:`_current`). Returns how many the active snapshot got.

        The versions are grown one at a time, each replaced before the next is copied, so
        that memory holds one index copy beyond the held ones (not one per version); a request
        answers from the one index object it took, the old copy or the grown one, never
        both."""
        with self._swap_lock:
            cat = self._catalog.items if self._catalog is not None else {}
            clicked = self._click_first.added if self._click_first is not None else {}
            for it in items:  # the followers keep theirs; keep the others for later versions
                if it.item_id not in cat and it.item_id not in clicked:
                    self._given[it.item_id] = it
            snap = self._active
            if snap is None or not items:
                return 0
            # every held version already has the extra items met before these (it was made
            # current when it came in and at every add since): these are all it lacks
            for version in list(self._loaded):
                old = self._loaded[version]
                new = self._current(old, items)
                if new is not old:
                    self._loaded = {**self._loaded, version: new}  # replaced whole: no lock
                    if self._active is old:
                        self._active = new
            for version in list(self._on_disk):
                old = self._on_disk[version]
                new = self._current(old, items)
                if new is not old:
                    with self._cache_lock:
                        self._on_disk = {**self._on_disk, version: new}
            active = self._active
            assert active is not None
            return active.n_items - snap.n_items

    def follow_catalog(self, follower: Any, every_s: float = 0.5,
                       stop: threading.Event | None = None) -> threading.Thread:
        """Poll ``follower`` (``streams.catalog.CatalogFollower``) every ``every_s`` in a daemon
        thread and add the new items to every version held (:meth:`add_items`); versions
        swapped in or read from disk later get the whole catalogue's unknown items too."""
        self._catalog = follower

        def step() -> None:
            fresh = follower.poll(timeout=min(every_s, 1.0))
            if fresh:
                self.add_items(fresh)

        return _every("catalog-follow", "catalogue poll", step, every_s, stop)

    def follow_clicks(self, tail: Any, counts: Any, every_s: float = 0.5,
                      refresh_s: float = 5.0, new_item_min_clicks: int | None = None,
                      stop: threading.Event | None = None,
                      new_item_max_pending: int | None = None) -> threading.Thread:
        """Poll ``tail`` (``streams.new_items.ClickTail``) in a daemon thread: every live click
        counts in ``counts`` (``serving_cache.popularity.DecayedCounts``; clicks the tail
        replays from before it started do not), and every ``refresh_s`` the active snapshot's
        cold lists are rebuilt from them. Items first seen in clicks (unknown to the snapshot
        and to the catalogue) are added with the content tower's embedding of an item with no
        metadata by the rule the dataflow runs too (``streams.new_items.ClickFirst``, at
        ``new_item_min_clicks`` clicks, by default ``FlowConfig.click_first_min_clicks``; 0
        turns the rule off, as in the dataflow; ``new_item_max_pending``, by default
        ``FlowConfig.click_first_max_pending``, bounds the ids it counts); a tail that reads the
        topic from its start gives a restarted API the same items."""
        from streams.config import FlowConfig
        from streams.new_items import ClickFirst

        flow = FlowConfig()
        min_clicks = flow.click_first_min_clicks if new_item_min_clicks is None else new_item_min_clicks
        pending = flow.click_first_max_pending if new_item_max_pending is None else new_item_max_pending
        rule = self._click_first = ClickFirst(min_clicks, pending) if min_clicks > 0 else None
        next_refresh = [0.0]

        def known(item: str) -> bool:
            snap = self._active
            cat = self._catalog.items if self._catalog is not None else {}
            return snap is None or snap.index_of(item) >= 0 or item in cat

        def step() -> None:
            clicks = tail.poll(timeout=min(every_s, 1.0))
            if clicks:
                counts.add(item for item, _ in clicks[getattr(tail, "replayed", 0):])
                ready = rule.feed(clicks, known) if rule is not None else []
                if ready:
                    self.add_items(ready)
            now = time.monotonic()
            if now >= next_refresh[0] and self._active is not None and len(counts):
                self._active.set_live_popularity(counts.snapshot())
                next_refresh[0] = now + refresh_s

        return _every("click-follow", "click tail poll", step, every_s, stop)

    def warm_up(self) -> None:
        """Compile the aggregator's kernels (or load them from numba's cache) and run one
        search, so that the first request is as fast as the others."""
        from online_model.aggregate import warm_up

        warm_up()
        snap = self._active
        if snap is not None:
            snap.search(np.zeros((1, snap.dim), dtype=np.float32), 1)

    def _index_for(self, uv: UserVectors) -> tuple[SnapshotIndex, str | None]:
        """The index to answer ``uv`` from, and None, or why it is the active one instead of
        the vectors' own ("being loaded", "not loaded")."""
        from online_model.checkpoint_config import label_weights

        snap = self._loaded.get(uv.model)
        if snap is None and label_weights(uv.model) is not None:
            # a checkpoint's label: a snapshot of its weights already in memory, not a second
            # copy read from disk (the active one has the content rows and live popularity)
            snap = next((s for s in (self._active, *self._loaded.values())
                         if s is not None and s.has_weights_of(uv.model)), None)
        loading = False
        if snap is None and self._load_version is not None:
            snap, loading = self._from_disk(uv.model)
        if snap is not None:
            return snap, None
        assert self._active is not None
        return self._active, "being loaded" if loading else "not loaded"

    def _from_disk(self, version: str) -> tuple[SnapshotIndex | None, bool]:
        """``version``'s index through ``load_version``: loaded once (on a thread with
        ``load_in_background``, None until it is in), :data:`_ON_DISK_MAX` kept, the least
        recently used dropped first, and a version that failed to load not asked for again
        for :data:`_GONE_RETRY_S`. The flag: a load is under way (the version is not
        answered yet)."""
        snap = self._on_disk.get(version)
        if snap is not None:
            self._used[version] = time.monotonic()  # one dict store: no lock on a hit
            return snap, False
        failed = self._gone.get(version)
        if failed is not None and time.monotonic() - failed < _GONE_RETRY_S:
            return None, False
        absent = getattr(self._load_version, "absent", None)
        if absent is not None and absent(version):
            # surely not on disk (a version name without its directory): "not loaded" now,
            # not "being loaded" for as long as a thread takes to find nothing
            self._mark_gone(version)
            return None, False
        if not self._load_in_background:
            return self._load_from_disk(version), False
        with self._cache_lock:
            if version in self._on_disk:
                return self._on_disk[version], False
            if version in self._loading:
                return None, True
            self._loading.add(version)
        threading.Thread(target=self._load_from_disk, args=(version,),
                         name=f"snapshot-load-{version}", daemon=True).start()
        return None, True

    def _load_from_disk(self, version: str) -> SnapshotIndex | None:
        assert self._load_version is not None
        try:
            with self._disk_lock:  # one load at a time, however many requests ask
                snap = self._on_disk.get(version)
                if snap is not None:
                    return snap
                snap = self._load_version(version)
                if snap is not None:  # the catalogue's items, grown outside the swap lock
                    snap = self._current(snap)
            if snap is None:
                self._mark_gone(version)
                return None
            with self._swap_lock:  # no add_items between the last look and the insert
                snap = self._current(snap)  # items met while it grew (itself when none)
                with self._cache_lock:
                    self._gone.pop(version, None)
                    if self._active is not None and version in self._loaded:
                        return snap  # swapped in meanwhile: served from there
                    on_disk = dict(self._on_disk)  # replaced whole: readers take no lock
                    on_disk[version] = snap
                    self._used[version] = time.monotonic()
                    while len(on_disk) > _ON_DISK_MAX:
                        lru = min(on_disk, key=lambda v: self._used.get(v, 0.0))
                        on_disk.pop(lru)
                        self._used.pop(lru, None)
                    self._on_disk = on_disk
                    return snap
        finally:
            with self._cache_lock:
                self._loading.discard(version)

    def _mark_gone(self, version: str) -> None:
        """Remember that ``version`` could not be loaded: not asked for again for
        :data:`_GONE_RETRY_S`."""
        with self._cache_lock:
            if len(self._gone) >= _GONE_MAX:
                self._gone.clear()
            self._gone[version] = time.monotonic()

    def loading(self, version: str) -> bool:
        """Whether ``version``'s index is being read from disk now (its users are answered
        stale until it is in)."""
        return version in self._loading

    # -- recommendations --------------------------------------------------------------------
    def recommend(
        self,
        user_id: str,
        n: int = 20,
        mode: Mode = "auto",
        delta: float = 0.0,
        context: Mapping[str, Any] | None = None,
        exclude_seen: bool = True,
        seen: Sequence[str] = (),
    ) -> Recommendation:
        """Top-``n`` item ids for ``user_id``. Raises ValueError for invalid arguments and
        RuntimeError when no snapshot is loaded; Redis errors propagate."""
        if n < 1:
            raise ValueError("n must be >= 1")
        if mode not in ("auto", "manual", "context"):
            raise ValueError(f"mode must be auto, manual or context, not {mode!r}")
        if not -MAX_DELTA <= delta <= MAX_DELTA:
            raise ValueError(f"delta must be within [-{MAX_DELTA}, {MAX_DELTA}]")
        snap0 = self._active
        if snap0 is None:
            raise RuntimeError("no snapshot loaded")
        try:
            uv = self.reader.get_checked(user_id)
        except CodecError as exc:
            return self._cold(snap0, user_id, n, mode, seen if exclude_seen else (),
                              f"{UNDECODABLE}: {exc}")
        if uv is None or uv.k < 1:
            return self._cold(snap0, user_id, n, mode, seen if exclude_seen else (), "unknown user")
        snap, state = self._index_for(uv)
        stale = state is not None
        if state is not None and _unrelated(snap, uv.model):
            # gone, or still being read from disk (cold for that moment: the next request
            # after the load gets the vectors' own index); stale as every answer that is not
            # the vectors' own version's
            # their seen rows index uv.model's item table, which is not loaded: not applied,
            # and the reason says so (as a stale answer's does)
            return self._cold(snap, user_id, n, mode, seen if exclude_seen else (),
                              _unrelated_reason(uv, snap, state,
                                                exclude_seen and len(uv.seen) > 0),
                              uv.model, stale=True)
        if uv.dim != snap.dim:
            return self._cold(snap, user_id, n, mode, seen if exclude_seen else (),
                              _dim_reason(uv, snap), uv.model)

        from online_model.aggregate import manual_d

        if mode == "auto":
            d_used = float(uv.d)
        else:
            shift = delta + (context_delta(context) if mode == "context" else 0.0)
            d_used = float(manual_d(uv.d, float(np.clip(shift, -MAX_DELTA, MAX_DELTA))))
        from online_model.aggregate import serve_list

        banned = _NO_ITEMS
        why: str | None = None
        if stale:
            # the stream's seen rows index uv.model's item table, not this one: not applied
            why = _stale_reason(uv, exclude_seen and len(uv.seen) > 0, str(state))
        if exclude_seen:
            banned = _banned(snap, seen) if seen else _NO_ITEMS
            if len(uv.seen) and not stale:
                # the stream's own record of the user's last seen items: rows of this very
                # snapshot's table (the vectors' version, or a version of the same weights
                # for a checkpoint's label: the same table), so what users get excludes what the
                # prequential evaluation excludes. Published rows are this index's own; content
                # rows appended since (new items) are numbered in the order each process met
                # them, which may differ between this API and the dataflow: they go through
                # the dataflow's list of added ids to ids, and to this index's rows
                banned = np.union1d(banned, self._seen_rows(snap, uv))
        picked = serve_list(snap.search, uv.vecs, d_used, n, banned, snap.item_vecs,
                            snap.item_categories)
        best = (uv.vecs @ snap.item_vecs[picked].T).max(axis=0) if len(picked) else _NO_SCORES
        return Recommendation(
            user_id=user_id,
            items=snap.item_ids[picked].tolist(),
            scores=np.round(best.astype(np.float64), 6).tolist(),
            categories=snap.category_names_of(picked),
            cold=False,
            mode=mode,
            d_user=float(uv.d),
            d_used=d_used,
            k=int(uv.k),
            snapshot=snap.version,
            user_model=uv.model,
            stale=stale,
            reason=why,
            titles=snap.titles_of(picked),
        )

    def _seen_rows(self, snap: SnapshotIndex, uv: UserVectors) -> np.ndarray:
        """This index's rows of the items the stream recorded as ``uv``'s last seen: the
        published rows as they are, the rows beyond them through the namespace's added ids
        (:class:`serving_cache.base_record.AddedIds`; left out when it has none for them)."""
        published = snap.n_items - len(snap.content_rows)
        seen = uv.seen[uv.seen >= 0].astype(np.int64)
        rows = seen[seen < published]
        beyond = seen[seen >= published] - published
        if not len(beyond):
            return rows
        ids = self._added.of(uv.model, published)
        if not ids:
            return rows
        mine = [snap.index_of(ids[i]) for i in beyond.tolist() if i < len(ids)]
        return np.union1d(rows, np.array([r for r in mine if r >= 0], dtype=np.int64))

    def _cold(
        self, snap: SnapshotIndex, user_id: str, n: int, mode: str, seen: Sequence[str],
        reason: str, user_model: str | None = None, stale: bool = False,
    ) -> Recommendation:
        """The popular items, spread over categories (``snap.cold``), for a user without usable
        vectors; ``user_model`` the version their vectors belong to, when they have some."""
        banned = set(_banned(snap, seen).tolist())
        picked = [int(i) for i in snap.cold if int(i) not in banned][:n]
        pop = snap.live_pop if snap.live_pop is not None else snap.popularity
        return Recommendation(
            user_id=user_id,
            items=snap.item_ids[picked].tolist(),
            scores=[float(pop[i]) if pop is not None else 0.0 for i in picked],
            categories=snap.category_names_of(np.asarray(picked, dtype=np.int64)),
            cold=True,
            mode=mode,
            d_user=None,
            d_used=None,
            k=0,
            snapshot=snap.version,
            user_model=user_model,
            stale=stale,
            reason=reason,
            titles=snap.titles_of(picked),
        )

    # -- inspection --------------------------------------------------------------------------
    def interests(self, user_id: str, top: int = 5) -> Interests:
        """The user's stored vectors, each with its ``top`` nearest items (one batched search)."""
        why: str | None = None
        try:
            uv = self.reader.get_checked(user_id)
        except CodecError as exc:
            uv, why = None, f"{UNDECODABLE}: {exc}"
        snap0 = self._active
        if uv is None or snap0 is None:
            return Interests(
                user_id,
                cold=uv is None,
                k=0 if uv is None else uv.k,
                d=None if uv is None else uv.d,
                dim=0 if uv is None else uv.dim,
                seq=None,
                ts=None,
                n=None,
                model=None if uv is None else uv.model,
                reason=why or ("unknown user" if uv is None else "no snapshot loaded"),
            )
        tops: list[list[str]] = []
        titles: list[list[str | None]] = []
        cats: list[str | None] = []
        foreign = False
        # a user without interests searches nothing: no index is looked up (nor loaded)
        snap, state = (snap0, None) if uv.k < 1 else self._index_for(uv)
        stale = state is not None
        if uv.k < 1:  # as recommend() answers it
            why = "unknown user"
        elif uv.dim != snap.dim:  # as recommend() answers it: not stale, no items from any index
            why, stale = _dim_reason(uv, snap), False
        elif stale and _unrelated(snap, uv.model):  # as recommend() answers it: cold, and no
            # items from a space the vectors do not live in
            why, foreign = _unrelated_reason(uv, snap, str(state)), True
        elif stale:
            why = _stale_reason(uv, False, str(state))
        if uv.dim == snap.dim and uv.k > 0 and not foreign:
            _, items = snap.search(uv.vecs, top)
            for row in items:
                row = row[row >= 0][:top]
                tops.append(snap.item_ids[row].tolist())
                titles.append(snap.titles_of(row))
                # labelled by the items it lists, so a label never names a category none of
                # them has (counting the nearest 10 read "Action" over five Drama/Crime items)
                cats.append(majority_category(snap.category_names_of(row)))
        return Interests(
            user_id=user_id,
            cold=False,
            k=uv.k,
            d=float(uv.d),
            dim=uv.dim,
            seq=uv.seq,
            ts=uv.ts,
            n=uv.n,
            model=uv.model,
            vectors=np.round(uv.vecs, 5).tolist(),
            top_items=tops,
            top_category=cats,
            top_titles=titles,
            stale=stale,
            reason=why,
        )


def _dim_reason(uv: UserVectors, snap: SnapshotIndex) -> str:
    return f"vectors have dim {uv.dim}, index has {snap.dim}"


def _unrelated(snap: SnapshotIndex, version: str) -> bool:
    """Whether vectors of ``version``, gone from the store, live in another space than
    ``snap``'s: a snapshot version that its weights do not descend from by warm starts
    (``snap.lineage``), i.e. an independently trained model, whose vectors would pick items
    at random in this one. A checkpoint's label (``diam run --checkpoint``) and ``snap``'s own
    version are not judged: they are answered stale from ``snap`` as before."""
    from online_model.checkpoint_config import label_weights

    return version != snap.version and version not in snap.lineage \
        and label_weights(version) is None


def _unrelated_reason(uv: UserVectors, snap: SnapshotIndex, state: str,
                      seen_not_left_out: bool = False) -> str:
    """Why a user whose vectors live in another space than ``snap``'s is answered cold, and
    until when: their version is ``state`` "being loaded" (until it is in) or "not loaded"
    (gone or refused: until their next click re-anchors them); ``seen_not_left_out`` when the
    stream's record of their last seen items could not be left out of the cold list (its rows
    index their version's item table)."""
    until = ("that version has loaded" if state == "being loaded"
             else "the user's next click re-anchors them")
    seen = ", the user's last seen items not left out," if seen_not_left_out else ""
    return (f"the user's vectors belong to snapshot {uv.model}, {state}, of another model "
            f"than {snap.version} (not a version it was warm-started from): answered cold"
            f"{seen} until {until}")


def _stale_reason(uv: UserVectors, seen_not_left_out: bool, state: str = "not loaded") -> str:
    """Why a user is answered from the active index: ``seen_not_left_out`` when the stream's
    record of their last seen items could not be left out (its rows index their version's item
    table);
    ``state``: their version is "not loaded", or "being loaded" (a later request gets it)."""
    if seen_not_left_out:
        return ("the user's last seen items not left out: their vectors belong to snapshot "
                f"{uv.model}, {state}")
    return f"the user's vectors belong to snapshot {uv.model}, {state}"


def load_verified(store: Any, version: str) -> SnapshotIndex:
    """``version``'s index from a snapshot store (``snapshotter.SnapshotStore``), its files'
    hashes checked first (``store.verify``, as ``snapshotter.ActiveWatcher`` does before
    ``diam serve`` loads a version). The index is read once: by the load, whose rule for an
    index that does not match the items is the one ``verify`` would apply. Raises the store's
    ``SnapshotError`` (no manifest, a file missing or not matching its hash), ``ValueError``
    (an index that does not match the items), ``OSError`` or FAISS's ``RuntimeError``
    (unreadable files)."""
    store.verify(version, check_index=False)
    return SnapshotIndex.load(store.path(version), version=version)


class StoreLoader:
    """A ``load_version`` for :class:`Recommender` from a snapshot store
    (``snapshotter.SnapshotStore``): a version on disk, verified and loaded
    (:func:`load_verified`), or for a checkpoint's label (vectors of ``diam run --checkpoint``)
    the newest version published from the same weights (``SnapshotStore.find_label``): the same
    item table and space; None when neither is in the store (a stray directory, one without a
    manifest, is not a version: ``SnapshotStore.why_not_version``), and None when it fails to
    load, after ``refused(version, error)`` (default: a warning logged)."""

    def __init__(self, store: Any, refused: Callable[[str, Exception], None] | None = None
                 ) -> None:
        self.store = store
        self.refused = refused

    def absent(self, version: str) -> bool:
        """Whether ``version`` is surely not in the store: not a version by the store's rule
        (``SnapshotStore.why_not_version``: no such directory, a stray without a manifest, a
        name that is not a version's), a stat or two away. A checkpoint's label is not judged
        here: finding its snapshot reads manifests, which is the load's work (on its thread,
        for a server)."""
        from online_model.checkpoint_config import label_weights

        if label_weights(version) is not None:
            return False
        return self.store.why_not_version(version) is not None

    def __call__(self, version: str) -> SnapshotIndex | None:
        store = self.store
        if store.why_not_version(version) is not None:  # maybe a checkpoint's label
            same = store.find_label(version)
            if same is None:
                return None
            version = same
        try:
            return load_verified(store, version)
        except Exception as exc:  # noqa: BLE001 - any failure makes the version unusable
            if self.refused is not None:
                self.refused(version, exc)
            else:
                log.warning("not serving from snapshot %s: %s", version, exc)
            return None


def store_loader(store: Any, refused: Callable[[str, Exception], None] | None = None
                 ) -> StoreLoader:
    """A :class:`StoreLoader` of ``store``."""
    return StoreLoader(store, refused)


def aggregate_candidates(
    snap: SnapshotIndex, scores: np.ndarray, items: np.ndarray, d_u: float, n: int
) -> np.ndarray:
    """Run the model's aggregator on [K, M] candidates; returns item indices [<=n] int64.

    The aggregator reads only the candidates' rows of the item table, so it gets the whole
    table as it is (no per-request copy): its cost does not grow with the catalogue.
    """
    from online_model.aggregate import aggregate

    return aggregate(
        scores, items, snap.item_vecs, d_u=d_u, n=n, item_categories=snap.item_categories
    )


def _every(name: str, what: str, step: Any, every_s: float,
           stop: threading.Event | None) -> threading.Thread:
    """Run ``step`` every ``every_s`` in a daemon thread until ``stop`` is set; a failing step
    is logged and retried on the next round (the followers' sources retry by themselves)."""
    stop = stop or threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - retried next round
                log.warning("%s failed: %s", what, exc)
            stop.wait(every_s)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def _banned(snap: SnapshotIndex, seen: Sequence[str]) -> np.ndarray:
    idx = [snap.index_of(s) for s in seen]
    return np.array(sorted({i for i in idx if i >= 0}), dtype=np.int64)


