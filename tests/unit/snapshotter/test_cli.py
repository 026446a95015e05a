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
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "4")  # the tests' checkpoints: publish refuses others
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


def test_publishes_without_redis_prune_down_to_keep(run, tmp_path, monkeypatch):
    """The reviewer's repro: five --no-redis publishes of a store that never announced in
    Redis, keep=2: two versions stay (the parent kept all five)."""
    monkeypatch.setenv("DIAM_SNAPSHOT_KEEP", "2")
    versions = []
    for i in range(5):
        r = run("snapshot", "publish",
                str(write_checkpoint(tmp_path / f"c{i}", n_items=40, dim=4, seed=i)), "--no-redis")
        assert r.exit_code == 0, r.output
        assert ("removed old versions" in r.output) == (i >= 2), r.output
        versions.append(r.output.split("active: ")[1].split()[0])
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir() if p.is_dir()
                  and not p.name.startswith(".")) == sorted(versions[-2:])


def test_publish_and_watch_help_say_what_a_no_redis_prune_keeps(run):
    for cmd in ("publish", "watch"):
        text = " ".join(run("snapshot", cmd, "--help").output.split())
        assert "last announced in Redis" in text or "last announced there" in text, text
        assert "ANNOUNCED file" in text, text


def test_bad_input_is_a_one_line_error(run, tmp_path):
    ck = write_checkpoint(tmp_path / "a", n_items=30, dim=4)
    (ck / "weights.safetensors").write_bytes(b"\x00" * 12)
    r = run("snapshot", "publish", str(ck), "--no-redis")
    assert r.exit_code == 1 and r.output.startswith("publishing")
    assert "Error: weights.safetensors: cannot be read" in r.output and "Traceback" not in r.output
    (tmp_path / "snaps").mkdir()  # an empty store (a missing one: the test below)
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


def _version(output: str) -> str:
    return output.split("active: ")[1].split()[0]


@pytest.mark.parametrize(
    "content, says",
    [
        (b"\xff\xfe\x00\x9c", "undecodable bytes"),
        (b"../ck_demo\n", "names '../ck_demo', not a snapshot version"),
        (b"20990101T000000-deadbeef\n", "names 20990101T000000-deadbeef, not a version in"),
    ],
)
def test_a_damaged_pointer_is_one_error_line_in_every_command(run, tmp_path, content, says):
    v1 = _version(run("snapshot", "publish", str(write_checkpoint(tmp_path / "a", n_items=30,
                                                                   dim=4, seed=1)), "--no-redis").output)
    pointer = tmp_path / "snaps" / "ACTIVE"
    pointer.write_bytes(content)
    listing = run("snapshot", "list", "--no-redis")
    assert listing.exit_code == 1 and f"  {v1}" in listing.output  # the versions a repair picks from
    for r in (listing, run("snapshot", "rollback", "--no-redis"),
              run("snapshot", "publish", str(write_checkpoint(tmp_path / "b", n_items=30, dim=4,
                                                              seed=2)), "--no-redis")):
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert r.exit_code == 1 and len(errors) == 1 and str(pointer) in errors[0], r.output
        assert says in errors[0] and "Traceback" not in r.output
    # publish committed nothing, and an explicit rollback repairs the pointer
    assert [p.name for p in (tmp_path / "snaps").iterdir() if p.is_dir()] == [v1]
    assert run("snapshot", "rollback", v1, "--no-redis").exit_code == 0
    assert pointer.read_text() == v1 + "\n"


def test_list_says_the_pointer_is_empty(run, tmp_path):
    run("snapshot", "publish", str(write_checkpoint(tmp_path / "a", n_items=30, dim=4)), "--no-redis")
    (tmp_path / "snaps" / "ACTIVE").write_text("")
    r = run("snapshot", "list", "--no-redis")
    assert r.exit_code == 0 and "ACTIVE is empty" in r.output


