"""The local stack: a real single-node Kafka (KRaft) and a Redis server, started as plain
processes from one home directory, or from ``docker-compose.yml`` where a Docker engine answers.

Layout of the home (``.diam/`` by default)::

    kafka/server.properties  kafka/log4j2.properties  kafka/data/  kafka/logs/server.log
    kafka.pid  redis/redis.conf  redis/data/  redis/redis.log  redis.pid  stack.lock

The Kafka jars live outside the home, in ``<cache_dir>/kafka-<version>/lib`` (see
:mod:`diam.stack_kafka`). Other code uses :func:`ensure_stack` and :func:`stack_down`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from diam import stack_docker as docker
from diam import stack_kafka as kafka
from diam.settings import Settings, StackConfig
from diam.stack_kafka import StackError
from diam.stack_proc import (
    file_lock,
    owned_pid,
    pid_alive,
    pids_with_marker,
    port_open,
    read_pid,
    spawn,
    tail,
    terminate,
    wait_port_closed,
)

__all__ = [
    "ServiceStatus",
    "StackError",
    "StackPaths",
    "addresses",
    "ensure_stack",
    "fetch",
    "stack_down",
    "stack_status",
    "stack_up",
]

Echo = Callable[[str], None]


def _silent(_: str) -> None:
    pass


@dataclass(frozen=True)
class StackPaths:
    """Where one stack home keeps its files."""

    home: Path

    @classmethod
    def of(cls, cfg: StackConfig) -> StackPaths:
        """Paths of ``cfg.home``, made absolute (they go on command lines and in configs)."""
        return cls(Path(cfg.home).expanduser().resolve())

    kafka_dir = property(lambda self: self.home / "kafka")
    server_properties = property(lambda self: self.kafka_dir / "server.properties")
    log4j_conf = property(lambda self: self.kafka_dir / "log4j2.properties")
    data_dir = property(lambda self: self.kafka_dir / "data")
    logs_dir = property(lambda self: self.kafka_dir / "logs")
    server_log = property(lambda self: self.logs_dir / "server.log")
    kafka_out = property(lambda self: self.logs_dir / "kafka.out")
    formatted = property(lambda self: self.kafka_dir / "formatted.json")
    kafka_pid = property(lambda self: self.home / "kafka.pid")
    redis_dir = property(lambda self: self.home / "redis")
    redis_conf = property(lambda self: self.redis_dir / "redis.conf")
    redis_data = property(lambda self: self.redis_dir / "data")
    redis_log = property(lambda self: self.redis_dir / "redis.log")
    redis_pid = property(lambda self: self.home / "redis.pid")
    lock = property(lambda self: self.home / "stack.lock")


@dataclass(frozen=True)
class ServiceStatus:
    """What ``status`` found about one service."""

    name: str
    address: str
    running: bool
    pid: int | None
    version: str | None
    detail: str


def addresses(settings: Settings) -> tuple[str, str]:
    """(Kafka bootstrap, Redis URL) of the stack these settings describe.

    >>> addresses(Settings())
    ('127.0.0.1:9192', 'redis://127.0.0.1:6390/0')
    """
    cfg = settings.stack
    return f"127.0.0.1:{cfg.kafka_port}", f"redis://127.0.0.1:{cfg.redis_port}/0"


def fetch(settings: Settings, on_download: Callable[[str], None] | None = None) -> list[Path]:
    """Download the Kafka jars into the cache if they are not there; return the class path."""
    cfg = settings.stack
    root = kafka.kafka_dir(cfg)
    with file_lock(root.parent / f"{root.name}.lock"):
        return kafka.fetch_jars(cfg, on_download)


def ensure_stack(settings: Settings) -> tuple[str, str]:
    """Start the stack if it is not running (idempotent) and return (bootstrap, redis_url) once
    the broker answers a metadata request and Redis answers PING."""
    return stack_up(settings, echo=_silent)


def stack_up(settings: Settings, echo: Echo = print, docker_engine: bool | None = None) -> tuple[str, str]:
    """``diam stack up``: see :func:`ensure_stack`; ``echo`` receives progress lines."""
    cfg = settings.stack
    bootstrap, redis_url = addresses(settings)
    use_docker = cfg.use_docker if docker_engine is None else docker_engine
    if use_docker:
        docker.up(cfg, echo)
        _wait_ready(cfg, None, StackPaths.of(cfg), echo)
        return bootstrap, redis_url
    paths = StackPaths.of(cfg)
    with file_lock(paths.lock):
        had = {owned_pid(paths.redis_pid, str(paths.redis_conf)),
               owned_pid(paths.kafka_pid, str(paths.server_properties))}
        redis_pid = kafka_pid = None
        try:
            redis_pid = _start_redis(cfg, paths, echo)
            kafka_pid = _start_kafka(settings, paths, echo)
            _wait_ready(cfg, kafka_pid, paths, echo, redis_pid)
        except BaseException:
            # A failed `up` leaves nothing behind that it started itself.
            for pid in (kafka_pid, redis_pid):
                if pid is not None and pid not in had:
                    terminate(pid, 10.0)
            for pid_file in (paths.kafka_pid, paths.redis_pid):
                if read_pid(pid_file) not in had:
                    pid_file.unlink(missing_ok=True)
            raise
    return bootstrap, redis_url


def _start_redis(cfg: StackConfig, paths: StackPaths, echo: Echo) -> int | None:
    marker = str(paths.redis_conf)
    pid = owned_pid(paths.redis_pid, marker)
    if pid is not None:
        echo(f"redis already running (pid {pid})")
        return pid
    if port_open(cfg.redis_port):
        if _redis_version(cfg.redis_port) is None:
            raise StackError(f"port {cfg.redis_port} is taken by something that is not Redis; "
                             "set DIAM_STACK_REDIS_PORT to another port")
        echo(f"redis on port {cfg.redis_port} was not started from {paths.home}; reusing it")
        return None
    exe = shutil.which(cfg.redis_server)
    if exe is None:
        raise StackError(f"{cfg.redis_server} not found: apt-get install redis-server")
    paths.redis_data.mkdir(parents=True, exist_ok=True)
    paths.redis_conf.write_text(Template(kafka.resource("redis.conf")).substitute(
        port=cfg.redis_port, logfile=paths.redis_log, dir=paths.redis_data))
    pid = spawn([exe, str(paths.redis_conf)], paths.redis_dir / "redis.out", paths.redis_pid)
    echo(f"redis starting (pid {pid})")
    return pid


def _start_kafka(settings: Settings, paths: StackPaths, echo: Echo) -> int | None:
    cfg = settings.stack
    marker = str(paths.server_properties)
    pid = owned_pid(paths.kafka_pid, marker)
    if pid is not None:
        echo(f"kafka already running (pid {pid})")
        return pid
    if port_open(cfg.kafka_port):
        if kafka.metadata(f"127.0.0.1:{cfg.kafka_port}", timeout_s=5.0) is None:
            raise StackError(f"port {cfg.kafka_port} is taken by something that is not a Kafka "
                             "broker; set DIAM_STACK_KAFKA_PORT to another port")
        echo(f"kafka on port {cfg.kafka_port} was not started from {paths.home}; reusing it")
        return None
    if port_open(cfg.controller_port):
        raise StackError(f"controller port {cfg.controller_port} is taken; "
                         "set DIAM_STACK_CONTROLLER_PORT to another port")
    if kafka.cached_classpath(cfg) is None:
        echo(f"fetching Kafka {cfg.kafka_version} jars with Maven into {kafka.kafka_dir(cfg)} (once)")
    jars = fetch(settings)
    for d in (paths.data_dir, paths.logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    paths.server_properties.write_text(
        kafka.render_server_properties(cfg, paths.data_dir, settings.kafka.partitions))
    paths.log4j_conf.write_text(kafka.resource("log4j2.properties"))
    java = kafka.jvm_args(cfg, jars, paths.logs_dir, paths.log4j_conf)
    _format_once(cfg, paths, java, echo)
    # Keep the previous run's logs one generation back; the new run's log starts empty, so the
    # version and failure tails read from it belong to this broker.
    for log in (paths.server_log, paths.kafka_out):
        if log.exists():
            log.replace(log.with_name(log.name + ".prev"))
    pid = spawn(java + ["kafka.Kafka", str(paths.server_properties)], paths.kafka_out,
                paths.kafka_pid)
    echo(f"kafka {cfg.kafka_version} starting (pid {pid})")
    return pid


def _format_once(cfg: StackConfig, paths: StackPaths, java: list[str], echo: Echo) -> None:
    # With --standalone the controller's own endpoint is written into the log directory, so a
    # directory formatted for another controller port cannot start: re-format it.
    if kafka.is_formatted(paths.data_dir):
        try:
            meta = json.loads(paths.formatted.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("controller_port") == cfg.controller_port:
            return
        echo(f"re-formatting {paths.data_dir}: it was formatted for another controller port")
        shutil.rmtree(paths.data_dir)
        paths.data_dir.mkdir(parents=True)
    cluster_id = kafka.new_cluster_id()
    kafka.format_storage(java, paths.server_properties, cluster_id)
    paths.formatted.write_text(json.dumps(
        {"cluster_id": cluster_id, "controller_port": cfg.controller_port}))
    echo(f"formatted {paths.data_dir} (cluster id {cluster_id})")


def _wait_ready(cfg: StackConfig, kafka_pid: int | None, paths: StackPaths, echo: Echo,
                redis_pid: int | None = None) -> None:
    start = time.monotonic()
    deadline = start + cfg.start_timeout_s
    bootstrap = f"127.0.0.1:{cfg.kafka_port}"
    redis_ok = kafka_ok = False
    while not (redis_ok and kafka_ok):
        if redis_pid is not None and not redis_ok and not pid_alive(redis_pid):
            raise StackError(f"redis-server exited at start; tail of {paths.redis_log}:\n"
                             f"{tail(paths.redis_log)}\n{tail(paths.redis_dir / 'redis.out')}")
        if kafka_pid is not None and not kafka_ok and not pid_alive(kafka_pid):
            raise StackError(f"the Kafka broker exited at start.\n{_kafka_tail(paths)}")
        redis_ok = redis_ok or _redis_version(cfg.redis_port) is not None
        kafka_ok = kafka_ok or (port_open(cfg.kafka_port)
                                and kafka.metadata(bootstrap, timeout_s=3.0) is not None)
        if time.monotonic() > deadline:
            which = "the Kafka broker" if not kafka_ok else "Redis"
            raise StackError(f"{which} did not answer within {cfg.start_timeout_s:.0f} s."
                             f"\n{_kafka_tail(paths)}")
        if not (redis_ok and kafka_ok):
            time.sleep(0.25)
    echo(f"kafka  {bootstrap}  (ready after {time.monotonic() - start:.1f} s)")
    echo(f"redis  redis://127.0.0.1:{cfg.redis_port}/0")


def _kafka_tail(paths: StackPaths) -> str:
    return (f"--- tail of {paths.server_log} ---\n{tail(paths.server_log)}\n"
            f"--- tail of {paths.kafka_out} ---\n{tail(paths.kafka_out, 15)}")


def _redis_version(port: int) -> str | None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not port_open(port):
        return None
    try:
        # No retries: redis-py's default backs off for seconds on a refused connection, and a
        # probe must answer at once.
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0,
                             socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
        try:
            if not client.ping():
                return None
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except Exception:
        return None


def stack_status(settings: Settings) -> list[ServiceStatus]:
    """Probe both services: running or not, pid, version reported by the service itself."""
    cfg = settings.stack
    paths = StackPaths.of(cfg)
    bootstrap, redis_url = addresses(settings)
    kpid = owned_pid(paths.kafka_pid, str(paths.server_properties))
    md = kafka.metadata(bootstrap, timeout_s=5.0) if port_open(cfg.kafka_port) else None
    if md is None:
        kstat = ServiceStatus("kafka", bootstrap, False, kpid, None,
                              "process alive but not answering" if kpid else "not running")
    else:
        version = kafka.broker_version(paths.server_log) if kpid else None
        detail = (f"cluster {md['cluster_id']}, {md['brokers']} broker(s), "
                  f"{md['topics']} topic(s)")
        if kpid is None:
            detail += f"; not started from {paths.home}, version not known"
        kstat = ServiceStatus("kafka", bootstrap, True, kpid, version, detail)
    rpid = owned_pid(paths.redis_pid, str(paths.redis_conf))
    rversion = _redis_version(cfg.redis_port)
    rstat = ServiceStatus("redis", redis_url, rversion is not None, rpid, rversion,
                          "answers PING" if rversion else
                          ("process alive but not answering" if rpid else "not running"))
    return [kstat, rstat]


def stack_down(settings: Settings, echo: Echo = _silent, docker_engine: bool | None = None) -> None:
    """Stop both services of this home (SIGTERM, wait, SIGKILL) and check that no process of
    theirs is left and their ports are closed. A no-op when nothing runs."""
    cfg = settings.stack
    use_docker = cfg.use_docker if docker_engine is None else docker_engine
    if use_docker:
        docker.down(cfg, echo)
        return
    paths = StackPaths.of(cfg)
    left = []
    with file_lock(paths.lock):
        # Kafka first: its clients (none here, but the dataflow's) never see Redis go first.
        for name, pid_file, marker, port in (
            ("kafka", paths.kafka_pid, str(paths.server_properties), cfg.kafka_port),
            ("redis", paths.redis_pid, str(paths.redis_conf), cfg.redis_port),
        ):
            pids = set(pids_with_marker(marker))
            own = owned_pid(pid_file, marker)
            if own is not None:
                pids.add(own)
            for pid in sorted(pids):
                killed = terminate(pid, cfg.stop_timeout_s)
                echo(f"{name} stopped (pid {pid}{', killed after timeout' if killed else ''})")
            pid_file.unlink(missing_ok=True)
            if not pids:
                echo(f"{name} was not running from {paths.home}")
            if pids_with_marker(marker):
                left.append(f"{name} process still alive")
            elif pids and not wait_port_closed(port, 10.0):
                left.append(f"{name} port {port} still open")
    if left:
        raise StackError("down left something behind: " + "; ".join(left))
