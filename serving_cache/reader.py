"""Reader of user vectors: one GET per user (one pipelined round trip for many), decoded with
the shared codec.

>>> valid_user_id("u-42@x")
True
>>> valid_user_id("diam:*")
False
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from serving_cache.breaker import ReadBreaker
from serving_cache.codec import CodecError, UserVectors, decode_user
from serving_cache.keys import user_key, validate_namespace

__all__ = ["UserReader", "valid_user_id", "fail_fast", "USER_ID_ALLOWED", "USER_ID_CHARS",
           "USER_ID_MAX_LEN", "USER_ID_PATTERN"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_REPORTED_MAX = 4096
"""Keys whose undecodable value was logged, remembered to log each once (then forgotten)."""

# The one owner of the user id rule (DESIGN.md §3). It lives here because serving_cache may not
# import streams, while streams may import serving_cache: the event contract
# (streams.events.validate_user_id, the dataflow's checks), this reader and the API's path
# parameter all derive from these four names.
USER_ID_CHARS = "A-Za-z0-9_.@+=-"
"""The user id alphabet, as the body of a regex character class: letters, digits and a few
separators that are safe inside a Redis key and a Kafka key. ':' (the key namespace
separator), '*', '?', '[' (SCAN/KEYS glob patterns) and whitespace are left out, so that no user
id can reach into another namespace or widen a pattern."""
USER_ID_MAX_LEN = 128
USER_ID_PATTERN = rf"^[{USER_ID_CHARS}]{{1,{USER_ID_MAX_LEN}}}$"
"""A whole valid user id (anchored, for OpenAPI path parameters)."""
USER_ID_ALLOWED = "letters and digits and _ . @ + - and the equals sign"
""":data:`USER_ID_CHARS` in words, for error messages. Without ',' or '=': rejection reasons
travel in Kafka headers, which dumps print as ``k=v,k=v``."""
USER_ID_RE = re.compile(USER_ID_PATTERN)
"""The compiled rule, for every check of a user id (``USER_ID_RE.fullmatch(uid)``)."""


def valid_user_id(user_id: str) -> bool:
    """Whether ``user_id`` follows the rule (:data:`USER_ID_PATTERN`)."""
    return USER_ID_RE.fullmatch(user_id) is not None


def fail_fast(client: Any) -> Any:
    """Make ``client`` retry a command once, immediately, when its connection broke, instead of
    redis-py's default exponential backoff (measured: about 3 s before a refused connection is
    reported). A request path has a budget of milliseconds: when Redis is down, answering 503
    at once beats holding the caller; the one retry still covers a pooled connection that died
    with a Redis restart. A timeout is not retried: a Redis that did not answer within the
    client's socket timeout is unlikely to answer the same command at once, and the retry held
    the caller twice as long (a hung Redis held each request for 2 x the timeout).

    A Redis Cluster client retries whatever its class's ``ERRORS_ALLOW_RETRY`` names
    (``RedisCluster.execute_command``; ``supported_errors`` is not looked at there), a timeout
    included: it becomes a :class:`_NoTimeoutRetry` (the same client, a timed-out command not
    retried; a broken connection, CLUSTERDOWN and an uncovered slot still are, once). Its
    pipelines (``UserReader.get_many``, no serve route's) name ``RedisCluster``'s own list and
    still retry a timeout once. Mutates and returns ``client``."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client.set_retry(Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
    if type(client) is RedisCluster:
        client.__class__ = _NoTimeoutRetry
    return client


class _NoTimeoutRetry(RedisCluster):
    """A :class:`redis.cluster.RedisCluster` whose commands are not retried after a timeout
    (:func:`fail_fast`)."""

    ERRORS_ALLOW_RETRY = tuple(e for e in RedisCluster.ERRORS_ALLOW_RETRY  # type: ignore[assignment]
                               if e is not redis.TimeoutError)


class UserReader:
    """Reads ``diam:{ns}:u:{user_id}`` values. A value that does not decode is logged once per
    key (warning) and, by :meth:`get` and :meth:`get_many`, treated as absent (the user is
    served cold) rather than failing the request; :meth:`get_checked` raises it instead, for
    callers that say why.

    ``breaker`` (a :class:`serving_cache.breaker.ReadBreaker`, a server's): each read goes
    through it, so that after a read timed out the next ones fail at once for a while."""

    def __init__(self, client: Any, ns: str, breaker: ReadBreaker | None = None) -> None:
        self.client = client
        self.ns = validate_namespace(ns)
        self.breaker = breaker
        self._reported: set[str] = set()

    def get(self, user_id: str) -> UserVectors | None:
        """The user's vectors, or None when unknown or undecodable. Raises ValueError for an
        invalid id and the client's connection errors when Redis is down."""
        try:
            return self.get_checked(user_id)
        except CodecError:
            return None

    def get_checked(self, user_id: str) -> UserVectors | None:
        """The user's vectors, or None when unknown; raises :class:`CodecError` when the stored
        value does not decode (and ValueError for an invalid id, the client's errors when Redis
        is down)."""
        if not valid_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        key = user_key(self.ns, user_id)
        try:
            raw = self._read(lambda: self.client.get(key), key)
        except redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from None
        return self._decode(key, raw)

    def get_many(self, user_ids: Sequence[str]) -> list[UserVectors | None]:
        """Many users in one round trip, in order (a pipeline of GETs rather than MGET, which
        Redis Cluster refuses across hash slots); None for unknown and undecodable values."""
        for uid in user_ids:
            if not valid_user_id(uid):
                raise ValueError(f"invalid user id {uid!r}")
        if not user_ids:
            return []
        keys = [user_key(self.ns, uid) for uid in user_ids]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        out: list[UserVectors | None] = []
        raws = self._read(lambda: pipe.execute(raise_on_error=False))
        for key, raw in zip(keys, raws, strict=True):
            if isinstance(raw, redis.ResponseError):
                self._wrong_type(key, raw)  # raised again when it is not a wrong type
                out.append(None)
                continue
            try:
                out.append(self._decode(key, raw))
            except CodecError:
                out.append(None)
        return out

    def _read(self, read: Callable[[], T], key: str | None = None) -> T:
        """``read()`` through the breaker of the node it goes to: on a Redis Cluster the node
        owning ``key``'s slot (``host:port``), so that a hung primary refuses its own users
        only; a single server's, and a pipeline of many keys, ``""``."""
        if self.breaker is None:
            return read()
        node = ""
        if key is not None and isinstance(self.client, RedisCluster):
            node = self.client.get_node_from_key(key).name
        return self.breaker.call(read, node)

    def _wrong_type(self, key: str, exc: redis.ResponseError) -> CodecError:
        """A user's key holding another Redis type (a hash, a list: written by something else)
        is an undecodable value, served cold with its reason, not a server error; any other
        error of the command is raised as it is."""
        if not str(exc).startswith("WRONGTYPE"):
            raise exc
        err = CodecError(f"the key holds another Redis type than a string ({exc})")
        self._report(key, err)
        return err

    def _decode(self, key: str, raw: bytes | None) -> UserVectors | None:
        if raw is None:
            return None
        try:
            return decode_user(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # decode_user raises CodecError only; anything else is wrapped all the same
            err = exc if isinstance(exc, CodecError) else CodecError(repr(exc))
            self._report(key, err)
            if err is exc:
                raise
            raise err from exc

    def _report(self, key: str, err: CodecError) -> None:
        if key not in self._reported:
            # once per key: a corrupted value read on every request must not flood the log
            if len(self._reported) >= _REPORTED_MAX:
                self._reported.clear()
            self._reported.add(key)
            log.warning("value of %s does not decode (%s); the user is served cold", key, err)
