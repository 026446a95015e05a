"""Write-if-newer writer of user vectors (DESIGN.md §3).

Late or replayed writes must never overwrite newer state, so every write goes through a Lua
script that compares the ``seq`` stored in the current value with the incoming one, atomically
on the server. A batch is first reduced to the newest entry per user (two entries for the same
user in one call would both be sent, and the stale one could win if it came second and the
script were ever relaxed), then sent as pipelined EVALSHA calls of up to ``keys_per_call`` keys
each (default 100).

Why several keys per call: the stream writes one value per pushed user, on a thread that shares
the GIL with the dataflow, and Redis shares the machine. Measured over 20k users at K_u = 4
(batches of 500, two rounds, three interleaved repeats, 2-core machine with a training job on
the other core): the writer's CPU per user fell from 16.5-17.1 µs with one key per call to
10.9-12.0 µs with 100 (a reply per call instead of per key), and Redis's CPU per user (INFO
commandstats) from 7.6-8.4 to 5.3-5.4 µs. On Redis Cluster every key of one script call must
hash to the same slot: with a ``RedisCluster`` client the chunk is grouped by slot, each group
packed into calls of up to ``keys_per_call`` keys and sent to the node owning the slot.

Why the calls are packed by compiled code (serving_cache.wire): Python gathers each field of a
chunk once and two numba calls write the values and the RESP framing, byte for byte what the
Python packing wrote. Same measurement (20k users at K_u = 4, dim 64, batches of 500, two
rounds, nine interleaved repeats; the machine shared with another engineer's runs): the
writer's CPU per user fell from 7.1-11.4 µs to 4.1-6.4 µs. What remains is mostly numpy's
float16 rounding (~0.9 µs), the field gathering (~0.6 µs) and the socket send (~1.6 µs: the
values are ~600 bytes a user).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import redis
from redis.cluster import RedisCluster

from serving_cache.codec import UserVectors, _encode_users_py
from serving_cache.keys import user_key, validate_namespace

__all__ = ["RedisWriter", "WRITE_IF_NEWER_LUA", "write_if_newer_lua"]

# KEYS = user keys; ARGV = (incoming seq, encoded value) per key, in the order of KEYS.
# Returns how many keys were written; a key whose stored seq is newer or equal is skipped (a
# stale write). A stored value that cannot be parsed is overwritten: it cannot be newer than
# valid state.
#
# Fast path: values written by serving_cache.codec start with the bytes of
# {"v": 1, "seq": <uint>, ...} (an 11-entry map), so seq is read from the bytes right after that
# prefix without unpacking the map (a full cmsgpack.unpack copies the vecs string too). Redis
# CPU per key (INFO commandstats, 60k writes at K_u = 8, two thirds overwriting, one key per
# call): 8.1-10.0 us with this path, 10.2-11.9 us with the full unpack.
# Any other layout (another writer, another key order, an older codec) takes the full path.
WRITE_IF_NEWER_LUA = """
local written = 0
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  local stored = nil
  if cur then
    if string.sub(cur, 1, 8) == '\\139\\161v\\001\\163seq' then
      local t = string.byte(cur, 9)
      if t and t < 128 then
        stored = t
      else
        local n = (t == 204 and 1) or (t == 205 and 2) or (t == 206 and 4) or (t == 207 and 8) or 0
        if n > 0 and #cur >= 9 + n then
          stored = 0
          for j = 10, 9 + n do stored = stored * 256 + string.byte(cur, j) end
        end
      end
    end
    if stored == nil then
      local ok, m = pcall(cmsgpack.unpack, cur)
      if ok and type(m) == 'table' and m['seq'] ~= nil then stored = tonumber(m['seq']) end
    end
  end
  if stored == nil or stored < tonumber(ARGV[2 * i - 1]) then
    redis.call('SET', KEYS[i], ARGV[2 * i])
    written = written + 1
  end
