"""Which exceptions of the Redis client are an outage: the one rule, used by the sink's writes
(``streams.redis_sink``), the live-run announcements (``serving_cache.holders``) and the
commands' ``except`` clauses.

redis-py's cluster client raises errors outside ``redis.RedisError``: a cluster none of whose
nodes answers is ``RedisClusterUnreachableError``, a slot no node serves is
``SlotNotCoveredError``, both ``RedisClusterException``; a configuration the cluster client
refuses (a URL at a non-cluster server, ``db`` other than 0) is a plain
``RedisClusterException``. :data:`REDIS_ERRORS` catches them all; :func:`unreachable` and
:func:`refusing` say which of them a wait mends.

>>> unreachable(redis.exceptions.RedisClusterUnreachableError("no node"))
True
>>> unreachable(redis.exceptions.AuthenticationError("invalid username-password pair"))
False
>>> refusing(redis.exceptions.OutOfMemoryError("OOM command not allowed"))
True
>>> outage(redis.exceptions.RedisClusterException("Cluster mode is not enabled on this node"))
False
"""

from __future__ import annotations

import redis

__all__ = ["REDIS_ERRORS", "UNREACHABLE_ERRORS", "unreachable", "refusing", "outage"]

REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError,
                                                 redis.exceptions.RedisClusterException)
"""Every error the Redis client (single or cluster) raises about Redis: what an ``except``
clause around a Redis call catches (``redis.RedisError`` alone misses the cluster client's)."""

UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterUnreachableError,
    redis.exceptions.SlotNotCoveredError)
"""The errors :func:`unreachable` takes for Redis not reached or not answering in time (a
refused login, an ``AuthenticationError``, is one of them by class: :func:`unreachable` says
no to it), for an ``except`` clause (``serving_cache.api.redis_outage_errors``)."""

_REFUSALS: tuple[type[BaseException], ...] = (
    redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
    redis.exceptions.MovedError, redis.exceptions.AskError)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis could not be reached or did not answer in time: a broken or
    refused connection, a timeout, a server still loading its data, a cluster none of whose
    nodes answers or with a slot no node serves. The server may have restarted, and lost its
    newest writes (a writer checks). Not a refused login: redis-py's ``AuthenticationError``
    is a ``ConnectionError``, but no wait mends a wrong password.

    >>> unreachable(redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379"))
    True
    >>> unreachable(redis.exceptions.OutOfMemoryError("OOM command not allowed"))
    False
    """
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return False
    return isinstance(exc, UNREACHABLE_ERRORS)


def refusing(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis answering but refusing writes for a while, nothing lost:
    READONLY after a failover, OOM at ``maxmemory`` (noeviction), TRYAGAIN / CLUSTERDOWN /
    MOVED / ASK while a cluster moves slots (the writer follows an ASK and learns the slot map
    again on a MOVED: one left after that is retried with the slot map learnt again), and
    MISCONF after a failed background save, which redis-py raises as a plain
    ``ResponseError`` (inside a pipeline's message).

    >>> refusing(redis.ResponseError("Command # 1 (EVALSHA ...) of pipeline caused error: "
    ...                              "MISCONF Redis is configured to save RDB snapshots"))
    True
    >>> refusing(redis.exceptions.AskError("6264 127.0.0.1:7002"))
    True
    >>> refusing(redis.ResponseError("WRONGTYPE Operation against a key"))
    False
    """
    if isinstance(exc, _REFUSALS):
        return True
    return isinstance(exc, redis.ResponseError) and "MISCONF " in str(exc)


def outage(exc: BaseException) -> bool:
    """Whether a failed Redis call is waited out and retried (:func:`unreachable` or
    :func:`refusing`) rather than reported: any other error (a refused login, a missing ACL
    permission, a key of another type, a bad command, a cluster client's configuration
    refused) stays until someone fixes it.

    >>> outage(redis.exceptions.RedisClusterUnreachableError("no node"))
    True
    >>> outage(redis.exceptions.NoPermissionError("no permissions to run the 'set' command"))
    False
    """
    return unreachable(exc) or refusing(exc)
