"""Snapshot store: publish, verification, refusal of bad files, retention, rollback, watchers."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from snapshotter import (
    ActiveWatcher,
    CheckpointError,
    IntegrityError,
    SnapshotConfig,
    SnapshotError,
    SnapshotStore,
    Watcher,
    publish,
)
from snapshotter.store import ANNOUNCED, LOCK, MANIFEST, POINTER, sha256_file
from snapshotter.testing import write_checkpoint


def _flip_byte(path, at=-3):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_publish_writes_a_verified_version_and_switches_the_pointer(store, checkpoint):
    res = publish(checkpoint, store)
    assert store.active_version() == res.version
    assert store.active() == store.path(res.version)
    files = {p.name for p in res.path.iterdir()}
    assert {
        "weights.safetensors",
        "items.faiss",
        "item_ids.npy",
        "item_categories.npy",
        "categories.json",
        "config.json",
        MANIFEST,
    } <= files
    man = json.loads((res.path / MANIFEST).read_text())
    assert set(man["files"]) == files - {MANIFEST}
    for name, meta in man["files"].items():
        assert meta["sha256"] == sha256_file(res.path / name)
    assert man["index"]["kind"] == "flat" and man["index"]["n_items"] == 120
    assert man["config"]["dim"] == 8 and "train_metrics" in man and "data" in man
    assert man["source"]["weights_sha256"] == sha256_file(checkpoint / "weights.safetensors")
    # no staging directory or pointer temp file left behind (the lock file is the store's own)
    assert not [p for p in store.root.iterdir() if p.name.startswith(".") and p.name != LOCK]
    assert store.verify(res.version) == man


def test_truncated_checkpoint_is_refused_and_the_previous_version_stays(
    store, checkpoint, checkpoint2
):
    first = publish(checkpoint, store)
    w = checkpoint2 / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        publish(checkpoint2, store)
    assert store.active_version() == first.version
    assert [s.version for s in store.versions()] == [first.version]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging")]


@pytest.mark.parametrize(
    "breakage, file",
    [
        (
            lambda ck: np.save(ck / "item_ids.npy", np.array(["a", "b"]), allow_pickle=False),
            "item_ids.npy",
        ),
        (
            lambda ck: np.save(
                ck / "item_ids.npy", np.array([{"x": 1}] * 120, dtype=object), allow_pickle=True
            ),
            "item_ids.npy",
        ),
        (lambda ck: (ck / "config.json").write_text('{"dim": 9}'), "config.json"),
        (lambda ck: (ck / "config.json").write_text("{not json"), "config.json"),
        (
            lambda ck: np.save(ck / "item_categories.npy", np.full(120, 99, dtype=np.int32)),
            "item_categories.npy",
        ),
        (lambda ck: os.remove(ck / "item_ids.npy"), "item_ids.npy"),
    ],
)
def test_inconsistent_checkpoints_name_the_file(store, checkpoint, breakage, file):
    breakage(checkpoint)
    with pytest.raises(CheckpointError, match=file.replace(".", r"\.")):
        publish(checkpoint, store)
    assert store.active_version() is None


def test_tampered_snapshot_is_refused_naming_the_file(store, checkpoint, checkpoint2):
    v1 = publish(checkpoint, store).version
    v2 = publish(checkpoint2, store).version
    _flip_byte(store.path(v1) / "items.faiss")
    with pytest.raises(IntegrityError, match="items.faiss") as err:
        store.activate(v1)
    assert err.value.file == "items.faiss" and "sha256" in str(err.value)
    assert store.active_version() == v2
    # Truncation is caught by size before hashing.
    w = store.path(v2) / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:10])
    with pytest.raises(IntegrityError, match=r"weights.safetensors: size 10 != \d+ \(truncated"):
        store.verify(v2)


def test_rollback_restores_and_retention_never_drops_the_active(tmp_path, redis_dict):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), keep=2))
    versions = [
        publish(write_checkpoint(tmp_path / f"c{i}", n_items=40, dim=4, seed=i), store,
                redis_dict).version
        for i in range(3)
    ]
    assert [s.version for s in store.versions()] == versions[1:]  # oldest pruned
    assert store.previous_version() == versions[1]
    store.activate(versions[1])  # rollback
    assert store.active_version() == versions[1]
    # the active one and the one active before it (the rollback target) stay, whatever keep
    assert store.prune(keep=1) == []
    assert [s.version for s in store.versions()] == versions[1:]
    store.activate(versions[1])  # the same again: the history's previous is still versions[2]
    assert store.prune(keep=1) == []


def test_a_publish_that_cannot_read_redis_prunes_nothing_and_says_so(tmp_path, caplog):
    class SetOnly:  # answers the SET, then not the GET that tells what it announces
        def get(self, key):
            raise ConnectionError("Redis went away")

        def set(self, key, value):
            pass

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), keep=1))
    publish(write_checkpoint(tmp_path / "c0", n_items=40, dim=4, seed=0), store)
    publish(write_checkpoint(tmp_path / "c1", n_items=40, dim=4, seed=1), store)  # keeps both
    res = publish(write_checkpoint(tmp_path / "c2", n_items=40, dim=4, seed=2), store, SetOnly())
    assert res.pruned == [] and "not pruning old versions this time" in str(res.not_pruned)
    assert len(store.versions()) == 3
    assert caplog.text.count("not pruning old versions") == 1


def test_a_publish_without_redis_prunes_keeping_the_version_last_announced(tmp_path,
                                                                          redis_dict):
    """--no-redis does not read which version Redis announces: the store's record of what it
    last announced (ANNOUNCED, written by the publish that announced it) is kept, besides the
    pointer and the rollback target, and the rest is pruned down to keep as before. On the
    parent nothing was pruned (the store grew without limit); before it the announced
    version, what servers serve, was deleted."""
    from serving_cache.keys import model_active_key

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), keep=1))

    def ck(i):
        return write_checkpoint(tmp_path / f"c{i}", n_items=40, dim=4, seed=i)

    served = publish(ck(0), store, redis_dict, "unit").version
    assert store.announcements() == {"unit": served}
    no_redis = [publish(ck(i), store) for i in (1, 2, 3, 4)]
    assert all(r.not_pruned is None for r in no_redis)
    assert [r.pruned for r in no_redis] == [[], [], [no_redis[0].version],
                                            [no_redis[1].version]]
    assert [s.version for s in store.versions()] == [served, *(r.version for r in no_redis[2:])]
    assert redis_dict.get(model_active_key("unit")) == served.encode()  # still what is served
    assert store.announcements() == {"unit": served}  # --no-redis announced nothing
    last = publish(ck(5), store, redis_dict, "unit")  # announces, and records, the new one
    assert store.announcements() == {"unit": last.version}
    assert last.pruned == [no_redis[2].version]  # served: Redis announced it before the switch
    assert [s.version for s in store.versions()] == [served, no_redis[3].version, last.version]


def test_a_store_that_never_announced_prunes_without_redis_as_before(tmp_path):
    """No record (only --no-redis publishes): the pointer and the rollback target are kept,
    the rest pruned down to keep."""
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), keep=2))
    vs = [publish(write_checkpoint(tmp_path / f"c{i}", n_items=40, dim=4, seed=i),
                  store).version for i in range(5)]
    assert [s.version for s in store.versions()] == vs[-2:]
    assert store.announcements() == {} and not (store.root / ANNOUNCED).exists()


def test_versions_are_single_path_components(store):
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(SnapshotError):
            store.path(bad)


def test_same_weights_reactivate_the_kept_version(store, checkpoint, checkpoint2):
    a = publish(checkpoint, store)
    b = publish(checkpoint2, store)
    again = publish(checkpoint, store)  # e.g. the rerun of a publish killed before its switch
    assert again.reused and again.version == a.version and again.previous == b.version
    assert store.active_version() == a.version and again.manifest == a.manifest
    assert [s.version for s in store.versions()] == [a.version, b.version]
    # copies never push distinct rollback targets out (keep is 3 here)
    for _ in range(4):
        assert publish(checkpoint, store).version == a.version
    assert {s.version for s in store.versions()} == {a.version, b.version}
    # a damaged kept copy is not re-activated: a fresh copy is written
    _flip_byte(store.path(b.version) / "items.faiss")
    fresh = publish(checkpoint2, store)
    assert not fresh.reused and fresh.version != b.version
    assert store.active_version() == fresh.version


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_active_watcher_polls_rarely_and_refuses_tampered(store, checkpoint, checkpoint2):
    v1 = publish(checkpoint, store).version
    clock = _Clock()
    w = ActiveWatcher(store, None, check_every_s=10, clock=clock)
    assert w.poll() == (v1, store.path(v1))  # initial load
    assert w.poll() is None
    v2 = publish(checkpoint2, store).version
    assert w.poll() is None  # within the period: no I/O at all
    clock.t = 11
    _flip_byte(store.path(v2) / "weights.safetensors", at=-1)
    assert w.poll() is None and v2 in w.refused and w.current == v1
    clock.t = 22
    assert w.poll() is None  # not retried while the pointer still names it
    store.activate(v1)
    v3 = publish(
        write_checkpoint(checkpoint.parent / "ck3", n_items=30, dim=8, seed=3), store
    ).version
    clock.t = 33
    assert w.poll() == (v3, store.path(v3))


def test_watch_publishes_each_settled_checkpoint_once(tmp_path):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), settle_s=5))
    trainer = tmp_path / "trainer"
    write_checkpoint(trainer / "run1", n_items=30, dim=4, seed=1)
    watcher = Watcher(store, trainer)
    now = time.time()
    assert watcher.tick(now) is None  # just written: not settled
    first = watcher.tick(now + 10)
    assert first is not None and store.active_version() == first.version
    assert watcher.tick(now + 20) is None
    write_checkpoint(trainer / "run2", n_items=30, dim=4, seed=2)
    later = time.time() + 10
    os.utime(trainer / "run2" / "weights.safetensors", (later, later))
    second = watcher.tick(later + 10)
    assert second is not None and second.previous == first.version
    # A rollback is not undone by the next tick: run2's weights are already a kept version.
    store.activate(first.version)
    assert Watcher(store, trainer).tick(later + 20) is None
    assert store.active_version() == first.version


def test_pointer_is_one_line_with_the_version(store, checkpoint):
    v = publish(checkpoint, store).version
    assert (store.root / POINTER).read_text() == v + "\n"


def test_popularity_comes_from_the_training_data_when_on_disk(tmp_path, store):
    ck = write_checkpoint(tmp_path / "ck", n_items=4, dim=4)
    config = json.loads((ck / "config.json").read_text())
    config["data"]["name"] = "tiny"
    (ck / "config.json").write_text(json.dumps(config))
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    (data / "items.tsv").write_text(
        "item_id\tcategories\ttitle\n" + "".join(f"i{i}\tcat0\tt{i}\n" for i in range(4))
    )
    (data / "events.tsv").write_text(
        "user_id\titem_id\tts_ms\n" + "u1\ti2\t1\nu2\ti2\t2\nu1\ti0\t3\n"
    )
    res = publish(ck, store, data_dir=tmp_path / "data")
    assert np.load(res.path / "item_pop.npy", allow_pickle=False).tolist() == [1, 0, 2, 0]
    assert "item_pop.npy" in res.manifest["files"]
    # No data on disk: no popularity file, and the publish still succeeds (another store: in
    # this one the same weights would re-activate the version above).
    other = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "other")))
    assert not (publish(ck, other, data_dir=tmp_path / "nowhere").path / "item_pop.npy").exists()


def test_a_snapshot_directory_loads_as_a_base_model(store, checkpoint):
    from online_model.base import BaseView

    res = publish(checkpoint, store)
    base = BaseView.from_checkpoint(res.path)
    assert base.version == res.version  # what the dataflow writes as `model`, what serving matches
    assert base.item_emb.shape == (120, 8) and base.index_of("i5") == 5


def test_a_trained_checkpoint_gives_cold_users_its_most_clicked_items(tmp_path, store):
    """``save_checkpoint`` records each item's clicks in the training corpus, so a snapshot of
    any trained checkpoint (a topic-trained one has no prepared dataset on disk to count from)
    serves cold users the most clicked items, not the catalogue's first ids."""
    from online_model.testing import tiny_diam_checkpoint
    from serving_cache.retrieval import SnapshotIndex

    path, corpus = tiny_diam_checkpoint(tmp_path / "ck")
    counts = np.bincount(corpus.items, minlength=corpus.n_items)
    assert counts.max() > counts.min()  # else the check below could not fail
    version = publish(path, store).version
    snap = SnapshotIndex.load(store.path(version), version)
    assert snap.popularity is not None
    assert snap.popularity.tolist() == counts.tolist()
    assert snap.cold[0] == int(np.argmax(counts))
    assert counts[snap.cold].tolist()[:3] != [0, 0, 0]


