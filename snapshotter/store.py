"""Versioned snapshot store on disk: ``<root>/<version>/`` directories and the ``ACTIVE`` pointer.

Writes never go backwards half-way: a snapshot is staged in a hidden directory and renamed into
place whole; the pointer file is written to a temporary file and switched with ``os.replace``
(atomic on POSIX), so a reader sees the old version or the new one, never a torn one. A version
becomes active only after every file's sha256 matches its manifest and its FAISS index agrees
with its item table. Each switch is recorded in ``ACTIVE.history`` (written the same way), so a
bare rollback returns to the version that was active before, not merely the one created before.

>>> import tempfile
>>> store = SnapshotStore(SnapshotConfig(dir=tempfile.mkdtemp()))
>>> store.active_version() is None
True
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from snapshotter.config import SnapshotConfig

__all__ = [
    "SnapshotStore",
    "SnapshotError",
    "IntegrityError",
    "LockTimeout",
    "LockWaitInterrupted",
    "RetrainLocked",
    "StoreIOError",
    "SnapshotInfo",
    "ActiveWatcher",
    "resolve_active",
    "sha256_file",
    "validate_version",
    "version_name",
    "is_published_name",
    "is_version_name",
    "POINTER",
    "LOCK",
    "RETRAIN_LOCK",
    "HISTORY",
    "ANNOUNCED",
    "PUBLISHED",
    "MANIFEST",
]

log = logging.getLogger(__name__)

POINTER = "ACTIVE"
HISTORY = "ACTIVE.history"
"""One line per activation, ``<ISO time> <version>``, oldest first: what a bare rollback returns
to is the version active before the current one, which need not be the one created before it."""
HISTORY_KEEP = 200
ANNOUNCED = "ANNOUNCED"
"""The version this store last announced in Redis (``diam:<ns>:model:active``), one line per
namespace, ``<ns> <version>``, sorted by namespace. Written whole (:meth:`SnapshotStore.
record_announced`, its one writer) by every switch that sets the key: a publish or rollback
with Redis, and the re-sync of ``diam snapshot watch`` and the retrain service, each under the
store's lock. A prune keeps these versions: servers may follow one whatever the pointer says,
and a publish without Redis (``--no-redis``) cannot ask Redis which one it announces."""
PUBLISHED = "PUBLISHED"
"""Every weights sha256 this store ever published, one line each, ``<sha256> <version>`` (the
first version made from them), oldest first; never pruned, so it outlives the versions. Written
whole (:meth:`SnapshotStore.record_published`, its one writer) by every publish under the
store's lock. ``diam snapshot watch`` never publishes on its own weights named here: a
checkpoint whose version was pruned is older than what replaced it, and publishing it again
would undo a rollback and skip every gate (an operator's ``diam snapshot publish`` still
may)."""
LOCK = ".lock"
"""The store's lock file (:meth:`SnapshotStore.locked`); hidden, so never a version. While held
it reads ``<pid> <ISO time taken>``, so a waiter can name the holder."""
RETRAIN_LOCK = ".retrain.lock"
"""The store's retrain lock (:meth:`SnapshotStore.retrain_lock`), apart from :data:`LOCK`: held
for a whole retrain (a service for its lifetime), which trains for minutes, while
:data:`LOCK` is held for a switch. Written as :data:`LOCK` is while held."""
LOCK_POLL_S = 0.1
"""How often a waiter tries the held lock again (a non-blocking ``flock``: the wait can then
end at a timeout or a signal)."""
MANIFEST = "manifest.json"
STALE_S = 3600.0
"""Age after which a prune removes what a killed publish or activation left (staging directories,
pointer temp files): old enough that no live writer still owns it."""
_PUBLISHED_RE = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}(?:-[1-9]\d{0,5})?")
"""The names a publish gives (:func:`version_name`): only these are ever pruned."""
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""What may name a version at all: one path component, not hidden (no ``/``, no leading
``.`` so never ``..`` or the store's own files, no spaces or control characters)."""


class SnapshotError(Exception):
    """A snapshot or checkpoint cannot be used; the message says why and what to do."""


class LockTimeout(SnapshotError):
    """The store's lock was still held at ``snapshot.lock_timeout_s``; says by whom. Nothing
    was changed."""


class RetrainLocked(SnapshotError):
    """Another retrain holds the store's retrain lock (:meth:`SnapshotStore.retrain_lock`);
    says by whom. Nothing was trained."""


class LockWaitInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended a wait for the store's lock: nothing was changed. A
    ``KeyboardInterrupt``, so a loop that stops on Ctrl-C (``diam snapshot watch``) still stops,
    and ``except Exception`` never swallows it; ``signum`` says which signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StoreIOError(SnapshotError):
    """The store's directory could not be written or read (full, read-only, a file where a
    directory should be): :meth:`SnapshotStore.io_error` says which setting, what failed and
    the errno. Not the checkpoint's fault: a watch tries it again next tick."""


class IntegrityError(SnapshotError):
    """A file of a snapshot does not match the sha256 (or size) its manifest records."""

    def __init__(self, version: str, file: str, reason: str) -> None:
        super().__init__(f"snapshot {version}: {file}: {reason}; refusing it")
        self.version = version
        self.file = file


def version_name(created: datetime, weights_sha256: str, n: int = 1) -> str:
    """The version of weights published at ``created``: ``<UTC second>-<sha256[:8]>``, with
    ``-<n>`` for the n-th of the same second and weights. The one writer of the format that
    :func:`is_published_name` reads.

    >>> version_name(datetime(2026, 12, 6, 11, 50, 42), "ad579c08ffff")
    '20261206T115042-ad579c08'
    >>> version_name(datetime(2026, 12, 6, 11, 50, 42), "ad579c08ffff", 2)
    '20261206T115042-ad579c08-2'
    """
    base = f"{created:%Y%m%dT%H%M%S}-{weights_sha256[:8]}"
    return base if n == 1 else f"{base}-{n}"


