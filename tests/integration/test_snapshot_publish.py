"""Publishing snapshots against the real Redis: the active version is announced, a tampered
snapshot is refused while the old one keeps serving, rollback restores, watch re-syncs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from diam.cli import main
from serving_cache import RedisWriter, UserVectors, model_active_key
from serving_cache.api import get_app
from serving_cache.reader import fail_fast
from serving_cache.recommend import Recommender
from snapshotter import ActiveWatcher, SnapshotConfig, SnapshotStore
from snapshotter.testing import write_checkpoint


@pytest.fixture
def cli(stack, tmp_path, monkeypatch, namespace):
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_REDIS_URL", stack.redis_url)
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "8")  # the tests' checkpoints: publish refuses others
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [*args, "--namespace", namespace], catch_exceptions=False)

    return invoke


def _publish(cli, ck) -> str:
    r = cli("snapshot", "publish", str(ck))
    assert r.exit_code == 0, r.output
    return r.output.split("active: ")[1].split()[0]


def _active_in_redis(redis_client, ns: str) -> str | None:
    raw = redis_client.get(model_active_key(ns))
    return raw.decode() if raw else None


def _serve(tmp_path, redis_client, ns):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    client = fail_fast(redis_client)
    watcher = ActiveWatcher(store, client, check_every_s=0, ns=ns)
    return store, get_app(Recommender(None, client, ns), watcher=watcher, reload_every_s=3600)


def test_publish_sets_the_active_version_in_redis(cli, tmp_path, redis_client, namespace):
    v1 = _publish(cli, write_checkpoint(tmp_path / "ck1", n_items=80, dim=8, seed=1))
    assert _active_in_redis(redis_client, namespace) == v1
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    watcher = ActiveWatcher(store, redis_client, check_every_s=0, ns=namespace)
    assert watcher.poll() == (v1, store.path(v1))
    v2 = _publish(cli, write_checkpoint(tmp_path / "ck2", n_items=80, dim=8, seed=2))
    assert _active_in_redis(redis_client, namespace) == v2
    assert watcher.poll() == (v2, store.path(v2))  # what a dataflow worker sees per batch
    assert watcher.poll() is None


def test_tampered_snapshot_is_refused_and_the_old_one_still_serves(
    cli, tmp_path, redis_client, namespace
):
    v1 = _publish(cli, write_checkpoint(tmp_path / "ck1", n_items=80, dim=8, seed=1))
    RedisWriter(redis_client, namespace).write_batch(
        [
            (
                "u1",
                UserVectors(
                    seq=1, model=v1, k=1, d=0.5, dim=8, vecs=np.ones((1, 8), np.float32), ts=1, n=1
                ),
            ),
        ]
    )
    store, app = _serve(tmp_path, redis_client, namespace)
    with TestClient(app) as http:
        assert http.get("/health").json() == {"status": "ok", "redis": True, "snapshot": v1,
                                              "pid": os.getpid()}
        # A truncated checkpoint never gets published: Redis still names v1.
        bad = write_checkpoint(tmp_path / "bad", n_items=80, dim=8, seed=3)
        (bad / "weights.safetensors").write_bytes((bad / "weights.safetensors").read_bytes()[:-40])
        r = cli("snapshot", "publish", str(bad))
        assert r.exit_code == 1 and "weights.safetensors" in r.output
        assert _active_in_redis(redis_client, namespace) == v1
        # A snapshot tampered with after publishing is refused by the server, naming the file.
        v2 = _publish(cli, write_checkpoint(tmp_path / "ck2", n_items=80, dim=8, seed=2))
        faiss_file = store.path(v2) / "items.faiss"
        faiss_file.write_bytes(faiss_file.read_bytes()[:-8] + b"\x00" * 8)
        assert app.state.refresh() is None
        assert http.get("/health").json()["snapshot"] == v1
        rec = http.get("/users/u1/recommendations?n=5").json()
        assert rec["snapshot"] == v1 and not rec["cold"] and len(rec["items"]) == 5
        r = cli("snapshot", "rollback", v2)
        assert r.exit_code == 1 and "items.faiss" in r.output
        assert "FAILED" in cli("snapshot", "list", "--verify").output


def test_rollback_restores_the_previous_version(cli, tmp_path, redis_client, namespace):
    v1 = _publish(cli, write_checkpoint(tmp_path / "ck1", n_items=80, dim=8, seed=1))
    store, app = _serve(tmp_path, redis_client, namespace)
    with TestClient(app) as http:
        v2 = _publish(cli, write_checkpoint(tmp_path / "ck2", n_items=90, dim=8, seed=2))
        assert app.state.refresh() == v2
        r = cli("snapshot", "rollback")
        assert r.exit_code == 0 and f"active: {v1}" in r.output
        assert _active_in_redis(redis_client, namespace) == v1 and store.active_version() == v1
        assert app.state.refresh() == v1
        assert http.get("/health").json()["snapshot"] == v1
        assert len(http.get("/users/anyone/recommendations?n=90").json()["items"]) == 80


def test_watch_resyncs_redis_with_the_pointer(cli, tmp_path, redis_client, namespace, monkeypatch):
    monkeypatch.setenv("DIAM_SNAPSHOT_SETTLE_S", "0")
    write_checkpoint(tmp_path / "trainer" / "run1", n_items=40, dim=8)
    r = cli("snapshot", "watch", "--once", "--trainer-dir", str(tmp_path / "trainer"))
    version = r.output.split("published ")[1].split()[0]
    assert _active_in_redis(redis_client, namespace) == version
    redis_client.delete(model_active_key(namespace))  # e.g. Redis restarted without persistence
    cli("snapshot", "watch", "--once", "--trainer-dir", str(tmp_path / "trainer"))
    assert _active_in_redis(redis_client, namespace) == version


def test_publish_tunes_nprobe_on_the_namespace_users(cli, tmp_path, redis_client, namespace,
                                                     monkeypatch):
    from snapshotter.testing import clustered_vectors

    x, _ = clustered_vectors(3000, 8, n_clusters=20, seed=5)
    monkeypatch.setenv("DIAM_SNAPSHOT_EXACT_MAX_ITEMS", "1000")
    ck = write_checkpoint(tmp_path / "ck", item_emb=x)
    first = cli("snapshot", "publish", str(ck))  # nobody served yet
    assert first.exit_code == 0 and "from item mixtures" in first.output, first.output
    rng = np.random.default_rng(0)
    RedisWriter(redis_client, namespace).write_batch(
        (f"u{i}", UserVectors(seq=1, model="m", k=2, d=0.5, dim=8, ts=0, vecs=(
            x[rng.integers(0, 3000, 2)] + 0.05 * rng.standard_normal((2, 8))).astype(np.float32)))
        for i in range(150))
    # other weights over the same items (the same weights would re-activate the first version)
    r = cli("snapshot", "publish", str(write_checkpoint(tmp_path / "ck2", item_emb=x, seed=1)))
    assert r.exit_code == 0 and "300 queries from served users" in r.output, r.output
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    info = store.manifest(_active_in_redis(redis_client, namespace))["index"]
    assert info["tuning_queries_source"] == "served users" and info["tuning_users"] == 150


def test_republishing_kept_weights_reactivates_and_announces_them(cli, tmp_path, redis_client,
                                                                  namespace):
    ck1 = write_checkpoint(tmp_path / "ck1", n_items=80, dim=8, seed=1)
    v1 = _publish(cli, ck1)
    v2 = _publish(cli, write_checkpoint(tmp_path / "ck2", n_items=80, dim=8, seed=2))
    r = cli("snapshot", "publish", str(ck1))
    assert r.exit_code == 0 and f"already published as {v1}; activated" in r.output, r.output
    assert f"previous: {v2}" in r.output and f"redis: diam:{namespace}:model:active = {v1}" in r.output
    assert _active_in_redis(redis_client, namespace) == v1
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    assert [s.version for s in store.versions()] == [v1, v2]
    back = cli("snapshot", "rollback")  # to the version active before, v2
    assert back.exit_code == 0 and f"active: {v2}" in back.output
    assert _active_in_redis(redis_client, namespace) == v2


def test_publish_refuses_an_embedding_size_the_stream_cannot_use(cli, tmp_path, monkeypatch,
                                                                 redis_client, namespace):
    """A d=8 model under DIAM_ONLINE_DIM=64 is refused, as diam run refuses it at start, with
    nothing announced; --allow-dim-change (a deliberate change) publishes it with a warning."""
    ck = write_checkpoint(tmp_path / "ck1", n_items=80, dim=8, seed=1)
    monkeypatch.setenv("DIAM_ONLINE_DIM", "64")
    r = cli("snapshot", "publish", str(ck))
    assert r.exit_code == 1 and "has d=8, DIAM_ONLINE_DIM is 64" in r.output, r.output
    assert "nothing was published" in r.output and "Traceback" not in r.output
    assert _active_in_redis(redis_client, namespace) is None
    r = cli("snapshot", "publish", str(ck), "--allow-dim-change")
    assert r.exit_code == 0 and "has d=8 but DIAM_ONLINE_DIM is 64" in r.output, r.output
    v = r.output.split("active: ")[1].split()[0]
    assert _active_in_redis(redis_client, namespace) == v
    monkeypatch.setenv("DIAM_ONLINE_DIM", "8")
    r = cli("snapshot", "publish", str(write_checkpoint(tmp_path / "ck2", n_items=80, dim=8, seed=2)))
    assert r.exit_code == 0 and "DIAM_ONLINE_DIM" not in r.output, r.output


def test_publish_names_what_a_bad_path_is(cli, tmp_path):
    """The checkpoint reader, not click, says what the path is: a symlink loop or a dangling
    link read "does not exist" before."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "file").write_text("x")
    for name, why in [("a", "a symlink loop"), ("nope", "does not exist"),
                      ("dangling", f"a symlink to '{tmp_path / 'gone'}', which does not exist"),
                      ("file", "not a directory")]:
        r = cli("snapshot", "publish", str(tmp_path / name))
        assert r.exit_code != 0 and f"{tmp_path / name}: {why}" in r.output, (name, r.output)
