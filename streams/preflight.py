"""Checks a dataflow runs before it starts: do Kafka and Redis accept our credentials and TLS?

Without them, a wrong password shows up late and obscurely: librdkafka retries the SASL
handshake forever while the run waits, and the Redis sink's writer thread fails on its first
push with a bare "invalid username-password pair". Here each refusal becomes a
:class:`ServiceConfigError` that names the settings to fix. A service that is merely down is
not an error here: the dataflow waits for it (DESIGN §7).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time
from typing import Any

import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from serving_cache import RedisConfig, redis_client
from serving_cache.outage import REDIS_ERRORS, unreachable
from streams.config import KafkaConfig

__all__ = ["REDIS_CLUSTER_COMMANDS", "REDIS_COMMANDS", "AddressTaken", "ServiceConfigError",
           "check_address", "check_kafka", "check_redis", "eviction_warning", "evicting",
           "redis_needs", "redis_refusal"]

log = logging.getLogger(__name__)

_REDIS_AUTH = ("DIAM_REDIS_USERNAME and DIAM_REDIS_PASSWORD (or the user:password in "
               "DIAM_REDIS_URL)")
_KAFKA_AUTH = "DIAM_KAFKA_SASL_USERNAME, DIAM_KAFKA_SASL_PASSWORD and DIAM_KAFKA_SASL_MECHANISM"


# librdkafka repeats the refused handshake on stderr every 0.3 s; the error says it once
_QUIET = logging.getLogger("streams.preflight.rdkafka")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


class ServiceConfigError(RuntimeError):
    """Kafka or Redis refused this configuration; the message names the settings to change."""


class AddressTaken(ServiceConfigError):
    """This process's own address in a Bytewax cluster cannot be listened on (another program
    holds the port, or the host is not this machine's)."""


