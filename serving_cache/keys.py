"""Redis key schema (DESIGN.md §3). Keys are pinned byte for byte by a unit test.

>>> user_key("live", "u42")
'diam:live:u:u42'
>>> model_active_key("replay-1")
'diam:replay-1:model:active'
"""

from __future__ import annotations

import re

__all__ = ["user_key", "user_id_of_key", "model_active_key", "user_pattern", "validate_namespace",
           "user_in_every_namespace", "namespace_of_key", "generation_key", "node_generation_key",
           "namespace_pattern",
           "every_user_key", "namespaces_starting", "forgotten_key", "forgotten_key_by_name",
           "FORGOTTEN_ADOPTED_BY", "FORGOTTEN_HELD", "base_key", "added_key", "partitions_key",
           "claim_key", "runs_key"]

_NS_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_namespace(ns: str) -> str:
    """Return ``ns`` or raise ValueError: a namespace must not contain ':' or glob characters,
    or a replay could write into (or a SCAN could read from) another namespace."""
    if _NS_RE.fullmatch(ns) is None:
        raise ValueError(
            f"namespace {ns!r} must be 1..64 chars of letters, digits, '_', '.', '-'"
        )
    return ns


def user_key(ns: str, user_id: str) -> str:
    """Key of a user's vectors. ``user_id`` must already be validated (streams.events)."""
    return f"diam:{ns}:u:{user_id}"


def user_pattern(ns: str) -> str:
    """SCAN pattern matching every user key of a namespace."""
    return f"diam:{validate_namespace(ns)}:u:*"


def namespace_pattern(ns: str) -> str:
    """SCAN pattern matching every key of a namespace (users, active model, generation marker,
    base record and its added ids, partition counts) and no other namespace's: namespaces hold no ':' or glob
    characters.

    >>> namespace_pattern("replay-1")
    'diam:replay-1:*'
    """
    return f"diam:{validate_namespace(ns)}:*"


def namespaces_starting(prefix: str) -> str:
    """SCAN pattern matching every key of every namespace whose name starts with ``prefix``
    (which holds no ':' or glob characters), e.g. the demo's earlier runs.

    >>> namespaces_starting("demo-")
    'diam:demo-*:*'
    """
    return f"diam:{validate_namespace(prefix)}*:*"


def user_in_every_namespace(user_id: str) -> str:
    """SCAN pattern matching ``user_id``'s key in every namespace and nothing else (``diam
    forget``): user ids never hold ':' or glob characters (``streams.events``), namespaces
    never hold ':' (:func:`validate_namespace`)."""
    return f"diam:*:u:{user_id}"


def every_user_key() -> str:
    """SCAN pattern matching every user key of every namespace (and no other key: the other
    keys, ``model:active``, ``gen``, ``base``, ``added`` and ``partitions``, hold no ``:u:``)."""
    return "diam:*:u:*"


def namespace_of_key(key: bytes | str) -> str:
    """The namespace of a key of this schema.

    >>> namespace_of_key(b"diam:replay-1:u:u42")
    'replay-1'
    """
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return text.split(":", 2)[1]


def user_id_of_key(key: bytes | str) -> str:
    """The user id in a user key (:func:`user_key`'s inverse), for keys found by SCAN.

    >>> user_id_of_key(b"diam:live:u:u42")
    'u42'
    """
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return text.rsplit(":u:", 1)[1]


def model_active_key(ns: str) -> str:
    """Key holding the active snapshot version."""
    return f"diam:{ns}:model:active"


def generation_key(ns: str) -> str:
    """The key whose disappearance tells the dataflow that Redis lost namespace ``ns``
    (``streams.redis_sink``: a random token set once per namespace).

    >>> generation_key("live")
    'diam:live:gen'
    """
    return f"diam:{validate_namespace(ns)}:gen"


def node_generation_key(ns: str, tag: str) -> str:
    """On a Redis Cluster, the generation marker of namespace ``ns`` that lives on one primary:
    ``tag`` is a hash tag chosen by ``streams.redis_sink`` to fall in a slot that primary
    owns, so that a primary that alone lost its data (a FLUSHALL, a restart without its
    files, a failover to a replica that lagged) is noticed as :func:`generation_key`'s node
    would be.

    >>> node_generation_key("live", "7")
    'diam:live:gen:{7}'
    """
    return f"{generation_key(ns)}:{{{tag}}}"


def base_key(ns: str) -> str:
    """The hash saying which base produced namespace ``ns``'s newest values: the snapshot
    version and the item table it was grown to (``serving_cache.base_record``; written by the
    dataflow's Redis sink whenever its base changes, read by ``diam diff`` and ``diam inspect
    namespace``).

    >>> base_key("replay-1")
    'diam:replay-1:base'
    """
    return f"diam:{validate_namespace(ns)}:base"


