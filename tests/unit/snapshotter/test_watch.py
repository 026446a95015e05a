"""``diam snapshot watch`` says what a tick decided when it published nothing: no checkpoint,
the newest still settling, its weights already a kept version; once per situation in a
long-running watch, one line with ``--once``."""

from __future__ import annotations

import logging
import os
import time

import pytest
from click.testing import CliRunner

from diam.cli import main
from snapshotter import SnapshotConfig, SnapshotStore
from snapshotter.publish import Watcher
from snapshotter.testing import write_checkpoint


def _age(ck, seconds: float) -> None:
    """Make every file of ``ck`` ``seconds`` old."""
    t = time.time() - seconds
    for f in ck.iterdir():
        os.utime(f, (t, t))


def test_the_skip_says_why_nothing_was_published(tmp_path) -> None:
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=10))
    trainer = tmp_path / "trainer"
    w = Watcher(store, trainer)
    assert w.tick(time.time()) is None
    assert w.last_skip is not None
    assert w.last_skip.reason == f"nothing to publish: no checkpoint in {trainer} (it does not exist)"
    a = write_checkpoint(trainer / "a", n_items=30, dim=4, seed=1)
    _age(a, 3)
    assert w.tick(time.time()) is None
    assert w.last_skip.reason == f"nothing to publish: {a} still settling (3 s old, settle_s 10)"
    settling = w.last_skip
    assert w.tick(time.time() + 2) is None
    assert w.last_skip == settling  # older, the same situation: said once
    published = w.tick(time.time() + 20)
    assert published is not None and w.last_skip is None
    assert w.tick(time.time() + 30) is None
    kept = w.last_skip
    assert kept.reason == f"nothing to publish: {a} is already version {published.version}"
    # a fresh watcher (diam snapshot watch --once) hashes it and says the same
    fresh = Watcher(store, trainer)
    assert fresh.tick(time.time() + 30) is None and fresh.last_skip == kept
    assert fresh.last_skip.reason == kept.reason
    # a newer one still settling is said along with the kept one the scan stopped at
    _age(a, 60)
    b = write_checkpoint(trainer / "b", n_items=30, dim=4, seed=2)
    assert w.tick(time.time()) is None
    assert w.last_skip.reason.startswith(f"nothing to publish: {a} is already version ")
    assert f"; {b} still settling (0 s old, settle_s 10)" in w.last_skip.reason
    assert w.last_skip != kept


def test_a_refused_checkpoint_is_said(tmp_path) -> None:
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=0))
    ck = write_checkpoint(tmp_path / "t" / "a", n_items=30, dim=4, seed=1)

    def refuse(path):
        raise ValueError("no")

    w = Watcher(store, ck.parent, usable=refuse)
    assert w.tick(time.time() + 1) is None
    assert w.last_skip.reason == f"nothing to publish: {ck} refused (logged)"
    first = w.last_skip
    assert w.tick(time.time() + 2) is None and w.last_skip == first


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "4")

    def invoke(*args):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_watch_once_says_what_it_decided(run, tmp_path, monkeypatch) -> None:
    trainer = tmp_path / "trainer"
    watch = ("snapshot", "watch", "--once", "--trainer-dir", str(trainer), "--no-redis")
    trainer.mkdir()
    r = run(*watch)
    assert r.exit_code == 0 and f"nothing to publish: no checkpoint in {trainer}\n" in r.output
    a = write_checkpoint(trainer / "a", n_items=30, dim=4, seed=1)
    monkeypatch.setenv("DIAM_SNAPSHOT_SETTLE_S", "600")
    r = run(*watch)
    assert r.exit_code == 0 and f"{a} still settling (" in r.output and "settle_s 600)" in r.output
    monkeypatch.setenv("DIAM_SNAPSHOT_SETTLE_S", "0")
    r = run(*watch)
    assert r.exit_code == 0 and "published " in r.output and "nothing to publish" not in r.output
    version = r.output.split("published ")[1].split()[0]
    r = run(*watch)
    assert r.exit_code == 0 and f"nothing to publish: {a} is already version {version}" in r.output


def test_a_long_running_watch_logs_each_situation_once(run, tmp_path, monkeypatch, caplog) -> None:
    import diam.commands.snapshot as snapshot_cmd

    ticks = iter(range(4))

    def sleep(seconds):  # the fourth tick ends the watch as Ctrl-C would
        if next(ticks) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(snapshot_cmd.time, "sleep", sleep)
    trainer = tmp_path / "trainer"
    trainer.mkdir()
    with caplog.at_level(logging.INFO, logger=snapshot_cmd.__name__):
        r = run("snapshot", "watch", "--trainer-dir", str(trainer), "--no-redis")
    assert r.exit_code == 0, r.output
    said = [rec.getMessage() for rec in caplog.records if "nothing to publish" in rec.getMessage()]
    assert said == [f"nothing to publish: no checkpoint in {trainer}"]


def test_last_skip_type_is_exported_by_the_package():
    import sys

    import snapshotter

    assert "Skip" in snapshotter.__all__
    assert snapshotter.Skip is sys.modules["snapshotter.publish"].Skip


