"""Pruning old snapshots against the real Redis: a version the namespace announces (what
servers serve) and the rollback target are never deleted, and a publish that cannot read
Redis prunes nothing rather than guess."""

from __future__ import annotations

import pytest

from serving_cache import model_active_key
from snapshotter import SnapshotConfig, SnapshotError, SnapshotStore, publish
from snapshotter.testing import write_checkpoint


def _ck(tmp_path, i: int):
    return write_checkpoint(tmp_path / f"ck{i}", n_items=40, dim=4, seed=i)


@pytest.fixture
def redis_down():
    """A real client of a Redis that is not there (connection refused at once): its one
    retry immediate (``fail_fast``), not redis-py's default backoff of about 3.7 s a command
    (what fails is the same error; the backoff made this file's test take 31 s)."""
    import redis

    from serving_cache.reader import fail_fast

    client = fail_fast(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1))
    yield client
    client.close()


def test_publishes_while_redis_is_down_keep_the_announced_version(
        tmp_path, redis_client, namespace, redis_down):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=2))
    publish(_ck(tmp_path, 1), store, redis_client, namespace)
    served = publish(_ck(tmp_path, 2), store, redis_client, namespace).version
    for i in (3, 4, 5, 6):  # the retrain service retrying while Redis is away
        with pytest.raises(SnapshotError) as err:
            publish(_ck(tmp_path, i), store, redis_down, namespace)
    assert redis_client.get(model_active_key(namespace)).decode() == served
    assert served in {s.version for s in store.versions()}  # still there to serve and roll to
    store.activate(served)  # what `diam snapshot rollback <served>` does on disk
    assert "no old version was pruned" in str(err.value)


def test_the_announced_version_survives_a_prune_when_the_pointer_moved_without_redis(
        tmp_path, redis_client, namespace):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=3))
    served = publish(_ck(tmp_path, 1), store, redis_client, namespace).version
    v2 = publish(_ck(tmp_path, 2), store).version  # --no-redis: Redis still announces v1
    v3 = publish(_ck(tmp_path, 3), store).version
    res = publish(_ck(tmp_path, 4), store, redis_client, namespace)
    assert res.pruned == [v2] and res.not_pruned is None  # the oldest not in use or the way back
    assert [s.version for s in store.versions()] == [served, v3, res.version]


def test_publishes_without_redis_keep_the_version_last_announced(
        tmp_path, redis_client, namespace):
    """``--no-redis`` publishes do not read which version the namespace announces: they keep
    what the store recorded when it last announced (ANNOUNCED), so what servers serve stays,
    and prune the rest down to keep (the parent pruned nothing; its parent deleted the
    announced version)."""
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=1))
    served = publish(_ck(tmp_path, 1), store, redis_client, namespace).version
    offline = [publish(_ck(tmp_path, i), store) for i in (2, 3, 4)]
    assert [r.pruned for r in offline] == [[], [], [offline[0].version]]
    assert all(r.not_pruned is None for r in offline)
    assert redis_client.get(model_active_key(namespace)).decode() == served
    assert [s.version for s in store.versions()] == [served, offline[1].version,
                                                     offline[2].version]


def test_a_rollback_with_redis_is_what_a_later_no_redis_prune_keeps(
        stack, tmp_path, redis_client, namespace, monkeypatch):
    """``diam snapshot rollback`` announces in Redis and records it: --no-redis publishes
    after it keep the version rolled back to (what servers serve now)."""
    from click.testing import CliRunner

    from diam.cli import main

    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_SNAPSHOT_KEEP", "1")
    monkeypatch.setenv("DIAM_REDIS_URL", stack.redis_url)
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "4")

    def cli(*args: str) -> str:
        r = CliRunner().invoke(main, [*args, "--namespace", namespace], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    v1 = cli("snapshot", "publish", str(_ck(tmp_path, 1))).split("active: ")[1].split()[0]
    cli("snapshot", "publish", str(_ck(tmp_path, 2)))
    assert f"redis: diam:{namespace}:model:active = {v1}" in cli("snapshot", "rollback", v1)
    for i in (3, 4, 5):
        cli("snapshot", "publish", str(_ck(tmp_path, i)), "--no-redis")
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    assert redis_client.get(model_active_key(namespace)).decode() == v1
    assert v1 in {s.version for s in store.versions()} and len(store.versions()) == 3


def test_a_dropped_namespace_no_longer_keeps_its_version(
        stack, tmp_path, redis_client, namespace, monkeypatch):
    """The reviewer's repro (391d998): one publish into a shadow namespace, `diam drop` of it,
    then four publishes: a publish with Redis keeps only the active version, the one before it
    and what Redis announces (391d998 kept the dropped shadow's version for ever: 3 versions);
    and the drop removes the shadow's line, so a --no-redis prune no longer keeps it either."""
    from click.testing import CliRunner

    from diam.cli import main
    from snapshotter.store import ANNOUNCED

    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_SNAPSHOT_KEEP", "2")
    monkeypatch.setenv("DIAM_REDIS_URL", stack.redis_url)
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "4")
    shadow = f"{namespace}-shadow-b"

    def cli(*args: str) -> str:
        r = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    try:
        cli("snapshot", "publish", str(_ck(tmp_path, 0)), "--namespace", shadow)
        store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
        assert shadow in store.announcements()
        out = cli("drop", shadow, "--yes", "--keep-topics")
        assert f"removed namespace {shadow!r} from {tmp_path / 'snaps' / ANNOUNCED}" in out
        assert shadow not in store.announcements()
        for i in (1, 2, 3, 4):
            cli("snapshot", "publish", str(_ck(tmp_path, i)), "--namespace", namespace)
        assert len(store.versions()) == 2
        # a line left by an older diam (or a drop without the snapshot dir) goes at the next
        # publish with Redis, whose key is gone
        store.record_announced(shadow, store.versions()[0].version)
        cli("snapshot", "publish", str(_ck(tmp_path, 5)), "--namespace", namespace)
        assert shadow not in store.announcements() and len(store.versions()) == 2
        for i in (6, 7):  # --no-redis: the record of the namespace still announced is kept
            cli("snapshot", "publish", str(_ck(tmp_path, i)), "--no-redis", "--namespace",
                namespace)
        assert redis_client.get(model_active_key(namespace)).decode() in {
            s.version for s in store.versions()}
        assert len(store.versions()) == 3
    finally:
        for key in redis_client.scan_iter(match=f"diam:{shadow}:*"):
            redis_client.delete(key)
