"""The ACTIVE pointer and its history: one reader that refuses a damaged pointer, bare rollback
to the previously active version, leftovers of killed writers, index consistency, and the
watcher's choice of checkpoint."""

from __future__ import annotations

import json
import logging
import os
import time

import faiss
import numpy as np
import pytest

from snapshotter import (
    ActiveWatcher,
    IntegrityError,
    SnapshotError,
    SnapshotStore,
    Watcher,
    publish,
)
from snapshotter.publish import find_checkpoints
from snapshotter.store import HISTORY, MANIFEST, POINTER, sha256_file
from snapshotter.testing import write_checkpoint


def _ck(tmp_path, name, seed, dim=8):
    return write_checkpoint(tmp_path / name, n_items=40, dim=dim, seed=seed)


@pytest.mark.parametrize(
    "content, says",
    [
        (b"\xff\xfe\x00garbage\x9c", "undecodable bytes"),
        (b"../ck_demo\n", "names '../ck_demo', not a snapshot version"),
        (b"20990101T000000-deadbeef\n", "names 20990101T000000-deadbeef, not a version in"),
    ],
)
def test_a_damaged_pointer_is_a_snapshot_error_naming_the_file(store, checkpoint, content, says):
    publish(checkpoint, store)
    (store.root / POINTER).write_bytes(content)
    with pytest.raises(SnapshotError, match=says) as err:
        store.active_version()
    assert str(store.root / POINTER) in str(err.value)
    with pytest.raises(SnapshotError, match=says):
        store.previous_version()


def test_an_empty_pointer_is_no_active_version_and_says_so(store, checkpoint):
    assert "no active snapshot in" in store.no_active_reason()
    publish(checkpoint, store)
    (store.root / POINTER).write_text("\n")
    assert store.active_version() is None
    assert store.no_active_reason() == f"no active snapshot ({store.root / POINTER} is empty)"


def test_publish_reads_the_pointer_before_it_commits(store, checkpoint, checkpoint2):
    first = publish(checkpoint, store).version
    (store.root / POINTER).write_bytes(b"\xff\xfe")
    with pytest.raises(SnapshotError, match="undecodable"):
        publish(checkpoint2, store)
    assert [s.version for s in store.versions()] == [first]  # nothing committed
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging")]


def test_watchers_survive_a_damaged_pointer(store, checkpoint, caplog):
    v = publish(checkpoint, store).version
    w = ActiveWatcher(store, None, check_every_s=0, current=v)
    (store.root / POINTER).write_text("../elsewhere\n")
    with caplog.at_level(logging.ERROR):
        assert w.poll() is None and w.poll() is None
    assert [r.getMessage() for r in caplog.records].count(
        f"not following the active version: {store.root / POINTER}: names '../elsewhere', "
        "not a snapshot version; `diam snapshot rollback VERSION` repairs it") == 1
    store.activate(v)
    assert w.poll() is None and w.current == v


def _killed_publish(store, ck, monkeypatch) -> str:
    """A publish killed between its commit and its pointer switch (kill -9 there)."""
    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed

    before = {s.version for s in store.versions()}
    with monkeypatch.context() as m:
        m.setattr(SnapshotStore, "activate", die)
        with pytest.raises(Killed):
            publish(ck, store)
    (new,) = {s.version for s in store.versions()} - before
    return new


def test_bare_rollback_returns_to_the_previously_active_version(tmp_path, monkeypatch):
    from snapshotter import SnapshotConfig

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), keep=10))
    a = publish(_ck(tmp_path, "a", 1), store).version
    b = publish(_ck(tmp_path, "b", 2), store).version
    c = _killed_publish(store, _ck(tmp_path, "c", 3), monkeypatch)
    assert store.active_version() == b and store.never_activated() == {c}
    d = publish(_ck(tmp_path, "d", 4), store)
    assert d.previous == b
    assert store.previous_version() == b  # not c, created just before d but never active
    store.activate(b)  # the rollback
    assert store.previous_version() == d.version  # and back again
    store.activate(a)
    assert store.previous_version() == b
    assert store.never_activated() == {c}
    lines = (store.root / HISTORY).read_text().splitlines()
    assert [line.split()[1] for line in lines] == [a, b, d.version, b, a]


def test_a_store_without_history_falls_back_to_creation_order(store, checkpoint, checkpoint2):
    a = publish(checkpoint, store).version
    publish(checkpoint2, store)
    (store.root / HISTORY).unlink()  # a store written before the history was kept
    assert store.previous_version() == a and store.never_activated() == set()


def test_prune_removes_stale_pointer_temp_files(store, checkpoint):
    publish(checkpoint, store)
    old_tmp = store.root / f".{POINTER}.0123abcd.tmp"
    old_hist = store.root / f".{HISTORY}.4567ef01.tmp"
    fresh_tmp = store.root / f".{POINTER}.89ab.tmp"
    for p in (old_tmp, old_hist, fresh_tmp):
        p.write_text("x\n")
    past = time.time() - 7200
    os.utime(old_tmp, (past, past))
    os.utime(old_hist, (past, past))
    store.prune()
    assert not old_tmp.exists() and not old_hist.exists()
    assert fresh_tmp.exists()  # may belong to an activation in flight


