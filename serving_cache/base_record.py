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

>>> rec = BaseRecord.of("20240501T000000Z-ab12", ["i0", "i1", "new-1"], added=1)
>>> rec.fields()
{'version': '20240501T000000Z-ab12', 'items': '3', 'added': '1', 'added_sha': 'ab4c73e30598', 'grown': '0'}
>>> BaseRecord.from_fields({b"version": b"20240501T000000Z-ab12", b"items": b"3", b"added": b"1",
...                         b"added_sha": b"ab4c73e30598", b"grown": b"0"}) == rec
True
>>> print(rec.describe())
20240501T000000Z-ab12 with 3 items (1 added to the version's own, ids ab4c73e30598; all at the start)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving_cache.keys import base_key

__all__ = ["BaseRecord", "BaseRecordError", "base_difference", "read_base", "write_base"]

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

    @classmethod
    def of(cls, version: str, item_ids: Sequence[Any], added: int, grown: int = 0
           ) -> BaseRecord:
        """The record of a base ``version`` whose item table is ``item_ids``, the last
        ``added`` of them appended to the version's own, the last ``grown`` of those while
        the run went on."""
        if not 0 <= grown <= added <= len(item_ids):
            raise ValueError(f"added {added} (grown {grown}) items of a table of {len(item_ids)}")
        sha = ""
        if added:
            h = hashlib.sha256()
            for x in item_ids[len(item_ids) - added:]:
                h.update(str(x).encode())
                h.update(b"\0")
            sha = h.hexdigest()[:12]
        return cls(str(version), len(item_ids), int(added), sha, int(grown))

    def fields(self) -> dict[str, str]:
        """The hash's fields, as written."""
        return {"version": self.version, "items": str(self.items), "added": str(self.added),
                "added_sha": self.added_sha, "grown": str(self.grown)}

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


def write_base(client: Any, ns: str, record: BaseRecord) -> None:
    """Record ``record`` as the base of namespace ``ns``'s values (one HSET: every field at
    once)."""
    client.hset(base_key(ns), mapping=record.fields())


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
