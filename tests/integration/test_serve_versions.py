"""``diam serve`` as a real process on the stack's Redis: a user whose vectors belong to a version
older than the ones it swapped in (no click since two publishes) is answered from that version,
read from the snapshot store, as ``diam recommend`` answers them; ``/interests`` says why a user
is cold, has no top items or is stale."""

from __future__ import annotations

import os
import time

import numpy as np

from diam.stack_proc import free_port
from serving_cache import RedisWriter, UserVectors, encode_user, user_key
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from tests.integration.helpers import http_get, serving

DIM = 8


def _user(model: str, vecs: np.ndarray, seen: list[int]) -> UserVectors:
    return UserVectors(seq=1, model=model, k=len(vecs), d=0.5, dim=DIM, vecs=vecs, ts=1, n=10,
                       seen=np.array(seen, np.int32))


def test_a_user_of_an_old_version_is_answered_from_it(stack, tmp_path, redis_client, namespace):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    versions = [publish(write_checkpoint(tmp_path / f"ck{i}", n_items=300, dim=DIM, seed=i),
                        store, redis_client, namespace).version for i in (1, 2, 3)]
    v1 = versions[0]
    old = SnapshotIndex.load(store.path(v1))
    # anchored on v1 before the two later publishes; rows 0 and 150 were clicked
    vecs = old.item_vecs[[0, 150]]
    RedisWriter(redis_client, namespace).write_batch([
        ("old-user", _user(v1, vecs, [0, 150])),
        ("gone-user", _user("20200101T000000000000-gone", vecs, [0, 150])),
        ("wide-user", UserVectors(seq=1, model=v1, k=1, d=0.5, dim=DIM + 1,
                                  vecs=np.ones((1, DIM + 1), np.float32), ts=1, n=1)),
    ])
    redis_client.set(user_key(namespace, "broken-user"), encode_user(_user(v1, vecs, []))[:7])
    port = free_port()
    env = {**os.environ, "DIAM_SNAPSHOT_DIR": str(store.root),
           "DIAM_CONFIG": "", "DIAM_REDIS_URL": stack.redis_url,
           "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_NAMESPACE": namespace}
    with serving(env, port, "--no-ui"):
        # the first request starts v1's load on a thread and is answered meanwhile, saying
        # so: cold, v1 being another model than the active one (independently trained, its
        # vectors would pick items at random in the active space); a later one from v1
        # (stale: not the vectors' own version answering; cold until v1 is in, no click needed)
        status, body = http_get(port, "/users/old-user/recommendations?n=10")
        assert status == 200 and body["cold"] is True, body
        assert (body["stale"], body["user_model"], body["snapshot"]) == (
            True, v1, versions[-1]), body
        assert body["reason"].startswith(
            f"the user's vectors belong to snapshot {v1}, being loaded, of another model than "
            f"{versions[-1]}") and body["reason"].endswith(
            "answered cold, the user's last seen items not left out, until that version has "
            "loaded"), body  # its seen rows index v1's table, not loaded yet
        deadline = time.monotonic() + 60
        while body["reason"] is not None:
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
            status, body = http_get(port, "/users/old-user/recommendations?n=10")
        assert body["snapshot"] == v1 and body["reason"] is None, body
        ids = [it["item_id"] for it in body["items"]]
        # its own index's nearest items, its seen rows (of v1's table) left out
        expect = [str(old.item_ids[r]) for r in old.search(vecs, 100)[1].reshape(-1)]
        assert set(ids) <= set(expect) and not {"i0", "i150"} & set(ids), (ids, expect)

        status, body = http_get(port, "/users/old-user/interests")
        assert status == 200 and body["stale"] is False and body["reason"] is None, body
        assert body["interests"][0]["top_items"] == [
            str(x) for x in old.item_ids[old.search(vecs, 5)[1][0]]], body

        # a version name not in the store is known gone a stat away: "not loaded" at once,
        # no load started on a thread
        status, body = http_get(port, "/users/gone-user/recommendations?n=5")
        assert body["cold"] is True and body["snapshot"] == versions[-1], body
        assert body["stale"] is True and body["user_model"] == "20200101T000000000000-gone"
        assert ", not loaded, of another model" in body["reason"], body
        assert body["reason"].endswith("until the user's next click re-anchors them"), body
        status, body = http_get(port, "/users/gone-user/interests")
        assert body["stale"] is True and body["reason"].startswith(
            "the user's vectors belong to snapshot 20200101T000000000000-gone, not loaded, of "
            f"another model than {versions[-1]}"), body
        # its two vectors shown, no items from a space they do not live in
        assert [i["top_items"] for i in body["interests"]] == [[], []], body

        for uid, reason in (("nobody", "unknown user"),
                            ("broken-user", "the stored value does not decode: "),
                            ("wide-user", f"vectors have dim {DIM + 1}, index has {DIM}")):
            status, body = http_get(port, f"/users/{uid}/interests")
            assert status == 200 and body["reason"].startswith(reason), (uid, body)
            assert body["interests"] == [] or all(not i["top_items"] for i in body["interests"])
