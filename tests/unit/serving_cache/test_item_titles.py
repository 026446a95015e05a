"""Item titles in serving: a checkpoint's ``item_titles.json`` published into the snapshot,
loaded by :class:`SnapshotIndex`, carried by recommendations (cold ones too), interests and
the /ui user view (as inert text); items added from the catalogue get its title; a snapshot
without titles answers ``title: null``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from online_model.checkpoint_config import ITEM_TITLES
from serving_cache import encode_user, user_key
from serving_cache.api import get_app
from serving_cache.codec import UserVectors
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from serving_cache.ui import STATIC, UiSources
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.store import IntegrityError
from snapshotter.testing import write_checkpoint
from streams.catalog import CatalogItem

N = 40


def _title(i: int) -> str:
    """Item ``i<i>``'s title: none for every fifth, else one that is markup if rendered."""
    return "" if i % 5 == 4 else f"</script><script>alert({i})</script> & Title {i}"


class _DictRedis:
    def __init__(self, values: dict) -> None:
        self.values = values

    def get(self, key: str):
        return self.values.get(key)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("titles")
    store = SnapshotStore(SnapshotConfig(dir=str(tmp / "s")))
    ck = write_checkpoint(tmp / "ck", n_items=N, dim=8, n_categories=4,
                          item_pop=np.arange(N)[::-1], item_titles=[_title(i) for i in range(N)])
    res = publish(ck, store)
    bare = publish(write_checkpoint(tmp / "ck0", n_items=N, dim=8, seed=5), store)
    return store, res, bare


def test_publish_copies_the_titles_and_the_store_verifies_them(published) -> None:
    store, res, bare = published
    assert ITEM_TITLES in res.manifest["files"] and ITEM_TITLES not in bare.manifest["files"]
    store.verify(res.version)
    store.verify(bare.version)  # optional: a snapshot without it is whole
    (res.path / ITEM_TITLES).write_text(json.dumps(["x"] * N))
    try:
        with pytest.raises(IntegrityError, match=ITEM_TITLES):
            store.verify(res.version)
    finally:
        (res.path / ITEM_TITLES).write_text(json.dumps([_title(i) for i in range(N)],
                                                       ensure_ascii=False))
    store.verify(res.version)


def _rec(snap: SnapshotIndex, values: dict | None = None) -> Recommender:
    return Recommender(snap, redis_client=_DictRedis(values or {}), ns="unit")


def test_recommendations_and_interests_carry_the_returned_items_titles(published) -> None:
    _, res, _ = published
    snap = SnapshotIndex.load(res.path, res.version)
    uv = UserVectors(seq=1, model=res.version, k=2, d=0.5, dim=8,
                     vecs=snap.item_vecs[[3, 20]].copy(), ts=0, n=4, anchor="diam")
    rec = _rec(snap, {user_key("unit", "u1"): encode_user(uv)})
    got = rec.recommend("u1", n=10, exclude_seen=False)
    want = [_title(int(i[1:])) or None for i in got.items]
    assert got.titles == want and None in want  # i39: no title
    cold = rec.recommend("nobody", n=5)
    assert cold.cold and cold.titles == [_title(int(i[1:])) or None for i in cold.items]
    it = rec.interests("u1", top=3)
    assert it.top_titles == [[_title(int(i[1:])) or None for i in row] for row in it.top_items]


def test_a_snapshot_without_titles_answers_none(published) -> None:
    _, _, bare = published
    snap = SnapshotIndex.load(bare.path, bare.version)
    assert snap.item_titles is None
    got = _rec(snap).recommend("nobody", n=5)
    assert got.titles == [None] * 5


def test_items_added_from_the_catalogue_get_its_title(published) -> None:
    _, res, bare = published
    for r in (res, bare):
        snap = SnapshotIndex.load(r.path, r.version)
        cat = snap.category_names[0]
        out = snap.with_items([CatalogItem("new-a", (cat,), "Brand new", 0),
                               CatalogItem("new-b", (cat,), "", 0)])
        rows = [out.index_of("new-a"), out.index_of("new-b"), 0]
        assert out.titles_of(rows) == ["Brand new", None, snap.titles_of([0])[0]]
        assert out.titles_of([-1, out.n_items]) == [None, None]


def test_the_api_and_the_ui_answer_titles_and_the_ui_keeps_them_inert(published) -> None:
    _, res, _ = published
    snap = SnapshotIndex.load(res.path, res.version)
    uv = UserVectors(seq=1, model=res.version, k=1, d=0.5, dim=8,
                     vecs=snap.item_vecs[[3]].copy(), ts=0, n=4, anchor="diam")
    app = get_app(_rec(snap, {user_key("unit", "u1"): encode_user(uv)}), ui=UiSources())
    with TestClient(app) as http:
        body = http.get("/users/u1/recommendations?n=5&exclude_seen=false").json()
        assert [it["title"] for it in body["items"]] == [
            _title(int(it["item_id"][1:])) or None for it in body["items"]]
        inter = http.get("/users/u1/interests?top=3").json()["interests"][0]
        assert inter["top_titles"] == [_title(int(i[1:])) or None for i in inter["top_items"]]
        r = http.get("/ui/api/users/u1?n=5&top=3")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert b"<" not in r.content and b">" not in r.content and b"&" not in r.content
        ui = r.json()
        first = inter["top_items"][0]
        assert ui["interests"][0]["top_items"][0] == {
            "item_id": first, "category": snap.category_name(snap.index_of(first)),
            "title": _title(int(first[1:])) or None}
        assert "<script>" in str(ui)  # the same text, once decoded
        assert [x["title"] for x in ui["recommendations"]["items"]] == [
            it["title"] for it in body["items"]]
    # the page writes titles as text: set by textContent, never through innerHTML
    page = (STATIC / "ui.html").read_text()
    assert re.search(r'dataset\.testid = "item-title"; t\.textContent = x\.title', page)
    assert 'cell(tr, r.title || "-", "rec-title")' in page
    assert not re.search(r"innerHTML\s*[+]?=\s*[^\"';]*title", page)
