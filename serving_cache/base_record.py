"""Which base produced a namespace's values: ``diam:{ns}:base`` (``serving_cache.keys.base_key``).

A user's value names its base's version (``model``), but a snapshot base grows under the same
version: catalogue items and items first seen in clicks are appended to its item table
(``diam.app``), and the table (its size and rows) enters every user's sampled negatives. Two
runs on one version whose tables differ (a tailing run that took items arriving after its
start, a replay pinned to the items known when it started) write different bytes even for users
who never clicked a new item, and the labels cannot say why. The record says it: the version
and the grown table's identity.

The dataflow's Redis sink writes it whenever its base changes (start, new items, a hot reload),
before the values learnt on it and retried as they are (``streams.redis_sink``); ``diam diff``
and ``diam inspect namespace`` read it. A Redis hash of ASCII fields (``redis-cli HGETALL``):

- ``version``: the base's version (a snapshot version, a checkpoint label);
- ``items``: rows of its item table;
- ``added``: rows appended to the version's own (catalogue, click-first);
- ``added_sha``: the first 12 hex digits of sha256 over the added ids in row order, each
  followed by a NUL byte; empty when none was added;
- ``grown``: of those, the rows the writing run appended while it ran (after it started on
  this version: a tailing run's reload checks), at a point in the stream that depends on
  timing. 0 for a replay (its base is pinned at the start) and for a run that took nothing
  after its start: only then were all its values learnt on this one table.

The record is the newest writer's: a namespace written by several runs one after the other
(a restarted service) records the last one's base, not the earlier ones'.

Beside it, ``diam:{ns}:added`` (``serving_cache.keys.added_key``, a Redis list) holds the added
ids themselves, in the writer's row order: the item at row ``items - added + i`` of the base is
the list's element ``i``. The users' values carry their last seen items as rows of that table
(``s``, ``serving_cache.codec``); the published rows are the snapshot's own, the same in every
process, but each process numbers the rows it appends in the order it met the new items, so a
reader (the recommender, whose index took the same items in its own order) maps a seen row
beyond the published table through the list to an id (:class:`AddedIds`). The writer appends
only the ids its table grew by (a new version, or a table that is not the list's continuation,
starts the list over), before the hash, so a reader that finds the record finds its ids; the
reader uses the list only when its first ``added`` ids hash to ``added_sha``, so a list another
run left (another order, two runs writing at once) is not read as this record's. One key each,
no multi-key command: Redis Cluster places them where it likes. A namespace without the list
(written by a release before it) maps no such row.

Beside them, ``diam:{ns}:partitions`` (``serving_cache.keys.partitions_key``, a hash) holds,
per clicks topic the namespace's values were learnt from, the topic's partition count then
(:func:`record_partitions`: checked and written by ``diam run`` before its start line, with or
without a recovery store, and by ``diam replay`` before its first write, after ``--clear``;
written again by the dataflow's Redis sink when it first checks the namespace's generation
marker and whenever it finds the key set lost, ``streams.redis_sink``). Clicks are keyed to a
partition by user and a value's ``seq`` is an
offset, comparable only within one partition: after the count changed, users' new clicks sit
at offsets that the values in Redis (write-if-newer) would keep out as old, so a run or a
replay of another count of the topic into the namespace is refused. A namespace without the
hash, or without the topic's field (a release before it, another topic, a Redis that lost its
keys), is recorded from now on.

>>> rec = BaseRecord.of("20240501T000000Z-ab12", ["i0", "i1", "new-1"], added=1)
>>> rec.fields()
{'version': '20240501T000000Z-ab12', 'items': '3', 'added': '1', 'added_sha': 'ab4c73e30598', 'grown': '0'}
>>> rec.ids
('new-1',)
>>> rec.typed()
{'version': '20240501T000000Z-ab12', 'items': 3, 'added': 1, 'added_sha': 'ab4c73e30598', 'grown': 0}
>>> BaseRecord.from_fields({b"version": b"20240501T000000Z-ab12", b"items": b"3", b"added": b"1",
...                         b"added_sha": b"ab4c73e30598", b"grown": b"0"}) == rec
True
>>> print(rec.describe())
20240501T000000Z-ab12 with 3 items (1 added to the version's own, ids ab4c73e30598; all at the start)
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving_cache.keys import added_key, base_key, partitions_key

__all__ = ["AddedIds", "BaseRecord", "BaseRecordError", "base_difference", "read_added",
           "read_base", "record_partitions", "write_base"]

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"(?:[0-9a-f]{12})?")


class BaseRecordError(ValueError):
    """A namespace's base record cannot be read (another writer's key, a damaged value); the
    message says which field."""


@dataclass(frozen=True)
class BaseRecord:
    """The base a namespace's values were learnt on (fields: the module docstring)."""

    version: str
    items: int
    added: int
    added_sha: str
    grown: int = 0
    ids: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """The added ids in row order (:meth:`of`'s; a record read back has none): what
    :func:`write_base` lists in ``diam:{ns}:added``. Not a field of the hash, nor of equality
    (``added_sha`` stands for them)."""

    @classmethod
    def of(cls, version: str, item_ids: Sequence[Any], added: int, grown: int = 0
           ) -> BaseRecord:
        """The record of a base ``version`` whose item table is ``item_ids``, the last
        ``added`` of them appended to the version's own, the last ``grown`` of those while
        the run went on."""
        if not 0 <= grown <= added <= len(item_ids):
            raise ValueError(f"added {added} (grown {grown}) items of a table of {len(item_ids)}")
        ids = tuple(str(x) for x in item_ids[len(item_ids) - added:]) if added else ()
        return cls(str(version), len(item_ids), int(added), _sha(ids), int(grown), ids)

    def fields(self) -> dict[str, str]:
        """The hash's fields, as written."""
        return {"version": self.version, "items": str(self.items), "added": str(self.added),
                "added_sha": self.added_sha, "grown": str(self.grown)}

    def typed(self) -> dict[str, str | int]:
        """The hash's fields with their types (counts as integers): what ``--json`` output
        shows (``diam inspect namespace``, ``diam diff``), not the strings Redis holds."""
        return {"version": self.version, "items": self.items, "added": self.added,
                "added_sha": self.added_sha, "grown": self.grown}

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> BaseRecord:
        """The record of a hash read back (``HGETALL``: bytes or str); fields a later writer
        adds are ignored. Raises :class:`BaseRecordError` naming a missing or malformed one."""
        text = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)):
                (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
                for k, v in raw.items()}
        fields = ("version", "items", "added", "added_sha", "grown")
        if missing := [f for f in fields if f not in text]:
            raise BaseRecordError(f"no field {', '.join(missing)}")
        try:
            items, added, grown = (int(text[f]) for f in ("items", "added", "grown"))
        except ValueError:
            raise BaseRecordError(f"items {text['items']!r}, added {text['added']!r}, grown "
                                  f"{text['grown']!r} are not all integers") from None
        if not 0 <= grown <= added <= items or _SHA_RE.fullmatch(text["added_sha"]) is None \
                or bool(added) != bool(text["added_sha"]):
            raise BaseRecordError(f"items {items}, added {added}, grown {grown}, added_sha "
                                  f"{text['added_sha']!r} do not describe an item table")
        return cls(text["version"], items, added, text["added_sha"], grown)

    def describe(self) -> str:
        """One line for people: the version and the table."""
        if not self.added:
            return f"{self.version} with {self.items} items (none added)"
        grown = (f"; {self.grown} of them after the run's start" if self.grown
                 else "; all at the start")
        return (f"{self.version} with {self.items} items ({self.added} added to the version's "
                f"own, ids {self.added_sha}{grown})")


