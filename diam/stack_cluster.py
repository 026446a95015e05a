"""A Redis Cluster of three masters on loopback, next to the local stack (``diam stack up
--redis-cluster``): ports ``redis_port + 1 .. + 3`` (cluster bus ports 10000 above), each node
with the stack's ``redis.conf`` plus cluster settings under ``<home>/redis-cluster/<port>/``.

Point clients at it with ``DIAM_REDIS_URL=redis://127.0.0.1:<first port>/0`` and
``DIAM_REDIS_CLUSTER=true``. Nodes are found again by their config file's path on the process
title (as the single Redis is), so ``cluster_down`` stops exactly these processes.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from string import Template

from diam import stack_kafka as kafka
from diam.settings import StackConfig
from diam.stack_kafka import StackError
from diam.stack_proc import (
    owned_pid,
    pid_alive,
    port_open,
    read_pid,
    spawn,
    terminate,
    wait_port_closed,
)

__all__ = ["cluster_down", "cluster_ports", "cluster_running", "cluster_up", "cluster_url", "names_cluster_node"]

_CLUSTER_LINES = """
# Redis Cluster node (diam.stack_cluster)
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
"""


def cluster_ports(cfg: StackConfig, n: int = 3) -> list[int]:
    """The nodes' ports: right above the single Redis.

    >>> cluster_ports(StackConfig(redis_port=6390))
    [6391, 6392, 6393]
    """
    return [cfg.redis_port + 1 + i for i in range(n)]


def cluster_url(cfg: StackConfig) -> str:
    """The URL clients are given (``DIAM_REDIS_URL``, with ``DIAM_REDIS_CLUSTER=true``): the
    first node's.

    >>> cluster_url(StackConfig(redis_port=6390))
    'redis://127.0.0.1:6391/0'
    """
    return f"redis://127.0.0.1:{cluster_ports(cfg)[0]}/0"


def names_cluster_node(cfg: StackConfig, url: str) -> bool:
    """Whether ``url`` points a client at one of the cluster's nodes (any of them: a cluster
    client asks the node it reaches for the others), on loopback, database 0 (the only one a
    cluster has).

    >>> cfg = StackConfig(redis_port=6390)
    >>> [names_cluster_node(cfg, u) for u in ("redis://127.0.0.1:6391/0", "redis://localhost:6393",
    ...  "redis://127.0.0.1:6390/0", "redis://127.0.0.1:6392/1", "redis://10.0.0.1:6391/0")]
    [True, True, False, False, False]
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme in ("redis", "rediss") and port in cluster_ports(cfg)
            and parts.hostname in ("127.0.0.1", "localhost", "::1")
            and parts.path in ("", "/", "/0"))


def cluster_running(cfg: StackConfig) -> bool:
    """Whether every node of this home's cluster runs (started by :func:`cluster_up`)."""
    return all(owned_pid(_node_dir(cfg, p).parent / f"{p}.pid", str(_node_dir(cfg, p) / "redis.conf"))
               is not None for p in cluster_ports(cfg))


def _node_dir(cfg: StackConfig, port: int) -> Path:
    return Path(cfg.home).expanduser().resolve() / "redis-cluster" / str(port)


def _cli(*args: str, timeout: float = 60.0) -> str:
    exe = shutil.which("redis-cli")
    if exe is None:
        raise StackError("redis-cli not found: apt-get install redis-tools (or redis-server)")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return proc.stdout + proc.stderr


def _state(port: int) -> str:
    for line in _cli("-p", str(port), "cluster", "info", timeout=10).splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


def cluster_up(cfg: StackConfig, echo: Callable[[str], None] = print, timeout_s: float = 60.0) -> str:
    """Start the three nodes unless they run, join them into one cluster (16384 slots over
    three masters, no replicas) unless they already are one; return the URL of the first."""
    exe = shutil.which(cfg.redis_server)
    if exe is None:
        raise StackError(f"{cfg.redis_server} not found: apt-get install redis-server")
    ports = cluster_ports(cfg)
    for port in ports:
        if port + 10_000 > 65_535:
            raise StackError(f"cluster port {port}: its bus port {port + 10_000} is not a port; "
                             "set DIAM_STACK_REDIS_PORT below 55530")
        d = _node_dir(cfg, port)
        conf = d / "redis.conf"
        pid = owned_pid(d.parent / f"{port}.pid", str(conf))
        if pid is not None:
            echo(f"redis cluster node {port} already running (pid {pid})")
            continue
        if port_open(port) or port_open(port + 10_000):
            raise StackError(f"port {port} or {port + 10_000} is taken; set DIAM_STACK_REDIS_PORT "
                             "to move the cluster (it uses the three ports above it)")
        (d / "data").mkdir(parents=True, exist_ok=True)
        conf.write_text(Template(kafka.resource("redis.conf")).substitute(
            port=port, logfile=d / "redis.log", dir=d / "data") + _CLUSTER_LINES)
        pid = spawn([exe, str(conf)], d / "redis.out", d.parent / f"{port}.pid")
        echo(f"redis cluster node {port} starting (pid {pid})")
    deadline = time.monotonic() + timeout_s
    while not all("PONG" in _cli("-p", str(p), "ping", timeout=5) for p in ports):
        if time.monotonic() > deadline:
            raise StackError(f"redis cluster nodes {ports} did not answer PING within {timeout_s:.0f} s")
        time.sleep(0.2)
    if _state(ports[0]) != "ok":
        out = _cli("--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                   "--cluster-replicas", "0", "--cluster-yes")
        if "[OK]" not in out:
            raise StackError(f"redis-cli --cluster create failed:\n{out[-2000:]}")
        while _state(ports[0]) != "ok":
            if time.monotonic() > deadline:
                raise StackError("the redis cluster did not reach cluster_state:ok")
            time.sleep(0.2)
    url = cluster_url(cfg)
    echo(f"redis cluster  {url}  (DIAM_REDIS_URL={url} DIAM_REDIS_CLUSTER=true)")
    return url


def cluster_down(cfg: StackConfig, echo: Callable[[str], None] = print) -> None:
    """Stop the nodes this home started (SIGTERM, wait, SIGKILL); a no-op when none runs."""
    for port in cluster_ports(cfg):
        d = _node_dir(cfg, port)
        pid_file = d.parent / f"{port}.pid"
        pid = owned_pid(pid_file, str(d / "redis.conf"))
        if pid is None:
            pid_file.unlink(missing_ok=True)
            continue
        killed = terminate(pid, cfg.stop_timeout_s)
        pid_file.unlink(missing_ok=True)
        echo(f"redis cluster node {port} stopped (pid {pid}{', killed after timeout' if killed else ''})")
        if pid_alive(pid) or not wait_port_closed(port, 10.0):
            raise StackError(f"redis cluster node {port} (pid {read_pid(pid_file) or pid}) is still up")