def check_address(address: str, option: str) -> None:
    """Listen on ``address`` (``host:port``) for a moment, as the Bytewax cluster's process
    will (with ``SO_REUSEADDR``, as Rust's listener binds): a port another program holds, or
    a host that is not this machine's, raises :class:`AddressTaken` naming it and ``option``.
    A check, not a reservation: a program could take the port between it and the start."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise AddressTaken(f"{address} ({option}): cannot resolve this process's address "
                           f"({exc})") from None
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(where)
        except OSError as exc:
            why = ("is in use by another program (stop it, or give this process another port)"
                   if exc.errno == errno.EADDRINUSE else
                   "is not an address of this machine" if exc.errno == errno.EADDRNOTAVAIL
                   else f"cannot be listened on ({exc.strerror or exc})")
            raise AddressTaken(f"{address}, this process's address in {option}, {why}; the "
                               "cluster's processes listen on their own entry") from None


def _where(url: str) -> str:
    from serving_cache.config import url_host

    return url_host(url)  # never print a password from the URL


def check_redis(cfg: RedisConfig, wait: bool = True, namespace: str | None = None) -> None:
    """PING with ``cfg``'s client, then ask ACL whether the user may run every command a
    dataflow calls (:data:`REDIS_COMMANDS`, on keys of ``namespace``, default
    ``cfg.namespace``), and whether a single server's URL is a Redis Cluster node: a refused
    login, a missing ACL permission, a cluster node without DIAM_REDIS_CLUSTER or a failed TLS
    handshake raise :class:`ServiceConfigError`; an unreachable server is left to the retries
    (a service waits for it), unless ``wait`` is False (a bounded run, a batch job: it would
    read its input and then wait on its first write for as long as the server is away)."""
    namespace = cfg.namespace if namespace is None else namespace
    try:
        client = redis_client(cfg)  # a cluster client asks a node for the slot map now
    except REDIS_ERRORS as exc:
        if not unreachable(exc):
            raise
        _not_reachable(cfg, exc, wait)
        return
    try:
        client.ping()
        if not cfg.cluster:
            _not_a_cluster_node(client, cfg)
        missing = _missing_commands(client, cfg, namespace)
        if missing:
            raise ServiceConfigError(
                f"Redis at {_where(cfg.url)}: the ACL user may not run {', '.join(missing)}; "
                f"{redis_needs(cfg)}")
        if (note := eviction_warning(client, cfg)) is not None:
            log.warning("%s", note)
    except redis.AuthenticationError as exc:  # a ConnectionError, which no wait mends
        raise ServiceConfigError(f"Redis at {_where(cfg.url)} refused the login ({exc}): check "
                                 f"{_REDIS_AUTH}") from None
    except redis.ConnectionError as exc:
        text = str(exc)
        if isinstance(exc.__context__, ssl.SSLError) or "SSL" in text or "certificate" in text:
            raise ServiceConfigError(
                f"Redis at {_where(cfg.url)}: the TLS handshake failed ({text}): check "
                "DIAM_REDIS_URL (rediss:// for TLS), DIAM_REDIS_SSL_CA_CERTS (the CA that signed "
                "the server's certificate) and, for mutual TLS, DIAM_REDIS_SSL_CERTFILE / "
                "DIAM_REDIS_SSL_KEYFILE") from None
        if cfg.url.startswith("redis://") and "Connection reset" in text:
            raise ServiceConfigError(
                f"Redis at {_where(cfg.url)} reset the connection ({text}): a TLS-only server "
                "does that to plain clients; use rediss:// in DIAM_REDIS_URL") from None
        _not_reachable(cfg, exc, wait)
    except redis.exceptions.RedisClusterUnreachableError as exc:  # no RedisError
        _not_reachable(cfg, exc, wait)
    except redis.RedisError as exc:
        if (refused := redis_refusal(cfg, exc)) is not None:
            raise refused from None
        raise
    finally:
        client.close()


def evicting(policy: str, user_ttl: bool) -> bool:
    """Whether Redis's ``maxmemory-policy`` may delete a dataflow's keys when memory is full:
    every ``allkeys-*`` policy; a ``volatile-*`` one when the user keys have a TTL
    (``user_ttl``: DIAM_REDIS_USER_TTL_S set). ``noeviction`` refuses writes instead (OOM: the
    sink waits, nothing is lost).

    >>> evicting("allkeys-lru", False), evicting("volatile-ttl", False), evicting("volatile-lru", True)
    (True, False, True)
    >>> evicting("noeviction", True)
    False
    """
    return policy.startswith("allkeys-") or (user_ttl and policy.startswith("volatile-"))


def eviction_warning(client: Any, cfg: RedisConfig) -> str | None:
    """One line when the server's (a cluster's: any primary's) ``maxmemory-policy`` may delete
    the dataflow's keys (:func:`evicting`): evicted, a user's vectors vanish without an error
    (and the namespace's base record and partition count with them); None otherwise, or where
    the ACL user may not run INFO (a single server's REDIS_COMMANDS lack it)."""
    nodes = ([client.get_redis_connection(n) for n in client.get_primaries()] if cfg.cluster
             else [client])
    try:
        infos = [node.info("memory") for node in nodes]
    except redis.exceptions.NoPermissionError:
        return None
    ttl = cfg.user_ttl_s is not None
    for info in infos:
        policy, limit = str(info.get("maxmemory_policy", "")), int(info.get("maxmemory", 0))
        if evicting(policy, ttl):
            which = ("deletes keys with a TTL (DIAM_REDIS_USER_TTL_S gives every user key one)"
                     if policy.startswith("volatile-") else "deletes any key")
            return (f"Redis at {_where(cfg.url)}: maxmemory-policy {policy} {which} when memory "
                    f"is full (maxmemory {limit or 'not set now'}): this run's user vectors (and "
                    "the namespace's base record and partition count) would vanish without an "
                    "error; set maxmemory-policy noeviction (a full Redis then refuses writes, "
                    "and the run waits and retries)")
    return None


def _not_reachable(cfg: RedisConfig, exc: BaseException, wait: bool) -> None:
    """An unreachable Redis (a single server's or a whole cluster's) at the start: left to the
    retries where the caller waits (``wait``), else :class:`ServiceConfigError`."""
    if not wait:
        raise ServiceConfigError(
            f"Redis at {_where(cfg.url)} is not reachable ({exc}); a bounded run does not "
            "wait for it: is the stack up? (`diam stack up`, DIAM_REDIS_URL)") from None


def redis_refusal(cfg: RedisConfig, exc: BaseException) -> ServiceConfigError | None:
    """``exc``, a Redis error at a dataflow's start, in words naming the setting to fix when
    it is one (else None): a missing ACL permission (:func:`redis_needs`), a Redis Cluster node
    given as a single server (a MOVED answer; DIAM_REDIS_CLUSTER). :func:`check_redis` raises
    these; a caller using Redis after it (``diam run``'s other checks) asks too."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return ServiceConfigError(f"Redis at {_where(cfg.url)}: the ACL user lacks a permission "
                                  f"({exc}); {redis_needs(cfg)}")
    if isinstance(exc, redis.exceptions.MovedError) and not cfg.cluster:
        return ServiceConfigError(_CLUSTER_NODE.format(where=_where(cfg.url), why=f"MOVED {exc}"))
    return None


REDIS_COMMANDS = ("PING", "GET", "SET", "DEL", "EXISTS", "EXPIRE", "TYPE", "HGET", "HMGET",
                  "HEXISTS", "HSET", "HSETNX", "HGETALL", "LLEN", "RPUSH", "LRANGE", "SCAN",
                  "EVAL", "EVALSHA", "SCRIPT", "ZADD", "ZREM", "ZRANGEBYSCORE",
                  "ZREMRANGEBYSCORE", "PEXPIRE")
"""The Redis commands a dataflow calls, its Lua scripts' ``redis.call`` included (ACL checks
those too): the sink and its write-if-newer script (``serving_cache.writer``), its generation
markers, ``serving_cache.base_record`` (the base record, its added ids, the partition count),
``serving_cache.forgotten`` (the forget markers), ``serving_cache.holders`` (a run's
announcement in its namespace, the replay's claim). The one list: :func:`check_redis` checks it
at the start and :func:`redis_needs` says it. SCAN: ``diam`` commands that list a namespace."""

REDIS_CLUSTER_COMMANDS = ("CLUSTER", "COMMAND", "INFO", "ASKING")
"""What redis-py's cluster client asks besides (the slot map, the commands' key positions,
ASKING before a command it sends to the node importing a slot being moved by a resharding)
and the sink's check of each primary's run id and evicted keys (``INFO server``, ``stats``):
a Redis Cluster only."""

_CLUSTER_NODE = ("Redis at {where} is a node of a Redis Cluster ({why}), and DIAM_REDIS_CLUSTER "
                 "is not set: set DIAM_REDIS_CLUSTER=true (the cluster client follows the slot "
                 "map), keeping DIAM_REDIS_URL at any of its nodes")


def redis_needs(cfg: RedisConfig) -> str:
    """What a dataflow's ACL user needs (:data:`REDIS_COMMANDS`), in words."""
    cmds = REDIS_COMMANDS + (REDIS_CLUSTER_COMMANDS if cfg.cluster else ())
    return (f"it needs the keys ~diam:* and the commands {', '.join(cmds)} "
            "(DIAM_REDIS_USERNAME)")


# ARGV: groups of (n, command, args...); the commands of the groups the user may not run
_ACL_PROBE = """local out, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if not redis.acl_check_cmd(unpack(ARGV, i + 1, i + n)) then table.insert(out, ARGV[i + 1]) end
  i = i + n + 1
end
return out"""


def _probes(cfg: RedisConfig, namespace: str) -> list[list[str]]:
    """A call of each of :data:`REDIS_COMMANDS` (and on a cluster :data:`REDIS_CLUSTER_COMMANDS`)
    with a key of ``namespace`` where it takes one: asked of ACL, never run."""
    key = f"diam:{namespace}:acl-check"
    args = {"PING": [], "GET": [key], "SET": [key, "1"], "DEL": [key], "EXISTS": [key],
            "EXPIRE": [key, "1"], "TYPE": [key], "HGET": [key, "f"], "HMGET": [key, "f"],
            "HEXISTS": [key, "f"], "HSET": [key, "f", "1"], "HSETNX": [key, "f", "1"],
            "HGETALL": [key], "LLEN": [key], "RPUSH": [key, "1"], "LRANGE": [key, "0", "1"], "SCAN": ["0"],
            "EVAL": ["return 1", "1", key], "EVALSHA": ["0" * 40, "1", key],
            "SCRIPT": ["LOAD", "return 1"], "ZADD": [key, "1", "m"], "ZREM": [key, "m"],
            "ZRANGEBYSCORE": [key, "0", "+inf"], "ZREMRANGEBYSCORE": [key, "-inf", "0"],
            "PEXPIRE": [key, "1"], "CLUSTER": ["SLOTS"], "COMMAND": [],
            "INFO": ["server"], "ASKING": []}
    cmds = REDIS_COMMANDS + (REDIS_CLUSTER_COMMANDS if cfg.cluster else ())
    return [[name, *args[name]] for name in cmds]


def _missing_commands(client: redis.Redis, cfg: RedisConfig, namespace: str) -> list[str]:
    """The commands of :func:`_probes` the ACL user may not run (``redis.acl_check_cmd`` in a
    script, Redis 7+; the probe's EVAL itself refused: ``["EVAL"]``); ``[]`` where the server
    cannot say (an older Redis, without ACL: a refusal then shows at its first call)."""
    argv: list[str] = []
    for call in _probes(cfg, namespace):
        argv += [str(len(call)), *call]
    try:
        out = client.eval(_ACL_PROBE, 0, *argv)
    except redis.exceptions.NoPermissionError:
        return ["EVAL"]
    except redis.ResponseError:  # no redis.acl_check_cmd (Redis < 7), or a command it lacks
        return []
    return [x.decode() if isinstance(x, bytes) else str(x) for x in out]


def _not_a_cluster_node(client: redis.Redis, cfg: RedisConfig) -> None:
    """Raise :class:`ServiceConfigError` when the server at ``cfg.url`` is a Redis Cluster node
    (``INFO cluster``): the single-server client would get a MOVED answer for most keys. A user
    that may not run INFO is not asked (a MOVED answer says it then: :func:`redis_refusal`)."""
    try:
        info = client.info("cluster")
    except redis.exceptions.NoPermissionError:
        return
    if str(info.get("cluster_enabled", 0)) == "1":
        raise ServiceConfigError(_CLUSTER_NODE.format(where=_where(cfg.url),
                                                      why="INFO cluster: cluster_enabled:1"))


def check_kafka(cfg: KafkaConfig, timeout_s: float = 15.0) -> None:
    """A metadata request with ``cfg``'s security settings: a refused SASL login or a failed
    TLS handshake raises :class:`ServiceConfigError`; an unreachable broker is left to the
    caller (which waits or fails on its own)."""
    errors: list[KafkaError] = []
    lock = threading.Lock()

    def on_error(err: KafkaError) -> None:
        with lock:
            errors.append(err)

    conf: dict[str, object] = {**cfg.client_config(), "error_cb": on_error, "logger": _QUIET}
    admin = AdminClient(conf)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            break
        except KafkaException as exc:
            admin.poll(0.1)  # serves error_cb, where a refused SASL login is reported
            with lock:
                errors.append(exc.args[0])
                if any(_fatal(e) for e in errors):
                    break
    with lock:
        seen = list(errors)
    for err in seen:
        code = err.code() if isinstance(err, KafkaError) else None
        if code == KafkaError._AUTHENTICATION:
            raise ServiceConfigError(f"Kafka at {cfg.bootstrap} refused the login ({err.str()}): "
                                     f"check {_KAFKA_AUTH}")
        if code == KafkaError._SSL:
            raise ServiceConfigError(
                f"Kafka at {cfg.bootstrap}: the TLS handshake failed ({err.str()}): check "
                "DIAM_KAFKA_SECURITY_PROTOCOL and DIAM_KAFKA_SSL_CA_LOCATION")


def _fatal(err: object) -> bool:
    return isinstance(err, KafkaError) and err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL)
