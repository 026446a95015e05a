"""Versioned snapshot store: FAISS index build, publish / watch / rollback of base weights."""

from snapshotter.config import SnapshotConfig

__all__ = ["SnapshotConfig"]
