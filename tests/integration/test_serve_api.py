"""The recommendation API against the real Redis of the stack: answers, modes, cold start,
seen items, hot reload, and the contract checked against the OpenAPI schema (schemathesis)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, reject, settings
from schemathesis.generation.modes import GenerationMode

from online_model.aggregate import list_diversity
from serving_cache import RedisWriter, UserVectors, encode_user, user_key
from serving_cache.api import MAX_SEEN, get_app
from serving_cache.reader import fail_fast
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from snapshotter import ActiveWatcher, SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint

DIM = 8


def _user(model: str, vecs: np.ndarray, d: float, seq: int = 1) -> UserVectors:
    return UserVectors(seq=seq, model=model, k=len(vecs), d=d, dim=DIM, vecs=vecs, ts=1, n=10)


@pytest.fixture
def served(tmp_path, redis_client, namespace):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    ck = write_checkpoint(
        tmp_path / "ck1",
        n_items=300,
        dim=DIM,
        n_categories=5,
        seed=1,
        item_pop=np.arange(300)[::-1],
        lineage=["gone-version"],  # a retrain warm-started from a version no longer kept
    )
    v1 = publish(ck, store, redis_client, namespace).version
    snap = SnapshotIndex.load(store.path(v1))
    interests = snap.item_vecs[[0, 100, 200]]
    RedisWriter(redis_client, namespace).write_batch(
        [
            ("u-high", _user(v1, interests, 0.9)),
            ("u-low", _user(v1, interests, 0.1)),
            ("u-mid", _user(v1, interests[:2], 0.5)),
        ]
    )
    client = fail_fast(redis_client)
    watcher = ActiveWatcher(store, client, check_every_s=0, ns=namespace, current=v1)
    app = get_app(Recommender(snap, client, namespace), watcher=watcher, reload_every_s=3600)
    with TestClient(app) as http:
        yield SimpleNamespace(
            http=http,
            app=app,
            store=store,
            ns=namespace,
            v1=v1,
            snap=snap,
            redis=redis_client,
            tmp=tmp_path,
        )


def _items(http, url):
    r = http.get(url)
    assert r.status_code == 200, r.text
    return r.json()


def test_known_user_answer_and_diversity_rises_with_d(served):
    high = _items(served.http, "/users/u-high/recommendations?n=12")
    low = _items(served.http, "/users/u-low/recommendations?n=12")
    for body, d in ((high, 0.9), (low, 0.1)):
        ids = [it["item_id"] for it in body["items"]]
        assert len(ids) == 12 == len(set(ids))
        assert (
            body["cold"] is False
            and body["k"] == 3
            and body["d_user"] == pytest.approx(d, abs=1e-6)
        )
        assert body["snapshot"] == served.v1 == body["user_model"] and body["stale"] is False

    def idx(body):
        return np.array([served.snap.index_of(it["item_id"]) for it in body["items"]])

    vecs, cats = served.snap.item_vecs, served.snap.item_categories
    assert list_diversity(idx(high), vecs, cats) > list_diversity(idx(low), vecs, cats)


def test_manual_and_context_modes_shift_d(served):
    h = served.http
    assert _items(h, "/users/u-high/recommendations?mode=manual&delta=-0.5")[
        "d_used"
    ] == pytest.approx(0.45, abs=1e-6)
    assert _items(h, "/users/u-mid/recommendations?mode=context&hour=10&device=desktop")[
        "d_used"
    ] == pytest.approx(0.45, abs=1e-6)
    assert _items(h, "/users/u-mid/recommendations?mode=context&hour=21&device=tv")[
        "d_used"
    ] == pytest.approx(0.6, abs=1e-6)
    assert _items(h, "/users/u-mid/recommendations?mode=auto&delta=0.5")["d_used"] == pytest.approx(
        0.5, abs=1e-6
    )


def test_unknown_user_gets_popular_items_across_categories(served):
    body = _items(served.http, "/users/nobody-yet/recommendations?n=10")
    assert body["cold"] is True and body["reason"] == "unknown user" and body["k"] == 0
    cats = [it["category"] for it in body["items"]]
    assert len(set(cats[:5])) == 5  # one of each category before any repeats
    assert body["items"][0]["item_id"] == "i0"  # the most popular item leads


def test_seen_items_are_left_out(served):
    first = [
        it["item_id"] for it in _items(served.http, "/users/u-high/recommendations?n=8")["items"]
    ]
    qs = "&".join(f"seen={i}" for i in first[:4])
    again = [
        it["item_id"]
        for it in _items(served.http, f"/users/u-high/recommendations?n=8&{qs}")["items"]
    ]
    assert not set(first[:4]) & set(again) and len(again) == 8
    kept = _items(served.http, f"/users/u-high/recommendations?n=8&exclude_seen=false&{qs}")[
        "items"
    ]
    assert [it["item_id"] for it in kept] == first
    cold = _items(served.http, "/users/newbie/recommendations?n=3&seen=i0")
    assert "i0" not in [it["item_id"] for it in cold["items"]]


def test_interests(served):
    body = _items(served.http, "/users/u-high/interests?top=3")
    assert body["k"] == 3 and body["model"] == served.v1 and not body["cold"]
    assert len(body["interests"]) == 3 and all(
        len(i["vector"]) == DIM and len(i["top_items"]) == 3 for i in body["interests"]
    )
    stored = (
        served.snap.item_vecs[[0, 100, 200]].astype(np.float16).astype(np.float32)
    )  # as Redis holds them
    exact = np.argsort(-(stored @ served.snap.item_vecs.T), axis=1, kind="stable")[:, :3]
    assert [i["top_items"] for i in body["interests"]] == served.snap.item_ids[exact].tolist()
    cold = _items(served.http, "/users/nobody/interests")
    assert cold["cold"] is True and cold["k"] == 0 and cold["interests"] == []


def test_hot_reload_keeps_unanchored_users_on_their_snapshot(served):
    ck2 = write_checkpoint(served.tmp / "ck2", n_items=250, dim=DIM, n_categories=5, seed=2,
                           lineage=[served.v1, "gone-version"])  # a retrain, warm-started
    v2 = publish(ck2, served.store, served.redis, served.ns).version
    assert served.app.state.refresh() == v2
    assert _items(served.http, "/health")["snapshot"] == v2
    old = _items(served.http, "/users/u-high/recommendations")
    assert old["snapshot"] == served.v1 and old["stale"] is False  # not re-anchored yet
    snap2 = SnapshotIndex.load(served.store.path(v2))
    RedisWriter(served.redis, served.ns).write_batch(
        [
            ("u-high", _user(v2, snap2.item_vecs[[1, 2]], 0.9, seq=2)),
            ("u-orphan", _user("gone-version", snap2.item_vecs[[3]], 0.5)),
        ]
    )
    assert _items(served.http, "/users/u-high/recommendations")["snapshot"] == v2
    orphan = _items(served.http, "/users/u-orphan/recommendations")
    assert orphan["snapshot"] == v2 and orphan["stale"] is True
    metrics = served.http.get("/metrics").text
    assert f'diam_snapshot_active{{version="{v2}"}} 1.0' in metrics
    assert 'diam_snapshot_reloads_total{outcome="ok"} 1.0' in metrics
    assert "diam_recommend_stale_total 1.0" in metrics


def test_titles_of_a_published_checkpoint_reach_the_answers(served):
    """A snapshot without titles answers ``title: null``; a checkpoint with titles, published
    and hot-reloaded, answers each returned item's (null for one without), cold answers and
    interests included."""
    before = _items(served.http, "/users/u-high/recommendations?n=5")
    assert [it["title"] for it in before["items"]] == [None] * 5
    assert _items(served.http, "/users/u-high/interests?top=2")["interests"][0]["top_titles"] == [
        None, None]
    titles = ["" if i % 3 == 0 else f"Film {i} <i>&</i>" for i in range(300)]
    ck = write_checkpoint(served.tmp / "ck-titles", n_items=300, dim=DIM, n_categories=5, seed=7,
                          item_pop=np.arange(300)[::-1], item_titles=titles)
    v2 = publish(ck, served.store, served.redis, served.ns).version
    assert (served.store.path(v2) / "item_titles.json").is_file()
    assert served.app.state.refresh() == v2
    snap2 = SnapshotIndex.load(served.store.path(v2))
    RedisWriter(served.redis, served.ns).write_batch(
        [("u-titled", _user(v2, snap2.item_vecs[[0, 100]], 0.5))])

    def title(item_id: str) -> str | None:
        return titles[int(item_id[1:])] or None

    for user in ("u-titled", "nobody-yet"):
        body = _items(served.http, f"/users/{user}/recommendations?n=8")
        assert body["snapshot"] == v2 and body["cold"] is (user == "nobody-yet")
        assert [it["title"] for it in body["items"]] == [title(it["item_id"]) for it in body["items"]]
        assert any(it["title"] for it in body["items"])
    for it in _items(served.http, "/users/u-titled/interests?top=3")["interests"]:
        assert it["top_titles"] == [title(i) for i in it["top_items"]]


def test_a_value_that_does_not_decode_is_cold_and_says_so(served):
    nan = _user(served.v1, np.full((1, DIM), np.nan, np.float32), 0.5)
    served.redis.set(user_key(served.ns, "u-garbage"), b"garbage")
    served.redis.set(user_key(served.ns, "u-nan"), encode_user(nan))  # a foreign writer's NaN
    for uid, why in (("u-garbage", "not a msgpack map"), ("u-nan", "non-finite")):
        body = _items(served.http, f"/users/{uid}/recommendations?n=5")
        assert body["cold"] is True and len(body["items"]) == 5, body
        assert body["reason"].startswith("the stored value does not decode: ") and why in body["reason"]
        assert _items(served.http, f"/users/{uid}/interests")["cold"] is True
    assert _items(served.http, "/users/u-high/recommendations?n=5")["cold"] is False


def test_a_stale_answer_says_the_seen_items_were_not_left_out(served):
    vecs = served.snap.item_vecs[[0, 100]]
    RedisWriter(served.redis, served.ns).write_batch([
        ("u-stale", UserVectors(seq=1, model="gone-version", k=2, d=0.5, dim=DIM, vecs=vecs, ts=1,
                                n=3, seen=np.array([0, 1, 100], np.int32))),
        ("u-stale-unseen", _user("gone-version", vecs, 0.5)),
    ])
    body = _items(served.http, "/users/u-stale/recommendations?n=5")
    assert body["stale"] is True and body["snapshot"] == served.v1
    assert body["reason"] == ("the user's last seen items not left out: their vectors belong to "
                              "snapshot gone-version, not loaded")
    assert {"i0", "i1", "i100"} & {it["item_id"] for it in body["items"]}  # what it says
    for url in ("/users/u-stale/recommendations?exclude_seen=false",
                "/users/u-stale-unseen/recommendations"):
        assert _items(served.http, url)["reason"] == (
            "the user's vectors belong to snapshot gone-version, not loaded")
    fresh = _items(served.http, "/users/u-high/recommendations")
    assert fresh["stale"] is False and fresh["reason"] is None


def test_head_on_health(served):
    r = served.http.head("/health")
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == len(served.http.get("/health").content)


def test_contract_against_the_openapi_schema(served):
    """Every route, generated valid and invalid requests: status codes, content types and bodies
    must match the schema the app publishes (schemathesis' default checks)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.app)
    strategies = []
    for result in schema.get_all_operations():
        op = result.ok()
        strategies.append((op.as_strategy(), 25))
        if "{user_id}" in op.path:  # routes without parameters have no invalid requests
            strategies.append((op.as_strategy(GenerationMode.NEGATIVE), 15))
        if "{user_id}" in op.path:  # a known user, so the non-cold paths are exercised too
            strategies.append((op.as_strategy(path_parameters={"user_id": "u-high"}), 25))
    for strategy, examples in strategies:

        @given(case=strategy)
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case):
            seen = (case.query or {}).get("seen")
            if seen is not None and not (
                isinstance(seen, list) and (all(isinstance(x, str) for x in seen) or len(seen) > MAX_SEEN)
            ):
                # Every query value is text on the wire, so schemathesis' negative mode cannot
                # make `seen` invalid except by length: an object is sent as its keys, a number
                # or a boolean (alone or in a list) as its text; each is a valid list of item
                # ids (e.g. seen=-3.28e-121 was "accepted", correctly, with 200)
                reject()
            case.call_and_validate()

        check()
