"""Configuration of the snapshot store."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SnapshotConfig(BaseModel):
    """Where snapshots live and how many are kept."""

    model_config = ConfigDict(extra="forbid")

    dir: str = "snapshots"
    """Root directory of versioned snapshots (``snapshots/<version>/``)."""

    keep: int = Field(default=5, ge=1)
    """Versions kept on disk; older ones are deleted after a successful publish. Five covers a
    few rollbacks without unbounded disk use."""
