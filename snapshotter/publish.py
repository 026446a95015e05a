"""Publish a trainer checkpoint as a versioned snapshot, and watch a trainer directory.

``publish`` verifies the checkpoint (``online_model.checkpoint.read_checkpoint``: files
present, shapes that agree, hashes), builds the FAISS item index (an IVF index's ``nprobe``
tuned on the namespace's served users when Redis holds enough, :mod:`snapshotter.tuning`), stages the snapshot, renames
it into place, switches the active pointer and sets ``diam:{ns}:model:active`` in Redis. Any
failure before the pointer switch leaves the previous version active and no partial directory.
Nothing is unpickled: safetensors, JSON, ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from snapshotter.config import SnapshotConfig
from snapshotter.store import (
    MANIFEST,
    PUBLISHED,
    IntegrityError,
    LockTimeout,
    SnapshotError,
    SnapshotStore,
    StoreIOError,
    resolve_active,
    sha256_file,
    version_name,
)
from snapshotter.sync import sync_active

if TYPE_CHECKING:
    from online_model.checkpoint import CheckpointFiles

__all__ = [
    "ActiveMoved",
    "CheckpointError",
    "PublishResult",
    "announce",
    "publish",
    "set_active_in_redis",
    "find_checkpoints",
    "Skip",
    "Watcher",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


class CheckpointError(SnapshotError):
    """A checkpoint directory is incomplete or inconsistent; says which file."""


class ActiveMoved(SnapshotError):
    """:func:`publish` was told which version it replaces (``expect_active``: the one its
    caller compared the checkpoint with) and found another active under the store's lock;
    nothing was written or switched. ``active``: the version active now as readers resolve it
    (:func:`resolve_active`; None: none); ``pointer``: the one the pointer file names (None:
    none), which differs from ``active`` when Redis announces another version the store
    holds (a switch with ``--no-redis``)."""

    def __init__(self, expected: str | None, active: str | None,
                 pointer: str | None = None) -> None:
        where = ("" if pointer in (active, None) else
                 f" in Redis and {pointer} in the pointer file")
        super().__init__(f"the active version is {active or 'none'}{where}, not "
                         f"{expected or 'none'} as expected; nothing was published")
        self.expected = expected
        self.active = active
        self.pointer = pointer


class _Unset(enum.Enum):
    UNSET = 0


def _check_active(store: SnapshotStore, redis_client: Any | None, ns: str,
                  expect: str | None | _Unset) -> None:
    """Raise :class:`ActiveMoved` unless both the pointer file and Redis name ``expect``:
    the active version as every reader resolves it (:func:`resolve_active`: Redis's
    announcement when the store holds it, else the pointer) is ``expect``, and the pointer
    names ``expect`` or nothing. So a switch of either alone (``rollback --no-redis`` moves
    only the pointer) stops the publish; a Redis that does not answer, or names a version
    this store does not hold, leaves the pointer to tell (as it does every reader). The
    caller holds the store's lock."""
    if expect is _Unset.UNSET:
        return
    now = resolve_active(store, redis_client, ns)
    pointer = store.active_version()
    if now != expect or pointer not in (expect, None):
        raise ActiveMoved(expect, now, pointer)


def _read(path: str | Path) -> CheckpointFiles:
    """The checkpoint, read and fully verified by its one reader (online_model.checkpoint)."""
    from online_model import checkpoint, checkpoint_config

    try:
        return checkpoint.read_checkpoint(path, verify=True)
    except checkpoint_config.CheckpointError as exc:
        raise CheckpointError(str(exc)) from exc


def _popularity_from_data(ck: CheckpointFiles, data_dir: Path | None) -> np.ndarray | None:
    """Click counts per item from the prepared dataset the checkpoint was trained on, when it is
    on disk; cold users get these. None when not found (serving then falls back to uniform)."""
    name = (ck.config.get("data") or {}).get("name")
    if data_dir is None or not name:
        return None
    ds_dir = Path(data_dir) / str(name)
    if not (ds_dir / "events.tsv").is_file():
        return None
    try:
        from online_model.datasets import load_prepared

        item_col = load_prepared(ds_dir).item_ids
    except Exception as exc:  # popularity is a nicety for cold users: never block a publish on it
        log.warning("no popularity from %s (%s); cold users get catalogue order", ds_dir, exc)
        return None
    uniq, counts = np.unique(np.asarray(item_col).astype(str), return_counts=True)
    index = {str(i): k for k, i in enumerate(ck.item_ids.astype(str))}
    pop = np.zeros(len(ck.item_ids), dtype=np.int64)
    for item, c in zip(uniq, counts, strict=True):
        k = index.get(str(item))
        if k is not None:
            pop[k] = c
    return pop


