"""Versioned snapshot store: FAISS index build, publish / watch / rollback of base weights.

A snapshot is ``<dir>/<version>/`` (weights, FAISS item index, item tables, manifest with the
sha256 of every file); ``<dir>/ACTIVE`` names the active version and Redis broadcasts it as
``diam:{ns}:model:active``. Workers and the API notice a new version with
:class:`ActiveWatcher`; :func:`sync_active` makes Redis name the pointer's version again
after it missed an announcement.
"""

from snapshotter.config import SnapshotConfig
from snapshotter.publish import ActiveMoved, CheckpointError, PublishResult, Skip, Watcher, publish
from snapshotter.store import ActiveWatcher, IntegrityError, SnapshotError, SnapshotStore
from snapshotter.sync import Synced, sync_active

__all__ = [
    "ActiveMoved",
    "ActiveWatcher",
    "CheckpointError",
    "IntegrityError",
    "PublishResult",
    "Skip",
    "SnapshotConfig",
    "SnapshotError",
    "SnapshotStore",
    "Synced",
    "Watcher",
    "publish",
    "sync_active",
]
