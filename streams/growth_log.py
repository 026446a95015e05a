"""The order in which a run's item tables took their new items: one owner, durable with the
recovery store.

A user's state holds rows of the base's item table (recent items, seen items), not item ids.
New items (the catalogue, the click-first rule) are appended to a version's table
(``BaseView.with_items``) at the start in item id order and then in the order the reload checks
find them, which depends on timing. A table rebuilt another way -- a restart on the same
recovery store, a rollback to a version the run served before -- put other items at those rows,
and a user still recorded under that version read them (``OnlineLearner.apply`` re-anchors on a
new version only). :class:`GrowthLog` keeps, per version, every growth of its table (the items
as embedded, in order); every rebuild of a version's table replays them first
(:meth:`GrowthLog.replay`), then appends what is new, and records that.

With a recovery store (``streams.runner.OnlineJob.growth``) the log is the file
``diam-growth-<process>.jsonl`` in it, one per process of a Bytewax cluster (each process has
its own holder, and its own order; a user's state stays in one process while the cluster keeps
its shape, which the file's first line records: a file of another shape is refused when the
store holds state, ``held``; else nothing in it is tied to a process and :meth:`open` rewrites
the line). A growth is written, flushed and fsynced
before the grown base is swapped in, so a snapshot whose state names a row finds that row's
item in the log. The holder reads the file when it starts, before the run holds the store:
nothing is written until :meth:`GrowthLog.open`, called once the store is held and the run
refused nothing (``streams.runner.PreparedRun.claim_store``: a run refused on a store in use,
or at its checks, writes nothing), which refuses a file that changed since it was read,
and rewrites the file (atomically) with the growths of the versions still needed only
(:meth:`keep_only`: those a rollback can reach; the others' rows can never be read again), so
the file and the memory stay the size of what the snapshot store keeps. A growth whose write
failed is kept nowhere, and the log says so (:attr:`GrowthLog.failed`): its run stops.
Without a store the log lives in memory, for the run's rollbacks; a restart starts over (its
state does too).

>>> from streams.catalog import CatalogItem
>>> g = GrowthLog()
>>> g.record("v1", [CatalogItem("b", (), "", 0), CatalogItem("a", ("c1",), "t", 5)])
>>> [[it.item_id for it in batch] for batch in g.batches("v1")], g.batches("v2")
([['b', 'a']], [])
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from streams.catalog import CatalogItem

__all__ = ["GROWTH_LOG", "GrowthLog", "GrowthLogError"]

GROWTH_LOG = "diam-growth-{process}.jsonl"
"""The growth log's file in a recovery store, per process of the dataflow."""


class GrowthLogError(ValueError):
    """The growth log cannot be read or written; says which file and why, and what to do."""


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def _record(version: str, items: Sequence[CatalogItem]) -> bytes:
    """The one form of a growth's line."""
    return _line({"version": version,
                  "items": [[it.item_id, list(it.categories), it.title, int(it.first_seen)]
                            for it in items]})