def test_republished_weights_reactivate_and_never_active_versions_are_shown(
        run, tmp_path, monkeypatch):
    import snapshotter.store

    ck1 = write_checkpoint(tmp_path / "a", n_items=30, dim=4, seed=1)
    ck2 = write_checkpoint(tmp_path / "b", n_items=30, dim=4, seed=2)
    ck3 = write_checkpoint(tmp_path / "c", n_items=30, dim=4, seed=3)
    v1 = _version(run("snapshot", "publish", str(ck1), "--no-redis").output)
    v2 = _version(run("snapshot", "publish", str(ck2), "--no-redis").output)
    with monkeypatch.context() as m:  # killed between commit and pointer switch
        m.setattr(snapshotter.store.SnapshotStore, "activate",
                  lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert run("snapshot", "publish", str(ck3), "--no-redis").exit_code != 0
    listing = run("snapshot", "list", "--no-redis").output
    (v3,) = [line.split()[0] for line in listing.splitlines() if "never active" in line]
    assert v3 not in (v1, v2) and f"* {v2}" in listing
    # the rerun of the killed publish activates the version it committed: no copy
    again = run("snapshot", "publish", str(ck3), "--no-redis")
    assert again.exit_code == 0 and f"already published as {v3}; activated" in again.output
    assert f"previous: {v2}" in again.output
    assert "never active" not in run("snapshot", "list", "--no-redis").output
    back = run("snapshot", "rollback", "--no-redis")
    assert back.exit_code == 0 and f"active: {v2}" in back.output


@pytest.mark.parametrize("version", ["", "  "])
def test_an_empty_rollback_version_is_a_usage_error(run, tmp_path, version):
    """`rollback "$V"` with V unset must not roll back to the previous version silently."""
    for i in range(2):
        run("snapshot", "publish", str(write_checkpoint(tmp_path / f"c{i}", n_items=30, dim=4,
                                                        seed=i)), "--no-redis")
    active = (tmp_path / "snaps" / "ACTIVE").read_text()
    r = run("snapshot", "rollback", version, "--no-redis")
    assert r.exit_code == 2 and "must not be empty" in r.output, r.output
    assert (tmp_path / "snaps" / "ACTIVE").read_text() == active


def test_rollback_refuses_a_snapshot_dir_that_does_not_exist(run, tmp_path, monkeypatch):
    """A mistyped DIAM_SNAPSHOT_DIR is named, before Redis is asked anything (its URL here
    answers nothing), and is not created; a file there is named as such. list says it is
    missing (exit 0: a store nothing was published to yet is listed as empty)."""
    snaps = tmp_path / "snaps"
    missing = (f"Error: snapshot directory {snaps} does not exist (settings snapshot.dir, "
               "DIAM_SNAPSHOT_DIR); nothing was published there\n")
    assert run("snapshot", "rollback", "--no-redis").output == missing
    monkeypatch.setenv("DIAM_REDIS_URL", "redis://127.0.0.1:1/0")
    r = run("snapshot", "rollback", "20261206T115042-ad579c08")
    assert (r.exit_code, r.output) == (1, missing)
    assert not snaps.exists()
    r = run("snapshot", "list", "--no-redis")
    assert (r.exit_code, r.output) == (0, f"no snapshots in {snaps} (it does not exist)\n")
    assert not snaps.exists()
    snaps.write_text("")
    r = run("snapshot", "rollback", "--no-redis")
    assert r.exit_code == 1 and f"{snaps} is not a directory" in r.output, r.output


def test_watch_says_it_will_create_a_missing_snapshot_dir(run, tmp_path, monkeypatch):
    """watch publishes, so a missing snapshot directory is not refused: it is said at start and
    the first publish makes it."""
    trainer = tmp_path / "trainer"
    trainer.mkdir()
    said = f"snapshot directory {tmp_path / 'snaps'} does not exist yet: the first publish creates it"
    r = run("snapshot", "watch", "--once", "--trainer-dir", str(trainer), "--no-redis")
    assert r.exit_code == 0 and said in r.output and not (tmp_path / "snaps").exists(), r.output
    monkeypatch.setenv("DIAM_SNAPSHOT_SETTLE_S", "0")
    write_checkpoint(trainer / "run1", n_items=30, dim=4)
    r = run("snapshot", "watch", "--once", "--trainer-dir", str(trainer), "--no-redis")
    assert r.exit_code == 0 and said in r.output and "published " in r.output, r.output
    r = run("snapshot", "watch", "--once", "--trainer-dir", str(trainer), "--no-redis")
    assert r.exit_code == 0 and said not in r.output, r.output


def test_watch_once_says_it_checks_once(run, tmp_path):
    (tmp_path / "trainer").mkdir()
    r = run("snapshot", "watch", "--once", "--trainer-dir", str(tmp_path / "trainer"), "--no-redis")
    assert r.exit_code == 0 and f"checking {tmp_path / 'trainer'} once" in r.output, r.output
    assert "every" not in r.output and "Ctrl-C" not in r.output


def test_publish_refuses_a_dimension_no_dataflow_can_use(run, tmp_path, monkeypatch):
    """A d=8 checkpoint under DIAM_ONLINE_DIM=4: diam run's start check (diam.app._check_dim)
    refuses it before anything is written; --allow-dim-change publishes it with a warning."""
    first = run("snapshot", "publish", str(write_checkpoint(tmp_path / "a", n_items=30, dim=4)),
                "--no-redis")
    v4 = first.output.split("active: ")[1].split()[0]
    ck8 = write_checkpoint(tmp_path / "d8", n_items=30, dim=8, seed=3)
    r = run("snapshot", "publish", str(ck8), "--no-redis")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "has d=8, DIAM_ONLINE_DIM is 4" in r.output and "nothing was published" in r.output
    assert "--allow-dim-change" in r.output
    assert (tmp_path / "snaps" / "ACTIVE").read_text().strip() == v4
    assert [p.name for p in (tmp_path / "snaps").iterdir()
            if p.is_dir() and not p.name.startswith(".")] == [v4]
    # a watch passes it over too (logged), and publishes nothing
    monkeypatch.setenv("DIAM_SNAPSHOT_SETTLE_S", "0")
    w = run("snapshot", "watch", "--once", "--trainer-dir", str(ck8), "--no-redis")
    assert w.exit_code == 0 and "published" not in w.output, w.output
    assert (tmp_path / "snaps" / "ACTIVE").read_text().strip() == v4
    ok = run("snapshot", "publish", str(ck8), "--no-redis", "--allow-dim-change")
    assert ok.exit_code == 0 and "d=8" in ok.output, ok.output
    assert "warning:" in ok.output and "DIAM_ONLINE_DIM is 4" in ok.output
    helptext = " ".join(run("snapshot", "publish", "--help").output.split())
    assert "Running dataflows refuse the new version" in helptext and "stored in Redis" in helptext


def test_rollback_refuses_a_dimension_no_dataflow_can_use(run, tmp_path):
    """Rollback to a d=8 version under DIAM_ONLINE_DIM=4 (one published with
    --allow-dim-change) is refused as publish refuses it, by name and bare; the pointer does
    not move. --allow-dim-change activates it with publish's warning."""
    first = run("snapshot", "publish", str(write_checkpoint(tmp_path / "a", n_items=30, dim=4)),
                "--no-redis")
    v4 = first.output.split("active: ")[1].split()[0]
    eight = run("snapshot", "publish", str(write_checkpoint(tmp_path / "d8", n_items=30, dim=8,
                                                            seed=3)),
                "--no-redis", "--allow-dim-change")
    v8 = eight.output.split("active: ")[1].split()[0]
    assert run("snapshot", "rollback", v4, "--no-redis").exit_code == 0
    pointer = tmp_path / "snaps" / "ACTIVE"
    for args in ([v8], []):  # by name, and bare (the version active before v4)
        r = run("snapshot", "rollback", *args, "--no-redis")
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert f"snapshot {v8} has d=8, DIAM_ONLINE_DIM is 4" in r.output, r.output
        assert "--allow-dim-change" in r.output and f"{v4} stays active" in r.output
        assert pointer.read_text().strip() == v4
    ok = run("snapshot", "rollback", v8, "--no-redis", "--allow-dim-change")
    assert ok.exit_code == 0 and f"active: {v8}" in ok.output, ok.output
    assert "warning:" in ok.output and "DIAM_ONLINE_DIM is 4" in ok.output
    assert pointer.read_text().strip() == v8
    helptext = " ".join(run("snapshot", "rollback", "--help").output.split())
    assert "--allow-dim-change" in helptext and "Running dataflows refuse the new version" \
        in helptext


def test_watch_never_brings_back_a_pruned_checkpoint(run, tmp_path, monkeypatch):
    """The reviewer's repro: a checkpoint a watch published, then rolled back and pruned
    behind two newer publishes, is not published again by a fresh `watch --once` (it was,
    replacing the newest version: only a running watcher's memory stopped it)."""
    monkeypatch.setenv("DIAM_SNAPSHOT_KEEP", "2")
    monkeypatch.setenv("DIAM_SNAPSHOT_SETTLE_S", "0")
    cks = [write_checkpoint(tmp_path / f"v{i}", n_items=30, dim=4, seed=i) for i in range(5)]
    assert run("snapshot", "publish", str(cks[2]), "--no-redis").exit_code == 0
    write_checkpoint(tmp_path / "tdir" / "X", n_items=30, dim=4, seed=1)  # v1's weights
    first = run("snapshot", "watch", "--once", "--trainer-dir", str(tmp_path / "tdir"),
                "--no-redis")
    assert "published " in first.output, first.output
    x = first.output.split("published ")[1].split()[0]
    assert run("snapshot", "rollback", "--no-redis").exit_code == 0
    for i in (3, 4):
        r = run("snapshot", "publish", str(cks[i]), "--no-redis")
        assert r.exit_code == 0, r.output
    v4 = r.output.split("active: ")[1].split()[0]
    assert not (tmp_path / "snaps" / x).exists()  # pruned
    again = run("snapshot", "watch", "--once", "--trainer-dir", str(tmp_path / "tdir"),
                "--no-redis")
    assert again.exit_code == 0, again.output
    assert not any(line.startswith("published ") for line in again.output.splitlines())
    assert f"X was published as {x}, pruned since" in again.output, again.output
    assert (tmp_path / "snaps" / "ACTIVE").read_text().strip() == v4
    # an operator's publish still may, deliberately
    back = run("snapshot", "publish", str(tmp_path / "tdir" / "X"), "--no-redis")
    assert back.exit_code == 0 and "active: " in back.output, back.output


def _one_error_line(r, *says):
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "DIAM_SNAPSHOT_DIR" in errors[0], r.output
    assert all(s in errors[0] for s in says), r.output


def test_a_store_whose_lock_cannot_be_opened_is_one_error_line(run, tmp_path):
    """publish and rollback said an unusable store (read-only: its .lock cannot be opened;
    here a directory stands where .lock goes, which stops root too) with a traceback."""
    for i in (1, 2):
        r = run("snapshot", "publish",
                str(write_checkpoint(tmp_path / f"c{i}", n_items=30, dim=4, seed=i)),
                "--no-redis")
        assert r.exit_code == 0, r.output
    v2 = r.output.split("active: ")[1].split()[0]
    lock = tmp_path / "snaps" / ".lock"
    lock.unlink()
    lock.mkdir()
    _one_error_line(run("snapshot", "rollback", "--no-redis"), "EISDIR", ".lock")
    ck3 = write_checkpoint(tmp_path / "c3", n_items=30, dim=4, seed=3)
    _one_error_line(run("snapshot", "publish", str(ck3), "--no-redis"), "EISDIR",
                    "nothing was changed")
    assert (tmp_path / "snaps" / "ACTIVE").read_text().strip() == v2
    assert not list((tmp_path / "snaps").glob(".staging-*"))


def test_a_store_under_a_file_is_one_error_line(run, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "afile" / "snaps"))
    ck = write_checkpoint(tmp_path / "c", n_items=30, dim=4)
    _one_error_line(run("snapshot", "publish", str(ck), "--no-redis"), "ENOTDIR")


