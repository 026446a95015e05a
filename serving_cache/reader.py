"""Reader of user vectors: one GET per user (one pipelined round trip for many), decoded with
the shared codec.

>>> valid_user_id("u-42@x")
True
>>> valid_user_id("diam:*")
False
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from serving_cache.codec import UserVectors, decode_user
from serving_cache.keys import user_key, validate_namespace

__all__ = ["UserReader", "valid_user_id", "fail_fast", "USER_ID_ALLOWED", "USER_ID_CHARS",
           "USER_ID_MAX_LEN", "USER_ID_PATTERN"]

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
    """Make ``client`` retry a failed command once, immediately, instead of redis-py's default
    exponential backoff (measured: about 3 s before a refused connection is reported). A
    request path has a budget of milliseconds: when Redis is down, answering 503 at once beats
    holding the caller; the one retry still covers a pooled connection that died with a Redis
    restart. Mutates and returns ``client``."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client.set_retry(Retry(NoBackoff(), 1))
    return client


class UserReader:
    """Reads ``diam:{ns}:u:{user_id}`` values. A value that does not decode is treated as
    absent (the user is served cold) rather than failing the request."""

    def __init__(self, client: Any, ns: str) -> None:
        self.client = client
        self.ns = validate_namespace(ns)

    def get(self, user_id: str) -> UserVectors | None:
        """The user's vectors, or None when unknown. Raises ValueError for an invalid id and
        the client's connection errors when Redis is down."""
        if not valid_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        raw = self.client.get(user_key(self.ns, user_id))
        return _decode(raw)

    def get_many(self, user_ids: Sequence[str]) -> list[UserVectors | None]:
        """Many users in one round trip, in order (a pipeline of GETs rather than MGET, which
        Redis Cluster refuses across hash slots)."""
        for uid in user_ids:
            if not valid_user_id(uid):
                raise ValueError(f"invalid user id {uid!r}")
        if not user_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for uid in user_ids:
            pipe.get(user_key(self.ns, uid))
        raws = pipe.execute()
        return [_decode(r) for r in raws]


def _decode(raw: bytes | None) -> UserVectors | None:
    if raw is None:
        return None
    try:
        return decode_user(raw)
    except (ValueError, KeyError, TypeError):
        return None
