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

import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from serving_cache import RedisConfig, redis_client
from streams.config import KafkaConfig

__all__ = ["AddressTaken", "ServiceConfigError", "check_address", "check_kafka", "check_redis"]

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
    return url.split("@")[-1]  # never print a password from the URL


def check_redis(cfg: RedisConfig, wait: bool = True) -> None:
    """PING with ``cfg``'s client: a refused login, a missing ACL permission or a failed TLS
    handshake raise :class:`ServiceConfigError`; an unreachable server is left to the retries
    (a service waits for it), unless ``wait`` is False (a bounded run, a batch job: it would
    read its input and then wait on its first write for as long as the server is away)."""
    client = redis_client(cfg)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ServiceConfigError(f"Redis at {_where(cfg.url)} refused the login ({exc}): check "
                                 f"{_REDIS_AUTH}") from None
    except redis.exceptions.NoPermissionError as exc:
        raise ServiceConfigError(f"Redis at {_where(cfg.url)}: the ACL user lacks a permission "
                                 f"({exc}); it needs the keys ~diam:* and the commands GET, SET, "
                                 "DEL, EXISTS, EXPIRE, HGET, HSET, SCAN, EVALSHA, SCRIPT, PING "
                                 "(DIAM_REDIS_USERNAME)") from None
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
        if not wait:
            raise ServiceConfigError(
                f"Redis at {_where(cfg.url)} is not reachable ({text}); a bounded run does not "
                "wait for it: is the stack up? (`diam stack up`, DIAM_REDIS_URL)") from None
    finally:
        client.close()


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
