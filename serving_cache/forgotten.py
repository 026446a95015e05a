"""Forget markers recorded by an earlier release under the clicks topic's name alone
(``serving_cache.keys.forgotten_key_by_name``), adopted by the topic id that holds the name
(``serving_cache.keys.forgotten_key``), and the one way a new marker is recorded.

The rule: name-only markers belong to the topic that holds the name when this release first
sees them (the first ``diam run``, ``diam replay`` or ``diam forget`` of the topic): that
topic id is written into the name-only hash (field ``keys.FORGOTTEN_ADOPTED_BY``, set once)
and only that id adopts them. A user forgotten before the upgrade stays forgotten on that
topic; a topic deleted and created again after it has another id and ignores them (one notice
per command start). (A topic recreated *before* the upgrade inherits them, as it did under
the earlier release: delete the hash then.)

Adopting copies the markers into the id's hash (the higher offset of a user wins: the later
tombstone) and keeps the name-only hash: processes of the earlier release (a ``diam run``
still running during a rolling upgrade, a ``diam replay``) read only that one and must still
refuse the forgotten users. Each start or forget adopts again, picking up the markers an
earlier release's ``diam forget`` added meanwhile (idempotent: nothing changes otherwise),
and this release's ``diam forget`` writes its markers into the name-only hash too while that
hash is its topic's (:func:`record_markers`). The hash can be deleted once no process of the
earlier release runs.

Every script touches one key (no cross-slot call: Redis Cluster safe); the writer's per-push
check is unchanged (it reads the id's hash alone).

The hash is not the markers' only copy: ``streams.forget_markers`` keeps them on a compacted
Kafka topic and restores the hash from it after Redis lost its data (:func:`merge_markers`,
the same rule: a user's higher offset wins; :func:`stored_markers` for the other way).

Both keys must be hashes (or absent): :func:`adopt_name_only_markers`, which every command
reading or recording markers calls at its start, refuses a key of another type that another
tool (or a hand-typed ``SET``) left under either name with :class:`MarkersNotAHash`, naming
it and its type, before anything reads or writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serving_cache.keys import (
    FORGOTTEN_ADOPTED_BY,
    FORGOTTEN_HELD,
    forgotten_key,
    forgotten_key_by_name,
)

__all__ = ["Adoption", "MarkersNotAHash", "MarkersUnusable", "adopt_name_only_markers",
           "check_marker_keys", "hold_markers", "merge_markers", "record_markers",
           "stored_markers"]

# KEYS[1] = the name-only hash, ARGV[1] = the topic id, ARGV[2] = the owner field: a hash that
# exists is claimed by the first id that asks; the owner is returned (nil: no hash).
_CLAIM = """if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[1])
return redis.call('HGET', KEYS[1], ARGV[2])
"""

# KEYS[1] = the id's hash; ARGV = user, offset, user, offset... A user's higher offset wins;
# returns how many markers were added or raised.
_MERGE = """local n = 0
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS[1] = the name-only hash, ARGV[1] = the owner field, ARGV[2] = the topic id, then user,
# offset pairs: written only while the hash exists and is that id's (never recreated); a
# user's higher offset wins, as in _MERGE.
_MIRROR = """if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""

_CHUNK = 1000  # users per merge call: a large hash is not one long script call


class MarkersUnusable(ValueError):
    """The forget markers of a clicks topic cannot be read or kept where diam keeps them (a
    Redis key of another type: :class:`MarkersNotAHash`; their Kafka topic not compacted:
    ``streams.forget_markers.MarkersTopicUnfit``). The message says what to do; a command
    that meets it starts nothing."""


class MarkersNotAHash(MarkersUnusable):
    """A key where ``diam forget``'s markers of a clicks topic belong holds a Redis value of
    another type than a hash: ``key``, its ``kind`` (``TYPE``'s answer) and ``topic``. The
    message says what to do; a command that meets it starts nothing."""

    def __init__(self, key: str, kind: str, topic: str) -> None:
        self.key, self.kind, self.topic = key, kind, topic
        super().__init__(
            f"Redis key {key!r} holds a {kind}, not a hash: diam keeps the forget markers of "
            f"topic {topic!r} there (`diam forget`: user id -> tombstone offset) and writes "
            "nothing else under that name, so another tool or a hand-made key took it. Refused "
            f"before reading or writing it: look at it (redis-cli TYPE/DUMP), move it away "
            f"(redis-cli RENAME {key!r} <other name>) or delete it (redis-cli DEL {key!r}), "
            "then start again; users forgotten on this topic whose markers it replaced must be "
            "forgotten again (diam forget USER...)")


def check_marker_keys(client: Any, topic: str, topic_id: str | None) -> None:
    """Raise :class:`MarkersNotAHash` when a key of ``topic``'s markers (the name-only one,
    and the id's when ``topic_id`` is given) holds anything but a hash; an absent key is
    fine (no marker yet). ``client``: a ``redis.Redis`` or ``RedisCluster``."""
    keys = dict.fromkeys([forgotten_key_by_name(topic), forgotten_key(topic, topic_id)])
    for key in keys:
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind not in ("hash", "none"):
            raise MarkersNotAHash(key, kind, topic)


@dataclass(frozen=True)
class Adoption:
    """What :func:`adopt_name_only_markers` found for ``topic`` (Kafka id ``topic_id``).

    ``owner``: the topic id that adopted the name-only markers (None: no name-only hash, or a
    broker without topic ids); ``held``: how many users the name-only hash names; ``merged``:
    how many of them this call added to (or raised in) ``topic_id``'s hash. ``restored``: the
    markers then restored into that hash from their durable copy on Kafka (Redis had lost
    them); ``recorded``: those of the hash written to that copy, which lacked them
    (``streams.forget_markers.restore_markers``)."""

    topic: str
    topic_id: str | None
    owner: str | None = None
    held: int = 0
    merged: int = 0
    restored: int = 0
    recorded: int = 0

    def line(self) -> str | None:
        """The one-line notice to show at the command's start, or None when there is nothing
        to say (no name-only markers, or all of them already adopted; no marker restored or
        recorded).

        >>> print(Adoption("diam.clicks", "ea2bss0mSlqGLpiDao5Wgg", restored=2, recorded=1).line())
        ... # doctest: +NORMALIZE_WHITESPACE
        restored 2 forget marker(s) of diam.clicks into
        diam::forgotten:diam.clicks:ea2bss0mSlqGLpiDao5Wgg from their durable copy on Kafka
        (Redis had lost them); 1 marker(s) Redis held were written to that copy

        >>> print(Adoption("diam.clicks", "ea2bss0mSlqGLpiDao5Wgg", "ea2bss0mSlqGLpiDao5Wgg", 3, 2).line())
        ... # doctest: +NORMALIZE_WHITESPACE
        adopted 2 forget marker(s) of diam.clicks recorded by name alone
        (diam::forgotten:diam.clicks) under its current topic id ea2bss0mSlqGLpiDao5Wgg: those
        users stay forgotten on this topic, and a topic recreated under the same name will not
        be bound by them; the name-only hash is kept for processes of the earlier release
        (delete it once none runs)
        >>> print(Adoption("diam.clicks", "NEWbss0mSlqGLpiDao5Wgg", "ea2bss0mSlqGLpiDao5Wgg", 3).line())
        ... # doctest: +NORMALIZE_WHITESPACE
        ignoring 3 forget marker(s) of diam.clicks recorded by name alone
        (diam::forgotten:diam.clicks): they belong to topic id ea2bss0mSlqGLpiDao5Wgg, which
        held the name before the topic was deleted and created again (now
        NEWbss0mSlqGLpiDao5Wgg); delete the hash once no process of the earlier release runs
        >>> Adoption("diam.clicks", "ea2bss0mSlqGLpiDao5Wgg", "ea2bss0mSlqGLpiDao5Wgg", 3).line() is None
        True
        """
        said = [x for x in (self._adopted(), self._restored()) if x is not None]
        return "; ".join(said) if said else None

    def _restored(self) -> str | None:
        if not self.restored and not self.recorded:
            return None
        said = []
        if self.restored:
            said.append(f"restored {self.restored} forget marker(s) of {self.topic} into "
                        f"{forgotten_key(self.topic, self.topic_id)} from their durable copy on "
                        "Kafka (Redis had lost them)")
        if self.recorded:
            said.append(f"{self.recorded} marker(s) Redis held were written to that copy"
                        if self.restored else f"wrote {self.recorded} forget marker(s) of "
                        f"{self.topic} that Redis held to their durable copy on Kafka")
        return "; ".join(said)

    def _adopted(self) -> str | None:
        key = forgotten_key_by_name(self.topic)
        if self.owner is None or self.topic_id is None:
            return None
        if self.owner != self.topic_id:
            if not self.held:
                return None
            return (f"ignoring {self.held} forget marker(s) of {self.topic} recorded by name "
                    f"alone ({key}): they belong to topic id {self.owner}, which held the name "
                    f"before the topic was deleted and created again (now {self.topic_id}); "
                    "delete the hash once no process of the earlier release runs")
        if not self.merged:
            return None
        return (f"adopted {self.merged} forget marker(s) of {self.topic} recorded by name alone "
                f"({key}) under its current topic id {self.topic_id}: those users stay "
                "forgotten on this topic, and a topic recreated under the same name will not be "
                "bound by them; the name-only hash is kept for processes of the earlier release "
                "(delete it once none runs)")


def adopt_name_only_markers(client: Any, topic: str, topic_id: str | None) -> Adoption:
    """Adopt the markers of ``topic`` recorded under its name alone into the hash of
    ``topic_id`` (the topic that holds the name now) when that id is theirs: the first id to
    ask claims them; another id ignores them. The name-only hash is kept, never deleted.
    ``topic_id`` None (a broker that assigns no ids: the name-only hash is the one in use)
    does nothing. ``client``: a ``redis.Redis`` or ``RedisCluster``. Raises
    :class:`MarkersNotAHash` first when either key holds something else than a hash
    (:func:`check_marker_keys`)."""
    check_marker_keys(client, topic, topic_id)
    if topic_id is None:
        return Adoption(topic, None)
    old, new = forgotten_key_by_name(topic), forgotten_key(topic, topic_id)
    owner = client.eval(_CLAIM, 1, old, topic_id, FORGOTTEN_ADOPTED_BY)
    if owner is None:
        return Adoption(topic, topic_id)
    owner = owner.decode() if isinstance(owner, bytes) else str(owner)
    # not a marker: the owner field, and FORGOTTEN_HELD where the name-only hash was the one
    # in use (a broker without topic ids)
    held = {k: v for k, v in client.hgetall(old).items() if not k.startswith(b":")}
    if owner != topic_id:
        return Adoption(topic, topic_id, owner, len(held))
    merged = _merge(client, new, held)
    return Adoption(topic, topic_id, owner, len(held), merged)


def _merge(client: Any, key: str, offsets: Mapping[Any, Any]) -> int:
    pairs = [x for kv in sorted(offsets.items()) for x in kv]
    return sum(int(client.eval(_MERGE, 1, key, *pairs[start:start + 2 * _CHUNK]))
               for start in range(0, len(pairs), 2 * _CHUNK))


def merge_markers(client: Any, topic: str, topic_id: str | None,
                  offsets: Mapping[str, int]) -> int:
    """Merge ``offsets`` (user -> tombstone offset) into the hash of ``topic_id``'s markers: a
    user's higher offset wins (the later tombstone), so merging the same markers again, or
    older ones, changes nothing. Returns how many were added or raised. One key per script call
    (Redis Cluster safe), a thousand users per call."""
    return _merge(client, forgotten_key(topic, topic_id), {u: int(o) for u, o in offsets.items()})


def hold_markers(client: Any, topic: str, topic_id: str | None) -> bool:
    """Mark the hash of ``topic_id``'s markers whole, and make it exist even with no marker:
    its field ``keys.FORGOTTEN_HELD`` (``HSETNX``: a command the ACL user already needs).
    Called only once every marker of the durable copy is merged
    (``streams.forget_markers.restore_markers``, after its last merge call): the writer's
    forget check fails closed on a hash without the field (``serving_cache.writer``), which
    Redis lost, a restore is still filling, or a write of some markers alone recreated
    (:func:`record_markers`, :func:`adopt_name_only_markers`, an earlier release's forget:
    none of them sets it). Returns whether the field was added (the hash was lost, or never
    held)."""
    return bool(client.hsetnx(forgotten_key(topic, topic_id), FORGOTTEN_HELD, 0))


def stored_markers(client: Any, topic: str, topic_id: str | None) -> dict[str, int]:
    """The markers the hash of ``topic_id`` holds now (user -> tombstone offset), one HGETALL
    (a command the ACL user already needs: ``streams.preflight.redis_needs``); a field that is
    not a marker (``keys.FORGOTTEN_ADOPTED_BY`` or anything else starting with ':', a value
    that is not an integer) is left out."""
    out: dict[str, int] = {}
    for field, value in client.hgetall(forgotten_key(topic, topic_id)).items():
        user = field.decode() if isinstance(field, bytes) else str(field)
        try:
            offset = int(value)
        except ValueError:
            continue
        if not user.startswith(":"):
            out[user] = offset
    return out


def record_markers(client: Any, topic: str, topic_id: str | None,
                   offsets: Mapping[str, int]) -> None:
    """Record ``diam forget``'s markers: each user's tombstone offset in ``topic``, in the hash
    of ``topic_id`` (the newest tombstone of a user is the highest offset: merged, so that
    two forgets of a user finishing in the other order cannot lower it), and in the
    name-only hash too while it exists and is that id's, so that
    processes of the earlier release, which read only that one, refuse the users as well.
    A hash Redis lost is recreated here without ``keys.FORGOTTEN_HELD`` (holding these markers
    alone): the writer's check fails closed on it until a restore completes it."""
    if not offsets:
        return
    pairs = [x for u, off in sorted(offsets.items()) for x in (u, int(off))]
    merge_markers(client, topic, topic_id, offsets)
    if topic_id is not None:
        client.eval(_MIRROR, 1, forgotten_key_by_name(topic), FORGOTTEN_ADOPTED_BY, topic_id,
                    *pairs)
