"""Forget markers recorded by an earlier release under the clicks topic's name alone, moved
under the topic id (``serving_cache.keys.forgotten_key``).

The rule: name-only markers belong to the topic that holds the name when this release first
sees them (the first ``diam run``, ``diam replay`` or ``diam forget`` of the topic). A user
forgotten before the upgrade stays forgotten on that topic; a topic deleted and created again
after it gets a new id and is not bound by them. (A topic recreated *before* the upgrade
inherits them, as it did under the earlier release: delete the hash then.)

Moving them keeps one hash per topic for the writer's check (one EXISTS per script call) and
needs no multi-key script, so it works on Redis Cluster, where the two hashes live in different
slots: the name-only hash is read, merged into the id's (the higher offset of a user wins: the
later tombstone), and deleted only if it still holds what was read; a marker an earlier
release's ``diam forget`` adds meanwhile is merged on the next turn. Nothing is deleted before
it is in the id's hash, so no forgotten user comes back at any point.
"""

from __future__ import annotations

from typing import Any

from serving_cache.keys import forgotten_key, forgotten_key_by_name

__all__ = ["adopt_name_only_markers", "adopted_line"]

# KEYS[1] = the id's hash; ARGV = user, offset, user, offset... A user's higher offset wins.
_MERGE = """for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""

# KEYS[1] = the name-only hash; ARGV as above: deleted only when it holds exactly these pairs.
_DROP_IF_UNCHANGED = """if redis.call('HLEN', KEYS[1]) * 2 ~= #ARGV then return 0 end
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"""

_CHUNK = 1000  # users per merge call: a large hash is not one long script call


def adopt_name_only_markers(client: Any, topic: str, topic_id: str | None) -> int:
    """Move the markers of ``topic`` recorded under its name alone into the hash of
    ``topic_id`` (the topic that holds the name now); return how many users they named (0
    when there were none, or when the broker assigns no ids: the name-only hash is then the
    one in use). ``client``: a ``redis.Redis`` or ``RedisCluster``."""
    if topic_id is None:
        return 0
    old, new = forgotten_key_by_name(topic), forgotten_key(topic, topic_id)
    while True:
        held: dict[bytes, bytes] = client.hgetall(old)
        if not held:
            return 0
        pairs = [x for kv in sorted(held.items()) for x in kv]
        for start in range(0, len(pairs), 2 * _CHUNK):
            client.eval(_MERGE, 1, new, *pairs[start : start + 2 * _CHUNK])
        if client.eval(_DROP_IF_UNCHANGED, 1, old, *pairs):
            return len(held)


def adopted_line(n: int, topic: str, topic_id: str) -> str:
    """The one-line notice of :func:`adopt_name_only_markers` having moved ``n`` markers.

    >>> print(adopted_line(2, "diam.clicks", "ea2bss0mSlqGLpiDao5Wgg"))  # doctest: +NORMALIZE_WHITESPACE
    moved 2 forget marker(s) of diam.clicks recorded by name alone (diam::forgotten:diam.clicks)
    under its current topic id ea2bss0mSlqGLpiDao5Wgg: those users stay forgotten on this
    topic, and a topic recreated under the same name will not be bound by them
    """
    return (f"moved {n} forget marker(s) of {topic} recorded by name alone "
            f"({forgotten_key_by_name(topic)}) under its current topic id {topic_id}: those "
            "users stay forgotten on this topic, and a topic recreated under the same name "
            "will not be bound by them")