class _FlakyRedis:
    """A client whose GET fails while ``down``, and announces nothing otherwise."""

    down = False

    def get(self, key):
        import redis

        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        return None


def test_active_watcher_logs_a_redis_outage_once_and_its_end_once(store, checkpoint, caplog):
    v1 = publish(checkpoint, store).version
    clock, client = _Clock(), _FlakyRedis()
    w = ActiveWatcher(store, client, check_every_s=5, clock=clock)
    client.down = True
    with caplog.at_level("INFO", logger="snapshotter.store"):
        for t in range(0, 60, 5):  # a minute of reloads, every 5 s
            clock.t = t
            got = w.poll()
            assert got == ((v1, store.path(v1)) if t == 0 else None)  # the pointer file serves
        client.down = False
        clock.t = 60
        assert w.poll() is None
        clock.t = 65
        assert w.poll() is None
    lines = [r.getMessage() for r in caplog.records if r.name == "snapshotter.store"]
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0] and "Error 111" in lines[0] and "pointer file" in lines[0]
    assert "reachable again after 60.0 s" in lines[1]


def test_the_lock_refuses_a_missing_store_unless_asked_to_create_it(tmp_path):
    """Only a publish makes the store; every other holder of the lock needs one that exists."""
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "typo")))
    with pytest.raises(SnapshotError, match=f"snapshot directory {tmp_path / 'typo'} does not "
                       "exist .*DIAM_SNAPSHOT_DIR"):
        with store.locked():
            pass
    assert not store.root.exists()
    with store.locked(create=True):
        assert (store.root / LOCK).is_file()


