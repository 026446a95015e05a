"""Tiny checkpoints and stores in tmp dirs (no services)."""

from __future__ import annotations

import pytest

from snapshotter import SnapshotConfig, SnapshotStore
from snapshotter.testing import write_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "ck1", n_items=120, dim=8, seed=1)


@pytest.fixture
def checkpoint2(tmp_path):
    return write_checkpoint(tmp_path / "ck2", n_items=120, dim=8, seed=2)


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=3))


class DictRedis:
    """GET/SET of a dict: what a publish asks of Redis to announce a version and read what is
    announced (a publish without a client prunes nothing: which version servers follow is
    then unknown)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def set(self, key: str, value: str) -> None:
        self.values[key] = value.encode()


@pytest.fixture
def redis_dict() -> DictRedis:
    return DictRedis()
