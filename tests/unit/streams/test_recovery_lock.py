"""One process per recovery store (``streams.runner.hold_recovery``): a second ``diam run`` on
the store a running one uses is refused, naming the holder, instead of both resuming from it
and overwriting each other's snapshots."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.runner import RecoveryInUse, hold_recovery


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path) -> None:
    store = tmp_path / "recovery"
    fd = hold_recovery(store)
    try:
        with pytest.raises(RecoveryInUse, match=rf"in use by another diam run \(pid {os.getpid()}, "
                                                r"process 0\)"):
            hold_recovery(store)
        other = hold_recovery(store, process_id=1)  # a cluster's other process: its own lock
        os.close(other)
    finally:
        os.close(fd)
    os.close(hold_recovery(store))  # released: the next run takes it


def test_a_killed_holder_leaves_no_lock_behind(tmp_path) -> None:
    store = tmp_path / "recovery"
    code = ("import os, sys; from pathlib import Path; from streams.runner import hold_recovery; "
            "hold_recovery(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(RecoveryInUse, match=f"pid {proc.pid}"):
            hold_recovery(store)
    finally:
        proc.kill()
        proc.wait(10)
    os.close(hold_recovery(store))


def test_a_store_that_cannot_be_opened_says_so_and_keeps_no_descriptor(tmp_path) -> None:
    from streams.runner import RecoveryUnusable

    def lock_fds(store) -> list[str]:  # this process's descriptors open on a lock in ``store``
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # closed meanwhile (another thread's)
                continue
            if target.startswith(str(store)) and ".diam-run-" in target:
                out.append(target)
        return out

    taken = tmp_path / "a-file"
    taken.write_text("not a store")
    with pytest.raises(RecoveryUnusable, match=r"cannot use the recovery store .*a-file: .*"
                                               r"\(--recovery-dir\)"):
        hold_recovery(taken)
    # a store whose lock opens but cannot be locked: the descriptor is closed again
    store = tmp_path / "store"
    fd = hold_recovery(store)
    with pytest.raises(RecoveryInUse):
        hold_recovery(store)
    assert len(lock_fds(store)) == 1  # the holder's only
    os.close(fd)
    assert lock_fds(store) == []
