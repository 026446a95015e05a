"""Composition of ``diam serve``: the recommendation API built from settings, run as one
process or as several sharing one port.

One process answers one request's Python at a time (the GIL), so its CPU per request bounds
its rate. ``processes > 1`` pre-forks: the parent binds and listens on the port, forks the
processes (each inherits the listening socket; the kernel hands every new connection to one of
them) and then only supervises. Each process is a full server built after the fork: its own
Redis client, snapshot index and hot-reload thread, catalogue and click followers, metrics.

Supervision: SIGINT or SIGTERM to the parent is forwarded to every process as SIGTERM (each
finishes its open requests and stops); the parent exits 0 when all have stopped cleanly, 1
when one did not (or had to be killed after :data:`STOP_GRACE_S`). A process that dies on its
own (a crash, the OOM killer, a failed start) is reported with its exit status, the others are
stopped and the parent exits 1: a crash is not hidden behind restarts, and whatever runs the
server (systemd, Kubernetes) restarts the whole. A process whose parent dies gets SIGTERM
(Linux), so no server is left orphaned on the port.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from diam.settings import Settings

__all__ = ["STOP_GRACE_S", "ServeOptions", "build_app", "serve"]

STOP_GRACE_S = 30.0
"""How long the parent waits for its processes to stop after forwarding a stop before it kills
them (uvicorn waits for open requests; a request takes milliseconds)."""

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class ServeOptions:
    """What ``diam serve``'s options choose beyond the settings."""

    namespace: str
    reload_every_s: float = 5.0
    threads: int = 1
    flow_metrics: tuple[str, ...] = ()
    ui: bool = True
    follow_items: bool = True
    live_popularity: bool = True
    popularity_half_life_s: float = 3600.0
    log_level: str = "warning"


def build_app(s: Settings, opts: ServeOptions) -> Any:
    """The FastAPI app of one server process: a Redis client, the snapshot watcher, the
    recommender and its followers (each started here, so call it in the process that serves)."""
    import logging

    from diam.commands import _without_password
    from serving_cache.api import get_app
    from serving_cache.breaker import ReadBreaker
    from serving_cache.connection import redis_client_waiting
    from serving_cache.reader import fail_fast
    from serving_cache.recommend import Recommender, store_loader
    from snapshotter.store import ActiveWatcher, SnapshotStore

    def waiting(exc: BaseException) -> None:  # a cluster gone since serve_cmd's own wait
        logging.getLogger(__name__).warning(
            "Redis at %s does not answer (%s); waiting for it", _without_password(s.redis.url), exc)

    # the serve path's own short timeout (a hung Redis holds the event loop that long), not
    # the writers' socket_timeout_s; a Redis Cluster that no node answers (its client asks
    # for the slot map when made) is waited for, as serve_cmd waits, not this process's end
    client = fail_fast(redis_client_waiting(
        s.redis.model_copy(update={"socket_timeout_s": s.serve.redis_read_timeout_s}), waiting))
    # the reads no user waits on (the snapshot watcher's poll on its thread, the /ui page's
    # namespace SCAN, cached for seconds) keep the writers' socket_timeout_s: a SCAN of a large
    # namespace on a slow Redis takes longer than a request's budget
    background = fail_fast(redis_client_waiting(s.redis, waiting))
    store = SnapshotStore(s.snapshot)
    watcher = ActiveWatcher(store, background, check_every_s=opts.reload_every_s,
                            ns=opts.namespace)
    sources = None
    if opts.ui:
        from serving_cache.ui import UiSources
        from streams.kafka_io import BROKER_ANSWER_S, broker_answers
        from streams.tail import latest_alerts, user_drift_events

        kafka = s.kafka

        def alerts(n: int) -> list[dict[str, Any]]:
            # a broker that is down fails within BROKER_ANSWER_S, not the topic reads' 30 s
            # (the page backs off after it: serving_cache.ui.Backoff)
            broker_answers(kafka, BROKER_ANSWER_S)
            return latest_alerts(kafka, n, namespace=opts.namespace)

        sources = UiSources(
            redis=background,
            flow_metrics=list(opts.flow_metrics),
            alerts=alerts,
            user_drift=lambda user, n: user_drift_events(kafka, user, n, namespace=opts.namespace,
                                                         timeout=BROKER_ANSWER_S),
        )
    # a user whose vectors belong to a version older than the two swapped in (one who has
    # not clicked since two publishes) is served from that version while the store holds it,
    # as diam recommend serves them, not from the active index with their seen items back in;
    # read on a thread, so that a load never holds up the event loop (stale until it is in)
    recommender = Recommender(None, client, opts.namespace, threads=opts.threads,
                              load_version=store_loader(store), load_in_background=True,
                              breaker=ReadBreaker())
    if opts.follow_items:
        from streams.catalog import CatalogFollower

        # new catalogue items are recommendable at once (content tower, FAISS add, no rebuild)
        recommender.follow_catalog(CatalogFollower(s.kafka, s.kafka.items_topic))
    if opts.live_popularity:
        from serving_cache.popularity import DecayedCounts
        from streams.new_items import ClickTail

        # cold lists from a decayed live click count; items first seen in clicks get added
        recommender.follow_clicks(ClickTail(s.kafka, s.kafka.clicks_topic, flow=s.flow),
                                  DecayedCounts(half_life_s=opts.popularity_half_life_s),
                                  new_item_min_clicks=s.flow.click_first_min_clicks,
                                  new_item_max_pending=s.flow.click_first_max_pending)
    return get_app(recommender, watcher=_LoadRefusals(watcher, recommender),
                   reload_every_s=opts.reload_every_s, ui=sources)