def is_published_name(name: str) -> bool:
    """Whether ``name`` is one a publish gives (:func:`version_name`). Such a directory is a
    version even when its manifest is damaged (listed BROKEN), and only such versions are
    pruned: a version renamed by hand (``golden``) is a deliberate pin.

    >>> is_published_name("20261206T115042-ad579c08"), is_published_name("golden")
    (True, False)
    """
    return _PUBLISHED_RE.fullmatch(name) is not None


def is_version_name(name: str) -> bool:
    """Whether ``name`` may name a version: letters, digits and ``_.-``, starting with a
    letter or a digit, at most 64 characters; so a single path component that is not hidden.
    A directory of that name is a version when a publish named it or it holds a manifest
    (:meth:`SnapshotStore.why_not_version`).

    >>> [is_version_name(n) for n in ("20261206T115042-ad579c08", "golden", "../x", ".lock")]
    [True, True, False, False]
    """
    return _NAME_RE.fullmatch(name) is not None


def validate_version(version: str) -> str:
    """Return ``version`` or raise: what a command is given as a version must be a name that
    may name one (:func:`is_version_name`), so a path (``../x``, ``a/b``) or a name with
    control characters is refused before the store is looked at, whether it exists or not.

    >>> validate_version("20240101T000000-ab12cd34"), validate_version("golden")
    ('20240101T000000-ab12cd34', 'golden')
    """
    if not is_version_name(version):
        raise SnapshotError(f"{version[:80]!r} is not a snapshot version (a name of letters, "
                            "digits and '_.-', e.g. 20261206T115042-ad579c08)")
    return version


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (read in chunks: snapshots can be hundreds of MB)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SnapshotInfo:
    """One version on disk, as ``list`` shows it."""

    version: str
    path: Path
    created_at: str
    manifest: dict[str, Any] | None
    """None when the manifest is missing or unreadable (a broken snapshot)."""

    @property
    def source(self) -> dict[str, Any]:
        """What the version was published from (manifest ``source``: the checkpoint's path and
        ``weights_sha256``); empty for a broken or older snapshot."""
        src = (self.manifest or {}).get("source")
        return src if isinstance(src, dict) else {}