def _content_tower(ck: CheckpointFiles, staging: Path) -> dict[str, Any]:
    """The snapshot's content tower (new items get their first embedding from it): the
    checkpoint's own (fitted with titles by the retrain service), else one fitted here on the
    categories alone. Manifest info says which."""
    from online_model.models.content import FILE, ContentTower

    if FILE in ck.files:
        return {"source": "checkpoint"}
    names, cats = ck.category_names, ck.item_categories
    if names is None or cats is None:
        return {"source": None, "why": "no item categories in the checkpoint"}
    tower = ContentTower.fit(names, [[names[c]] if 0 <= c < len(names) else [] for c in cats],
                             [""] * len(cats), ck.item_emb)
    tower.save(staging / FILE)
    return {"source": "publish", "features": "categories"}


@dataclass(frozen=True)
class PublishResult:
    version: str
    path: Path
    manifest: dict[str, Any]
    previous: str | None
    """The version active before this publish (None for the first, or when it stays active)."""
    pruned: list[str]
    redis_set: bool
    reused: bool = False
    """The weights were already a kept version: that version was activated, nothing written."""
    not_pruned: str | None = None
    """Why no old version was pruned this time (Redis could not be read: which versions it
    announces is unknown), one line for the operator; None when the prune ran."""


def set_active_in_redis(client: Any, ns: str, version: str) -> None:
    """Broadcast the active version to the workers and the API (``diam:{ns}:model:active``)."""
    from serving_cache.keys import model_active_key, validate_namespace

    client.set(model_active_key(validate_namespace(ns)), version)


def announce(store: SnapshotStore, client: Any, ns: str, version: str) -> None:
    """Announce ``version`` of ``store`` in Redis (:func:`set_active_in_redis`) and record it
    in the store (:meth:`SnapshotStore.record_announced`), so a prune without Redis
    (``--no-redis``) still keeps what servers follow. Every switch that announces calls this,
    holding the store's lock: a publish, a rollback, the re-sync (``snapshotter.sync``)."""
    set_active_in_redis(client, ns, version)
    store.record_announced(ns, version)