def test_a_full_disk_while_staging_is_one_error_line_and_leaves_nothing(tmp_path):
    """A write that fails for room (RLIMIT_FSIZE: EFBIG, as ENOSPC does on a full disk) while
    the new version is staged: one Error line, no staging directory left, nothing switched."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    env = {**os.environ, "DIAM_SNAPSHOT_DIR": str(tmp_path / "snaps"), "DIAM_CONFIG": "",
           "DIAM_ONLINE_DIM": "16"}
    small = write_checkpoint(tmp_path / "small", n_items=30, dim=16, seed=1)
    big = write_checkpoint(tmp_path / "big", n_items=4000, dim=16, seed=2)

    def diam(*args, limit=None):
        def cap():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails, not the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return subprocess.run([sys.executable, "-c", "from diam.cli import main; main()", *args], env=env,
                              capture_output=True, text=True, timeout=120,
                              preexec_fn=cap if limit else None)

    first = diam("snapshot", "publish", str(small), "--no-redis")
    assert first.returncode == 0, first.stderr
    v1 = first.stdout.split("active: ")[1].split()[0]
    assert (big / "weights.safetensors").stat().st_size > 200_000
    r = diam("snapshot", "publish", str(big), "--no-redis", limit=200_000)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "EFBIG" in errors[0] and "DIAM_SNAPSHOT_DIR" in errors[0], r.stderr
    assert "nothing was published" in errors[0]
    assert not list((tmp_path / "snaps").glob(".staging-*"))
    assert (tmp_path / "snaps" / "ACTIVE").read_text().strip() == v1


def test_snapshot_help_says_an_idle_run_reloads_at_its_next_clicks(run):
    text = " ".join(run("snapshot", "--help").output.split())
    assert "an idle run" in text and "diam_flow_base_version" in text, text
