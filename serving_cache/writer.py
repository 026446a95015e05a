"""Write-if-newer writer of user vectors (DESIGN.md §3).

Late or replayed writes must never overwrite newer state, so every write goes through a Lua
script that compares the ``seq`` stored in the current value with the incoming one, atomically
on the server. A batch is first reduced to the newest entry per user (two entries for the same
user in one call would both be sent, and the stale one could win if it came second and the
script were ever relaxed), then sent as pipelined EVALSHA calls of up to ``keys_per_call`` keys
each (default 100): the stream writes one value per pushed user, on a thread that shares the GIL
with the dataflow, and one script call per key would cost the writer and Redis a reply each.

On Redis Cluster every key of one script call must hash to the same slot: with a
``RedisCluster`` client the chunk is grouped by slot, each group packed into calls of up to
``keys_per_call`` keys and sent as one pipeline to the node owning the slot. A slot being
migrated is followed (a call answered ``ASK`` is sent to the importing node after ``ASKING``),
a slot moved makes the writer learn the slot map again and send the chunk once more
(:meth:`RedisWriter.write_batch`); what still fails is the caller's to wait out.

Values are encoded by :class:`serving_cache.codec.Encoder` (one per writer: it caches packed
fragments and is not thread-safe); commands are framed by redis-py's pipeline (hiredis's
``pack_command`` when installed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import redis
from redis.cluster import RedisCluster

from serving_cache.codec import HEAD, Encoder, UserVectors
from serving_cache.keys import FORGOTTEN_HELD, forgotten_key, user_key, validate_namespace

__all__ = ["MarkersMissing", "RedisWriter", "WRITE_IF_NEWER_LUA", "write_if_newer_lua"]


def _lua_literal(b: bytes) -> str:
    """``b`` as the body of a Lua string literal (letters as they are, other bytes as
    ``\\ddd``).

    >>> print(_lua_literal(HEAD))
    \\139\\161v\\001\\163seq
    """
    return "".join(chr(x) if chr(x).isascii() and chr(x).isalpha() else f"\\{x:03d}" for x in b)


# KEYS = user keys; ARGV = (incoming seq, encoded value) per key, in the order of KEYS.
# Returns {written, refused, skipped}: how many keys were written, the places (1-based, among the
# user keys) of the pushes the forget check (below) refused, and the places of the keys whose stored
# seq is newer or equal, which were skipped (a stale write, or a value Redis holds already: the
# caller tells which of them it expected, e.g. streams.redis_sink's re-pushes of resumed users). A stored value that cannot be parsed is overwritten: it cannot be newer than valid
# state.
#
# Values of serving_cache.codec start with HEAD ({"v": 1, "seq": <int>, ...}), so seq is read
# from the bytes right after it (fixint or uint8..uint64; Lua numbers are doubles, exact to
# 2**53). The codec's bytes fields are msgpack bin, which Redis's cmsgpack refuses, so the full
# unpack serves only values of another layout without bin (another writer, an older codec).
# tests/integration/test_redis_value.py runs this script against the codec in the real Redis.
_H = len(HEAD)
_READ_STORED = f"""  local cur = redis.call('GET', KEYS[i])
  local stored = nil
  if cur then
    if string.sub(cur, 1, {_H}) == '{_lua_literal(HEAD)}' then
      local t = string.byte(cur, {_H + 1})
      if t and t < 128 then
        stored = t
      else
        local n = (t == 204 and 1) or (t == 205 and 2) or (t == 206 and 4) or (t == 207 and 8) or 0
        if n > 0 and #cur >= {_H + 1} + n then
          stored = 0
          for j = {_H + 2}, {_H + 1} + n do stored = stored * 256 + string.byte(cur, j) end
        end
      end
    end
    if stored == nil then
      local ok, m = pcall(cmsgpack.unpack, cur)
      if ok and type(m) == 'table' and m['seq'] ~= nil then stored = tonumber(m['seq']) end
    end
  end