def _rehash(store, version):
    man = json.loads((store.path(version) / MANIFEST).read_text())
    for name in man["files"]:
        f = store.path(version) / name
        man["files"][name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    (store.path(version) / MANIFEST).write_text(json.dumps(man))


def test_verify_refuses_an_index_that_disagrees_with_the_items(store, checkpoint, checkpoint2):
    v1 = publish(checkpoint, store).version
    v2 = publish(checkpoint2, store).version
    index = faiss.IndexFlatIP(8)
    index.add(np.ones((100, 8), dtype=np.float32))
    faiss.write_index(index, str(store.path(v1) / "items.faiss"))
    _rehash(store, v1)  # a snapshot assembled from two publishes: every hash matches
    with pytest.raises(IntegrityError, match=r"items.faiss: index holds 100x8, items are \(120, 8\)"):
        store.verify(v1)
    with pytest.raises(IntegrityError):
        store.activate(v1)
    assert store.active_version() == v2
    wrong_d = faiss.IndexFlatIP(4)
    wrong_d.add(np.ones((120, 4), dtype=np.float32))
    faiss.write_index(wrong_d, str(store.path(v2) / "items.faiss"))
    _rehash(store, v2)
    with pytest.raises(IntegrityError, match=r"index holds 120x4, items are \(120, 8\)"):
        store.verify(v2)


def test_find_checkpoints_skips_hidden_directories(tmp_path):
    trainer = tmp_path / "trainer"
    _ck(trainer, ".diam.old", 1)
    _ck(trainer, ".diam.x1y2z3", 2)
    visible = _ck(trainer, "run1", 3)
    assert find_checkpoints(trainer) == [visible]


def test_a_broken_newest_checkpoint_does_not_hide_older_ones(tmp_path, caplog):
    from snapshotter import SnapshotConfig

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=0))
    trainer = tmp_path / "trainer"
    good = _ck(trainer, "run1", 1)
    bad = _ck(trainer, "run2", 2)
    (bad / "config.json").unlink()
    later = time.time() + 5
    os.utime(bad / "weights.safetensors", (later, later))
    watcher = Watcher(store, trainer)
    with caplog.at_level(logging.ERROR):
        res = watcher.tick(later + 10)
    assert res is not None and res.manifest["source"]["path"] == str(good.resolve())
    assert "not publishing" in caplog.text and "config.json" in caplog.text
    assert watcher.tick(later + 20) is None  # nothing new: the broken one is not retried
    # the broken one repaired (its files change): it is tried again and published
    write_checkpoint(bad, n_items=40, dim=8, seed=2)
    os.utime(bad / "weights.safetensors", (later + 30, later + 30))
    again = watcher.tick(later + 40)
    assert again is not None and again.manifest["source"]["path"] == str(bad.resolve())


def test_the_watcher_publishes_nothing_while_the_pointer_is_damaged(tmp_path):
    from snapshotter import SnapshotConfig

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=0))
    v = publish(_ck(tmp_path, "first", 1), store).version
    _ck(tmp_path / "trainer", "run1", 2)
    (store.root / POINTER).write_text("gone\n")
    watcher = Watcher(store, tmp_path / "trainer")
    assert watcher.tick(time.time() + 10) is None
    assert [s.version for s in store.versions()] == [v]
    store.activate(v)  # repaired: the checkpoint is published on the next tick
    assert watcher.tick(time.time() + 10) is not None


class _Redis:
    """What resolve_active reads of a Redis client: GET, or an outage."""

    def __init__(self, values: dict[str, bytes], down: bool = False) -> None:
        self.values, self.down = values, down

    def get(self, key: str) -> bytes | None:
        if self.down:
            raise ConnectionError("down")
        return self.values.get(key)


def test_resolve_active_prefers_the_namespace_announcement_then_the_pointer_file(tmp_path):
    """One precedence for diam serve, the dataflow's start and reload, and diam recommend:
    Redis's announcement when this store holds it, else the pointer file."""
    from serving_cache.keys import model_active_key
    from snapshotter import SnapshotConfig
    from snapshotter.store import resolve_active

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s")))
    v1 = publish(_ck(tmp_path, "a", 1), store).version
    v2 = publish(_ck(tmp_path, "b", 2), store).version  # the pointer file names v2
    key = model_active_key("ns1")
    absent: list[str] = []
    assert resolve_active(store, None, "ns1") == v2
    assert resolve_active(store, _Redis({key: v1.encode()}), "ns1") == v1  # a --no-redis rollback
    assert resolve_active(store, _Redis({key: v1.encode()}), "ns2") == v2  # another namespace
    for other in (b"20990101T000000-deadbeef", b"../escape", b"\xff\xfe"):
        assert resolve_active(store, _Redis({key: other}), "ns1", absent.append) == v2
    assert absent[0] == "20990101T000000-deadbeef" and len(absent) == 3
    assert resolve_active(store, _Redis({}, down=True), "ns1") == v2
    (store.root / POINTER).write_bytes(b"\xff\xfe")
    assert resolve_active(store, _Redis({key: v1.encode()}), "ns1") == v1  # Redis still answers
    with pytest.raises(SnapshotError):
        resolve_active(store, _Redis({}), "ns1")


def test_an_unreadable_file_or_a_missing_version_is_one_line_naming_it(tmp_path, monkeypatch):
    """Permissions or an I/O error while verifying: IntegrityError naming the file (a
    PermissionError traceback ended list --verify, rollback and diam serve's start); a
    version that does not exist is named as such, not as a missing manifest."""
    import snapshotter.store as store_mod
    from snapshotter import SnapshotConfig

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s")))
    v1 = publish(_ck(tmp_path, "a", 1), store).version

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as m:
        m.setattr(store_mod, "sha256_file", denied)
        with pytest.raises(IntegrityError, match=r"cannot be read \(Permission denied\)"):
            store.verify(v1)
    with pytest.raises(SnapshotError, match="no such version in"):
        store.manifest("20990101T000000-deadbeef")
