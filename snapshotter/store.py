"""Versioned snapshot store on disk: ``<root>/<version>/`` directories and the ``ACTIVE`` pointer.

Writes never go backwards half-way: a snapshot is staged in a hidden directory and renamed into
place whole; the pointer file is written to a temporary file and switched with ``os.replace``
(atomic on POSIX), so a reader sees the old version or the new one, never a torn one. A version
becomes active only after every file's sha256 matches its manifest.

>>> import tempfile
>>> store = SnapshotStore(SnapshotConfig(dir=tempfile.mkdtemp()))
>>> store.active_version() is None
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshotter.config import SnapshotConfig

__all__ = [
    "SnapshotStore",
    "SnapshotError",
    "IntegrityError",
    "SnapshotInfo",
    "ActiveWatcher",
    "sha256_file",
    "validate_version",
    "POINTER",
    "MANIFEST",
]

log = logging.getLogger(__name__)

POINTER = "ACTIVE"
MANIFEST = "manifest.json"
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SnapshotError(Exception):
    """A snapshot or checkpoint cannot be used; the message says why and what to do."""


class IntegrityError(SnapshotError):
    """A file of a snapshot does not match the sha256 (or size) its manifest records."""

    def __init__(self, version: str, file: str, reason: str) -> None:
        super().__init__(f"snapshot {version}: {file}: {reason}; refusing it")
        self.version = version
        self.file = file


def validate_version(version: str) -> str:
    """Return ``version`` or raise: a version is a single path component (no traversal).

    >>> validate_version("20240101T000000-ab12cd34")
    '20240101T000000-ab12cd34'
    """
    if _VERSION_RE.fullmatch(version) is None:
        raise SnapshotError(f"{version!r} is not a snapshot version (letters, digits, '_.-')")
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


class SnapshotStore:
    """The snapshot directory tree of ``cfg.dir``."""

    def __init__(self, cfg: SnapshotConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.dir)

    # -- reading ---------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        return self.root / validate_version(version)

    def active_version(self) -> str | None:
        """The version the pointer names, or None before the first publish."""
        try:
            text = (self.root / POINTER).read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def active(self) -> Path | None:
        """Directory of the active version, or None."""
        version = self.active_version()
        return None if version is None else self.path(version)

    def manifest(self, version: str) -> dict[str, Any]:
        """The parsed manifest of ``version`` (JSON, never pickle)."""
        path = self.path(version) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise SnapshotError(f"snapshot {version}: no {MANIFEST} (not a snapshot?)") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(version, MANIFEST, f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise IntegrityError(version, MANIFEST, "has no 'files' table")
        return data

    def versions(self) -> list[SnapshotInfo]:
        """Every version on disk, oldest first (by the manifest's created_at)."""
        out: list[SnapshotInfo] = []
        if not self.root.is_dir():
            return out
        for child in self.root.iterdir():
            if (
                not child.is_dir()
                or child.name.startswith(".")
                or not _VERSION_RE.fullmatch(child.name)
            ):
                continue
            try:
                man: dict[str, Any] | None = self.manifest(child.name)
            except SnapshotError:
                man = None
            created = str(man.get("created_at", "")) if man else ""
            out.append(SnapshotInfo(child.name, child, created, man))
        out.sort(key=lambda s: (s.created_at, s.version))
        return out

    def verify(self, version: str) -> dict[str, Any]:
        """Check every file listed in the manifest (size, then sha256); return the manifest.

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
            digest = sha256_file(path)
            if digest != meta.get("sha256"):
                raise IntegrityError(
                    version,
                    name,
                    f"sha256 {digest[:12]}… != manifest {str(meta.get('sha256'))[:12]}…",
                )
        return man

    # -- writing ---------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        """A fresh hidden directory under the root, on the same filesystem so the final rename
        is atomic. Hidden names are skipped by :meth:`versions`."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".staging-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def commit(self, staging: Path, version: str) -> Path:
        """Move a fully written staging directory to ``<root>/<version>`` in one rename."""
        for f in staging.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(staging)
        target = self.path(version)
        if target.exists():
            raise SnapshotError(f"snapshot {version} already exists")
        os.rename(staging, target)
        _fsync_dir(self.root)
        return target

    def activate(self, version: str, verify: bool = True) -> dict[str, Any] | None:
        """Verify ``version`` and switch the pointer to it atomically. On any failure the
        pointer is untouched, so the previous version stays active."""
        man = self.verify(version) if verify else None
        tmp = self.root / f".{POINTER}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / POINTER)
        _fsync_dir(self.root)
        return man

    def previous_version(self) -> str | None:
        """The version created just before the active one (what a bare rollback returns to)."""
        active = self.active_version()
        names = [s.version for s in self.versions() if s.manifest is not None]
        if active not in names:
            return names[-1] if names else None
        i = names.index(active)
        return names[i - 1] if i > 0 else None

    def prune(self, keep: int | None = None) -> list[str]:
        """Delete the oldest versions beyond ``keep`` (default ``cfg.keep``); never the active
        one. Leftover staging directories of crashed publishes older than an hour go too."""
        keep = self.cfg.keep if keep is None else keep
        active = self.active_version()
        infos = self.versions()
        removed = []
        excess = len(infos) - keep
        for info in infos:
            if excess <= 0:
                break
            if info.version == active:
                continue
            shutil.rmtree(info.path, ignore_errors=True)
            removed.append(info.version)
            excess -= 1
        if self.root.is_dir():
            for child in self.root.glob(".staging-*"):
                if time.time() - child.stat().st_mtime > 3600:
                    shutil.rmtree(child, ignore_errors=True)
        return removed


class ActiveWatcher:
    """Notices a new active version; cheap enough to call once per dataflow batch.

    ``poll()`` does I/O at most once per ``check_every_s`` (one Redis GET of
    ``diam:{ns}:model:active``, or a read of the pointer file when no client is given or Redis
    does not answer). When the active version differs from the one last returned, it verifies
    the snapshot's hashes and returns ``(version, path)``; otherwise None. A version that fails
    verification is logged and not retried until the pointer changes again, so the caller keeps
    serving what it has. The first poll returns the current active version (initial load)
    unless ``current`` names it already.
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
        self._absent: set[str] = set()
        self._clock = clock
        self._next = float("-inf")

    def _read_active(self) -> str | None:
        if self.client is not None:
            from serving_cache.keys import model_active_key

            try:
                raw = self.client.get(model_active_key(self.ns))
            except Exception as exc:  # Redis down: the shared pointer file still tells the truth
                log.warning("active version from Redis failed (%s); reading the pointer file", exc)
                raw = None
            if raw is not None:
                version = raw.decode() if isinstance(raw, bytes) else str(raw)
                if (self.store.root / version).is_dir():
                    return version
                # Another store announced it (a different snapshot dir on the same Redis):
                # the local pointer is the best we can do.
                if version not in self._absent:
                    log.warning(
                        "Redis names snapshot %s, absent from %s; using the pointer file",
                        version,
                        self.store.root,
                    )
                    self._absent.add(version)
        return self.store.active_version()

    def poll(self) -> tuple[str, Path] | None:
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self.check_every_s
        version = self._read_active()
        if version is None or version == self.current or version in self.refused:
            return None
        try:
            self.store.verify(version)
        except SnapshotError as exc:
            log.error("not loading snapshot: %s", exc)
            self.refused.add(version)
            return None
        self.current = version
        return version, self.store.path(version)