"""

# The forget check (``diam forget``; serving_cache.keys.forgotten_key): KEYS[1] is the hash of
# users forgotten on the topic (of the topic id the writer was given), ARGV[1] where the user id
# starts in a user key; the user keys and their (seq, value) pairs follow. A push whose seq (the offset of the last click it learnt)
# is below the offset of the user's tombstone was learnt from clicks the user asked to forget:
# it is refused in the same script as the write, so a forget that records its marker before
# deleting the keys cannot race a push into leaving a key behind. With no forgotten user (no
# hash) the check costs one EXISTS per call; with some, one HGET per user about to be written
# (none for a stale push). A refused push's key, if any, holds a value learnt before the
# tombstone as well (its seq is below the push's): it is deleted.
#
# Failing closed (``required``: the caller's command start restored the markers and then set
# the hash's field serving_cache.keys.FORGOTTEN_HELD, last: streams.forget_markers
# .restore_markers): a hash without that field holds not every marker. It was lost with
# Redis's data (a FLUSHALL, a restart without persistence), or is being restored (a merge of a
# thousand users per call: the field comes after the last one), or was recreated after the
# loss by a write of some markers alone (a forget's HSET, an adoption's merge, an earlier
# release's forget). The field is asked, not whether the hash exists (HEXISTS costs what
# EXISTS does). Nothing of the call is written and it answers {-1}: the caller restores the
# markers and sends again (streams.redis_sink: the same path as a lost key set). Then one
# HGET per user about to be written, forgotten users or not.
_FORGOTTEN = """local first, argv0 = 2, 1
local forgotten = redis.call('EXISTS', KEYS[1]) == 1
local from = tonumber(ARGV[1])
"""
_FORGOTTEN_REQUIRED = f"""local first, argv0 = 2, 1
local forgotten = redis.call('HEXISTS', KEYS[1], '{FORGOTTEN_HELD}') == 1
if not forgotten then return {{-1}} end
local from = tonumber(ARGV[1])
"""
_REFUSED = """local floor = forgotten and redis.call('HGET', KEYS[1], string.sub(KEYS[i], from))
    if floor and seq < tonumber(floor) then
      refused[#refused + 1] = i - first + 1
      if cur then redis.call('DEL', KEYS[i]) end
    else
  """


# Redis Cluster's delete of the refused pushes' keys (the forget check is read before the
# scripts there: RedisWriter._not_forgotten): KEYS = the user keys of one slot, ARGV = each
# refused push's seq. A key is deleted where the single Redis script (_REFUSED) deletes it: it
# holds a value older than the push (or one that cannot be parsed), learnt before the
# tombstone too; a newer one (a new state learnt after the forget) stays. Returns how many.
_DROP_REFUSED = ("local n = 0\nfor i = 1, #KEYS do\n" + _READ_STORED
                 + "  if cur and (stored == nil or stored < tonumber(ARGV[i])) then\n"
                 "    redis.call('DEL', KEYS[i])\n    n = n + 1\n  end\nend\nreturn n\n")


def write_if_newer_lua(ttl_s: int | None = None, forgotten: bool = False,
                       required: bool = False) -> str:
    """The write-if-newer script. With ``ttl_s``, a written key expires ``ttl_s`` seconds later
    and a skipped (stale) push refreshes the expiry: the user is still active, only the value
    in Redis is newer. With ``forgotten``, the forget check above: KEYS[1] is the hash of
    forgotten users, ARGV[1] where the user id starts in a key; with ``required`` too, the
    check fails closed (no hash: nothing written, the answer ``{-1}``). Without either, it is
    :data:`WRITE_IF_NEWER_LUA`.

    >>> "'EX', 3600" in write_if_newer_lua(3600) and "EXPIRE" in write_if_newer_lua(3600)
    True
    >>> "HGET" in write_if_newer_lua(None, forgotten=True), "HGET" in WRITE_IF_NEWER_LUA
    (True, False)
    >>> "{-1}" in write_if_newer_lua(None, True, required=True), "{-1}" in write_if_newer_lua(None, True)
    (True, False)
    >>> "HEXISTS', KEYS[1], ':held'" in write_if_newer_lua(None, True, required=True)
    True
    """
    # a stored seq (not nil) is read from a value (cur): the else branch is a stale push's
    stale = "  else\n    skipped[#skipped + 1] = i - first + 1\n"
    ex = ""
    if ttl_s:
        ttl = int(ttl_s)
        if ttl < 1:
            raise ValueError(f"ttl_s must be at least 1 second, not {ttl_s}")
        ex = f", 'EX', {ttl}"
        stale += f"    redis.call('EXPIRE', KEYS[i], {ttl})\n"
    write = f"    redis.call('SET', KEYS[i], ARGV[a + 1]{ex})\n    written = written + 1\n"
    if forgotten:
        write = "    " + _REFUSED + write.replace("\n    ", "\n      ") + "    end\n"
    return ("local written, refused, skipped = 0, {}, {}\n"
            + ((_FORGOTTEN_REQUIRED if required else _FORGOTTEN) if forgotten
               else "local first, argv0 = 1, 0\n")
            + "for i = first, #KEYS do\n" + _READ_STORED
            + "  local a = 2 * (i - first) + 1 + argv0\n  local seq = tonumber(ARGV[a])\n"
            + "  if stored == nil or stored < seq then\n" + write + stale + "  end\nend\n"
            + "return {written, refused, skipped}\n")


WRITE_IF_NEWER_LUA = write_if_newer_lua()
"""The plain script: no expiry, no forget check."""


class MarkersMissing(Exception):
    """A write of a :class:`RedisWriter` whose forget check fails closed (``markers_required``)
    found the hash of markers without its field ``keys.FORGOTTEN_HELD`` (absent, or holding
    some markers only): Redis lost its data since the command's start restored them
    (``streams.forget_markers.restore_markers``), or a restore is still under way, and nothing
    of the call was written (on a cluster, nothing of the chunk). The caller restores the
    markers and writes again."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"the forget markers' hash {key} is missing or not whole (no field "
                         f"{FORGOTTEN_HELD}: Redis lost its data, the hash was deleted, or a "
                         "restore is under way): nothing written until the markers are restored")


