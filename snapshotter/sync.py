"""Re-sync Redis's active version from the pointer on disk.

The pointer (``<dir>/ACTIVE``) is the truth; ``diam:{ns}:model:active`` broadcasts it. A
publish switches the pointer first and Redis last, so a Redis that did not answer leaves the
two apart until someone re-syncs: ``diam snapshot watch`` on every tick, the retrain service
(:meth:`diam.retrain.Retrainer.serve`) until Redis answers. Both call :func:`sync_active`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from snapshotter.store import SnapshotStore

__all__ = ["Synced", "sync_active"]


class Synced(NamedTuple):
    """What :func:`sync_active` found and did."""

    active: str | None
    """The version the pointer names (None: no active version; Redis was not touched)."""
    was: str | None
    """What Redis named before (None: nothing, or not read because there is no active
    version)."""

    @property
    def changed(self) -> bool:
        """Redis was set: it named another version, or none."""
        return self.active is not None and self.active != self.was


def sync_active(store: SnapshotStore, client: Any, ns: str) -> Synced:
    """Make ``diam:{ns}:model:active`` name ``store``'s active version; written only when it
    names another one (one GET on the common path), under :meth:`SnapshotStore.locked`,
    and recorded in the store (:meth:`SnapshotStore.record_announced`: a prune without Redis
    keeps it; written only when the record says another version).

    A store directory that does not exist yet has no active version: nothing is announced
    and the directory is not created (the first publish makes it). Raises
    :class:`snapshotter.store.SnapshotError` for a damaged pointer (announce nothing rather
    than garbage) or a root that is not a directory, and the client's own error when Redis
    does not answer: the caller decides how to retry and what to log."""
    # the key's one reader and one writer; imported here, as publish.py imports this module
    from serving_cache.keys import validate_namespace
    from snapshotter.publish import _announced, announce

    validate_namespace(ns)
    if not store.root.exists():  # never published: nothing to announce, and no store to make
        return Synced(None, None)
    # under the store's lock, as every switch: a pointer read just before a concurrent
    # publish switched it would otherwise announce the old version after the new one
    with store.locked():
        active = store.active_version()
        if active is None:
            return Synced(None, None)
        was = _announced(client, ns)
        if was != active:
            announce(store, client, ns, active)
        else:  # already announced (perhaps before the store kept its record): recorded now
            store.record_announced(ns, active)
    return Synced(active, was)