end
return written
"""


def write_if_newer_lua(ttl_s: int | None = None) -> str:
    """The write-if-newer script; with ``ttl_s``, a written key expires ``ttl_s`` seconds later
    and a skipped (stale) push refreshes the expiry: the user is still active, only the value
    in Redis is newer. Without it, the script is :data:`WRITE_IF_NEWER_LUA` byte for byte.

    >>> "'EX', 3600" in write_if_newer_lua(3600) and "EXPIRE" in write_if_newer_lua(3600)
    True
    >>> write_if_newer_lua(None) == WRITE_IF_NEWER_LUA
    True
    """
    if not ttl_s:
        return WRITE_IF_NEWER_LUA
    ttl = int(ttl_s)
    if ttl < 1:
        raise ValueError(f"ttl_s must be at least 1 second, not {ttl_s}")
    plain = "    redis.call('SET', KEYS[i], ARGV[2 * i])\n    written = written + 1\n  end\n"
    assert WRITE_IF_NEWER_LUA.count(plain) == 1, "the script's SET branch changed: update this"
    return WRITE_IF_NEWER_LUA.replace(
        plain, f"    redis.call('SET', KEYS[i], ARGV[2 * i], 'EX', {ttl})\n    written = written + 1\n"
               f"  elseif cur then\n    redis.call('EXPIRE', KEYS[i], {ttl})\n  end\n")


class RedisWriter:
    """Pipelined write-if-newer of :class:`UserVectors` into namespace ``ns``. ``ttl_s``: user
    keys expire that long after their last push (None: never)."""

    def __init__(self, client: redis.Redis, ns: str, pipeline_batch: int = 500,
                 keys_per_call: int = 100, ttl_s: int | None = None) -> None:
        if pipeline_batch < 1 or keys_per_call < 1:
            raise ValueError(f"pipeline_batch ({pipeline_batch}) and keys_per_call ({keys_per_call}) "
                             "must be at least 1")
        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self.ttl_s = ttl_s
        self._script = write_if_newer_lua(ttl_s)
        self.ns = validate_namespace(ns)
        self.pipeline_batch = pipeline_batch
        self.keys_per_call = keys_per_call
        self._sha: str | None = None
        # numba and the kernels are loaded here, not with the package (readers never write)
        # and not on the first push (which would wait for them)
        from serving_cache import wire

        wire.warm_up()
        self._wire = wire
        prefix = user_key(self.ns, "")
        # keys are packed as prefix + user id; a schema that is not of that form packs in Python
        self._prefix = (np.frombuffer(prefix.encode(), np.uint8)
                        if user_key(self.ns, "\u00e9x") == prefix + "\u00e9x" else None)

    def write_batch(self, entries: Iterable[tuple[str, UserVectors]]) -> int:
        """Write every entry whose seq is newer than what Redis holds; return how many were
        written. Older entries for the same user earlier or later in the batch are dropped."""
        newest: dict[str, UserVectors] = {}
        for user_id, uv in entries:
            prev = newest.get(user_id)
            if prev is None or uv.seq > prev.seq:
                newest[user_id] = uv
        if not newest:
            return 0
        items = list(newest.items())
        written = 0
        for start in range(0, len(items), self.pipeline_batch):
            chunk = items[start : start + self.pipeline_batch]
            try:
                written += self._send(chunk)
            except redis.exceptions.NoScriptError:
                # A restarted or flushed Redis lost the cached script; a pipeline cannot fall
                # back to EVAL by itself, so load it again and resend (the writes are
                # idempotent: write-if-newer).
                self._sha = None
                written += self._send(chunk)
            except (redis.exceptions.MovedError, redis.exceptions.AskError,
                    redis.exceptions.TryAgainError) as exc:
                if not self._cluster:
                    raise
                # slots moved (a resharding, a failover): learn the new layout, send again
                cluster: Any = self.client
                cluster.nodes_manager.initialize()
                self._sha = None
                try:
                    written += self._send(chunk)
                except redis.exceptions.ResponseError:
                    raise exc from None
        return written

    def _send(self, chunk: list[tuple[str, UserVectors]]) -> int:
        if self._cluster:
            return self._send_cluster(chunk)
        if self._sha is None:
            self._sha = self.client.script_load(self._script)
        sha = self._sha.encode() if isinstance(self._sha, str) else self._sha
        n_calls = -(-len(chunk) // self.keys_per_call)
        return self._exchange(self.client.connection_pool, self._payload(sha, chunk), n_calls)

    def _send_cluster(self, chunk: list[tuple[str, UserVectors]]) -> int:
        """Redis Cluster: every script call must touch one hash slot, so the chunk is grouped
        by slot, each group packed into calls of up to ``keys_per_call`` keys, and each node's
        calls sent as one pipeline on that node's connection."""
        from redis.crc import key_slot

        client: Any = self.client  # a RedisCluster (the annotation says redis.Redis)
        if self._sha is None:
            for node in client.get_primaries():  # EVALSHA runs where the keys live
                client.get_redis_connection(node).script_load(self._script)
            self._sha = hashlib.sha1(self._script.encode()).hexdigest()
        sha = self._sha.encode() if isinstance(self._sha, str) else self._sha
        by_slot: dict[int, list[tuple[str, UserVectors]]] = {}
        for user, uv in chunk:
            by_slot.setdefault(key_slot(user_key(self.ns, user).encode()), []).append((user, uv))
        by_node: dict[str, tuple[Any, list[bytes], list[int]]] = {}
        for slot, items in by_slot.items():
            node = client.nodes_manager.get_node_from_slot(slot)
            _, payloads, calls = by_node.setdefault(node.name, (node, [], [0]))
            payloads.append(self._payload(sha, items))
            calls[0] += -(-len(items) // self.keys_per_call)
        written = 0
        for node, payloads, calls in by_node.values():
            pool = client.get_redis_connection(node).connection_pool
            written += self._exchange(pool, b"".join(payloads), calls[0])
        return written

    def _payload(self, sha: bytes, chunk: list[tuple[str, UserVectors]]) -> bytes:
        # The pipeline is packed here rather than by redis-py: its generic encoder costs tens
        # of µs per command in Python, and the stream sends one value per pushed user. Each
        # call is EVALSHA sha n key_1..key_n seq_1 value_1 .. seq_n value_n in RESP framing,
        # written with the values by two compiled calls per chunk (serving_cache.wire).
        # Replies are read with redis-py's parser (hiredis when installed).
        wire = self._wire
        f = wire.gather([uv for _, uv in chunk]) if self._prefix is not None else None
        if f is None:
            payload = self._pack_py(sha, chunk)
        else:
            vals, val_off = wire.pack_values(f)
            ids, id_off = wire.key_bytes([u for u, _ in chunk])
            payload = wire.pack_calls(np.frombuffer(sha, np.uint8), self._prefix, ids, id_off,
                                      f.seq, vals, val_off, self.keys_per_call).tobytes()
        return payload

    def _exchange(self, pool: Any, payload: bytes, n_calls: int) -> int:
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload])
            replies: list[object] = []
            for _ in range(n_calls):
                try:
                    replies.append(conn.read_response())
                except redis.exceptions.ResponseError as exc:  # read on: the rest are queued
                    replies.append(exc)
        except BaseException:
            conn.disconnect()  # a half-read pipeline must not go back to the pool
            raise
        finally:
            pool.release(conn)
        for r in replies:
            if isinstance(r, Exception):  # NoScriptError included: write_batch reloads it
                raise r
        return sum(int(r) for r in replies)  # type: ignore[call-overload]

    def _pack_py(self, sha: bytes, chunk: list[tuple[str, UserVectors]]) -> bytes:
        """The calls packed in Python, for chunks the kernels do not take (see wire.gather)."""
        values = _encode_users_py([uv for _, uv in chunk])  # the kernels declined this chunk
        calls = []
        for start in range(0, len(chunk), self.keys_per_call):
            part = chunk[start : start + self.keys_per_call]
            n = b"%d" % len(part)
            keys = [b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                3 + 3 * len(part), len(sha), sha, len(n), n)]
            args = []
            for (user_id, uv), val in zip(part, values[start : start + len(part)], strict=True):
                key = user_key(self.ns, user_id).encode()
                seq = b"%d" % uv.seq
                keys.append(b"$%d\r\n%s\r\n" % (len(key), key))
                args.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(seq), seq, len(val), val))
            calls.append(b"".join(keys) + b"".join(args))
        return b"".join(calls)
