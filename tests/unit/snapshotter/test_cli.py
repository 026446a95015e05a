"""``diam snapshot`` commands, disk side only (``--no-redis``); Redis is covered by the
integration tests."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diam.cli import main
from snapshotter.testing import write_checkpoint


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_CONFIG", str(tmp_path / "absent.toml"))
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_publish_list_rollback(run, tmp_path):
    ck1 = write_checkpoint(tmp_path / "a", n_items=30, dim=4, seed=1)
    ck2 = write_checkpoint(tmp_path / "b", n_items=30, dim=4, seed=2)
    r1 = run("snapshot", "publish", str(ck1), "--no-redis")
    assert r1.exit_code == 0, r1.output
    v1 = r1.output.split("active: ")[1].split()[0]
    r2 = run("snapshot", "publish", str(ck2), "--no-redis")
    v2 = r2.output.split("active: ")[1].split()[0]
    assert f"previous: {v1}" in r2.output
    listing = run("snapshot", "list", "--verify", "--no-redis").output
    assert f"* {v2}" in listing and f"  {v1}" in listing and listing.count(" ok") == 2
    back = run("snapshot", "rollback", "--no-redis")
    assert back.exit_code == 0 and f"active: {v1}" in back.output
    assert (tmp_path / "snaps" / "ACTIVE").read_text().strip() == v1


def test_bad_input_is_a_one_line_error(run, tmp_path):
    ck = write_checkpoint(tmp_path / "a", n_items=30, dim=4)
    (ck / "weights.safetensors").write_bytes(b"\x00" * 12)
    r = run("snapshot", "publish", str(ck), "--no-redis")
    assert r.exit_code == 1 and r.output.startswith("publishing")
    assert "Error: weights.safetensors: cannot be read" in r.output and "Traceback" not in r.output
    assert run("snapshot", "rollback", "--no-redis").output.startswith("Error: no earlier version")
    assert "not a snapshot version" in run("snapshot", "rollback", "../x", "--no-redis").output
    assert "is not a period" in run("snapshot", "watch", "--every", "soon", "--no-redis").output


def test_tampered_rollback_keeps_the_active_version(run, tmp_path):
    v = []
    for i in range(2):
        out = run(
            "snapshot",
            "publish",
            str(write_checkpoint(tmp_path / f"c{i}", n_items=30, dim=4, seed=i)),
            "--no-redis",
        ).output
        v.append(out.split("active: ")[1].split()[0])
    ids = tmp_path / "snaps" / v[0] / "item_ids.npy"
    ids.write_bytes(ids.read_bytes()[:-4] + b"zzzz")
    r = run("snapshot", "rollback", v[0], "--no-redis")
    assert r.exit_code == 1 and "item_ids.npy" in r.output and f"{v[1]} stays active" in r.output


def test_watch_once(run, tmp_path, monkeypatch):
    monkeypatch.setenv("DIAM_SNAPSHOT_SETTLE_S", "0")
    write_checkpoint(tmp_path / "trainer" / "run1", n_items=30, dim=4)
    r = run("snapshot", "watch", "--once", "--trainer-dir", str(tmp_path / "trainer"), "--no-redis")
    assert r.exit_code == 0 and "published " in r.output


def test_help_lists_the_commands():
    out = CliRunner().invoke(main, ["--help"]).output
    assert "snapshot" in out and "serve" in out
    assert "hot reload" in CliRunner().invoke(main, ["serve", "--help"]).output
