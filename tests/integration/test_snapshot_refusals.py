"""Operators see a refused snapshot: an announced version that fails its hash, or has no
manifest (a half-written publish), leaves the old one serving and says so in ``diam serve``'s
``/health`` (``announced``, ``refused``) and ``/metrics``
(``diam_snapshot_reloads_total{outcome="failed"}``), and in ``diam run``'s
(``diam_flow_snapshot_refusals_total``); the server's first load is no reload
(``outcome="ok"`` stays 0 until a new version is swapped in). Against the real Redis, with
snapshots published as every command publishes them."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from diam.app import load_holder
from diam.server import _LoadRefusals
from online_model.config import OnlineConfig
from serving_cache.api import get_app
from serving_cache.reader import fail_fast
from serving_cache.recommend import Recommender
from snapshotter import ActiveWatcher, SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from streams.config import FlowConfig
from streams.metrics import FlowMetrics

DIM = 8


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _publish(store: SnapshotStore, tmp: Path, seed: int, redis_client, ns: str) -> str:
    ck = write_checkpoint(tmp / f"ck{seed}", n_items=60, dim=DIM, n_categories=5, seed=seed)
    return publish(ck, store, redis_client, ns).version


def _app(store: SnapshotStore, redis_client, namespace: str):  # type: ignore[no-untyped-def]
    """The app as ``diam serve`` builds it around its watcher, nothing loaded before its start."""
    client = fail_fast(redis_client)
    recommender = Recommender(None, client, namespace)
    watcher = _LoadRefusals(ActiveWatcher(store, client, check_every_s=0, ns=namespace),
                            recommender)
    return get_app(recommender, watcher=watcher, reload_every_s=3600)


def test_serve_start_is_no_reload(tmp_path, redis_client, namespace):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    v1 = _publish(store, tmp_path, 1, redis_client, namespace)
    app = _app(store, redis_client, namespace)
    with TestClient(app) as http:
        # the start's load is no reload: an alert on increase(...{outcome="ok"}) stays quiet
        assert http.get("/health").json()["snapshot"] == v1
        assert "diam_snapshot_reloads_total{" not in http.get("/metrics").text
        v2 = _publish(store, tmp_path, 2, redis_client, namespace)
        assert app.state.refresh() == v2
        assert 'diam_snapshot_reloads_total{outcome="ok"} 1.0' in http.get("/metrics").text


def test_serve_says_which_announced_version_it_refused_and_counts_it(tmp_path, redis_client,
                                                                     namespace):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    v1 = _publish(store, tmp_path, 1, redis_client, namespace)
    app = _app(store, redis_client, namespace)
    with TestClient(app) as http:
        v2 = _publish(store, tmp_path, 2, redis_client, namespace)
        _flip_a_byte(store.path(v2) / "weights.safetensors")
        assert app.state.refresh() is None
        health = http.get("/health")
        assert health.status_code == 200, health.text  # the old version still answers
        body = health.json()
        assert (body["status"], body["snapshot"], body["announced"]) == ("ok", v1, v2)
        assert "weights.safetensors" in body["refused"] and "sha256" in body["refused"]
        metrics = http.get("/metrics").text
        assert 'diam_snapshot_reloads_total{outcome="failed"} 1.0' in metrics
        assert app.state.refresh() is None  # not retried, not counted again
        assert 'diam_snapshot_reloads_total{outcome="failed"} 1.0' in http.get("/metrics").text

        v3 = _publish(store, tmp_path, 3, redis_client, namespace)  # a half-written publish
        (store.path(v3) / "manifest.json").unlink()
        assert app.state.refresh() is None
        body = http.get("/health").json()
        assert (body["snapshot"], body["announced"]) == (v1, v3)
        assert "manifest.json" in body["refused"]
        assert 'diam_snapshot_reloads_total{outcome="failed"} 2.0' in http.get("/metrics").text

        v4 = _publish(store, tmp_path, 4, redis_client, namespace)
        assert app.state.refresh() == v4
        body = http.get("/health").json()
        assert body["snapshot"] == v4 and "announced" not in body and "refused" not in body


def test_a_run_counts_the_announced_versions_it_refused(stack, topic, namespace, tmp_path,
                                                        redis_client):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    v1 = _publish(store, tmp_path, 1, redis_client, namespace)
    s = stack.settings.model_copy(update={
        "kafka": stack.settings.kafka.model_copy(update={
            "clicks_topic": topic, "items_topic": f"{topic}.items"}),
        "online": OnlineConfig(dim=DIM), "snapshot": store.cfg,
        "flow": FlowConfig(reload_check_s=0.01)})
    holder = load_holder(s, namespace=namespace)
    try:
        metrics = FlowMetrics(holder=holder, process="p")
        assert 'diam_flow_snapshot_refusals_total{process="p"} 0.0' in (
            metrics.exposition().decode())
        v2 = _publish(store, tmp_path, 2, redis_client, namespace)
        _flip_a_byte(store.path(v2) / "weights.safetensors")
        holder.maybe_reload()
        assert holder.version == v1
        text = metrics.exposition().decode()
        assert 'diam_flow_snapshot_refusals_total{process="p"} 1.0' in text
        assert 'diam_flow_hot_reloads_total{process="p"} 0.0' in text
    finally:
        holder.close()
    # closed, it still says what it refused
    assert 'diam_flow_snapshot_refusals_total{process="p"} 1.0' in (
        metrics.exposition().decode())
