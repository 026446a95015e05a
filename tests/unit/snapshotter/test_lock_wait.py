"""A publish or rollback that finds another switch of the same directory holding the store's
lock says so at once, naming the holder (pid, since when), and waits for it; ends the wait
cleanly on Ctrl-C or SIGTERM, or refuses at ``--lock-timeout``, with nothing changed. The
holder is a real process holding the real lock (``SnapshotStore.locked``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.store import LOCK, POINTER, LockTimeout
from snapshotter.testing import write_checkpoint

_HOLDER = """
import sys
from snapshotter import SnapshotConfig, SnapshotStore
with SnapshotStore(SnapshotConfig(dir=sys.argv[1])).locked():
    print("held", flush=True)
    sys.stdin.readline()
"""


class Holder:
    """A process holding ``root``'s lock until :meth:`release`, or at the latest until a
    watchdog lets go after two minutes: code that never says it waits (and so never lets a
    test reach its release) then fails the test instead of hanging it."""

    def __init__(self, root) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "held\n"
        self._watchdog = threading.Timer(120.0, self._let_go)
        self._watchdog.start()

    def _let_go(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()  # the holder's readline ends: it exits, the lock with it
        except (OSError, ValueError):
            pass

    def release(self) -> None:
        self._watchdog.cancel()
        self._let_go()
        assert self.proc.wait() == 0


@pytest.fixture
def two_versions(tmp_path):
    """A store with two published versions (the second active) and the env of its CLI."""
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    v = [publish(write_checkpoint(tmp_path / f"c{i}", n_items=30, dim=4, seed=i), store).version
         for i in (0, 1)]
    env = {**os.environ, "DIAM_SNAPSHOT_DIR": str(store.root), "DIAM_CONFIG": "",
           "DIAM_ONLINE_DIM": "4", "OPENBLAS_NUM_THREADS": "1"}
    return store, v, env


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as an interactive shell gives it. A suite started in
    the background by a shell without job control (``make test &``) inherits SIGINT ignored,
    and a process that ignores SIGINT rightly goes on waiting (the SIGINT case then failed
    after the holder's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _diam(env, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from diam.cli import main; main()", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _waiting_line(proc: subprocess.Popen) -> str:
    """The first stderr line: the wait, said before anything else."""
    assert proc.stderr is not None
    return proc.stderr.readline()


def test_rollback_says_who_holds_the_lock_and_proceeds_when_it_ends(two_versions):
    store, (v1, v2), env = two_versions
    holder = Holder(store.root)
    try:
        back = _diam(env, "snapshot", "rollback", v1, "--no-redis")
        line = _waiting_line(back)
        assert line.startswith(f"waiting for another publish/rollback of {store.root} "
                               f"(pid {holder.proc.pid}, since "), line
        assert line.rstrip().endswith("to finish…")
        assert store.active_version() == v2  # it waits: nothing switched under the holder
    finally:
        holder.release()
    out, err = back.communicate()
    assert back.returncode == 0, err
    assert f"active: {v1}" in out and store.active_version() == v1


def test_lock_timeout_refuses_naming_the_holder_and_changes_nothing(two_versions):
    store, (v1, v2), env = two_versions
    holder = Holder(store.root)
    try:
        back = _diam(env, "snapshot", "rollback", v1, "--no-redis", "--lock-timeout", "0.3")
        out, err = back.communicate()
    finally:
        holder.release()
    assert back.returncode == 1, (out, err)
    assert "waiting for another publish/rollback" in err
    assert (f"Error: another publish/rollback of {store.root} (pid {holder.proc.pid}, since "
            in err) and f"still holds {store.root / LOCK} after 0.3 s" in err, err
    assert "nothing was changed" in err and "Traceback" not in err
    assert store.active_version() == v2 and "active:" not in out


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGINT, 130, "SIGINT"),
                                                      (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_ends_the_wait_in_one_line(two_versions, signum, code, name):
    store, (v1, v2), env = two_versions
    holder = Holder(store.root)
    try:
        back = _diam(env, "snapshot", "rollback", v1, "--no-redis")
        assert "waiting for" in _waiting_line(back)
        back.send_signal(signum)
        out, err = back.communicate()
    finally:
        holder.release()
    assert back.returncode == code, (out, err)
    assert err.strip() == (f"Error: {name} while waiting for another publish/rollback of "
                           f"{store.root}; nothing was changed"), err
    assert store.active_version() == v2 and (store.root / POINTER).read_text() == f"{v2}\n"


def test_the_holder_is_written_while_held_and_cleared_at_release(tmp_path):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s")))
    with store.locked(create=True):
        assert store.lock_holder().startswith(f"pid {os.getpid()}, since ")
    assert (store.root / LOCK).read_bytes() == b"" and store.lock_holder() == "holder unknown"


def test_a_publish_timing_out_at_its_switch_leaves_no_staging_directory(tmp_path, monkeypatch):
    """The lock is taken by another process while the publish builds its index (outside the
    lock): the publish gives up at the timeout and removes what it staged."""
    import snapshotter.index

    waits: list[str] = []
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), lock_timeout_s=0.2),
                          on_wait=waits.append)
    active = publish(write_checkpoint(tmp_path / "c0", n_items=30, dim=4, seed=0), store).version
    build = snapshotter.index.build_index
    holders: list[Holder] = []

    def build_then_lose_the_lock(*a, **kw):
        out = build(*a, **kw)
        holders.append(Holder(store.root))
        return out

    monkeypatch.setattr(snapshotter.index, "build_index", build_then_lose_the_lock)
    try:
        with pytest.raises(LockTimeout, match=r"\(pid \d+, since .*still holds"):
            publish(write_checkpoint(tmp_path / "c1", n_items=30, dim=4, seed=1), store)
    finally:
        for h in holders:
            h.release()
    assert len(waits) == 1 and waits[0].startswith("waiting for another publish/rollback")
    assert not list(store.root.glob(".staging-*"))
    assert [s.version for s in store.versions()] == [active] and store.active_version() == active


def test_the_watcher_retries_a_checkpoint_whose_publish_timed_out_on_the_lock(tmp_path):
    """A timeout is the store's business, not the checkpoint's: it is not passed over as one
    that fails verification, the next tick publishes it."""
    import time

    from snapshotter import Watcher

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), lock_timeout_s=0.2),
                          on_wait=lambda line: None)
    store.root.mkdir()
    ck = write_checkpoint(tmp_path / "ckpts" / "a", n_items=30, dim=4, seed=0)
    watcher = Watcher(store, tmp_path / "ckpts")
    settled = time.time() + 3600
    holder = Holder(store.root)
    try:
        assert watcher.tick(settled) is None
    finally:
        holder.release()
    assert watcher.last_skip is not None and "held the store's lock" in watcher.last_skip.reason
    res = watcher.tick(settled)
    assert res is not None and res.manifest["source"]["path"] == str(ck.resolve())
