"""Concurrent publishes of one snapshot store, against the real Redis: they switch one after
the other, each reports the version that was active before it, disk and Redis end on the
same version, and a duplicate publish of identical weights re-activates the kept version.

Each thread waits at a barrier inside the index build, which every publish runs before its
switch, so all of them have read the store before any switches: the race the lock closes
happens on every run, not by chance."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

import snapshotter.index
from serving_cache import model_active_key
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint


@pytest.fixture
def meet(monkeypatch):
    """``meet(n)``: the next ``n`` index builds wait for one another before they go on."""

    def arm(n: int) -> None:
        barrier = threading.Barrier(n, timeout=120)
        build = snapshotter.index.build_index

        def build_together(*args, **kwargs):
            barrier.wait()
            return build(*args, **kwargs)

        monkeypatch.setattr(snapshotter.index, "build_index", build_together)

    return arm


def _run_together(calls):
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def test_concurrent_publishes_report_the_truth_and_end_in_one_state(
        tmp_path, redis_client, namespace, meet):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=10))
    first = publish(write_checkpoint(tmp_path / "ck0", n_items=40, dim=4, seed=0), store,
                    redis_client, namespace).version
    cks = [write_checkpoint(tmp_path / f"ck{i}", n_items=40, dim=4, seed=i) for i in (1, 2, 3)]
    meet(3)
    results = _run_together([lambda ck=ck: publish(ck, store, redis_client, namespace)
                             for ck in cks])
    order = [v for _, v in store.activations()]
    assert order[0] == first and sorted(order[1:]) == sorted(r.version for r in results)
    for res in results:  # what `diam snapshot publish` prints as previous:
        assert res.previous == order[order.index(res.version) - 1]
    assert store.active_version() == order[-1]
    assert redis_client.get(model_active_key(namespace)).decode() == order[-1]


def test_a_racing_duplicate_publish_reactivates_the_kept_version(
        tmp_path, redis_client, namespace, meet):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    ck = write_checkpoint(tmp_path / "ck", n_items=40, dim=4, seed=7)
    now = datetime(2026, 12, 6, 11, 50, 42, tzinfo=UTC)  # a retry in the same second
    meet(2)
    results = _run_together([lambda: publish(ck, store, redis_client, namespace, now=now)] * 2)
    assert [s.version for s in store.versions()] == [results[0].version]  # one copy
    assert results[0].version == results[1].version
    assert sorted(r.reused for r in results) == [False, True]
    assert redis_client.get(model_active_key(namespace)).decode() == results[0].version
