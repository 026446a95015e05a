"""``diam serve`` started on a damaged active version (a file failing its hash) serves once
the file is repaired and the version rolled back to (the pointer written again, Redis
re-announced), without a restart: before, the server's watcher never offered a version it had
refused again while the pointer named the same one, and the server stayed unavailable."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from diam.server import ServeOptions, build_app
from snapshotter import SnapshotStore, publish
from snapshotter.publish import announce
from snapshotter.testing import write_checkpoint


def _store_with_one_version(stack, namespace, tmp_path, redis_client):  # type: ignore[no-untyped-def]
    """The stack's settings with a store of their own under ``tmp_path``, one version published
    and announced in ``namespace``."""
    s = stack.settings
    s = s.model_copy(update={"snapshot": s.snapshot.model_copy(
        update={"dir": str(tmp_path / "snapshots")})})
    store = SnapshotStore(s.snapshot)
    v1 = publish(write_checkpoint(tmp_path / "ck1", n_items=60, dim=8, seed=1), store,
                 redis_client, namespace).version
    return s, store, v1


def test_a_server_started_on_a_damaged_version_serves_it_once_repaired_and_rolled_back(
        stack, namespace, tmp_path, redis_client) -> None:
    s, store, v1 = _store_with_one_version(stack, namespace, tmp_path, redis_client)
    weights = store.path(v1) / "weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    app = build_app(s, ServeOptions(namespace=namespace, reload_every_s=0.1, ui=False,
                                    follow_items=False, live_popularity=False))
    with TestClient(app) as c:
        first = c.get("/health")
        assert first.status_code == 503 and first.json()["snapshot"] is None, first.text
        weights.write_bytes(good)  # repaired: still refused while nothing moved
        time.sleep(0.5)
        assert c.get("/health").status_code == 503
        with store.locked():  # what `diam snapshot rollback V` does
            store.activate(v1)
            announce(store, redis_client, namespace, v1)
        deadline = time.monotonic() + 30  # a bound on waiting, not on speed
        while (r := c.get("/health")).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        assert r.json()["snapshot"] == v1


def test_a_version_the_server_failed_to_load_is_loaded_once_repaired_and_rolled_back(
        stack, namespace, tmp_path, redis_client) -> None:
    """A version that verifies but does not load (here its manifest asks an exact index for
    an nprobe; its hashes do not cover that) is refused, and taken once repaired and rolled
    back to: before, the watcher took it as the current version and never offered it again."""
    import json

    s, store, v1 = _store_with_one_version(stack, namespace, tmp_path, redis_client)
    app = build_app(s, ServeOptions(namespace=namespace, reload_every_s=0.1, ui=False,
                                    follow_items=False, live_popularity=False))
    with TestClient(app) as c:
        assert c.get("/health").json()["snapshot"] == v1
        v2 = publish(write_checkpoint(tmp_path / "ck2", n_items=60, dim=8, seed=2),
                     store).version  # not announced until it is damaged
        manifest = store.path(v2) / "manifest.json"
        good = manifest.read_text()
        bad = json.loads(good)
        bad["index"]["nprobe"] = 4
        manifest.write_text(json.dumps(bad))
        announce(store, redis_client, namespace, v2)
        time.sleep(1.0)  # polled and refused
        assert c.get("/health").json()["snapshot"] == v1
        manifest.write_text(good)
        with store.locked():  # `diam snapshot rollback V2`
            store.activate(v2)
            announce(store, redis_client, namespace, v2)
        deadline = time.monotonic() + 30  # a bound on waiting, not on speed
        while (r := c.get("/health")).json()["snapshot"] != v2:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