def _sha(ids: Sequence[str]) -> str:
    """``added_sha`` of ``ids``: the first 12 hex digits of sha256 over them, each followed by a
    NUL byte; empty for none."""
    if not ids:
        return ""
    h = hashlib.sha256()
    for x in ids:
        h.update(x.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


_LIST = """
local n = tonumber(ARGV[1])
if n > 0 and redis.call('LLEN', KEYS[1]) ~= n then return -1 end
if n == 0 then redis.call('DEL', KEYS[1]) end
for i = 2, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return redis.call('LLEN', KEYS[1])
"""
"""Append ``ARGV[2..]`` to the list ``KEYS[1]`` when it holds ``ARGV[1]`` ids (-1 when it does
not: another writer's); ``ARGV[1]`` 0 starts it over. Chunks of 1,000 stay within Lua's stack."""


def write_base(client: Any, ns: str, record: BaseRecord, listed: BaseRecord | None = None
               ) -> None:
    """Record ``record`` (one made by :meth:`BaseRecord.of`) as the base of namespace ``ns``'s
    values: its added ids in ``diam:{ns}:added`` first, then the hash (one HSET: every field at
    once). ``listed``: the record this writer wrote last, when the list still holds its ids
    (the writer's own previous call): only the ids added since are sent, when ``record`` is on
    the same version and continues its table; else, or when the list is not as ``listed`` left
    it (its length), the list is written whole."""
    if len(record.ids) != record.added:
        raise ValueError(f"the record of {record.version} carries {len(record.ids)} of its "
                         f"{record.added} added ids (a record read back cannot be written)")
    have = 0
    if (listed is not None and listed.version == record.version
            and 0 < len(listed.ids) <= len(record.ids)
            and record.ids[:len(listed.ids)] == listed.ids):
        have = len(listed.ids)
    key = added_key(ns)
    if have == 0 or int(client.eval(_LIST, 1, key, have, *record.ids[have:])) < 0:
        client.eval(_LIST, 1, key, 0, *record.ids)
    client.hset(base_key(ns), mapping=record.fields())


_CLAIM = """
local was = redis.call('HGET', KEYS[1], ARGV[1])
if was and was ~= ARGV[2] then return was end
if not was then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return false
"""
"""Record ``ARGV[2]`` as field ``ARGV[1]`` of ``KEYS[1]`` unless it holds another value,
returned (nil: recorded or already so). One script: two runs starting at once cannot both
record their count."""


def record_partitions(client: Any, ns: str, topic: str, count: int) -> int | None:
    """Record that namespace ``ns``'s values are learnt from ``topic`` of ``count``
    partitions (``diam:{ns}:partitions``, the module docstring); return the count recorded
    earlier when it is another (nothing is written then), else None. Raises
    :class:`BaseRecordError` when the key holds something else; any other error of the
    client's (an outage, READONLY after a failover) as it comes, for the caller to retry."""
    import redis

    try:
        was = client.eval(_CLAIM, 1, partitions_key(ns), topic, str(int(count)))
    except redis.ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        raise BaseRecordError(f"{partitions_key(ns)}: {exc}") from None
    if was is None:
        return None
    text = was.decode("utf-8", "replace") if isinstance(was, bytes) else str(was)
    try:
        return int(text)
    except ValueError:
        raise BaseRecordError(f"{partitions_key(ns)} field {topic!r} is {text!r}, not a "
                              "partition count") from None


def read_added(client: Any, ns: str, record: BaseRecord, start: Sequence[str] = ()
               ) -> tuple[str, ...] | None:
    """The added ids of ``record`` (namespace ``ns``'s, read back), in row order, from
    ``diam:{ns}:added``; None when the list does not hold them (a namespace written by a
    release before the list, another run's list, a key of another type). ``start``: ids read
    earlier for the same version, taken as the list's beginning when the whole hashes to
    ``added_sha`` (only the rest is read); else the list is read whole."""
    import redis

    if not record.added:
        return ()
    key = added_key(ns)
    try:
        if 0 < len(start) < record.added:
            more = client.lrange(key, len(start), record.added - 1)
            ids = (*start, *(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                             for x in more))
            if len(ids) == record.added and _sha(ids) == record.added_sha:
                return ids
        raw = client.lrange(key, 0, record.added - 1)
    except redis.ResponseError:  # WRONGTYPE: a key of another type under the name
        return None
    ids = tuple(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in raw)
    return ids if len(ids) == record.added and _sha(ids) == record.added_sha else None


class AddedIds:
    """The ids behind the stream's seen rows beyond a published table, for a reader of
    namespace ``ns`` (the recommender): :meth:`of` reads the base record (one HGETALL) and,
    when the record changed since the last call, its added ids (only the new ones when the
    list grew). Thread-safe; what it holds is one tuple, swapped whole."""

    def __init__(self, client: Any, ns: str) -> None:
        self.client = client
        self.ns = ns
        self._held: tuple[BaseRecord, tuple[str, ...]] | None = None
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def of(self, version: str, published: int) -> tuple[str, ...] | None:
        """The ids at rows ``published``, ``published + 1``, ... of the table the namespace's
        newest writer learns on, when that table is version ``version``'s published
        ``published`` rows and more; None when the namespace says nothing of it: no record or
        no list (a release before them), a record of another version or another published
        table, a list that does not match the record (logged once per reason). Redis errors
        other than a key of another type propagate."""
        try:
            record = read_base(self.client, self.ns)
        except BaseRecordError as exc:
            self._say(f"base record {base_key(self.ns)} unreadable ({exc})")
            return None
        if record is None or record.version != version \
                or record.items - record.added != published:
            return None
        held = self._held
        if held is not None and held[0] == record:
            return held[1]
        start = held[1] if held is not None and held[0].version == version else ()
        ids = read_added(self.client, self.ns, record, start)
        if ids is None:
            self._say(f"{added_key(self.ns)} does not hold the {record.added} ids of "
                      f"{record.describe()}")
            return None
        self._held = (record, ids)
        return ids

    def _say(self, what: str) -> None:
        with self._lock:
            if what in self._said or len(self._said) > 64:
                return
            self._said.add(what)
        log.warning("namespace %r: %s; the stream's seen items beyond the published table are "
                    "not left out", self.ns, what)


def read_base(client: Any, ns: str) -> BaseRecord | None:
    """The base record of namespace ``ns``, None when it has none (a namespace written by a
    release before the record, or by no dataflow). Raises :class:`BaseRecordError` when the
    key holds something else."""
    import redis

    try:
        raw = client.hgetall(base_key(ns))
    except redis.ResponseError as exc:  # WRONGTYPE: a key of another type under the name
        raise BaseRecordError(str(exc)) from None
    return BaseRecord.from_fields(raw) if raw else None


def base_difference(ns_a: str, a: BaseRecord, ns_b: str, b: BaseRecord) -> str | None:
    """How the bases of ``ns_a`` and ``ns_b`` differ, in words; None when both learnt every
    value on one base (the same record, neither grown after its start).

    >>> replay = BaseRecord("v1", 62, 5, "aaaaaaaaaaaa")
    >>> print(base_difference("live", BaseRecord("v1", 62, 5, "aaaaaaaaaaaa", 3), "replay", replay))
    live took 3 items after its start (62 items now, 59 at its start; replay: 62 from its start)
    >>> print(base_difference("run", BaseRecord("v1", 59, 2, "bbbbbbbbbbbb"), "replay", replay))
    replay took 3 more items than run on base v1 (59 vs 62 items; 2 vs 5 added to the version's own by the catalogue or the click-first rule when each run started)
    >>> print(base_difference("a", replay, "b", BaseRecord("v2", 62, 5, "aaaaaaaaaaaa")))
    a's values come from base v1, b's from v2
    >>> base_difference("a", replay, "b", replay) is None
    True
    """
    if a == b and not a.grown:
        return None
    if a.version != b.version:
        return f"{ns_a}'s values come from base {a.version}, {ns_b}'s from {b.version}"
    if a.grown or b.grown:
        def side(ns: str, r: BaseRecord) -> str:
            return (f"{ns} took {r.grown} items after its start ({r.items} items now, "
                    f"{r.items - r.grown} at its start" if r.grown
                    else f"{ns}: {r.items} from its start")
        if a.grown and b.grown:
            return f"{side(ns_a, a)}); {side(ns_b, b)})"
        grew, other = ((ns_a, a), (ns_b, b)) if a.grown else ((ns_b, b), (ns_a, a))
        return f"{side(*grew)}; {side(*other)})"
    if a.items != b.items:
        (more, m), (less, n) = sorted(((ns_a, a), (ns_b, b)), key=lambda x: -x[1].items)
        return (f"{more} took {m.items - n.items} more items than {less} on base {a.version} "
                f"({a.items} vs {b.items} items; {a.added} vs {b.added} added to the "
                "version's own by the catalogue or the click-first rule when each run started)")
    return (f"{ns_a} and {ns_b} took other items on base {a.version} ({a.items} items each; "
            f"added ids {a.added_sha or 'none'} vs {b.added_sha or 'none'})")
