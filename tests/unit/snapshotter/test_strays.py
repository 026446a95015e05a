"""What is a version (``SnapshotStore.why_not_version``): a directory a publish named, or one
holding a manifest, whatever its name (a version renamed by hand, ``golden``, lists, rolls
back and serves as it did before names were checked). A directory without a manifest is a
stray: listed as not a version, never activated, served or pruned. Only published names are
pruned; names that could be paths are refused."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diam.cli import main
from snapshotter import ActiveWatcher, SnapshotConfig, SnapshotError, SnapshotStore, publish
from snapshotter.store import POINTER, resolve_active, validate_version
from snapshotter.testing import write_checkpoint


class _Redis:
    """GET/SET of a dict: what resolve_active and the watchers ask of Redis."""

    def __init__(self, **values: str) -> None:
        self.values = {k: v.encode() for k, v in values.items()}

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def set(self, key: str, value: str) -> None:
        self.values[key] = value.encode()


def _store(tmp_path, keep: int = 2) -> SnapshotStore:
    return SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=keep))


def _ck(tmp_path, i: int):
    return write_checkpoint(tmp_path / f"c{i}", n_items=40, dim=4, seed=i)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "4")
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args))


def test_a_directory_without_a_manifest_is_a_stray_never_pruned(tmp_path):
    store, redis = _store(tmp_path), _Redis()  # a publish prunes only what Redis lets it
    first = publish(_ck(tmp_path, 0), store, redis).version
    junk = store.root / "junkdir"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    assert [s.version for s in store.versions()] == [first]  # not a (broken) version
    assert store.strays() == [("junkdir", "no manifest.json")]
    for i in (1, 2, 3):
        publish(_ck(tmp_path, i), store, redis)
    assert (junk / "notes.txt").read_text() == "mine"  # the pruned are versions only
    assert first not in {s.version for s in store.versions()}
    (store.root / POINTER).write_text("junkdir\n")
    with pytest.raises(SnapshotError, match=r"names junkdir, not a version in .*no manifest"):
        store.active_version()


def test_a_version_renamed_by_hand_lists_rolls_back_and_serves(tmp_path, cli):
    from serving_cache.recommend import store_loader

    store = _store(tmp_path)
    published = publish(_ck(tmp_path, 0), store).version
    (store.root / published).rename(store.root / "golden")
    (store.root / POINTER).write_text("golden\n")  # as an operator pins it
    assert store.active_version() == "golden" and store.strays() == []
    listing = cli("snapshot", "list", "--no-redis")
    assert listing.exit_code == 0, listing.output
    assert "* golden  " in listing.output and "not a version" not in listing.output

    second = publish(_ck(tmp_path, 1), store)
    assert second.previous == "golden"
    back = cli("snapshot", "rollback", "golden", "--no-redis")
    assert back.exit_code == 0 and "active: golden" in back.output, back.output
    assert store.active_version() == "golden"

    # what diam serve and diam run follow: Redis's announcement, the watcher, the loader
    redis = _Redis(**{"diam:live:model:active": "golden"})
    assert resolve_active(store, redis, "live") == "golden"
    found = ActiveWatcher(store, redis, check_every_s=0.0).poll()
    assert found is not None and found[0] == "golden"
    index = store_loader(store)("golden")
    assert index is not None and index.version == "golden"


def test_a_hand_named_version_is_a_pin_prune_never_deletes(tmp_path):
    store, redis = _store(tmp_path, keep=2), _Redis()
    pinned = publish(_ck(tmp_path, 0), store).version
    (store.root / pinned).rename(store.root / "golden")
    (store.root / POINTER).write_text("golden\n")
    published = [publish(_ck(tmp_path, i), store, redis).version for i in (1, 2, 3, 4)]
    kept = [s.version for s in store.versions()]
    assert "golden" in kept  # never pruned, and not counted: keep=2 published ones remain
    assert [v for v in kept if v != "golden"] == published[-2:]


def test_a_stray_announced_in_redis_is_not_served(tmp_path):
    store = _store(tmp_path)
    active = publish(_ck(tmp_path, 0), store).version
    (store.root / "junkdir").mkdir()
    redis = _Redis(**{"diam:live:model:active": "junkdir"})
    assert resolve_active(store, redis, "live") == active  # the pointer file, as for an absent one


def test_names_that_could_be_paths_are_refused_whether_or_not_they_exist(tmp_path, cli):
    store = _store(tmp_path)
    publish(_ck(tmp_path, 0), store)
    (store.root / "junkdir").mkdir()
    for bad in ("../x", "a/b", ".lock", "x\x01y", "..", " golden"):
        with pytest.raises(SnapshotError, match="not a snapshot version"):
            validate_version(bad)
        r = cli("snapshot", "rollback", bad, "--no-redis")
        assert r.exit_code == 1 and "not a snapshot version" in r.output, (bad, r.output)
    active = store.active_version()
    for absent_or_stray, why in (("nosuch", "no such directory"), ("junkdir", "no manifest.json")):
        r = cli("snapshot", "rollback", absent_or_stray, "--no-redis")
        assert r.exit_code == 1 and f"no snapshot {absent_or_stray} in " in r.output, r.output
        assert why in r.output and f"versions: {active}" in r.output
        assert store.active_version() == active
    listing = cli("snapshot", "list", "--no-redis").output
    assert "junkdir  not a version, ignored (no manifest.json)" in listing
    assert "BROKEN" not in listing


def test_a_manifest_under_a_name_that_cannot_name_a_version_is_a_stray(tmp_path):
    store = _store(tmp_path)
    v = publish(_ck(tmp_path, 0), store).version
    (store.root / v).rename(store.root / "golden copy")
    assert store.versions() == [] and store.strays() == [("golden copy", "not a version name")]


def test_a_stray_named_as_a_base_is_refused_in_the_stores_words(tmp_path):
    """``diam replay --snapshot NAME`` (``diam.app.load_holder``) asks the store's rule: a
    stray is refused as an absent version is, naming why and the versions kept, before
    anything starts; a version renamed by hand is a base as any other."""
    from diam.app import NoBaseModel, load_holder
    from diam.settings import load_settings

    store = _store(tmp_path)
    v = publish(_ck(tmp_path, 0), store).version
    (store.root / "notes").mkdir()
    s = load_settings(snapshot={"dir": str(store.root)}, online={"dim": 4})
    for name, why in (("notes", "no manifest.json"), ("nosuch", "no such directory")):
        with pytest.raises(NoBaseModel) as err:
            load_holder(s, snapshot=name, hot_reload=False)
        assert err.value.message == f"no snapshot {name} in {store.root} ({why}; versions: {v})"
    with pytest.raises(NoBaseModel, match="not a snapshot version"):
        load_holder(s, snapshot="../x", hot_reload=False)
    (store.root / v).rename(store.root / "golden")
    assert load_holder(s, snapshot="golden", hot_reload=False).version == "golden"


def test_the_serving_loader_counts_a_stray_as_absent(tmp_path):
    """``serving_cache.recommend.StoreLoader`` follows the store's rule: a user's vectors
    stamped with a stray's name are "not loaded" at once, no load tried nor refusal logged."""
    from serving_cache.recommend import store_loader

    store = _store(tmp_path)
    v = publish(_ck(tmp_path, 0), store).version
    (store.root / "notes").mkdir()
    refused: list[str] = []
    load = store_loader(store, lambda version, exc: refused.append(version))
    assert load.absent("notes") and load("notes") is None and refused == []
    assert not load.absent(v) and load(v) is not None