def test_the_publish_record_outlives_pruned_versions_and_seeds_from_an_older_store(
        tmp_path, checkpoint, checkpoint2):
    """Every weights sha256 published stays in PUBLISHED after its version is pruned; a store
    from before the record starts it with the weights of the versions it keeps."""
    from snapshotter.store import PUBLISHED

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), keep=1))
    first = publish(checkpoint, store)
    (store.root / PUBLISHED).unlink()  # as a store written before the record was kept
    second = publish(checkpoint2, store)
    third = publish(write_checkpoint(tmp_path / "ck3", n_items=30, dim=8, seed=3), store)
    assert not store.path(first.version).exists()
    assert [v for v in store.published().values()] == [
        first.version, second.version, third.version]


def test_a_refused_version_is_taken_once_repaired_and_rolled_back_to(store, checkpoint,
                                                                      checkpoint2, caplog):
    """A watcher that refused a damaged version (a server started on it, a run that saw it
    published) takes it once it is repaired and the active version moves: a rollback to it,
    even when it is the active one already, or a switch to another version and back."""
    v1 = publish(checkpoint, store).version
    weights = store.path(v1) / "weights.safetensors"
    good = weights.read_bytes()
    _flip_byte(weights, at=-1)
    clock = _Clock()
    w = ActiveWatcher(store, None, check_every_s=1, clock=clock)
    assert w.poll() is None and v1 in w.refused  # started on it damaged
    weights.write_bytes(good)  # repaired
    clock.t = 2
    assert w.poll() is None  # the pointer did not move: not retried (nor logged again)
    assert caplog.text.count(f"snapshot {v1}: weights.safetensors") == 1
    store.activate(v1)  # `diam snapshot rollback V`: the pointer is written again
    clock.t = 4
    assert w.poll() == (v1, store.path(v1))
    # the caller refuses a version (another size, say); a publish and a rollback to it
    # offer it again
    v2 = publish(checkpoint2, store).version
    clock.t = 6
    assert w.poll() == (v2, store.path(v2))
    w.refuse(v2, keep=v1)
    clock.t = 8
    assert w.poll() is None
    v3 = publish(write_checkpoint(checkpoint.parent / "ck3", n_items=30, dim=8, seed=3),
                 store).version
    store.activate(v2)  # rolled back to before the watcher polled v3
    clock.t = 10
    assert w.poll() == (v2, store.path(v2)) and v3 not in w.refused


def test_a_pointer_that_cannot_be_written_leaves_no_temp_file(store, checkpoint):
    """A failed write of ACTIVE (a full or read-only disk; here a directory where its rename
    lands) raises the store's one-line error and removes its temp file."""
    from snapshotter.store import StoreIOError

    v1 = publish(checkpoint, store).version
    (store.root / POINTER).unlink()
    (store.root / POINTER).mkdir()
    (store.root / POINTER / "x").write_text("x")
    with pytest.raises(StoreIOError, match="DIAM_SNAPSHOT_DIR.*writing ACTIVE failed.*"
                       "the active version did not change"):
        store.activate(v1)
    assert not list(store.root.glob(f".{POINTER}.*.tmp"))
    with pytest.raises(StoreIOError, match=r"reading ACTIVE failed: .*\(EISDIR"):
        store.active_version()
