"""Only directories named in the version format are versions: anything else in the snapshot
directory (made by hand, another tool's) is listed as not a version and never pruned."""

from __future__ import annotations

import pytest

from snapshotter import SnapshotConfig, SnapshotError, SnapshotStore, publish
from snapshotter.store import validate_version
from snapshotter.testing import write_checkpoint


def test_a_directory_not_named_like_a_version_is_never_pruned(tmp_path):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), keep=2))
    first = publish(write_checkpoint(tmp_path / "c0", n_items=40, dim=4, seed=0), store).version
    junk = store.root / "junkdir"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    assert [s.version for s in store.versions()] == [first]  # not a (broken) version
    assert store.strays() == ["junkdir"]
    for i in (1, 2, 3):
        publish(write_checkpoint(tmp_path / f"c{i}", n_items=40, dim=4, seed=i), store)
    assert (junk / "notes.txt").read_text() == "mine"  # the pruned are versions only
    assert first not in {s.version for s in store.versions()}
    with pytest.raises(SnapshotError, match="not a snapshot version"):
        validate_version("junkdir")


def test_list_says_a_stray_directory_is_not_a_version(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from diam.cli import main

    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "4")
    runner = CliRunner()
    ck = write_checkpoint(tmp_path / "a", n_items=30, dim=4, seed=1)
    assert runner.invoke(main, ["snapshot", "publish", str(ck), "--no-redis"]).exit_code == 0
    (tmp_path / "snaps" / "junkdir").mkdir()
    listing = runner.invoke(main, ["snapshot", "list", "--no-redis"]).output
    assert "junkdir  not a version, ignored" in listing and "BROKEN" not in listing
    back = runner.invoke(main, ["snapshot", "rollback", "junkdir", "--no-redis"])
    assert back.exit_code == 1 and "not a snapshot version" in back.output
