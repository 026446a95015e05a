"""Process plumbing of the local stack: pid files, liveness, ports, spawning and stopping.

Everything here works by process id and by a *marker* (a path that only our processes carry on
their command line, e.g. the absolute path of the stack's ``server.properties``), so ``down``
ends exactly the processes that this stack home started, never others by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``.

    >>> s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
    >>> port_open(s.getsockname()[1])
    True
    >>> p = s.getsockname()[1]; s.close(); port_open(p)
    False
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (for test stacks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reap(pid: int) -> None:
    # A child of *this* process that exited stays a zombie (and "alive" to kill(0)) until waited.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process.

    >>> pid_alive(os.getpid())
    True
    """
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` ([] when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def pids_with_marker(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` as one argument, or inside one
    (``-Dkafka.logs.dir=<marker>``), excluding this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        args = cmdline(int(entry.name))
        if any(marker in a for a in args) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None when the file is missing or garbled."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def owned_pid(pid_file: Path, marker: str) -> int | None:
    """The pid from ``pid_file`` if that process is alive and really ours (its command line
    carries ``marker``: a recycled pid is not ours); otherwise None, and a stale file is removed.
    """
    pid = read_pid(pid_file)
    if pid is not None and pid_alive(pid) and any(marker in a for a in cmdline(pid)):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def spawn(cmd: list[str], log: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in its own session (it outlives the caller and its terminal), stdout and
    stderr appended to ``log``; write its pid to ``pid_file`` atomically."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(pid_file)
    return proc.pid


def terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM the process group led by ``pid`` (or ``pid`` alone), wait up to ``timeout_s``,
    then SIGKILL. Returns True when it had to kill."""
    if not pid_alive(pid):
        return False
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return False
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        # Our processes lead their own session (spawn), so the group id is the pid; signalling
        # the group also reaches any child the service forked.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_port_closed(port: int, timeout_s: float) -> bool:
    """Wait until nothing accepts connections on ``port``; False if it stays open."""
    deadline = time.monotonic() + timeout_s
    while port_open(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held for the block, so two ``diam stack up`` (two test sessions, two
    agents) never start two brokers on one home, nor download the jars twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