def added_key(ns: str) -> str:
    """The list of the item ids the dataflow appended to its base's published table, in its
    row order: what a reader needs to turn the stream's seen rows beyond the published table
    into item ids (``serving_cache.base_record``, which owns the format: written with the
    base record by the dataflow's Redis sink, read by the recommender).

    >>> added_key("replay-1")
    'diam:replay-1:added'
    """
    return f"diam:{validate_namespace(ns)}:added"


def partitions_key(ns: str) -> str:
    """The hash of the partition count of each clicks topic namespace ``ns``'s values were
    learnt from (``serving_cache.base_record``, which owns the format: written and checked by
    ``diam run`` and ``diam replay`` before they start, written again by the Redis sink after a
    loss of the key set).

    >>> partitions_key("replay-1")
    'diam:replay-1:partitions'
    """
    return f"diam:{validate_namespace(ns)}:partitions"


def claim_key(ns: str) -> str:
    """The key a ``diam replay`` sets (``SET NX``, its holder's description as the value) for as
    long as it writes namespace ``ns``: a second replay, or a ``diam run``, into ``ns`` is
    refused meanwhile. Released by the replay when it ends; ``diam drop`` deletes it with the
    rest (a replay killed without its release).

    >>> claim_key("replay-1")
    'diam:replay-1:claim'
    """
    return f"diam:{validate_namespace(ns)}:claim"


def runs_key(ns: str) -> str:
    """The sorted set of the ``diam run`` processes writing namespace ``ns`` (one member per
    process, its description; score: the epoch milliseconds it expires at), refreshed by each
    run every few seconds and left by it when it closes (``serving_cache.holders``, which owns
    the format): a ``diam replay`` or a ``diam drop`` of ``ns`` is refused meanwhile. A killed
    run's member ages out (the key expires with its last member).

    >>> runs_key("exp")
    'diam:exp:runs'
    """
    return f"diam:{validate_namespace(ns)}:runs"


_TOPIC_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def forgotten_key(topic: str, topic_id: str | None) -> str:
    """The hash of the users ``diam forget`` forgot on clicks topic ``topic`` whose Kafka topic
    id is ``topic_id``: field user id, value the offset of the user's tombstone in it. The
    writer refuses a push of a user whose ``seq`` (the offset of the last click it learnt from
    the topic) is below it, in every namespace. Kept for good: a few dozen bytes per forgotten
    user.

    Keyed by the id as well as the name: a topic deleted and created again under the same name
    gets a new id and restarts its offsets at 0, and the old topic's markers (tombstones at
    offsets the new one has not reached) must not refuse its users' new clicks. ``topic_id``
    None (a broker that assigns topics no id, Kafka before 2.8) is the name alone:
    :func:`forgotten_key_by_name`.

    The empty namespace (``diam::``) is no namespace's (:func:`validate_namespace`), so no
    namespace pattern, drop or listing ever matches it; topic names and ids hold no ':'.

    >>> forgotten_key("diam.clicks", "ea2bss0mSlqGLpiDao5Wgg")
    'diam::forgotten:diam.clicks:ea2bss0mSlqGLpiDao5Wgg'
    >>> forgotten_key("diam.clicks", None)
    'diam::forgotten:diam.clicks'
    """
    if topic_id is None:
        return forgotten_key_by_name(topic)
    if _TOPIC_ID_RE.fullmatch(topic_id) is None:
        raise ValueError(f"topic id {topic_id!r} of {topic!r} is not a Kafka topic id "
                         "(base64url, 22 characters)")
    return f"diam::forgotten:{topic}:{topic_id}"


def forgotten_key_by_name(topic: str) -> str:
    """The hash of forgotten users keyed by the topic's name alone: where releases before the
    topic id was part of :func:`forgotten_key` recorded them (``serving_cache.forgotten`` copies
    them under the id of the topic that adopts them, and keeps this hash, with
    :data:`FORGOTTEN_ADOPTED_BY`, for those releases' processes), and where a broker without
    topic ids keeps them.

    >>> forgotten_key_by_name("diam.clicks")
    'diam::forgotten:diam.clicks'
    """
    return f"diam::forgotten:{topic}"


FORGOTTEN_ADOPTED_BY = ":adopted-by"
"""The field of a name-only hash (:func:`forgotten_key_by_name`) holding the id of the topic
that adopted its markers (``serving_cache.forgotten``): only that topic id reads them. It
holds ':', which no user id does (``streams.events``), so it is never a user's field, and an
earlier release's write-if-newer script, which HGETs the hash by user id, never reads it."""

FORGOTTEN_HELD = ":held"
"""The field every markers' hash (:func:`forgotten_key`) holds from the first command start
that read its markers on (``streams.forget_markers.restore_markers``), value ``0``, so that
the hash exists even with no user forgotten: its absence then means Redis lost it (a
FLUSHALL, a restart without persistence) or a restore is under way (the restore writes the
field last, after every marker: a hash part-restored has no field yet), and the writer's
forget check fails closed (``serving_cache.writer``: nothing is written until the markers are
restored). It holds ':',
as :data:`FORGOTTEN_ADOPTED_BY`: never a user's field; readers of the markers pass over the
fields starting with ':'."""