class _LoadRefusals:
    """The server's snapshot watcher: an :class:`snapshotter.store.ActiveWatcher` that also
    counts as refused a version it offered and the server then failed to load (the API logs
    that and keeps serving what it had). Without it the watcher took that version as the
    current one, and a repair and a rollback to it were never loaded (only another version
    was); refused, it is offered again when the active version moves, as a version failing
    its hash is."""

    def __init__(self, watcher: Any, recommender: Any) -> None:
        self.watcher, self.recommender = watcher, recommender
        self._offered: str | None = None

    def _served(self) -> str | None:
        active = self.recommender.active
        return None if active is None else str(active.version)

    @property
    def refusals(self) -> int:
        """The watcher's own refusals (failing verification), which the API counts."""
        return int(self.watcher.refusals)

    @property
    def last_refusal(self) -> tuple[str, str] | None:
        return self.watcher.last_refusal  # type: ignore[no-any-return]

    @property
    def announced(self) -> str | None:
        return self.watcher.announced  # type: ignore[no-any-return]

    def poll(self) -> Any:
        if self._offered is not None and self._offered != self._served():
            self.watcher.refuse(self._offered, keep=self._served())
        found = self.watcher.poll()
        self._offered = None if found is None else found[0]
        return found


_OWN_LOGGERS = ("diam", "serving_cache", "snapshotter", "streams")
"""The project's loggers, which ``--log-level`` sets (uvicorn's own config sets only uvicorn's)."""


def serve_logging(level: str) -> None:
    """Log the server's own lines (a snapshot reload, a refused snapshot, a follower's
    trouble) at ``level`` (``--log-level``) to stderr, timestamped, in every process (the
    processes of ``--processes`` are forked after it). uvicorn configures only its own
    loggers, so without this INFO lines went nowhere. Libraries stay at WARNING."""
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def serve(s: Settings, opts: ServeOptions, host: str, port: int,
          echo: Callable[[str], None] = print) -> int:
    """Serve until stopped; returns the exit status (see the module's docstring)."""
    sys.setswitchinterval(s.serve.gil_switch_interval_ms / 1000.0)
    serve_logging(opts.log_level)
    n = s.serve.processes
    if n == 1:
        import uvicorn

        sock = _listen(host, port)  # a taken port is an error before "serving on" is said
        app = build_app(s, opts)
        echo(f"serving on http://{host}:{port} ({_what(s, opts)})")
        server = uvicorn.Server(uvicorn.Config(app, log_level=opts.log_level, access_log=False))
        server.run(sockets=[sock])
        return 0 if server.started else 3  # 3: uvicorn's startup failure
    return _supervise(s, opts, _listen(host, port), n, echo)