def publish(
    checkpoint: str | Path,
    store: SnapshotStore,
    redis_client: Any | None = None,
    ns: str = "live",
    data_dir: str | Path | None = None,
    now: datetime | None = None,
    usable: Callable[[Path], None] | None = None,
    expect_active: str | None | _Unset = _Unset.UNSET,
) -> PublishResult:
    """Verify ``checkpoint``, write it as a new version of ``store``, make it active.

    ``usable`` is the caller's test that its consumers can use the checkpoint (``diam snapshot
    publish`` passes ``diam run``'s own start check: the base loads and its embedding size is
    ``DIAM_ONLINE_DIM``; the snapshotter knows no dataflow settings): called with the verified
    checkpoint's directory before anything is written or re-activated, it raises
    :class:`SnapshotError` to refuse it, and the active version does not change.

    ``expect_active`` (a version, or None for none) is the version the caller judged the
    checkpoint against (the retrain service's promotion gate): checked under the store's lock,
    before the re-use of kept weights and again before the commit, against the active
    version as every reader resolves it (:func:`snapshotter.store.resolve_active`: Redis's
    announcement when the store holds it, else the pointer) and against the pointer file
    (:func:`_check_active`: both must name it); another one raises :class:`ActiveMoved` and
    nothing is written or switched, so a checkpoint never replaces a version it was not
    compared with. Without it nothing is checked (an operator's publish).

    Weights already kept as a version (same sha256: a rerun after a killed or half-failed
    publish, the same checkpoint twice) re-activate that version instead of writing a copy,
    so copies never push distinct rollback targets out of the store (``result.reused``).

    The pointer is read before anything is written: a damaged one is refused with
    :class:`SnapshotError` and no version is committed that could never be activated.
    Concurrent publishes and rollbacks of a store run their switch one after the other
    (:meth:`SnapshotStore.locked` around the re-check of kept weights, commit, activation,
    announcement and prune; the index is built outside it): ``previous``, ``version`` and
    the announcement each result reports are what happened, and the last one to finish is
    what disk and Redis hold.
    Redis is updated after the pointer; if it fails the disk pointer has switched already and
    the error says so (``watch`` and ``rollback`` re-sync Redis from the pointer).

    Old versions are pruned last, after the announcement, down to ``cfg.keep``: never the
    new active version, the one active before it (the rollback target), nor any version
    Redis announced before or after the switch (what servers are serving). When Redis cannot
    be read nothing is pruned this time (``result.not_pruned`` says so) rather than guess.
    Without a client (``--no-redis``) Redis is not read: the prune keeps the version this
    store last announced in each namespace (:meth:`SnapshotStore.announcements`, recorded by
    every announcing switch), besides the pointer and the rollback target."""
    import faiss

    from snapshotter.index import build_index, is_exact
    from snapshotter.tuning import served_queries

    store.active_version()  # a damaged pointer is refused before anything is written
    ck = _read(checkpoint)
    if usable is not None:
        usable(ck.path)
    with store.locked(create=True):  # the first publish makes the store
        _check_active(store, redis_client, ns, expect_active)
        reused, damaged = _reuse(store, ck.weights_sha256, redis_client, ns)
    if reused is not None:
        return reused
    cfg: SnapshotConfig = store.cfg
    n_items, dim = ck.item_emb.shape
    queries = None if is_exact(n_items, cfg) else served_queries(redis_client, ns, dim, cfg)
    index, index_info = build_index(ck.item_emb, cfg, queries)
    if index_info["kind"] != "flat":
        log.info("index %s: nprobe %d, recall@50 %.4f on %d queries (%s)",
                 index_info["factory"], index_info["nprobe"], index_info["recall_at_50"],
                 index_info["tuning_queries"], index_info["tuning_queries_source"])
    created = now or datetime.now(UTC)

    staging = store.staging_dir()
    try:
        for name in ck.files:
            shutil.copyfile(ck.path / name, staging / name)
        if ck.item_pop is None:
            pop = _popularity_from_data(ck, Path(data_dir) if data_dir else None)
            if pop is not None:
                np.save(staging / "item_pop.npy", pop, allow_pickle=False)
        tower_info = _content_tower(ck, staging)
        try:
            faiss.write_index(index, str(staging / "items.faiss"))
        except RuntimeError as exc:  # how FAISS says a write failed (a full disk)
            raise StoreIOError(f"snapshot directory {store.root} (settings snapshot.dir, "
                               f"DIAM_SNAPSHOT_DIR): writing items.faiss failed ({exc}); "
                               "nothing was published") from None
        files = {
            f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            for f in sorted(staging.iterdir())
        }
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):  # a full or read-only store (or the checkpoint vanished)
            raise store.io_error(exc, f"staging a copy of {ck.path}",
                                 "nothing was published") from None
        raise
    # From here to the prune, one publish or rollback at a time (the store's lock): another
    # may have committed, activated or pruned while this one built its index, so what is
    # active, which name is free and whether these weights are kept are read again.
    try:
        # the staging directory goes with any failure before its commit, a wait for the lock
        # that ends in a timeout or Ctrl-C included; once committed it no longer exists
        with store.locked():
            # another publish or rollback switched while the index was built
            _check_active(store, redis_client, ns, expect_active)
            # the same weights published meanwhile (a retry racing the first try): as
            # documented, that version is re-activated, not copied
            reused, _ = _reuse(store, ck.weights_sha256, redis_client, ns, damaged)
            if reused is not None:
                shutil.rmtree(staging, ignore_errors=True)
                return reused
            previous = store.active_version()
            suffix = 1
            version = version_name(created, ck.weights_sha256)
            while store.path(version).exists():
                suffix += 1
                version = version_name(created, ck.weights_sha256, suffix)
            manifest = {
                "format": MANIFEST_FORMAT,
                "version": version,
                "created_at": created.isoformat(timespec="microseconds"),
                "source": {"path": str(ck.path.resolve()), "weights_sha256": ck.weights_sha256},
                "model": ck.config.get("model"),
                "config": ck.config,
                "train_metrics": ck.config.get("train_metrics", {}),
                "data": ck.config.get("data", {}),
                "index": index_info,
                "content_tower": tower_info,
                "files": files,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            path = store.commit(staging, version)
            # before the switch: a version once committed is never auto-published again
            store.record_published(ck.weights_sha256, version)
            store.activate(version)  # re-verifies what landed on disk before switching
            announced = _announce(store, redis_client, ns, version)
            pruned, not_pruned = _prune(store, redis_client, ns, announced)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PublishResult(version, path, manifest, previous, pruned, redis_client is not None,
                         not_pruned=not_pruned)


def _reuse(store: SnapshotStore, weights_sha256: str, redis_client: Any | None, ns: str,
           damaged: str | None = None) -> tuple[PublishResult | None, str | None]:
    """Re-activate the version kept from these weights, under the caller's lock; ``(None,
    version)`` when that copy fails verification (a fresh copy is then written; ``damaged``
    passes it over on the second look), ``(None, None)`` when none is kept."""
    kept = store.find_weights(weights_sha256)
    if kept is None or kept == damaged:
        return None, damaged
    previous = store.active_version()
    try:
        man = store.activate(kept)  # verified: a damaged copy raises IntegrityError
    except IntegrityError as exc:
        log.warning("weights already published as %s, but %s; publishing a new copy", kept, exc)
        return None, kept
    assert man is not None
    store.record_published(weights_sha256, kept)  # kept from before the record was
    _announce(store, redis_client, ns, kept)
    return PublishResult(kept, store.path(kept), man,
                         None if previous == kept else previous, [],
                         redis_client is not None, reused=True), None


def _announced(redis_client: Any, ns: str) -> str | None:
    """The version ``diam:{ns}:model:active`` names now (None when unset); raises what the
    client raises when Redis does not answer."""
    from serving_cache.keys import model_active_key

    raw = redis_client.get(model_active_key(ns))
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def _announce(store: SnapshotStore, redis_client: Any | None, ns: str,
              version: str) -> set[str] | None:
    """Set the active version in Redis (when a client is given) and record it in the store
    (:meth:`SnapshotStore.record_announced`); the pointer on disk has switched already, so a
    Redis failure says how to finish the job. Returns the versions Redis
    announced, before the switch (servers follow it until they reload) and after it (another
    store on the same namespace may have announced since), for :func:`_prune` to keep; None
    when either read failed; an empty set without a client."""
    if redis_client is None:
        return set()
    try:
        before: str | None = _announced(redis_client, ns)
    except Exception:  # the set below says whether Redis is down; the prune is skipped
        before = None
        unread = True
    else:
        unread = False
    try:
        set_active_in_redis(redis_client, ns, version)
    except Exception as exc:
        raise SnapshotError(
            f"published {version} on disk, but setting it in Redis failed ({exc}); "
            f"run `diam snapshot rollback {version}` once Redis answers (no old version "
            "was pruned)"
        ) from exc
    store.record_announced(ns, version)  # as announce() does; a Redis failure is said above
    try:
        after = _announced(redis_client, ns)
    except Exception:
        return None
    return None if unread else {v for v in (before, after) if v is not None}


def _prune(store: SnapshotStore, redis_client: Any | None, ns: str,
           announced: set[str] | None) -> tuple[list[str], str | None]:
    """:meth:`SnapshotStore.prune`, keeping what Redis announces; skipped, with the one line
    that says so, when Redis could not be read (a warning): which versions servers follow is
    then unknown, and deleting one would leave them nothing to serve or roll back to.

    With a client, Redis is asked now for every namespace this store recorded announcing in
    (:meth:`SnapshotStore.announcements`) besides ``ns``: what their keys name is kept, and the
    lines of namespaces whose key is gone (``diam drop``) are removed, so their versions go.
    Without a client (``--no-redis``) that record is what is known of Redis, and is kept."""
    if redis_client is None:
        return store.prune(), None
    keep = set(announced or ())
    gone = []
    if announced is not None:
        try:
            for other in sorted(store.announcements().keys() - {ns}):
                now = _announced(redis_client, other)
                if now is None:
                    gone.append(other)
                else:
                    keep.add(now)
        except Exception:
            announced = None
    if announced is None:
        why = (f"not pruning old versions this time: the version diam:{ns}:model:active "
               "announces could not be read from Redis")
        log.warning("%s", why)
        return [], why
    store.forget_announced(gone)
    return store.prune(announced=keep, use_record=False), None


def find_checkpoints(trainer_dir: str | Path) -> list[Path]:
    """Checkpoint directories under ``trainer_dir`` (itself, or its immediate sub-directories),
    newest first by the modification time of their weights. Hidden names are skipped: they are
    writers' temp directories and set-aside old copies (``.NAME.XXXXXXXX``, ``.NAME.old`` of
    ``online_model.checkpoint.write_checkpoint_dir``), never a checkpoint to publish."""
    root = Path(trainer_dir)
    if not root.is_dir():
        return []
    w = "weights.safetensors"
    cands = [root] if (root / w).is_file() else []
    cands += [p for p in root.iterdir()
              if not p.name.startswith(".") and p.is_dir() and (p / w).is_file()]
    return sorted(cands, key=lambda p: (p / w).stat().st_mtime, reverse=True)


@dataclass(frozen=True)
class Skip:
    """Why a :class:`Watcher` tick published nothing. Two skips are equal when the situation is
    the same (``key``: which checkpoints, in which state), whatever the ages in ``reason``, so
    a long-running watch says it once, not on every tick."""

    reason: str = field(compare=False)
    """One line for the operator, e.g. ``nothing to publish: DIR/a is already version X``."""
    key: tuple[tuple[str, str], ...]


class Watcher:
    """One tick of ``diam snapshot watch``: publish the newest settled checkpoint whose weights
    are not already in the store, and re-sync the active version into Redis.

    A checkpoint is identified by the sha256 of its weights, so a rolled-back version is not
    published again on the next tick, nor by another watcher, nor once its version is pruned:
    the store records every weights sha256 it ever published (:data:`snapshotter.store.
    PUBLISHED`), and a checkpoint named there is skipped with a warning; a checkpoint that fails verification is retried only
    when its files change, and older checkpoints are considered meanwhile. The scan stops at
    the first checkpoint already in the store: anything older was published (or passed over)
    before it, and publishing it now would move the model back in time."""

    def __init__(
        self,
        store: SnapshotStore,
        trainer_dir: str | Path,
        redis_client: Any | None = None,
        ns: str = "live",
        data_dir: str | Path | None = None,
        usable: Callable[[Path], None] | None = None,
    ) -> None:
        """``usable`` is :func:`publish`'s: a checkpoint it refuses is logged and passed over
        as one that fails verification is."""
        self.usable = usable
        self.store, self.trainer_dir, self.client, self.ns = (
            store,
            Path(trainer_dir),
            redis_client,
            ns,
        )
        self.data_dir = data_dir
        self._seen: dict[Path, tuple[float, int]] = {}  # checkpoint -> (mtime, size) last tried
        self._failed: set[Path] = set()  # checkpoints whose last try was refused
        self._kept: dict[Path, str] = {}  # checkpoint -> why it is not published (the skip's words)
        self._by_sha: tuple[tuple[str, ...], dict[str, str]] | None = None  # this tick's
        self._published_now: dict[str, str] | None = None  # this tick's
        self.last_skip: Skip | None = None
        """Why the last tick published nothing (None after a publish, or a tick that could not
        look: a damaged active pointer, logged as an error)."""

    def _versions_by_sha(self) -> dict[str, str]:
        """The kept versions by the sha256 of their weights (the newest of each), read once
        per tick: every manifest is parsed, and a tick may look up several checkpoints. A
        version is immutable once committed (a directory renamed into place), so the map
        changes only when the store's entries do: a publish in the tick that committed its
        version and then failed (Redis) is seen by the next lookup."""
        root = self.store.root
        entries = tuple(sorted(p.name for p in root.iterdir())) if root.is_dir() else ()
        if self._by_sha is None or self._by_sha[0] != entries:
            self._by_sha = (entries, {str(s.source.get("weights_sha256")): s.version
                                      for s in self.store.versions()})
        return self._by_sha[1]

    def _published(self) -> dict[str, str]:
        """:meth:`SnapshotStore.published`, read at most once per tick."""
        if self._published_now is None:
            self._published_now = self.store.published()
        return self._published_now

    def tick(self, now_epoch: float) -> PublishResult | None:
        """Publish the newest settled checkpoint not already kept; None when nothing was
        (:attr:`last_skip` says why)."""
        result = None
        self.last_skip = None
        self._by_sha = None  # another process may have published or pruned since
        self._published_now = None
        try:
            self.store.active_version()
        except SnapshotError as exc:  # not the checkpoints' fault: retry them once repaired
            log.error("not publishing: %s", exc)
            return None
        settling: tuple[Path, float] | None = None  # the newest checkpoint still being written
        refused: list[Path] = []
        kept: tuple[Path, str] | None = None  # where the scan stopped: weights already kept
        busy = ""  # why a publish was put off to the next tick (the lock, the store's disk)
        checkpoints = find_checkpoints(self.trainer_dir)
        for ck in checkpoints:
            newest = max(f.stat().st_mtime for f in ck.iterdir() if f.is_file())
            if now_epoch - newest < self.store.cfg.settle_s:
                settling = settling or (ck, now_epoch - newest)
                continue  # still being written; look again next tick
            weights = ck / "weights.safetensors"
            stamp = (weights.stat().st_mtime, weights.stat().st_size)
            if self._seen.get(ck) == stamp:
                if ck in self._failed:
                    refused.append(ck)
                    continue  # refused as it is: an older one may do
                kept = (ck, self._kept.get(ck, "is already handled"))
                break  # newest settled checkpoint unchanged since we handled it
            self._seen[ck] = stamp
            sha = sha256_file(weights)
            version = self._versions_by_sha().get(sha)
            said: str | None  # why it is not published, when it is not
            if version is None and (gone := self._published().get(sha)) is not None:
                # published before and pruned since: newer versions replaced it, or an
                # operator backed it out; published again it would undo that, ungated
                log.warning("not publishing %s: its weights were published as %s, pruned "
                            "since (%s); a watch never publishes them again (`diam snapshot "
                            "publish %s` does, deliberately)", ck, gone, PUBLISHED, ck)
                said = f"was published as {gone}, pruned since: a watch never publishes it again"
            else:
                said = None if version is None else f"is already version {version}"
            if said is not None:
                self._failed.discard(ck)
                self._kept[ck] = said
                kept = (ck, said)
                break
            try:
                result = publish(ck, self.store, self.client, self.ns, self.data_dir,
                                 usable=self.usable)
            except (LockTimeout, StoreIOError) as exc:  # not the checkpoint's fault: the
                # next tick tries again (the lock held, a full or read-only store)
                log.warning("not publishing %s this tick: %s", ck, exc)
                del self._seen[ck]
                kept = None
                busy = ("another publish/rollback held the store's lock (logged)"
                        if isinstance(exc, LockTimeout) else
                        f"{self.store.root} could not be written (logged)")
                break
            except Exception as exc:  # a bad checkpoint must not stop the watch loop
                log.error("not publishing %s: %s", ck, exc)
                self._failed.add(ck)
                refused.append(ck)
                continue
            self._failed.discard(ck)
            self._kept[ck] = f"is already version {result.version}"
            break
        if result is None:
            self.last_skip = self._skip(checkpoints, settling, refused, kept, busy)
        self._sync_redis()
        return result

    def _skip(self, checkpoints: list[Path], settling: tuple[Path, float] | None,
              refused: list[Path], kept: tuple[Path, str] | None, busy: str = "") -> Skip:
        """The :class:`Skip` of a tick that published nothing, from what its scan found."""
        if not checkpoints:
            gone = "" if self.trainer_dir.is_dir() else " (it does not exist)"
            return Skip(f"nothing to publish: no checkpoint in {self.trainer_dir}{gone}",
                        (("none", str(self.trainer_dir)),))
        parts: list[str] = []
        key: list[tuple[str, str]] = []
        if kept is not None:
            parts.append(f"{kept[0]} {kept[1]}")
            key.append(("kept", str(kept[0])))
        if refused:
            parts.append(f"{', '.join(map(str, refused))} refused (logged)")
            key += [("refused", str(ck)) for ck in refused]
        if settling is not None:
            parts.append(f"{settling[0]} still settling ({settling[1]:.0f} s old, settle_s "
                         f"{self.store.cfg.settle_s:g})")
            key.append(("settling", str(settling[0])))
        if not parts:  # the scan stopped at a publish put off to the next tick
            parts.append(busy or "another publish/rollback held the store's lock (logged)")
            key.append(("busy", busy))
        return Skip("nothing to publish: " + "; ".join(parts), tuple(key))

    def _sync_redis(self) -> None:
        """Make Redis name the pointer's version (after a Redis restart, say), by the one rule
        the retrain service follows too (:func:`snapshotter.sync.sync_active`, under the
        store's lock). A damaged pointer or a Redis that does not answer is logged, never
        raised: the next tick tries again."""
        if self.client is None:
            return
        try:
            sync_active(self.store, self.client, self.ns)
        except SnapshotError as exc:  # a damaged pointer: announce nothing rather than garbage
            log.error("not syncing the active version into Redis: %s", exc)
        except Exception as exc:  # Redis away: the pointer on disk still tells the truth
            log.warning("could not sync the active version into Redis: %s", exc)