def test_a_tick_reads_the_manifests_once_over_several_checkpoints(tmp_path, monkeypatch) -> None:
    """The kept versions' weights are looked up for every new checkpoint a tick reaches; the
    manifests behind that map are read once per tick, not once per checkpoint."""
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=0))
    trainer = tmp_path / "t"
    for seed in (1, 2, 3):
        write_checkpoint(trainer / f"c{seed}", n_items=30, dim=4, seed=seed)
    calls = []
    real = store.versions
    monkeypatch.setattr(store, "versions", lambda: calls.append(1) or real())

    def refuse(path):
        raise ValueError("no")

    w = Watcher(store, trainer, usable=refuse)
    assert w.tick(time.time() + 1) is None
    assert w.last_skip.reason.count("refused") == 1 and all(
        str(trainer / f"c{s}") in w.last_skip.reason for s in (1, 2, 3)), w.last_skip.reason
    assert len(calls) == 1


def test_a_version_committed_by_a_failed_publish_is_seen_later_in_the_tick(tmp_path) -> None:
    """A publish that commits its version and then fails (Redis refuses the announcement) is
    refused, but its weights are kept now: an older checkpoint of the same weights, reached
    later in the same tick, is that version, not another publish."""
    import shutil

    class DownRedis:
        def set(self, *a):
            raise ConnectionError("down")

        def get(self, *a):
            raise ConnectionError("down")

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=0))
    trainer = tmp_path / "t"
    old = write_checkpoint(trainer / "old", n_items=30, dim=4, seed=1)
    new = trainer / "new"
    shutil.copytree(old, new)
    t = time.time() - 60
    for f in old.iterdir():
        os.utime(f, (t, t))
    w = Watcher(store, trainer, DownRedis(), ns="watchtest")
    assert w.tick(time.time() + 1) is None
    (version,) = [s.version for s in store.versions()]
    assert w.last_skip.reason == (f"nothing to publish: {old} is already version {version}; "
                                  f"{new} refused (logged)")


class _DictRedis:
    """GET/SET of a dict, bytes out as redis-py gives them; ``down`` makes both raise."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.sets = 0
        self.down = False

    def get(self, key):
        if self.down:
            raise ConnectionError("Redis is down")
        return self.data.get(key)

    def set(self, key, value):
        if self.down:
            raise ConnectionError("Redis is down")
        self.sets += 1
        self.data[key] = value.encode() if isinstance(value, str) else value


def test_each_tick_resyncs_redis_with_the_pointer_and_logs_an_outage(tmp_path, caplog) -> None:
    """The watcher's re-sync is :func:`snapshotter.sync_active`: Redis is set only when it names
    another version than the pointer; a Redis that does not answer is one warning per tick,
    never a crash, and the next tick that reaches it repairs it."""
    from snapshotter import sync_active
    from snapshotter.publish import publish

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=0))
    trainer = tmp_path / "t"
    v1 = publish(write_checkpoint(trainer / "a", n_items=30, dim=4, seed=1), store).version
    client, key = _DictRedis(), "diam:watchsync:model:active"
    w = Watcher(store, trainer, client, ns="watchsync")
    assert w.tick(time.time() + 1) is None
    assert client.data == {key: v1.encode()} and client.sets == 1
    assert w.tick(time.time() + 2) is None and client.sets == 1  # named already: one GET
    client.data[key] = b"20000101T000000-00000000"  # a stale announcement (Redis restored)
    client.down = True
    with caplog.at_level(logging.WARNING, logger="snapshotter.publish"):
        assert w.tick(time.time() + 3) is None
    assert [r.getMessage() for r in caplog.records] == [
        "could not sync the active version into Redis: Redis is down"]
    client.down = False
    w.tick(time.time() + 4)
    assert client.data == {key: v1.encode()} and client.sets == 2
    assert sync_active(store, client, "watchsync") == (v1, v1)



def test_the_resync_records_what_it_announces(tmp_path) -> None:
    """The watcher's (and the retrain service's) re-sync records the announced version in the
    store, also when Redis already named it (a store from before the record was kept), so a
    later --no-redis publish keeps it."""
    from snapshotter import sync_active
    from snapshotter.publish import publish
    from snapshotter.store import ANNOUNCED

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=0, keep=1))
    v1 = publish(write_checkpoint(tmp_path / "a", n_items=30, dim=4, seed=1), store).version
    client = _DictRedis()
    assert store.announcements() == {}
    sync_active(store, client, "watchsync")  # sets it
    assert store.announcements() == {"watchsync": v1}
    (store.root / ANNOUNCED).unlink()
    assert sync_active(store, client, "watchsync") == (v1, v1)  # named already: recorded
    assert store.announcements() == {"watchsync": v1}
    later = [publish(write_checkpoint(tmp_path / f"b{i}", n_items=30, dim=4, seed=i + 2),
                     store).version for i in range(3)]  # --no-redis
    assert [s.version for s in store.versions()] == [v1, *later[1:]]


def test_the_resync_never_creates_a_missing_store(tmp_path) -> None:
    """Before the first publish there is nothing to announce: a watcher with Redis leaves a
    snapshot directory that does not exist as it is (the first publish creates it)."""
    from snapshotter import sync_active

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=0))
    client = _DictRedis()
    w = Watcher(store, tmp_path / "t", client, ns="watchsync")
    assert w.tick(time.time()) is None
    assert sync_active(store, client, "watchsync") == (None, None)
    assert not store.root.exists() and client.data == {} and client.sets == 0