def _what(s: Settings, opts: ServeOptions) -> str:
    from snapshotter.store import SnapshotStore

    return f"namespace {opts.namespace}, snapshots {SnapshotStore(s.snapshot).root}"


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket the processes share; a clear error when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port} (--host/--port, "
                                   f"DIAM_SERVE_HOST/DIAM_SERVE_PORT): {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


@contextmanager
def _blocked(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _supervise(s: Settings, opts: ServeOptions, sock: socket.socket, n: int,
               echo: Callable[[str], None]) -> int:
    host, port = sock.getsockname()[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    parent = os.getpid()
    live: dict[int, int] = {}  # pid -> process number
    # Stop signals wait until each side has its own handlers: a child must never run the
    # parent's forwarding handler, nor the parent miss a stop that came while it forked.
    with _blocked(_STOP_SIGNALS):
        for i in range(n):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _child(s, opts, sock, parent)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except click.ClickException as exc:
                    exc.show()
                except BaseException:  # a crash: report it as one
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            live[pid] = i
        sock.close()  # the processes accept; the parent only supervises
        stopping = threading.Event()
        clean = True

        def forward(sig: int, _frame: object) -> None:
            stopping.set()
            for pid in live:
                _kill(pid, signal.SIGTERM)

        for sig in _STOP_SIGNALS:
            signal.signal(sig, forward)
    echo(f"serving on http://{where} ({_what(s, opts)}) with {n} processes: pids "
         f"{' '.join(map(str, live))}")
    deadline: float | None = None
    while live:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if stopping.is_set() and deadline is None:
                deadline = time.monotonic() + STOP_GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                echo(f"processes {' '.join(map(str, live))} did not stop within "
                     f"{STOP_GRACE_S:g} s: killed")
                for other in live:
                    _kill(other, signal.SIGKILL)
                clean, deadline = False, float("inf")
            time.sleep(0.1)
            continue
        if pid not in live:
            continue
        del live[pid]
        ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if not stopping.is_set():
            echo(f"server process {pid} {_describe(status)}; stopping the other "
                 f"{len(live)} (exit 1: restart the whole server)")
            clean = False
            forward(signal.SIGTERM, None)
        elif not ok:
            echo(f"server process {pid} {_describe(status)} while stopping")
            clean = False
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    return 0 if clean else 1


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # already gone; waitpid reports it
        pass


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies (Linux's PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child(s: Settings, opts: ServeOptions, sock: socket.socket, parent: int) -> int:
    """One server process on the inherited ``sock``; its exit status."""
    import uvicorn

    stop = threading.Event()
    servers: list[uvicorn.Server] = []

    def on_term(_sig: int, _frame: object) -> None:
        stop.set()
        for srv in servers:
            srv.should_exit = True

    signal.signal(signal.SIGTERM, on_term)
    # a terminal's Ctrl-C reaches the whole process group; the parent forwards it as SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent(parent)
    app = build_app(s, opts)
    server = _uvicorn_server()(uvicorn.Config(app, log_level=opts.log_level, access_log=False))
    servers.append(server)
    if stop.is_set():  # stopped while starting
        return 0
    server.run(sockets=[sock])
    return 0 if server.started or stop.is_set() else 3  # 3: uvicorn's startup failure


def _uvicorn_server() -> type[Any]:
    """uvicorn is imported in the process that serves, after the fork."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, leaving signals to :func:`_child`'s handlers: SIGTERM stops it
        gracefully, once (uvicorn's own handlers force an exit on a second SIGINT and raise
        the signal again after stopping, which would turn a clean stop into a kill)."""

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server