class RedisWriter:
    """Pipelined write-if-newer of :class:`UserVectors` into namespace ``ns``. ``ttl_s``: user
    keys expire that long after their last push (None: never). ``topic``: the clicks topic
    whose offsets the pushed ``seq`` are; a push of a user that ``diam forget`` forgot on it,
    learnt from clicks before the user's tombstone, is refused (None: no such check).
    ``topic_id``: that topic's Kafka topic id, which the caller looked up at its start
    (``streams.kafka_io.topic_id``; this room talks to no broker): the markers are the ones of
    that topic, not of an earlier topic of the same name (None: a broker that assigns no ids,
    the markers of the name; ``serving_cache.keys.forgotten_key``). ``markers_required``:
    the forget check fails closed (:class:`MarkersMissing` when the markers' hash is absent),
    for a caller whose start made the hash exist and that restores it after a loss
    (``streams.redis_sink``)."""

    def __init__(self, client: redis.Redis, ns: str, pipeline_batch: int = 500,
                 keys_per_call: int = 100, ttl_s: int | None = None,
                 topic: str | None = None, topic_id: str | None = None,
                 markers_required: bool = False) -> None:
        if pipeline_batch < 1 or keys_per_call < 1:
            raise ValueError(f"pipeline_batch ({pipeline_batch}) and keys_per_call ({keys_per_call}) "
                             "must be at least 1")
        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self.ttl_s = ttl_s
        self.forgotten = None if topic is None else forgotten_key(topic, topic_id)
        # On a cluster the hash lives in another slot than most user keys, which one script
        # call cannot read: there it is read before the scripts (see _send_cluster)
        self.markers_required = markers_required and self.forgotten is not None
        self._script = write_if_newer_lua(ttl_s, forgotten=self.forgotten is not None
                                          and not self._cluster,
                                          required=self.markers_required)
        self.ns = validate_namespace(ns)
        self._user_from = len(user_key(self.ns, "")) + 1  # where the user id starts (Lua: 1-based)
        self.pipeline_batch = pipeline_batch
        self.keys_per_call = keys_per_call
        self._sha: str | None = None
        self._encoder = Encoder()
        self._encoder.warm_up()  # compiled here, not on the first push (which would wait)
        self.last_skipped: list[tuple[str, UserVectors]] = []
        """The entries of the last :meth:`write_batch` whose value Redis kept (its seq was
        newer or equal), in the order sent: a replay of what was written already, or another
        run's newer state. Empty when a chunk was sent again (a lost script, moved slots): the
        first try may have written part of it, so its users' skips are not told apart from
        the retry's own."""
        self.last_refused = 0
        """Users of the last :meth:`write_batch` whose push was refused as forgotten (learnt
        from clicks before their tombstone on ``topic``); not among :attr:`last_skipped`."""
        self.last_refused_entries: list[tuple[str, UserVectors]] = []
        """Those refused entries, in the order sent (``len`` is :attr:`last_refused`)."""

    def write_batch(self, entries: Iterable[tuple[str, UserVectors]]) -> int:
        """Write every entry whose seq is newer than what Redis holds, unless the forget check
        refuses it (:attr:`last_refused`); return how many were written; the entries skipped
        are :attr:`last_skipped`. Older entries for the same user earlier or later in the batch
        are dropped."""
        newest: dict[str, UserVectors] = {}
        for user_id, uv in entries:
            prev = newest.get(user_id)
            if prev is None or uv.seq > prev.seq:
                newest[user_id] = uv
        self.last_skipped, self.last_refused, self.last_refused_entries = [], 0, []
        if not newest:
            return 0
        items = list(newest.items())
        written = 0
        resent = False
        for start in range(0, len(items), self.pipeline_batch):
            chunk = items[start : start + self.pipeline_batch]
            try:
                written += self._send(chunk)
            except redis.exceptions.NoScriptError:
                # A restarted or flushed Redis lost the cached script; a pipeline cannot fall
                # back to EVAL by itself, so load it again and resend (the writes are
                # idempotent: write-if-newer).
                self._sha = None
                resent = True
                written += self._send(chunk)
            except (redis.exceptions.MovedError, redis.exceptions.AskError,
                    redis.exceptions.TryAgainError) as exc:
                if not self._cluster:
                    raise
                # slots moved (a resharding, a failover): learn the new layout, send again
                cluster: Any = self.client
                cluster.nodes_manager.initialize()
                self._sha = None
                resent = True
                try:
                    written += self._send(chunk)
                except redis.exceptions.ResponseError:
                    raise exc from None
        if resent:
            self.last_skipped = []
        return written

    def _send(self, chunk: list[tuple[str, UserVectors]]) -> int:
        if self._cluster:
            return self._send_cluster(chunk)
        if self._sha is None:
            self._sha = self.client.script_load(self._script)
        return self._pipeline(self.client, [chunk], self.forgotten)

    def _send_cluster(self, chunk: list[tuple[str, UserVectors]]) -> int:
        """Redis Cluster: every script call must touch one hash slot, so the chunk is grouped
        by slot and each node's groups are sent as one pipeline on that node."""
        from redis.crc import key_slot

        client: Any = self.client  # a RedisCluster (the annotation says redis.Redis)
        if self._sha is None:
            for node in client.get_primaries():  # EVALSHA runs where the keys live
                client.get_redis_connection(node).script_load(self._script)
            self._sha = hashlib.sha1(self._script.encode()).hexdigest()
        refused: list[tuple[str, UserVectors]] = []
        if self.forgotten is not None:
            chunk, refused = self._not_forgotten(client, chunk)
        by_slot: dict[int, list[tuple[str, UserVectors]]] = {}
        for user, uv in chunk:
            by_slot.setdefault(key_slot(user_key(self.ns, user).encode()), []).append((user, uv))
        by_node: dict[str, tuple[Any, list[list[tuple[str, UserVectors]]]]] = {}
        for slot, items in by_slot.items():
            node = client.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, (node, []))[1].append(items)
        written = sum(self._pipeline(client.get_redis_connection(node), groups)
                      for node, groups in by_node.values())
        if refused:
            self._drop_refused(client, refused)
        # once the writes went through: a resent chunk counts once
        self.last_refused += len(refused)
        self.last_refused_entries += refused
        return written

    def _drop_refused(self, client: Any, refused: list[tuple[str, UserVectors]]) -> None:
        """Redis Cluster: delete the keys of the ``refused`` pushes that hold an older value
        than the push, as the single Redis script does (:data:`_DROP_REFUSED`), one script
        call per slot (the cluster client follows a moved slot). Refused pushes are rare (a
        forgotten user's, learnt before the tombstone): no pipeline."""
        from redis.crc import key_slot

        by_slot: dict[int, list[tuple[str, int]]] = {}
        for user, uv in refused:
            key = user_key(self.ns, user)
            by_slot.setdefault(key_slot(key.encode()), []).append((key, int(uv.seq)))
        for items in by_slot.values():
            client.eval(_DROP_REFUSED, len(items), *(k for k, _ in items),
                        *(seq for _, seq in items))

    def _not_forgotten(self, client: Any, chunk: list[tuple[str, UserVectors]]
                       ) -> tuple[list[tuple[str, UserVectors]], list[tuple[str, UserVectors]]]:
        """Redis Cluster: the pushes of ``chunk`` the forget check lets through, and those it
        refused (their keys then deleted: :meth:`_drop_refused`), read with one
        HMGET of the hash before the scripts, with its field ``keys.FORGOTTEN_HELD``: failing
        closed (``markers_required``), a hash without it is :class:`MarkersMissing`, as in the
        script. Not atomic with the writes, as
        the script's check is: a forget that records its marker and deletes the key between
        this read and the write leaves the push in Redis until the dataflow reads the
        tombstone and deletes it again (a replay, that ends before it, leaves it)."""
        assert self.forgotten is not None
        held, *floors = client.hmget(self.forgotten, [FORGOTTEN_HELD, *(u for u, _ in chunk)])
        if held is None and self.markers_required:
            raise MarkersMissing(self.forgotten)
        kept: list[tuple[str, UserVectors]] = []
        refused: list[tuple[str, UserVectors]] = []
        for entry, f in zip(chunk, floors, strict=True):
            (kept if f is None or entry[1].seq >= int(f) else refused).append(entry)
        return kept, refused

    def _pipeline(self, client: redis.Redis, groups: list[list[tuple[str, UserVectors]]],
                  forgotten: str | None = None) -> int:
        """``EVALSHA sha n key_1..key_n seq_1 value_1 .. seq_n value_n`` per ``keys_per_call``
        users of each group (with ``forgotten``: ``EVALSHA sha n+1 forgotten key_1..key_n
        user_from seq_1 value_1 ..``), sent as one pipeline; the number of keys written (the
        pushes refused as forgotten are added to :attr:`last_refused`).

        On a cluster, a call answered ``ASK`` (its slot is being migrated and its keys are on
        the importing node already) is sent again to the node the answer names, after
        ``ASKING`` on the same connection (the Redis Cluster specification's redirection for
        one command; the slot map is left as it is: the slot still belongs to the source until
        the migration ends). Any other error reply is raised (the first one): ``MOVED`` and
        ``TRYAGAIN`` to :meth:`write_batch`, a lost script to its reload."""
        assert self._sha is not None  # loaded by _send
        pipe = client.pipeline(transaction=False)
        per = self.keys_per_call
        calls: list[tuple[list[Any], list[tuple[str, UserVectors]]]] = []
        for group in groups:
            values = self._encoder.encode([uv for _, uv in group])
            for start in range(0, len(group), per):
                part = group[start : start + per]
                keys: list[Any] = [user_key(self.ns, u) for u, _ in part]
                argv: list[Any] = []
                if forgotten is not None:
                    keys.insert(0, forgotten)
                    argv.append(self._user_from)
                for (_, uv), value in zip(part, values[start : start + per], strict=True):
                    argv += (int(uv.seq), value)
                args = [self._sha, len(keys), *keys, *argv]
                pipe.evalsha(*args)
                calls.append((args, part))
        replies = list(pipe.execute(raise_on_error=not self._cluster))
        asked: dict[tuple[str, int], list[int]] = {}  # the calls answered ASK, per node named
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.AskError):
                asked.setdefault(reply.node_addr, []).append(i)
            elif isinstance(reply, Exception):
                raise reply
        for (host, port), which in asked.items():
            cluster: Any = self.client
            node = cluster.get_node(host=host, port=port)
            if node is None:  # a node the slot map does not know yet: learn it, send again
                raise redis.exceptions.MovedError(f"{replies[which[0]]}")
            ask = cluster.get_redis_connection(node).pipeline(transaction=False)
            for i in which:
                ask.execute_command("ASKING")
                ask.evalsha(*calls[i][0])
            answers = ask.execute(raise_on_error=True)  # TRYAGAIN (keys on both nodes) waits
            for i, reply in zip(which, answers[1::2], strict=True):
                replies[i] = reply
        if self.markers_required and any(int(r[0]) < 0 for r in replies):
            raise MarkersMissing(str(self.forgotten))  # the calls before it were checked
        written = 0
        for (w, refused, skipped), (_, part) in zip(replies, calls, strict=True):
            written += int(w)
            self.last_refused += len(refused)
            self.last_refused_entries += (part[int(j) - 1] for j in refused)
            self.last_skipped += (part[int(j) - 1] for j in skipped)
        return written
