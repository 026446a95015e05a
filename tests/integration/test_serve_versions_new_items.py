"""A new catalogue item is recommendable whichever loaded version answers a user.

A reviewer's reproduction: users on version C listed new items (the catalogue's, followed by
``diam serve --follow-items``); after two more publishes C was read back from the store for
them (no longer swapped in) and answered without any new item, C's order minus those items.
Only ``swap`` gave a version the catalogue's items, and ``add_items`` grew only the active
index, so a version kept beside it missed the items added after it stopped being active.

Real Kafka (a catalogue topic of this test's own, followed as the server follows it) and
real Redis (the users' vectors); the recommender runs in process as ``diam serve`` builds it:
the snapshot store as its loader, versions read on a thread.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from serving_cache import RedisWriter, UserVectors
from serving_cache.reader import fail_fast
from serving_cache.recommend import Recommender, load_verified, store_loader
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from streams.catalog import CatalogFollower, CatalogItem, publish_items

DIM = 8


def _wait(what: str, ok, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_every_loaded_version_gets_the_catalogues_new_items(
        stack, new_topic, redis_client, namespace, tmp_path) -> None:
    kafka = stack.settings.kafka.model_copy(
        update={"items_topic": f"{new_topic(1, prefix='loaded')}.items"})
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))

    def publish_one(seed: int):  # type: ignore[no-untyped-def]
        ck = write_checkpoint(tmp_path / f"ck{seed}", n_items=300, dim=DIM, seed=seed)
        return load_verified(store, publish(ck, store, redis_client, namespace).version)

    c = publish_one(1)
    names = c.category_names  # one category each: no two new items tie (the same embedding)
    first = [CatalogItem(f"new-{i}", (names[i],), f"new title {i}", 1) for i in range(3)]

    def user_on(snap, item: CatalogItem) -> UserVectors:  # type: ignore[no-untyped-def]
        # anchored on ``snap``, at ``item``'s content embedding in its space
        vec = snap.tower.embed([list(item.categories)], [item.title]).astype(np.float32)
        return UserVectors(seq=1, model=snap.version, k=1, d=0.5, dim=DIM, vecs=vec, ts=1, n=3)

    writer = RedisWriter(redis_client, namespace)
    writer.write_batch([(f"c-{it.item_id}", user_on(c, it)) for it in first])
    rec = Recommender(c, fail_fast(redis_client), namespace, load_version=store_loader(store),
                      load_in_background=True)
    stop = threading.Event()
    follower = CatalogFollower(kafka, kafka.items_topic)
    polling = rec.follow_catalog(follower, every_s=0.1, stop=stop)
    try:
        assert publish_items(kafka, kafka.items_topic, first).ok
        _wait("C never got the new items", lambda: rec.active.n_items == 303)

        def answer(user: str, version: str) -> list[str]:
            def from_version() -> bool:
                got = rec.recommend(user, n=200)
                return got.snapshot == version and not got.stale
            _wait(f"{user} never answered from {version}", from_version)  # loaded on a thread
            got = rec.recommend(user, n=200)
            assert not got.cold and got.user_model == version, got
            return got.items

        def oracle(user: str, snap, known: list[CatalogItem]) -> list[str]:  # type: ignore[no-untyped-def]
            # the answer of a recommender that holds ``snap`` grown with ``known`` only
            return Recommender(snap.with_items(known), redis_client, namespace).recommend(
                user, n=200).items

        def new_in(ids: list[str]) -> int:
            return sum(i.startswith("new-") for i in ids)

        before = {}
        for it in first:
            user = f"c-{it.item_id}"
            before[user] = answer(user, c.version)
            assert before[user] == oracle(user, c, first) and new_in(before[user]) > 0

        # two publishes (independently trained): C is no longer swapped in, and its users
        # get it read from the store, with the catalogue's items
        d = publish_one(2)
        rec.swap(d)
        e = publish_one(3)
        rec.swap(e)
        assert c.version not in rec._loaded and rec.active.index_of("new-0") >= 300
        for user, was in before.items():  # the list it got while C was active
            assert answer(user, c.version) == was, user
        assert c.version in rec._on_disk

        # an item that arrives now reaches every version held: the active E, D kept beside
        # it (swapped in before, no longer active), C read from the store
        late = CatalogItem("new-late", (names[3],), "a late title", 2)
        writer.write_batch([("c-late", user_on(c, late)), ("d-late", user_on(d, late)),
                            ("e-late", user_on(e, late))])
        assert publish_items(kafka, kafka.items_topic, [late]).ok
        _wait("E never got the late item", lambda: rec.active.index_of("new-late") >= 0)
        for user, snap in (("c-late", c), ("d-late", d), ("e-late", e)):
            got = answer(user, snap.version)
            assert got == oracle(user, snap, [*first, late]) and "new-late" in got, user
        held = [*rec._loaded.values(), *rec._on_disk.values()]
        assert sorted(s.version for s in held) == sorted([c.version, d.version, e.version])
        assert all(s.n_items == 304 for s in held)
    finally:
        stop.set()
        polling.join(10)  # not closed under a poll in flight
        follower.close()


def test_requests_under_growth_and_swaps_answer_from_one_index(
        stack, redis_client, namespace, tmp_path) -> None:
    """Items added to every held version and versions swapped in while requests run: every
    answer's items and scores are those of the one version it names (no answer searched one
    index and scored or labelled with another)."""
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    snaps = [load_verified(store, publish(write_checkpoint(
        tmp_path / f"ck{s}", n_items=200, dim=DIM, seed=s), store).version) for s in (1, 2, 3)]
    cat = snaps[0].category_names[0]
    items = [CatalogItem(f"n{i}", (cat,), f"title {i}", 1) for i in range(12)]
    # every item's vector in every version (a grown copy never changes an existing row)
    full = {s.version: s.with_items(items) for s in snaps}
    table = {v: dict(zip(f.item_ids.tolist(), f.item_vecs, strict=True))
             for v, f in full.items()}
    rng = np.random.default_rng(0)
    users = {f"u{j}": UserVectors(seq=1, model=snaps[j % 3].version, k=2, d=0.5, dim=DIM,
                                  vecs=rng.normal(size=(2, DIM)).astype(np.float32), ts=1, n=3)
             for j in range(6)}
    RedisWriter(redis_client, namespace).write_batch(list(users.items()))
    rec = Recommender(snaps[0], fail_fast(redis_client), namespace,
                      load_version=store_loader(store), load_in_background=True)
    users = {uid: rec.reader.get_checked(uid) for uid in users}  # as stored: float16
    errors: list[str] = []
    answered: set[str] = set()  # the versions that answered with vectors
    done = threading.Event()

    def ask() -> None:
        while not done.is_set():
            for uid, uv in users.items():
                got = rec.recommend(uid, n=30)
                if got.cold:
                    continue  # another model's version still loading: the cold list
                vecs = np.stack([table[got.snapshot][i] for i in got.items])
                want = np.round((uv.vecs @ vecs.T).max(axis=0).astype(np.float64), 6)
                answered.add(got.snapshot)
                if not np.allclose(want, got.scores, atol=1e-5):
                    errors.append(f"{uid} from {got.snapshot}: {got.scores} != {want}")

    askers = [threading.Thread(target=ask) for _ in range(3)]
    for t in askers:
        t.start()
    try:
        for i, it in enumerate(items):
            rec.add_items([it])
            if i % 4 == 3:
                rec.swap(snaps[(i // 4 + 1) % 3])
            time.sleep(0.01)
    finally:
        done.set()
        for t in askers:
            t.join()
    assert not errors, errors[:3]
    assert answered == set(full)
    for uid, uv in users.items():  # in the end every version answers with every item
        _wait(f"{uid} never answered from its version",
              lambda uid=uid, uv=uv: rec.recommend(uid, n=3).snapshot == uv.model)
    held = [*rec._loaded.values(), *rec._on_disk.values()]
    assert {s.version for s in held} == set(full) and all(s.n_items == 212 for s in held)
