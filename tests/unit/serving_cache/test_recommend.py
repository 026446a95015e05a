"""Serving pieces that need no Redis: cold-start order, context rule, snapshot loading,
candidate cleaning, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.aggregate import serve_list
from serving_cache.reader import valid_user_id
from serving_cache.recommend import Recommender, context_delta
from serving_cache.retrieval import SnapshotIndex, cold_order
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint


@settings(max_examples=60, deadline=None)
@given(
    pop=st.lists(st.integers(0, 50), min_size=1, max_size=80),
    n_cat=st.integers(1, 6),
    data=st.data(),
)
def test_cold_order_spreads_categories_by_popularity(pop, n_cat, data):
    cats = np.array(
        data.draw(st.lists(st.integers(0, n_cat - 1), min_size=len(pop), max_size=len(pop)))
    )
    pop = np.array(pop)
    out = cold_order(pop, cats, pool=1000)
    assert sorted(out.tolist()) == list(range(len(pop)))  # a permutation when the pool is large
    present = len(np.unique(cats))
    # The first len(categories) items cover every category once...
    assert len(set(cats[out[:present]].tolist())) == present
    # ...and within a category, items come most popular first.
    for c in np.unique(cats):
        seq = pop[out[cats[out] == c]]
        assert (np.diff(seq) <= 0).all()


@settings(max_examples=60, deadline=None)
@given(pop=st.lists(st.integers(0, 5), min_size=1, max_size=60),
       pool=st.integers(1, 20), data=st.data())
def test_cold_order_is_the_round_robin_of_its_definition(pop, pool, data):
    """The vectorised list equals the definition written plainly: items by popularity (ties by
    item), categories (unknown -1 included) ordered by their best item, their first items in
    turn, then their second ones, ..."""
    cats = np.array(data.draw(st.lists(st.integers(-1, 3), min_size=len(pop), max_size=len(pop))))
    order = sorted(range(len(pop)), key=lambda i: (-pop[i], i))
    per_cat: dict[int, list[int]] = {}
    for i in order:
        per_cat.setdefault(int(cats[i]), []).append(i)
    heads = sorted(per_cat.values(), key=lambda t: order.index(t[0]))
    want = [t[r] for r in range(len(pop)) for t in heads if r < len(t)][:pool]
    assert cold_order(np.array(pop), cats, pool=pool).tolist() == want


def test_cold_order_pool_limit():
    assert len(cold_order(np.arange(5000), np.zeros(5000, dtype=np.int32), pool=100)) == 100


def test_context_rule_bounds():
    deltas = [
        context_delta({"hour": h, "device": d})
        for h in range(24)
        for d in ("tv", "tablet", "mobile", "desktop", "fridge", None)
    ]
    assert min(deltas) == -0.1 and max(deltas) == 0.2
    assert context_delta({"hour": "21"}) == 0.0  # wrong types add nothing


def test_serve_list_never_returns_a_banned_item_and_searches_enough():
    rng = np.random.default_rng(0)
    item_vecs = rng.standard_normal((80, 8)).astype(np.float32)
    vecs = item_vecs[[3, 40]] * 2
    asked = []

    def search(q, m):
        asked.append(m)
        s = q @ item_vecs.T
        top = np.argsort(-s, axis=1, kind="stable")[:, :m]
        return np.take_along_axis(s, top, 1).astype(np.float32), top

    banned = np.array([3, 40, 7])
    got = serve_list(search, vecs, 0.5, 10, banned, item_vecs, np.arange(80) % 5)
    assert asked == [50 + 3] and len(got) == 10
    assert not set(got.tolist()) & set(banned.tolist())


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snap")
    pop = np.arange(100)[::-1]
    ck = write_checkpoint(tmp / "ck", n_items=100, dim=8, n_categories=4, item_pop=pop)
    res = publish(ck, SnapshotStore(SnapshotConfig(dir=str(tmp / "s"))))
    return SnapshotIndex.load(res.path)


def test_snapshot_index_loads_without_pickle(snapshot):
    assert snapshot.n_items == 100 and snapshot.dim == 8 and snapshot.kind == "flat"
    assert snapshot.item_ids.dtype.kind == "U" and snapshot.category_names[0] == "cat0"
    assert snapshot.index_of("i7") == 7 and snapshot.index_of("nope") == -1
    assert snapshot.cold[0] == 0  # the most popular item
    scores, items = snapshot.search(snapshot.item_vecs[:3], 5)
    assert scores.shape == items.shape == (3, 5)


def test_recommend_checks_arguments_before_any_io(snapshot):
    rec = Recommender(snapshot, redis_client=None, ns="unit")
    for kwargs, msg in [
        ({"n": 0}, "n must be"),
        ({"mode": "wild"}, "mode must be"),
        ({"mode": "manual", "delta": 0.9}, "delta must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            rec.recommend("u1", **kwargs)
    with pytest.raises(ValueError, match="invalid user id"):
        rec.recommend("diam:*")


def test_swap_keeps_the_previous_version(snapshot):
    rec = Recommender(snapshot, redis_client=None, ns="unit", keep_versions=2)
    other = SnapshotIndex.load(snapshot.path, version="v-other")
    third = SnapshotIndex.load(snapshot.path, version="v-third")
    rec.swap(other)
    assert rec.active is other and set(rec._loaded) == {snapshot.version, "v-other"}
    rec.swap(third)
    assert set(rec._loaded) == {"v-other", "v-third"}


@pytest.mark.parametrize(
    "uid, ok",
    [
        ("u1", True),
        ("a.b@c+d=e-f_g", True),
        ("x" * 128, True),
        ("", False),
        ("x" * 129, False),
        ("a:b", False),
        ("a*", False),
        ("a b", False),
    ],
)
def test_user_id_alphabet(uid, ok):
    assert valid_user_id(uid) is ok


def test_category_names_of_matches_category_name(snapshot):
    from dataclasses import replace

    cats = snapshot.item_categories.copy()
    cats[[3, 4]] = [-1, len(snapshot.category_names)]  # unknown, and beyond the names list
    snap = replace(snapshot, item_categories=cats)
    idx = np.array([0, 3, 4, 5, 0], dtype=np.int64)
    assert snap.category_names_of(idx) == [snap.category_name(int(i)) for i in idx]
    assert snap.category_names_of(idx)[1:3] == [None, None]
    assert snap.category_names_of(np.empty(0, dtype=np.int64)) == []


def test_aggregate_candidates_reads_global_item_rows(snapshot):
    """The aggregator gets the whole item table: the answer is the same as on the candidates'
    rows renumbered (what serving did before) and is made of candidate item indices."""
    from online_model.aggregate import aggregate
    from serving_cache.recommend import aggregate_candidates

    scores, items = snapshot.search(snapshot.item_vecs[[1, 50, 90]], 20)
    items[0, 3] = -1  # a seen item or an IVF hole
    uniq = np.unique(items[items >= 0])
    local = np.where(items >= 0, np.searchsorted(uniq, items), -1)
    for d in (0.1, 0.5, 0.9):
        got = aggregate_candidates(snapshot, scores, items, d, 10)
        renumbered = aggregate(scores, local, snapshot.item_vecs[uniq], d, 10,
                               snapshot.item_categories[uniq])
        assert got.tolist() == uniq[renumbered].tolist()
        assert set(got.tolist()) <= set(uniq.tolist()) and len(got) == 10


def test_warm_up_with_and_without_a_snapshot(snapshot, monkeypatch):
    import importlib

    agg = importlib.import_module("online_model.aggregate")  # the module, not the function

    calls: list[str] = []
    real = agg.warm_up
    monkeypatch.setattr(agg, "warm_up", lambda: (calls.append("kernels"), real())[1])
    Recommender(None, redis_client=None, ns="unit").warm_up()
    assert calls == ["kernels"]  # no snapshot: the kernels only
    searched: list[tuple[int, int]] = []
    real_search = snapshot.search
    monkeypatch.setattr(snapshot, "search",
                        lambda q, k: (searched.append((q.shape[1], k)), real_search(q, k))[1])
    Recommender(snapshot, redis_client=None, ns="unit").warm_up()
    assert calls == ["kernels", "kernels"] and searched == [(snapshot.dim, 1)]


class _DictRedis:
    """GET, HGETALL and LRANGE over a dict: the unit test of what recommend() does with a
    stored value (and a namespace's base record and added ids, when the dict holds them)."""

    def __init__(self, values: dict) -> None:
        self.values = values

    def get(self, key: str):
        return self.values.get(key)

    def hgetall(self, key: str) -> dict:
        return dict(self.values.get(key, {}))

    def lrange(self, key: str, start: int, end: int) -> list:
        return list(self.values.get(key, []))[start:end + 1]


def test_seen_items_pushed_by_the_stream_are_excluded_by_default(snapshot):
    from serving_cache import encode_user, user_key
    from serving_cache.codec import UserVectors

    v = snapshot.item_vecs[[5, 60]].copy()
    # the user's nearest items are the ones it clicked: 5 and 60 and their neighbours
    seen = np.array([5, 60, 6, 61], dtype=np.int32)
    uv = UserVectors(seq=1, model=snapshot.version, k=2, d=0.5, dim=8, vecs=v, ts=0, n=4,
                     anchor="diam", seen=seen)
    rec = Recommender(snapshot, redis_client=_DictRedis({user_key("unit", "u1"): encode_user(uv)}),
                      ns="unit")
    got = rec.recommend("u1", n=10)
    assert not {f"i{i}" for i in seen.tolist()} & set(got.items)
    kept = rec.recommend("u1", n=50, exclude_seen=False)
    assert {f"i{i}" for i in seen.tolist()} & set(kept.items)
    # rows of another snapshot version cannot be trusted: they are not applied
    import dataclasses

    other = UserVectors(seq=1, model="v-elsewhere", k=2, d=0.5, dim=8, vecs=v, ts=0, n=4,
                        anchor="diam", seen=seen)
    descendant = dataclasses.replace(snapshot, lineage=("v-elsewhere",))
    rec2 = Recommender(descendant, redis_client=_DictRedis({user_key("unit", "u1"): encode_user(other)}),
                       ns="unit")
    assert rec2.recommend("u1", n=10).stale


def test_seen_rows_beyond_the_published_table_are_not_trusted_without_the_added_ids(snapshot):
    """Content rows (new items appended after publishing) are numbered in the order each
    process met them, so a seen row there may name another item in this API: without the
    namespace's list of added ids (a release before it) it is not used, while published rows
    still are."""
    import dataclasses

    from serving_cache import encode_user, user_key
    from serving_cache.codec import UserVectors

    last = snapshot.n_items - 1
    grown = dataclasses.replace(snapshot, content_rows=np.array([last], dtype=np.int64))
    v = snapshot.item_vecs[[last, 5]].copy()
    seen = np.array([last, 5], dtype=np.int32)
    uv = UserVectors(seq=1, model=snapshot.version, k=2, d=0.5, dim=8, vecs=v, ts=0, n=2,
                     anchor="diam", seen=seen)
    store = _DictRedis({user_key("unit", "u1"): encode_user(uv)})
    got = Recommender(grown, redis_client=store, ns="unit").recommend("u1", n=20).items
    assert f"i{last}" in got and "i5" not in got
    # without content rows the same row is a published one, and it is excluded
    plain = Recommender(snapshot, redis_client=store, ns="unit").recommend("u1", n=20).items
    assert f"i{last}" not in plain and "i5" not in plain


def test_seen_rows_beyond_the_published_table_go_through_the_added_ids(snapshot):
    """The dataflow appended new items x, y (rows N, N+1 of its table) and lists them; this
    index took them in the other order (y at N, x at N+1): a user who saw the dataflow's row
    N (x) gets neither x back nor y left out. A list that does not hash to the record's
    ``added_sha``, or a record of another version, is not used."""
    from serving_cache import encode_user, user_key
    from serving_cache.base_record import BaseRecord
    from serving_cache.codec import UserVectors
    from serving_cache.keys import added_key, base_key
    from streams.catalog import CatalogItem

    n = snapshot.n_items
    api = snapshot.with_items([CatalogItem("y", (), "", 0), CatalogItem("x", (), "", 0)])
    assert (api.index_of("y"), api.index_of("x")) == (n, n + 1)
    v = api.item_vecs[[n, n + 1]].copy()
    uv = UserVectors(seq=1, model=snapshot.version, k=2, d=0.5, dim=8, vecs=v, ts=0, n=2,
                     anchor="diam", seen=np.array([n, 5], dtype=np.int32))
    record = BaseRecord.of(snapshot.version, [*snapshot.item_ids.tolist(), "x", "y"], added=2)
    values = {user_key("unit", "u1"): encode_user(uv),
              base_key("unit"): {k.encode(): v.encode() for k, v in record.fields().items()},
              added_key("unit"): [b"x", b"y"]}
    got = Recommender(api, redis_client=_DictRedis(values), ns="unit").recommend("u1", n=200)
    assert "x" not in got.items and "i5" not in got.items and "y" in got.items
    kept = Recommender(api, redis_client=_DictRedis(values), ns="unit").recommend(
        "u1", n=200, exclude_seen=False)
    assert "x" in kept.items
    for bad in ({added_key("unit"): [b"y", b"x"]},  # another run's order
                {base_key("unit"): {**values[base_key("unit")], b"version": b"other"}}):
        got = Recommender(api, redis_client=_DictRedis({**values, **bad}), ns="unit"
                          ).recommend("u1", n=200)
        assert "x" in got.items and "y" in got.items and "i5" not in got.items


def _user_on(model: str, snapshot, seen=(5, 60, 6, 61)) -> bytes:
    from serving_cache import encode_user
    from serving_cache.codec import UserVectors

    return encode_user(UserVectors(seq=1, model=model, k=2, d=0.5, dim=8,
                                   vecs=snapshot.item_vecs[[5, 60]].copy(), ts=0, n=4,
                                   anchor="diam", seen=np.array(seen, dtype=np.int32)))


def test_a_stale_answer_says_the_seen_items_were_not_left_out(snapshot):
    """The user's version is not loaded: the stream's seen rows belong to another table, so
    they cannot be applied, and the answer says so instead of reason null."""
    import dataclasses

    from serving_cache import user_key

    store = _DictRedis({user_key("unit", "u1"): _user_on("v-gone", snapshot),
                        user_key("unit", "u2"): _user_on("v-gone", snapshot, seen=())})
    # the active snapshot was warm-started from v-gone: its vectors live in the same space
    rec = Recommender(dataclasses.replace(snapshot, lineage=("v-gone",)), redis_client=store,
                      ns="unit")
    got = rec.recommend("u1", n=10)
    assert got.stale and got.snapshot == snapshot.version and got.user_model == "v-gone"
    assert got.reason == ("the user's last seen items not left out: their vectors belong to "
                          "snapshot v-gone, not loaded")
    kept = rec.recommend("u1", n=10, exclude_seen=False)  # nothing was to be left out
    assert kept.stale and kept.reason == "the user's vectors belong to snapshot v-gone, not loaded"
    assert rec.recommend("u2", n=10).reason == kept.reason  # no seen rows pushed
    fresh = Recommender(snapshot, _DictRedis({user_key("unit", "u1"): _user_on(
        snapshot.version, snapshot)}), ns="unit").recommend("u1", n=10)
    assert not fresh.stale and fresh.reason is None


def test_a_version_on_disk_serves_its_users_loaded_once(snapshot):
    """With load_version, a user whose vectors belong to a version not swapped in is served
    from that version (seen rows applied, not stale); each version is asked for once, a gone
    one too, and only the last few loaded stay."""
    from serving_cache import recommend, user_key

    versions = {f"v-disk{i}": SnapshotIndex.load(snapshot.path, version=f"v-disk{i}")
                for i in range(recommend._ON_DISK_MAX + 1)}
    asked: list[str] = []

    def load(version):
        asked.append(version)
        return versions.get(version)

    import dataclasses

    values = {user_key("unit", f"u-{v}"): _user_on(v, snapshot) for v in [*versions, "v-gone"]}
    snapshot = dataclasses.replace(snapshot, lineage=("v-gone",))  # a descendant of v-gone
    rec = Recommender(snapshot, _DictRedis(values), ns="unit", load_version=load)
    for _ in range(2):
        got = rec.recommend("u-v-disk0", n=10)
        assert (got.snapshot, got.stale, got.reason) == ("v-disk0", False, None)
        assert not {"i5", "i60", "i6", "i61"} & set(got.items)  # the stream's seen rows
        gone = rec.recommend("u-v-gone", n=10)
        assert gone.stale and gone.snapshot == snapshot.version and "v-gone" in gone.reason
    assert asked == ["v-disk0", "v-gone"]
    assert rec.recommend(f"u-{snapshot.version}", n=3).snapshot == snapshot.version  # swapped in
    for v in versions:
        assert rec.recommend(f"u-{v}", n=3).snapshot == v
    assert list(rec._on_disk) == list(versions)[-recommend._ON_DISK_MAX:]
    assert asked == ["v-disk0", "v-gone", *list(versions)[1:]]


def _disk_versions(snapshot, n):
    return {f"v-disk{i}": SnapshotIndex.load(snapshot.path, version=f"v-disk{i}")
            for i in range(n)}


def test_the_versions_read_from_disk_are_kept_by_last_use(snapshot, monkeypatch):
    """Least recently used dropped first; a version swapped in leaves the disk cache (one
    copy); a version that failed to load is asked for again after _GONE_RETRY_S."""
    from serving_cache import recommend, user_key

    monkeypatch.setattr(recommend, "_ON_DISK_MAX", 2)
    versions = _disk_versions(snapshot, 3)
    asked: list[str] = []
    fail = {"v-flaky"}

    def load(version):
        asked.append(version)
        return None if version in fail else versions.get(version) or SnapshotIndex.load(
            snapshot.path, version=version)

    values = {user_key("unit", f"u-{v}"): _user_on(v, snapshot)
              for v in [*versions, "v-flaky"]}
    rec = Recommender(snapshot, _DictRedis(values), ns="unit", load_version=load)
    for v in ("v-disk0", "v-disk1", "v-disk0", "v-disk2"):  # v-disk0 used after v-disk1
        assert rec.recommend(f"u-{v}", n=3).snapshot == v
    assert sorted(rec._on_disk) == ["v-disk0", "v-disk2"]
    assert asked == ["v-disk0", "v-disk1", "v-disk2"]
    import dataclasses

    versions["v-disk2"] = dataclasses.replace(versions["v-disk2"], lineage=("v-flaky",))
    rec.swap(versions["v-disk2"])
    assert list(rec._on_disk) == ["v-disk0"] and rec.active is versions["v-disk2"]
    for _ in range(2):
        assert rec.recommend("u-v-flaky", n=3).stale
    assert asked.count("v-flaky") == 1  # not asked again at once
    fail.clear()
    monkeypatch.setattr(recommend, "_GONE_RETRY_S", 0.0)
    got = rec.recommend("u-v-flaky", n=3)
    assert (got.snapshot, got.stale) == ("v-flaky", False) and asked.count("v-flaky") == 2


@pytest.mark.parametrize("ancestor", [True, False])
def test_a_background_load_answers_stale_or_cold_until_the_version_is_in(snapshot, ancestor):
    """A server's requests never wait for a load: the first is answered from the active index
    (its reason says the version is being loaded) when the active weights descend from the
    version (the same space), cold when it is another model's (its vectors would pick items at
    random in the active space; /interests shows no items from it); a later one from the
    version."""
    import dataclasses
    import threading
    import time

    from serving_cache import user_key

    release = threading.Event()
    disk = _disk_versions(snapshot, 1)["v-disk0"]

    def load(version):
        release.wait(10)
        return disk

    active = dataclasses.replace(snapshot, lineage=("v-disk0",) if ancestor else ())
    rec = Recommender(active, _DictRedis({user_key("unit", "u"): _user_on("v-disk0", snapshot,
                                                                          seen=())}),
                      ns="unit", load_version=load, load_in_background=True)
    first = rec.recommend("u", n=5)
    shown = rec.interests("u")
    if ancestor:
        assert first.stale and not first.cold and first.reason == (
            "the user's vectors belong to snapshot v-disk0, being loaded")
        assert shown.reason == first.reason and all(shown.top_items)
    else:
        assert first.cold and first.items == rec.recommend("nobody", n=5).items
        # stale (not the vectors' version answering), naming it, cold until it is in: no
        # click is needed (the next request after the load is answered from it)
        assert (first.stale, first.user_model, first.snapshot) == (True, "v-disk0",
                                                                   snapshot.version)
        assert first.reason == (f"the user's vectors belong to snapshot v-disk0, being loaded, "
                                f"of another model than {snapshot.version} (not a version it "
                                "was warm-started from): answered cold until that version "
                                "has loaded")
        assert shown.stale and shown.reason == first.reason and shown.top_items == []
        assert shown.k == 2 and not shown.cold  # its vectors are shown, not searched
    release.set()
    deadline = time.monotonic() + 10
    while rec.loading("v-disk0"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    got = rec.recommend("u", n=5)
    assert (got.snapshot, got.stale, got.cold, got.reason) == ("v-disk0", False, False, None)
    assert rec.interests("u").stale is False and rec.interests("u").top_items


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_a_cold_answer_for_another_models_vectors_says_the_seen_items_were_not_left_out(
        snapshot, exclude_seen):
    """Cold because the user's version, another model's, is being loaded: the stream's seen
    rows index that version's table, so the cold list cannot leave them out, and the reason
    says so (it said nothing, and the user got items they had just clicked)."""
    import dataclasses
    import threading

    from serving_cache import user_key

    release = threading.Event()
    disk = _disk_versions(snapshot, 1)["v-disk0"]
    active = dataclasses.replace(snapshot, lineage=())
    rec = Recommender(active, _DictRedis({user_key("unit", "u"): _user_on("v-disk0", snapshot)}),
                      ns="unit", load_version=lambda v: release.wait(10) and disk,
                      load_in_background=True)
    try:
        got = rec.recommend("u", n=5, exclude_seen=exclude_seen)
    finally:
        release.set()
    assert got.cold and got.stale
    said = ", the user's last seen items not left out, " in str(got.reason)
    assert said is exclude_seen, got.reason
    assert str(got.reason).endswith("until that version has loaded")


def test_an_interests_label_is_the_majority_of_the_items_it_lists(snapshot):
    """``top_category`` is the majority category of the ``top`` items listed (a tie to the
    better ranked), not of a longer neighbour list: the nearest 10 here are mostly cat0, the
    five listed mostly cat1, and the four listed tie cat2 against cat1."""
    import dataclasses

    from serving_cache import encode_user, user_key
    from serving_cache.codec import UserVectors

    _, near = snapshot.search(snapshot.item_vecs[[5]], 10)
    cats = snapshot.item_categories.copy()
    cats[near[0]] = [2, 1, 1, 2, 1, 0, 0, 0, 0, 0]
    snap = dataclasses.replace(snapshot, item_categories=cats)
    vecs = snapshot.item_vecs[[5]].copy()
    uv = UserVectors(seq=1, model=snap.version, k=1, d=0.5, dim=8, vecs=vecs, ts=0, n=4,
                     anchor="diam", seen=np.zeros(0, dtype=np.int32))
    rec = Recommender(snap, _DictRedis({user_key("unit", "u"): encode_user(uv)}), ns="unit")
    five = rec.interests("u", top=5)
    assert five.top_items == [[f"i{i}" for i in near[0, :5].tolist()]]
    assert five.top_category == ["cat1"]
    assert rec.interests("u", top=4).top_category == ["cat2"]
    assert rec.interests("u", top=10).top_category == ["cat0"]


def test_an_undecodable_value_is_cold_with_its_reason_and_logged_once(snapshot, caplog):
    from serving_cache import user_key

    nan_vecs = _user_on(snapshot.version, snapshot).replace(  # fp16 1.0 -> NaN, same length
        np.float16(snapshot.item_vecs[5, 0]).tobytes(), b"\x00\x7e", 1)
    values = {user_key("unit", "bad"): b"garbage", user_key("unit", "nan"): nan_vecs}
    rec = Recommender(snapshot, redis_client=_DictRedis(values), ns="unit")
    with caplog.at_level("WARNING", logger="serving_cache.reader"):
        for _ in range(3):
            got = rec.recommend("bad", n=4)
            assert got.cold and got.reason.startswith("the stored value does not decode: ")
            assert len(got.items) == 4
        nan = rec.recommend("nan", n=4)
    assert nan.cold and "non-finite" in nan.reason
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "diam:unit:u:bad" in logged[0], logged
    assert rec.recommend("nobody", n=4).reason == "unknown user"
    assert rec.interests("bad").cold  # and nothing raises there either


def test_store_loader_verifies_and_loads_or_says_no(tmp_path):
    from serving_cache.recommend import load_verified, store_loader
    from snapshotter.store import IntegrityError

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s")))
    v1 = publish(write_checkpoint(tmp_path / "ck1", n_items=30, dim=8, seed=1), store).version
    v2 = publish(write_checkpoint(tmp_path / "ck2", n_items=40, dim=8, seed=2), store).version
    refused: list[tuple[str, str]] = []
    load = store_loader(store, lambda v, exc: refused.append((v, str(exc))))
    assert load(v1).n_items == 30 and load(v1).version == v1
    assert load("v-never") is None and load("not a version!") is None and refused == []
    weights = store.path(v2) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")  # same size, another hash
    assert load(v2) is None
    assert refused and refused[0][0] == v2 and "weights.safetensors" in refused[0][1]
    with pytest.raises(IntegrityError, match="sha256"):
        load_verified(store, v2)


def test_a_version_not_in_the_store_is_not_loaded_at_once_not_being_loaded(tmp_path, snapshot):
    """A server loads a user's version on a thread; a version name whose directory is not in
    the store is known to be missing a stat away: its users are answered at once as that
    ("not loaded": another model's vectors cold), no thread started, instead of "being
    loaded" for as long as a thread takes to find nothing. A checkpoint's label still goes to
    the thread (finding its snapshot reads manifests)."""
    from serving_cache import user_key
    from serving_cache.recommend import store_loader

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s")))
    v1 = publish(write_checkpoint(tmp_path / "ck1", n_items=30, dim=8, seed=1), store).version
    load = store_loader(store)
    assert not load.absent(v1) and load.absent("20200101T000000000000-ghost")
    assert load.absent("not a version!") and not load.absent("diam-0123456789ab")
    ghost = "20200101T000000000000-ghost"
    rec = Recommender(snapshot, _DictRedis({user_key("unit", "u"): _user_on(ghost, snapshot)}),
                      ns="unit", load_version=load, load_in_background=True)
    got = rec.recommend("u", n=5)
    assert got.cold and not rec.loading(ghost)
    assert got.reason.startswith(f"the user's vectors belong to snapshot {ghost}, not loaded, of "
                                 "another model")
    # /interests leaves nothing out: the same reason without the seen items' clause
    assert rec.interests("u").reason == got.reason.replace(
        ", the user's last seen items not left out,", "")


def test_load_verified_reads_the_index_once_and_still_refuses_a_mismatch(tmp_path, monkeypatch):
    """``load_verified`` skips ``verify``'s index check (the load applies the same rule): an
    index that disagrees with the items, its hashes re-written, is still refused, by the load;
    a good version's index file is read by FAISS once."""
    import hashlib
    import json

    import faiss

    from serving_cache.recommend import load_verified

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s")))
    v1 = publish(write_checkpoint(tmp_path / "ck1", n_items=30, dim=8, seed=1), store).version
    v2 = publish(write_checkpoint(tmp_path / "ck2", n_items=40, dim=8, seed=2), store).version
    reads: list[str] = []
    real_read = faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda p, *a: (reads.append(p), real_read(p, *a))[1])
    assert load_verified(store, v1).n_items == 30
    assert len(reads) == 1 and reads[0].endswith("items.faiss")
    (store.path(v1) / "items.faiss").write_bytes((store.path(v2) / "items.faiss").read_bytes())
    man_path = store.path(v1) / "manifest.json"
    man = json.loads(man_path.read_text())
    data = (store.path(v1) / "items.faiss").read_bytes()
    man["files"]["items.faiss"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    man_path.write_text(json.dumps(man))  # hashes verify: only the index check can tell
    store.verify(v1, check_index=False)
    with pytest.raises(ValueError, match="index holds 40x8"):
        load_verified(store, v1)


def test_a_gone_version_of_another_model_is_answered_cold_a_gone_ancestor_stale(snapshot):
    """Vectors of a version no longer in the store are answered from the active index only
    when the active weights descend from it by warm starts (``SnapshotIndex.lineage``): the
    same space, a stale but useful list. Vectors of an independently trained model would pick
    items at random there: the user is answered cold (popular items), saying why, until their
    next click re-anchors them. A checkpoint's label is not judged (stale as before)."""
    import dataclasses

    from serving_cache import user_key

    values = {user_key("unit", u): _user_on(m, snapshot)
              for u, m in (("u-old", "v-old"), ("u-other", "v-other"),
                           ("u-ck", "diam-0123456789ab"))}
    active = dataclasses.replace(snapshot, version="v-new", lineage=("v-mid", "v-old"))
    rec = Recommender(active, _DictRedis(values), ns="unit")
    old = rec.recommend("u-old", n=10)
    assert (old.cold, old.stale, old.snapshot) == (False, True, "v-new")
    other = rec.recommend("u-other", n=10)
    assert other.cold and other.stale and other.k == 0 and other.user_model == "v-other"
    assert other.reason == ("the user's vectors belong to snapshot v-other, not loaded, of "
                            "another model than v-new (not a version it was warm-started "
                            "from): answered cold, the user's last seen items not left out, "
                            "until the user's next click re-anchors them")
    assert other.items == rec.recommend("nobody", n=10).items  # the cold list
    assert rec.recommend("u-ck", n=10).stale
    # /interests shows the vectors without items from a space they do not live in
    shown = rec.interests("u-other")
    assert (shown.top_items, shown.reason) == ([], other.reason.replace(
        ", the user's last seen items not left out,", ""))
    assert rec.interests("u-old").top_items and rec.interests("u-old").stale


def test_a_checkpoint_label_of_the_active_weights_is_answered_from_the_active_index(snapshot):
    """Vectors labelled by a checkpoint (``diam run --checkpoint``) whose weights the active
    snapshot was published from are its own: answered from the active index in memory, seen
    rows applied, no second copy read from disk."""
    import dataclasses

    from serving_cache import user_key

    sha = "0123456789ab" + "cd" * 26
    active = dataclasses.replace(snapshot, weights=("diam", sha))
    asked: list[str] = []
    values = {user_key("unit", "u1"): _user_on("diam-0123456789ab", snapshot),
              user_key("unit", "u2"): _user_on("comirec-sa-0123456789ab", snapshot)}
    rec = Recommender(active, _DictRedis(values), ns="unit",
                      load_version=lambda v: asked.append(v))  # type: ignore[arg-type,func-returns-value]
    got = rec.recommend("u1", n=10)
    assert (got.stale, got.snapshot, asked) == (False, snapshot.version, [])
    assert not {"i5", "i60", "i6", "i61"} & set(got.items)  # the stream's seen rows
    other = rec.recommend("u2", n=10)  # another model's label: not these weights, stale
    assert other.stale and asked == ["comirec-sa-0123456789ab"]