class SnapshotStore:
    """The snapshot directory tree of ``cfg.dir``."""

    def __init__(self, cfg: SnapshotConfig,
                 on_wait: Callable[[str], None] | None = None) -> None:
        """``on_wait`` is told, in one line, when :meth:`locked` finds the lock held and
        starts waiting (default: a warning logged); a command passes its stderr."""
        self.cfg = cfg
        self.root = Path(cfg.dir)
        self.on_wait = on_wait or (lambda line: log.warning("%s", line))

    # -- reading ---------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        return self.root / validate_version(version)

    def active_version(self) -> str | None:
        """The version the pointer names, or None before the first publish (no pointer, or an
        empty one: :meth:`no_active_reason` says which).

        The one reader of the pointer: raises :class:`SnapshotError` naming the file when it
        holds undecodable bytes, something that is not a version name, or a version that is
        not in the store (`diam snapshot rollback VERSION` repairs it)."""
        pointer = self.root / POINTER
        try:
            raw = pointer.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a file where the root should be, a directory named ACTIVE
            raise self.io_error(exc, f"reading {POINTER}", "nothing was changed") from None
        try:
            text = raw.decode().strip()
        except UnicodeDecodeError:
            raise SnapshotError(
                f"{pointer}: holds undecodable bytes, not a version name; "
                f"`diam snapshot rollback VERSION` repairs it") from None
        if not text:
            return None
        if not is_version_name(text):
            raise SnapshotError(
                f"{pointer}: names {text[:80]!r}, not a snapshot version; "
                f"`diam snapshot rollback VERSION` repairs it")
        if (why := self.why_not_version(text)) is not None:
            raise SnapshotError(
                f"{pointer}: names {text}, not a version in {self.root} ({why}); "
                f"`diam snapshot rollback VERSION` repairs it")
        return text

    def why_not_version(self, name: str) -> str | None:
        """None when ``<root>/<name>`` is a version, else why not, in a few words. The one
        rule of what is a version, which listing, the pointer, rollback, Redis's announcement
        and every server follow: a directory with a name that may name a version
        (:func:`is_version_name`) that a publish named (:func:`is_published_name`; a damaged
        one is a BROKEN version) or that holds a manifest (one renamed or copied by hand:
        ``golden``). Any other directory is a stray: listed as not a version, never activated,
        served or pruned.

        >>> import tempfile
        >>> store = SnapshotStore(SnapshotConfig(dir=tempfile.mkdtemp()))
        >>> (store.root / "notes").mkdir()
        >>> store.why_not_version("notes"), store.why_not_version("../x")
        ('no manifest.json', 'not a version name')
        """
        if not is_version_name(name):
            return "not a version name"
        path = self.root / name
        if not path.is_dir():
            return "no such directory"
        if is_published_name(name) or (path / MANIFEST).is_file():
            return None
        return f"no {MANIFEST}"

    def require_version(self, version: str) -> Path:
        """The directory of ``version`` when it is a version (:meth:`why_not_version`), else
        :class:`SnapshotError` saying why and naming the versions kept: what every command
        that is given a version (``diam replay --snapshot``, ``diam snapshot rollback``) says
        of a stray, an absent one or a name that could be a path, before it uses it.

        >>> import tempfile
        >>> store = SnapshotStore(SnapshotConfig(dir=tempfile.mkdtemp()))
        >>> (store.root / "notes").mkdir()
        >>> try:
        ...     store.require_version("notes")
        ... except SnapshotError as exc:
        ...     print(str(exc).replace(str(store.root), "ROOT"))
        no snapshot notes in ROOT (no manifest.json; versions: none)
        """
        validate_version(version)
        why = self.why_not_version(version)
        if why is not None:
            known = ", ".join(i.version for i in self.versions()) or "none"
            raise SnapshotError(f"no snapshot {version} in {self.root} ({why}; versions: {known})")
        return self.root / version

    def no_active_reason(self) -> str:
        """Why :meth:`active_version` is None, for messages: no pointer file, or an empty one."""
        pointer = self.root / POINTER
        if pointer.is_file():
            return f"no active snapshot ({pointer} is empty)"
        return f"no active snapshot in {self.root}"

    def active(self) -> Path | None:
        """Directory of the active version, or None."""
        version = self.active_version()
        return None if version is None else self.path(version)

    def activations(self) -> list[tuple[str, str]]:
        """``(ISO time, version)`` of each recorded activation, oldest first (the last
        :data:`HISTORY_KEEP`). Lines that do not parse are skipped: the history only steers a
        bare rollback, it never decides what is served."""
        try:
            text = (self.root / HISTORY).read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            at, _, version = line.strip().partition(" ")
            if at and is_version_name(version):
                out.append((at, version))
        return out

    def announcements(self) -> dict[str, str]:
        """``{namespace: version}`` this store last announced in Redis (:data:`ANNOUNCED`);
        empty when it never announced one (only ``--no-redis`` publishes, or a store from
        before the record was kept). Lines that do not parse are skipped.

        >>> import tempfile
        >>> store = SnapshotStore(SnapshotConfig(dir=tempfile.mkdtemp()))
        >>> store.announcements()
        {}
        >>> store.record_announced("live", "20261206T115042-ad579c08")
        >>> store.record_announced("shadow", "golden")
        >>> store.announcements()
        {'live': '20261206T115042-ad579c08', 'shadow': 'golden'}
        """
        try:
            text = (self.root / ANNOUNCED).read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return {}
        out = {}
        for line in text.splitlines():
            ns, _, version = line.strip().partition(" ")
            if ns and is_version_name(version):
                out[ns] = version
        return out

    def record_announced(self, ns: str, version: str) -> None:
        """Record that Redis's ``diam:<ns>:model:active`` was set to ``version`` from this
        store (:data:`ANNOUNCED`, written whole; nothing written when it already says so).
        The caller holds :meth:`locked` and has just set the key
        (``snapshotter.publish.announce``)."""
        have = self.announcements()
        if have.get(ns) == version:
            return
        have[ns] = version
        self._write_announced(have)

    def forget_announced(self, namespaces: Collection[str]) -> None:
        """Remove the lines of ``namespaces`` from :data:`ANNOUNCED` (their
        ``diam:<ns>:model:active`` is gone: ``diam drop``, or a prune with Redis found it unset),
        so a prune no longer keeps their versions. The caller holds :meth:`locked`.

        >>> import tempfile
        >>> store = SnapshotStore(SnapshotConfig(dir=tempfile.mkdtemp()))
        >>> store.record_announced("live", "20261206T115042-ad579c08")
        >>> store.record_announced("shadow", "golden")
        >>> store.forget_announced(["shadow", "other"])
        >>> store.announcements()
        {'live': '20261206T115042-ad579c08'}
        """
        have = self.announcements()
        gone = set(namespaces) & have.keys()
        if gone:
            self._write_announced({n: v for n, v in have.items() if n not in gone})

    def published(self) -> dict[str, str]:
        """``{weights sha256: version}`` of every publish this store recorded
        (:data:`PUBLISHED`); empty for a new store. Lines that do not parse are skipped.

        >>> import tempfile
        >>> store = SnapshotStore(SnapshotConfig(dir=tempfile.mkdtemp()))
        >>> store.record_published("ad579c08" * 8, "20261206T115042-ad579c08")
        >>> store.published() == {"ad579c08" * 8: "20261206T115042-ad579c08"}
        True
        """
        out: dict[str, str] = {}
        try:
            text = (self.root / PUBLISHED).read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            sha, _, version = line.strip().partition(" ")
            if re.fullmatch(r"[0-9a-f]{64}", sha) and is_version_name(version):
                out.setdefault(sha, version)
        return out

    def record_published(self, weights_sha256: str, version: str) -> None:
        """Record that ``version`` was published from weights ``weights_sha256``
        (:data:`PUBLISHED`; nothing written when they are recorded already). The first
        record of a store from before it was kept starts with the weights of the versions it
        keeps. The caller holds :meth:`locked` (a publish, right after its commit)."""
        path = self.root / PUBLISHED
        try:
            text = path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            text = "".join(f"{sha} {i.version}\n" for i in self.versions()
                           if isinstance(sha := i.source.get("weights_sha256"), str)
                           and i.version != version)
        if any(line.split(" ", 1)[0] == weights_sha256 for line in text.splitlines()):
            return
        if text and not text.endswith("\n"):
            text += "\n"
        self._replace(PUBLISHED, f"{text}{weights_sha256} {version}\n")

    def _write_announced(self, have: Mapping[str, str]) -> None:
        self._replace(ANNOUNCED, "".join(f"{n} {v}\n" for n, v in sorted(have.items())))

    def manifest(self, version: str) -> dict[str, Any]:
        """The parsed manifest of ``version`` (JSON, never pickle)."""
        path = self.path(version) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            if not path.parent.is_dir():
                raise SnapshotError(f"snapshot {version}: no such version in {self.root}") from exc
            raise SnapshotError(f"snapshot {version}: no {MANIFEST} (not a snapshot?)") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(version, MANIFEST, f"not valid JSON ({exc})") from exc
        except OSError as exc:  # unreadable (permissions, I/O error)
            raise IntegrityError(version, MANIFEST, f"cannot be read ({exc.strerror or exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise IntegrityError(version, MANIFEST, "has no 'files' table")
        return data

    def versions(self) -> list[SnapshotInfo]:
        """Every version on disk (:meth:`why_not_version`), oldest first (by the manifest's
        created_at); :meth:`strays` lists the other directories."""
        out: list[SnapshotInfo] = []
        if not self.root.is_dir():
            return out
        for child in self.root.iterdir():
            if self.why_not_version(child.name) is not None:
                continue
            try:
                man: dict[str, Any] | None = self.manifest(child.name)
            except SnapshotError:
                man = None
            created = str(man.get("created_at", "")) if man else ""
            out.append(SnapshotInfo(child.name, child, created, man))
        out.sort(key=lambda s: (s.created_at, s.version))
        return out

    def strays(self) -> list[tuple[str, str]]:
        """``(name, why)`` of each directory in the store that is not a version
        (:meth:`why_not_version`: e.g. one made by hand without a manifest), sorted by name:
        listed as such, never activated, served or pruned. Hidden names (a publish's staging
        directory, the lock) are the store's own."""
        if not self.root.is_dir():
            return []
        out = []
        for child in self.root.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue
            why = self.why_not_version(child.name)
            if why is not None:
                out.append((child.name, why))
        return sorted(out)

    def verify(self, version: str, check_index: bool = True) -> dict[str, Any]:
        """Check every file listed in the manifest (size, then sha256), and that the FAISS
        index agrees with the items (:meth:`_check_index`; ``check_index=False`` for a caller
        that loads the index next, which applies the same rule: the index is then read once);
        return the manifest.

        Raises :class:`IntegrityError` naming the first file that fails."""
        man = self.manifest(version)
        base = self.path(version)
        for name, meta in sorted(man["files"].items()):
            if "/" in name or name in (".", ".."):
                raise IntegrityError(version, name, "file name escapes the snapshot directory")
            path = base / name
            if not path.is_file():
                raise IntegrityError(version, name, "missing")
            size = path.stat().st_size
            if size != meta.get("bytes"):
                raise IntegrityError(
                    version, name, f"size {size} != {meta.get('bytes')} (truncated?)"
                )
            try:
                digest = sha256_file(path)
            except OSError as exc:  # unreadable (permissions, I/O error): one line, not a traceback
                raise IntegrityError(version, name, f"cannot be read ({exc.strerror or exc})") from None
            if digest != meta.get("sha256"):
                raise IntegrityError(
                    version,
                    name,
                    f"sha256 {digest[:12]}… != manifest {str(meta.get('sha256'))[:12]}…",
                )
        if check_index and "items.faiss" in man["files"]:
            self._check_index(version, base)
        return man

    @staticmethod
    def _check_index(version: str, base: Path) -> None:
        """The FAISS index agrees with the item table and the embedding size (the hashes cannot
        tell: a snapshot assembled from two publishes re-hashes fine). The rule serving
        applies when it loads the index (``serving_cache.retrieval``), checked here so that
        ``list --verify``, rollback and every watcher refuse such a snapshot up front."""
        import faiss
        from safetensors import safe_open

        try:
            n_ids = int(np.load(base / "item_ids.npy", mmap_mode="r", allow_pickle=False).shape[0])
        except (OSError, ValueError) as exc:
            raise IntegrityError(version, "item_ids.npy", f"cannot be read ({exc})") from None
        try:
            with safe_open(str(base / "weights.safetensors"), framework="numpy") as fh:
                shape = fh.get_slice("online.item_emb").get_shape() if (
                    "online.item_emb" in fh.keys()) else None
        except Exception as exc:  # safetensors raises its own error type for a bad header
            raise IntegrityError(version, "weights.safetensors",
                                 f"cannot be read ({exc})") from None
        try:
            index = faiss.read_index(str(base / "items.faiss"))
        except RuntimeError as exc:
            raise IntegrityError(version, "items.faiss", f"cannot be read ({exc})") from None
        dim = int(shape[1]) if shape is not None else index.d
        if index.ntotal != n_ids or index.d != dim:
            raise IntegrityError(
                version, "items.faiss",
                f"index holds {index.ntotal}x{index.d}, items are ({n_ids}, {dim}) "
                "(item_ids.npy, weights.safetensors)")

    def require_root(self) -> None:
        """Raise :class:`SnapshotError` naming :attr:`root` when it is not an existing
        directory. What needs a store that was published to (a rollback, a re-sync of Redis)
        calls it before it locks: a mistyped ``DIAM_SNAPSHOT_DIR`` is refused, not answered
        with a fresh empty store made on the spot."""
        if self.root.is_dir():
            return
        what = "is not a directory" if self.root.exists() else "does not exist"
        raise SnapshotError(f"snapshot directory {self.root} {what} (settings snapshot.dir, "
                            "DIAM_SNAPSHOT_DIR); nothing was published there")

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def locked(self, create: bool = False) -> Iterator[None]:
        """Hold the store's lock: an exclusive ``flock`` on ``<root>/.lock``, waited for.
        A root that does not exist is created with ``create`` (a first publish), refused
        otherwise (:meth:`require_root`).

        When another holds it, ``on_wait`` is told once who (pid and since when, which each
        holder writes into the file) and the wait goes on, polling, until the holder ends; at
        ``cfg.lock_timeout_s`` (None: no limit) it raises :class:`LockTimeout` naming the
        holder. Ctrl-C, or SIGTERM where nobody else handles it, ends the wait with
        :class:`LockWaitInterrupted`; either way nothing was changed.

        Every switch of the active version holds it around its read-modify-write of the
        pointer, the history and Redis's announcement (publish from its re-check of kept
        weights to its prune, rollback, the watcher's re-sync), so concurrent publishes and
        rollbacks, from threads or processes, run one after the other and each reports what
        it did. The kernel drops the lock when its holder dies, so a killed publish never
        wedges the store. Not re-entrant: a holder must not take it again."""
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                if self.root.exists():  # a file there: said as rollback and list say it
                    self.require_root()
                raise self.io_error(exc, "creating it", "nothing was changed") from None
        self.require_root()
        try:
            fh = open(self.root / LOCK, "a+b")  # noqa: SIM115 - "a": created, never truncated
        except OSError as exc:  # read-only, or no room for the lock file
            raise self.io_error(exc, f"opening its lock {LOCK}", "nothing was changed") from None
        with fh:
            self._acquire(fh.fileno())
            try:
                self._write_holder(fh, f"{os.getpid()} {datetime.now(UTC).isoformat()}\n")
                yield
            finally:
                self._write_holder(fh, "")
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def retrain_lock(self) -> Iterator[None]:
        """Hold the store's retrain lock (an exclusive ``flock`` on ``<root>/.retrain.lock``)
        or raise :class:`RetrainLocked` at once, naming its holder: one retrain at a time per
        store. Two retrains of one store would each train the same window and gate against
        the version active when it started, and the second to publish would replace the
        first's without ever being compared with it; a trainer is not queued behind another
        (its window would be stale), it is refused. The kernel drops the lock when its holder
        dies. Not re-entrant.

        Creates the root, as a first publish does, and removes what it created when it ends
        with nothing published there (the root, and the parents it made, holding only the
        locks): a refused retrain at a mistyped ``DIAM_SNAPSHOT_DIR`` leaves no empty store
        behind, so rollback and list still say the directory does not exist. A root that
        cannot be made or locked (a file on its path, no permission) raises
        :class:`SnapshotError` naming the setting."""
        made, fh = self._open_retrain_lock()
        try:
            self._write_holder(fh, f"{os.getpid()} {datetime.now(UTC).isoformat()}\n")
            yield
        finally:
            self._write_holder(fh, "")
            if made:  # still holding the lock: no other retrain is inside this root now
                self._remove_unused(made)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def _unusable_root(self, exc: OSError) -> SnapshotError:
        return SnapshotError(
            f"snapshot directory {self.root} cannot hold the retrain lock "
            f"({exc.strerror or type(exc).__name__}: {exc.filename or self.root / RETRAIN_LOCK}) "
            "(settings snapshot.dir, DIAM_SNAPSHOT_DIR); nothing was trained")

    def _open_retrain_lock(self) -> tuple[list[Path], Any]:
        """The root made when missing (the directories this call created, deepest first) and
        ``<root>/.retrain.lock`` open and locked (:meth:`retrain_lock`). A holder that created
        the root removes it when it ends, so the file locked is checked to be the one the path
        names still (else opened again): two holders can never lock two files."""
        for _ in range(10):
            missing = [d for d in (self.root, *self.root.parents) if not d.exists()]
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                self.require_root()  # a file on the path: said as rollback and list say it
                raise
            except OSError as exc:
                raise self._unusable_root(exc) from exc
            self.require_root()
            path = self.root / RETRAIN_LOCK
            try:
                fh = open(path, "a+b")  # noqa: SIM115 - held by the caller's context
            except FileNotFoundError:  # the root's creator removed it meanwhile: again
                continue
            except OSError as exc:
                raise self._unusable_root(exc) from exc
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise RetrainLocked(
                    f"another retrain of {self.root} ({self.lock_holder(RETRAIN_LOCK)}) holds "
                    f"{self.root / RETRAIN_LOCK}; one retrain at a time per snapshot store "
                    "(a `diam retrain` service holds it while it runs): nothing was "
                    "trained") from None
            except OSError as exc:
                fh.close()
                raise self._unusable_root(exc) from exc
            try:
                held, named = os.fstat(fh.fileno()), os.stat(path)
                if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                    return [d for d in missing if d.is_dir()], fh
            except FileNotFoundError:
                pass
            fh.close()  # the file locked was removed with the root it was in: again
        raise SnapshotError(f"snapshot directory {self.root} kept disappearing while the "
                            "retrain lock was taken (settings snapshot.dir, DIAM_SNAPSHOT_DIR); "
                            "nothing was trained")

    def _remove_unused(self, made: list[Path]) -> None:
        """Remove the directories :meth:`_open_retrain_lock` made (``made``, deepest first)
        when nothing but the locks is in the root; called by the retrain lock's holder. The
        store's own lock file goes too when nobody holds it."""
        try:
            names = {p.name for p in self.root.iterdir()}
        except OSError:
            return
        if not names <= {RETRAIN_LOCK, LOCK}:
            return
        lk = None
        try:
            if LOCK in names:
                lk = open(self.root / LOCK, "a+b")  # noqa: SIM115 - closed below
                fcntl.flock(lk.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a publish
                (self.root / LOCK).unlink()
            (self.root / RETRAIN_LOCK).unlink()
            for d in made:
                d.rmdir()  # only an empty one: a file written meanwhile keeps it
        except OSError:
            return
        finally:
            if lk is not None:
                lk.close()

    @staticmethod
    def _write_holder(fh: Any, text: str) -> None:
        # only words for a waiter's message: a full disk must not fail the switch itself
        try:
            fh.truncate(0)
            fh.write(text.encode())
            fh.flush()
        except OSError:
            pass

    def lock_holder(self, name: str = LOCK) -> str:
        """Who holds the lock (:data:`LOCK`, or ``name``: :data:`RETRAIN_LOCK`), as its holder
        wrote it: ``pid N, since HH:MM:SS`` (local time), or ``holder unknown`` (it has not
        written yet, or wrote nothing readable)."""
        try:
            pid, _, at = (self.root / name).read_text(errors="replace").strip().partition(" ")
            since = datetime.fromisoformat(at).astimezone().strftime("%H:%M:%S")
        except (OSError, ValueError):
            return "holder unknown"
        return f"pid {pid}, since {since}" if pid.isdigit() else "holder unknown"

    def _acquire(self, fd: int) -> None:
        """Take the lock (:meth:`locked`): at once when it is free, else after one ``on_wait``
        line, polling every :data:`LOCK_POLL_S` until it is, the timeout passes or a signal
        ends the wait."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        what = f"another publish/rollback of {self.root}"
        timeout = self.cfg.lock_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout

        def interrupted(signum: int) -> LockWaitInterrupted:
            return LockWaitInterrupted(
                f"{signal.Signals(signum).name} while waiting for {what}; nothing was changed",
                signum)

        def on_term(signum: int, _frame: Any) -> None:
            raise interrupted(signum)

        # SIGTERM ends the wait as Ctrl-C does, where nobody else handles it (a service
        # has its own handler; only the main thread may set one)
        own_term = (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
        try:
            if own_term:
                signal.signal(signal.SIGTERM, on_term)
            # said once the signals end the wait cleanly: whoever reads it may press Ctrl-C
            self.on_wait(f"waiting for {what} ({self.lock_holder()}) to finish…")
            while True:
                time.sleep(LOCK_POLL_S)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    pass
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{what} ({self.lock_holder()}) still holds {self.root / LOCK} after "
                        f"{timeout:g} s (snapshot.lock_timeout_s); nothing was changed")
        except LockWaitInterrupted:
            raise
        except KeyboardInterrupt:  # Ctrl-C: said as SIGTERM is
            raise interrupted(signal.SIGINT) from None
        finally:
            if own_term:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def staging_dir(self) -> Path:
        """A fresh hidden directory under the root, on the same filesystem so the final rename
        is atomic. Hidden names are skipped by :meth:`versions`."""
        path = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except OSError as exc:
            raise self.io_error(exc, "staging a new version", "nothing was published") from None
        return path

    def io_error(self, exc: OSError, doing: str, outcome: str) -> StoreIOError:
        """The one wording of an I/O failure in the store (full, read-only, a file where the
        root should be): the setting, what failed, the error and its errno name, and what it
        means (``outcome``). Every writer of the store raises it rather than the OSError.

        >>> store = SnapshotStore(SnapshotConfig(dir="/s"))
        >>> str(store.io_error(OSError(28, "No space left on device", "/s/x"), "staging",
        ...                    "nothing was published")).split(": ", 1)[1]
        'staging failed: No space left on device (ENOSPC, /s/x); nothing was published'
        """
        code = errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
        where = f", {exc.filename}" if exc.filename else ""
        return StoreIOError(
            f"snapshot directory {self.root} (settings snapshot.dir, DIAM_SNAPSHOT_DIR): "
            f"{doing} failed: {exc.strerror or exc} ({code}{where}); {outcome}")

    def commit(self, staging: Path, version: str) -> Path:
        """Move a fully written staging directory to ``<root>/<version>`` in one rename."""
        target = self.path(version)
        try:
            for f in staging.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(staging)
            if target.exists():
                raise SnapshotError(f"snapshot {version} already exists")
            os.rename(staging, target)
        except OSError as exc:
            raise self.io_error(exc, f"committing {version}", "nothing was published") from None
        try:
            _fsync_dir(self.root)
        except OSError as exc:
            raise self.io_error(exc, f"syncing the commit of {version}",
                                f"{version} is committed but not active") from None
        return target

    def activate(self, version: str, verify: bool = True) -> dict[str, Any] | None:
        """Verify ``version`` and switch the pointer to it atomically, then record the switch
        in :data:`HISTORY`. On any failure the pointer is untouched, so the previous version
        stays active. The pointer moves first: a kill between the two leaves the history one
        switch behind, and a bare rollback then still returns to a version that was active."""
        man = self.verify(version) if verify else None
        self._replace(POINTER, version + "\n", "the active version did not change")
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        lines = [f"{a} {v}\n" for a, v in self.activations()[-(HISTORY_KEEP - 1):]]
        self._replace(HISTORY, "".join(lines) + f"{at} {version}\n",
                      f"{version} is active, but the switch is not in {HISTORY}")
        return man

    def _replace(self, name: str, text: str, outcome: str | None = None) -> None:
        """Write ``<root>/<name>`` whole: a temp file, fsync, rename (readers see old or new).
        A failure (a full or read-only disk) removes the temp file and raises
        :class:`StoreIOError` (:meth:`io_error`; ``outcome``: what it leaves, by default that
        ``name`` is as it was)."""
        tmp = self.root / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            try:
                with open(tmp, "w") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.root / name)
            except BaseException:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:  # never written (a read-only root): nothing to remove
                    pass
                raise
        except OSError as exc:
            raise self.io_error(exc, f"writing {name}",
                                outcome or f"{name} is as it was") from None
        try:
            _fsync_dir(self.root)
        except OSError as exc:
            raise self.io_error(exc, f"syncing {name}", f"{name} is written, not synced") from None

    def never_activated(self) -> set[str]:
        """Versions committed but never made active (a publish killed between its commit and
        its pointer switch). Only versions created since the history was kept can be told."""
        history = self.activations()
        if not history:
            return set()
        since, seen = history[0][0], {v for _, v in history}
        active = self.active_version()
        return {s.version for s in self.versions()
                if s.created_at > since and s.version not in seen and s.version != active}

    def previous_version(self) -> str | None:
        """What a bare rollback returns to: the version active before the current one (the
        newest in the history that is not the active one and is still in the store). Versions
        from before the history was kept fall back to the one created just before the active."""
        active = self.active_version()
        infos = [s for s in self.versions() if s.manifest is not None]
        kept = {s.version for s in infos}
        history = self.activations()
        for _, version in reversed(history):
            if version != active and version in kept:
                return version
        since = history[0][0] if history else None
        names = [s.version for s in infos if since is None or s.created_at < since]
        if active not in names:
            return names[-1] if names else None
        i = names.index(active)
        return names[i - 1] if i > 0 else None

    def find_weights(self, weights_sha256: str) -> str | None:
        """The newest version published from weights with this sha256, or None."""
        for info in reversed(self.versions()):
            if info.source.get("weights_sha256") == weights_sha256:
                return info.version
        return None

    def find_label(self, label: str) -> str | None:
        """The newest version published from the weights a checkpoint label names (the version
        ``diam run --checkpoint`` stamps on the vectors it writes:
        ``online_model.checkpoint_config.checkpoint_label``), of the same model; None for
        anything else, or when no such version is kept."""
        from online_model.checkpoint_config import label_names

        for info in reversed(self.versions()):  # a manifest that cannot be read is passed over
            if label_names(label, (info.manifest or {}).get("model"),
                           info.source.get("weights_sha256")):
                return info.version
        return None

    def prune(self, keep: int | None = None, announced: Collection[str] = (),
              use_record: bool = True) -> list[str]:
        """Delete the oldest published versions (:func:`is_published_name`) beyond ``keep``
        (default ``cfg.keep``); a version renamed by hand (``golden``) is a deliberate pin,
        never pruned nor counted. Never one that is in use or is the way back: the active one
        (the pointer), the one active before it (:meth:`previous_version`, what a bare
        rollback returns to), every version in ``announced`` (what the caller read from
        Redis's ``diam:{ns}:model:active``: the version servers and dataflows follow, whatever
        the pointer says) and, with ``use_record``, every version this store last announced
        in a namespace (:meth:`announcements`: what a caller without Redis, ``--no-redis``,
        knows of it; when it never announced one, only the pointer and the way back are kept).
        A caller that read Redis passes ``use_record=False``: what Redis announces now is in
        ``announced``, and a record of a namespace since dropped must not keep a version. Protected
        versions still count towards ``keep``, so the store may hold more than ``keep`` when
        they are the oldest. A caller that has Redis but cannot read it must not call this
        (it would guess). What killed publishes left, staging directories and pointer temp
        files older than :data:`STALE_S`, goes too."""
        keep = self.cfg.keep if keep is None else keep
        protected = {self.active_version(), self.previous_version(), *announced,
                     *(self.announcements().values() if use_record else ())}
        infos = [i for i in self.versions() if is_published_name(i.version)]
        removed = []
        excess = len(infos) - keep
        for info in infos:
            if excess <= 0:
                break
            if info.version in protected:
                continue
            shutil.rmtree(info.path, ignore_errors=True)
            removed.append(info.version)
            excess -= 1
        if self.root.is_dir():
            now = time.time()
            for child in [*self.root.glob(".staging-*"), *self.root.glob(f".{POINTER}.*.tmp"),
                          *self.root.glob(f".{ANNOUNCED}.*.tmp"),
                          *self.root.glob(f".{PUBLISHED}.*.tmp")]:
                try:
                    stale = now - child.stat().st_mtime > STALE_S
                except FileNotFoundError:  # another prune got it first
                    continue
                if not stale:
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        return removed


def resolve_active(store: SnapshotStore, client: Any | None, ns: str,
                   on_absent: Callable[[str], None] | None = None,
                   on_redis: Callable[[Exception | None], None] | None = None) -> str | None:
    """The active version for namespace ``ns``, as every reader resolves it (``diam serve``,
    the dataflow at start and at reload, ``diam recommend``): the version Redis announces in
    ``diam:{ns}:model:active`` when this store holds it, else the pointer file
    (:meth:`SnapshotStore.active_version`, which raises SnapshotError for a damaged one).

    Redis is per namespace and shared by every process, the pointer file per store: a publish
    announces in both, ``--no-redis`` moves only the file, and a store that never saw the
    announced version (another snapshot directory on the same Redis) falls back to its own
    file; ``on_absent`` is told that version. Redis down reads as no announcement: the failed
    GET is logged, or given to ``on_redis`` (which is also told None each time Redis answers,
    so a poller can log an outage once, not once per poll)."""
    if client is not None:
        from serving_cache.keys import model_active_key

        try:
            raw = client.get(model_active_key(ns))
        except Exception as exc:  # Redis down: the shared pointer file still tells the truth
            if on_redis is None:
                log.warning("active version from Redis failed (%s); reading the pointer file",
                            exc)
            else:
                on_redis(exc)
            raw = None
        else:
            if on_redis is not None:
                on_redis(None)
        if raw is not None:
            version = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if store.why_not_version(version) is None:  # the store's rule: a stray is not one
                return version
            if on_absent is not None:
                on_absent(version)
    return store.active_version()


class ActiveWatcher:
    """Notices a new active version; cheap enough to call once per dataflow batch.

    ``poll()`` does I/O at most once per ``check_every_s`` (one Redis GET of
    ``diam:{ns}:model:active``, or a read of the pointer file when no client is given or Redis
    does not answer). When the active version differs from the one last returned, it verifies
    the snapshot's hashes and returns ``(version, path)``; otherwise None. A version that fails
    verification (or that the caller refuses, :meth:`refuse`) is logged once and not retried until
    the active version changes again, so the caller keeps serving what it has: until the
    resolved version is another one, or the pointer file is written again (every publish and
    rollback writes it, a rollback to the version already active too). So a version repaired
    and rolled back to is taken, even by a process that started on it damaged. The first poll
    returns the current active version (initial load) unless ``current`` names it already.

    What it refused is counted here, its one owner: :attr:`refusals` (each refusal of a version
    that fails verification: a hash that does not match, no manifest, as a half-written publish
    leaves; a version counted again only when it is offered again after the active version
    moved) and :attr:`last_refusal`; :attr:`announced` is the version it last read, so an
    operator sees which version was announced while another is served (``diam serve``'s
    ``/health`` and ``diam_snapshot_reloads_total{outcome="failed"}``, ``diam run``'s
    ``diam_flow_snapshot_refusals_total``). A version the caller refuses (:meth:`refuse`) is
    the caller's to count: it knows why.
    """

    def __init__(
        self,
        store: SnapshotStore,
        redis_client: Any | None = None,
        check_every_s: float = 5.0,
        ns: str = "live",
        current: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.client = redis_client
        self.check_every_s = check_every_s
        self.ns = ns
        self.current = current
        self.refused: set[str] = set()
        self.refusals = 0
        """Versions :meth:`poll` refused for failing verification (see the class)."""
        self.last_refusal: tuple[str, str] | None = None
        """``(version, reason)`` of the last version :meth:`poll` refused."""
        self._resolved: tuple[str, tuple[int, int, int] | None] | None = None
        """The version the last poll resolved and the pointer file's identity then: when
        either changes, :attr:`refused` is cleared."""
        self._absent: set[str] = set()
        self._pointer_error: str | None = None
        self._redis_down_since: float | None = None  # on self._clock
        self._clock = clock
        self._next = float("-inf")

    def _absent_once(self, version: str) -> None:
        # Another store announced it (a different snapshot dir on the same Redis): the local
        # pointer is the best we can do.
        if version not in self._absent:
            log.warning("Redis names snapshot %s, absent from %s; using the pointer file",
                        version, self.store.root)
            self._absent.add(version)

    def _redis_answered(self, exc: Exception | None) -> None:
        # one line when an outage begins and one when it ends, as the dataflow's sink logs
        # its own: polled every few seconds, a line per failed GET was a line per poll
        if exc is not None and self._redis_down_since is None:
            self._redis_down_since = self._clock()
            log.warning("active version: Redis unreachable (%s); reading the pointer file "
                        "until it answers", exc)
        elif exc is None and self._redis_down_since is not None:
            log.warning("active version: Redis reachable again after %.1f s; following its "
                        "announcement again", self._clock() - self._redis_down_since)
            self._redis_down_since = None

    def _read_active(self) -> str | None:
        """:func:`resolve_active`; a damaged pointer is logged once and reads as "no change"
        (the caller keeps what it serves until someone repairs it)."""
        try:
            version = resolve_active(self.store, self.client, self.ns, self._absent_once,
                                     self._redis_answered)
        except SnapshotError as exc:
            if str(exc) != self._pointer_error:
                log.error("not following the active version: %s", exc)
                self._pointer_error = str(exc)
            return None
        self._pointer_error = None
        return version

    def refuse(self, version: str, keep: str | None) -> None:
        """The caller could not use ``version`` (it verified, but e.g. has another embedding
        size; the caller logs why): do not offer it again until the active version changes
        (see the class), and go on from ``keep``."""
        self.refused.add(version)
        self.current = keep

    @property
    def announced(self) -> str | None:
        """The active version the last poll read (Redis's announcement, else ``ACTIVE``);
        None before the first poll, or when none was readable."""
        return None if self._resolved is None else self._resolved[0]

    def _pointer_stamp(self) -> tuple[int, int, int] | None:
        # a publish or rollback replaces the file whole (a new inode): a rollback to the
        # version already active shows here, where the version read does not change
        try:
            st = (self.store.root / POINTER).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _moved(self, version: str) -> None:
        """Forget the refusals when the active version moved since the last poll."""
        now = (version, self._pointer_stamp())
        if now != self._resolved and self.refused:
            log.info("active version now %s (pointer rewritten or another version): "
                     "the %d version(s) refused before may be taken again", version,
                     len(self.refused))
            self.refused.clear()
        self._resolved = now

    def poll(self) -> tuple[str, Path] | None:
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self.check_every_s
        version = self._read_active()
        if version is not None:  # none, or a damaged pointer: nothing to compare
            self._moved(version)
        if version is None or version == self.current or version in self.refused:
            return None
        try:
            self.store.verify(version)
        except SnapshotError as exc:
            log.error("not loading snapshot: %s", exc)
            self.refused.add(version)
            self.refusals += 1
            self.last_refusal = (version, str(exc))
            return None
        self.current = version
        return version, self.store.path(version)