class GrowthLog:
    """Every growth of every version's item table, in order: ``batches(version)``. ``path``:
    the file (None: in memory only); ``shape``: ``(processes, workers per process)`` of the run,
    recorded in a new file and compared with an existing one's when ``held()`` says the store
    holds state (None: always compared)."""

    def __init__(self, path: Path | None = None, shape: tuple[int, int] = (1, 1),
                 held: Callable[[], bool] | None = None) -> None:
        self.path = path
        self.shape = shape
        self._held = held
        self._keep: Callable[[], Collection[str]] | None = None
        self.failed: GrowthLogError | None = None
        """The error of the write that failed (a growth then not swapped in; the run stops)."""
        self._batches: dict[str, list[tuple[CatalogItem, ...]]] = {}
        self._read: bytes | None = None  # the file as read (None: not read yet)
        self._fd: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def in_store(cls, recovery_dir: Path, process_id: int = 0,
                 shape: tuple[int, int] = (1, 1),
                 held: Callable[[], bool] | None = None) -> GrowthLog:
        """The log of process ``process_id`` in the recovery store ``recovery_dir``."""
        return cls(Path(recovery_dir) / GROWTH_LOG.format(process=process_id), shape, held)

    def keep_only(self, versions: Callable[[], Collection[str]]) -> None:
        """At :meth:`open`, drop the growths of every version not in ``versions()`` (asked
        then: the snapshot store's versions and the one served, ``diam.app``)."""
        self._keep = versions

    def batches(self, version: str) -> list[tuple[CatalogItem, ...]]:
        """The growths of ``version``'s table, oldest first, each its items as embedded."""
        with self._lock:
            self._load()
            return list(self._batches.get(version, ()))

    def replay(self, base: Any, tower: Any) -> Any:
        """``base`` (a version's table as its snapshot has it) with the logged growths of its
        version appended, one ``extend_base`` per growth as the run did them (the same rows
        and the same embeddings, bit for bit)."""
        from streams.new_items import extend_base

        for batch in self.batches(base.version):
            base = extend_base(base, batch, tower)
        return base

    def record(self, version: str, items: Sequence[CatalogItem]) -> None:
        """Log one growth of ``version``'s table (``items`` in the order embedded). Once the log
        is open it is on disk (written, flushed, fsynced) when this returns; before, it is kept
        for :meth:`open`. Raises :class:`GrowthLogError` when the file cannot be written (and
        keeps it in :attr:`failed`; the growth is not logged: do not swap it in)."""
        if not items:
            return
        line = _record(version, items)
        with self._lock:
            self._load()
            if self._fd is not None:  # else kept in memory (written by open, when it comes)
                try:
                    self._write(line)
                except GrowthLogError as exc:
                    self.failed = exc
                    raise
            self._batches.setdefault(version, []).append(tuple(items))

    def open(self) -> None:
        """Start writing (the run holds the recovery store now): the file is replaced (temp,
        fsync, rename) by this run's shape, the growths of the versions :meth:`keep_only`
        keeps (all without it) and those recorded so far; a torn last line (a crash within a
        write, never swapped in) is left out. Raises :class:`GrowthLogError` when the file
        changed since the holder read it (another run wrote it meanwhile: start again) or
        cannot be written."""
        if self.path is None or self._fd is not None:
            return
        with self._lock:
            self._load()
            now = self._file_bytes()
            if now != self._read:
                raise GrowthLogError(
                    f"{self.path} changed while this run started (another run on the store "
                    "wrote it after this one read it): start this run again")
            if self._keep is not None:
                kept = set(self._keep())
                self._batches = {v: b for v, b in self._batches.items() if v in kept}
            body = b"".join(_record(v, batch) for v, batches in self._batches.items()
                            for batch in batches)  # the pending ones among them, in order
            head = _line({"log": "diam-growth", "processes": self.shape[0],
                          "workers": self.shape[1]})
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    self._fd = fd
                    self._write(head + body)
                    os.replace(tmp, self.path)
                except BaseException:
                    self._fd = None
                    os.close(fd)
                    tmp.unlink(missing_ok=True)
                    raise
                dfd = os.open(self.path.parent, os.O_RDONLY)  # the rename is durable too
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError as exc:
                raise GrowthLogError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Stop writing (what was recorded is on disk); later growths stay in memory."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            raise GrowthLogError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def _file_bytes(self) -> bytes:
        """The log file's bytes, empty when there is none; :class:`GrowthLogError` when it
        cannot be read."""
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise GrowthLogError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def _load(self) -> None:
        if self._read is not None:
            return
        if self.path is None:
            self._read = b""
            return
        data = self._file_bytes()
        lines = data.split(b"\n")[:-1]  # the piece after the last newline: a torn write
        for n, raw in enumerate(lines, 1):
            try:
                rec = json.loads(raw)
                if n == 1:
                    self._check_shape(rec)
                    continue
                batch = tuple(CatalogItem(str(i), tuple(map(str, c)), str(t), int(f))
                              for i, c, t, f in rec["items"])
                self._batches.setdefault(str(rec["version"]), []).append(batch)
            except GrowthLogError:
                raise
            except (ValueError, KeyError, TypeError) as exc:
                raise GrowthLogError(
                    f"{self.path}, line {n}, is not a growth record ({exc}): the order of the "
                    "new items the store's state refers to is lost; start over with a fresh "
                    "recovery store (--recovery-dir) and namespace") from None
        self._read = data

    def _check_shape(self, head: dict[str, Any]) -> None:
        if head.get("log") != "diam-growth":
            raise ValueError("no header")
        was = (int(head["processes"]), int(head["workers"]))
        if was[0] == self.shape[0] == 1 or was == self.shape:
            return
        if self._held is not None and not self._held():  # no user's state is in a process yet
            return
        raise GrowthLogError(
            f"{self.path} was written by a run of {was[0]} process(es) x {was[1]} worker(s), "
            f"this one is {self.shape[0]} x {self.shape[1]}: users' states would move to "
            "processes whose tables took their new items in another order; keep the shape, or "
            "start over with a fresh recovery store (--recovery-dir) and namespace")
