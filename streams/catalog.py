"""The item catalogue contract: topic ``diam.items`` (compacted, key = item id).

Each record says what is known of one item; compaction keeps the newest record per key, so the
topic read from its start is the current catalogue. Value: a msgpack map (JSON accepted too)

- ``item_id``    str (1–128 printable chars, no whitespace: the clicks' rule), equal to the record key;
- ``categories`` list of str, the primary category first (may be empty: ``unknown``);
- ``title``      str (may be empty);
  titles and categories hold printable characters and spaces only (no control character, line
  or paragraph separator, or direction override: ``streams.events.unprintable``);
- ``first_seen`` int epoch milliseconds, when the item first appeared (its first click, or
  when the feed added it).

A null value (tombstone) removes the item. A record that breaks the contract is not an item:
:func:`read_catalog` counts it with its reason (``Catalog.rejected``) and goes on, and both
readers hand it, with its reason, to their :class:`Refusals`: by default a
:class:`RefusalLog` (a warning per record, the first 20, then a count: ``diam serve``, whose
servers all read the topic, would dead-letter a copy each); ``diam run`` passes
:class:`CatalogDeadLetters`, which sends each to the dead-letter topic once.

>>> it = CatalogItem("242", ("Comedy", "Drama"), "Kolya (1996)", 880_000_000_000)
>>> decode_item(b"242", encode_item(it)) == it
True
>>> decode_item(b"242", None) is None  # a tombstone
True
>>> decode_item(b"243", encode_item(it)).reason
"key: record key b'243' differs from item_id '242'"
>>> decode_item(b"9", b'{"item_id": "9", "categories": "Drama", "title": "", "first_seen": 1}').reason
'categories: expected a list of strings (got str)'
>>> decode_item(b"9", encode_item(CatalogItem("9", (), "Scream\\n  2. x", 1))).reason
"title: contains '\\\\n' (U+000A; printable characters)"
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from streams.config import KafkaConfig
from streams.events import Rejection, unprintable, validate_item_id

if TYPE_CHECKING:
    from online_model.datasets import ItemRows, PreparedDataset
    from streams.kafka_io import RawRecord
    from streams.producer import ProduceReport

__all__ = [
    "CatalogItem",
    "Catalog",
    "encode_item",
    "decode_item",
    "ensure_catalog_topic",
    "publish_items",
    "items_of_dataset",
    "read_catalog",
    "CatalogFollower",
    "Refusals",
    "RefusalLog",
    "CatalogDeadLetters",
]

log = logging.getLogger(__name__)

_MAX_TITLE = 1024
_MAX_CATEGORIES = 32
_MAX_BYTES = 16_384
_FIELDS = frozenset({"item_id", "categories", "title", "first_seen"})
#: what a compacted catalogue topic is created with: keep the newest record per item forever
COMPACTED = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}


@dataclass(frozen=True)
class CatalogItem:
    """One item of the catalogue."""

    item_id: str
    categories: tuple[str, ...]
    title: str
    first_seen: int


def encode_item(item: CatalogItem) -> bytes:
    """The msgpack map of the contract."""
    return msgpack.packb({"item_id": item.item_id, "categories": list(item.categories),
                          "title": item.title, "first_seen": int(item.first_seen)},
                         use_bin_type=True)


def _parse(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated types on garbage
        pass
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Rejection("undecodable: neither msgpack nor JSON")


def decode_item(key: bytes | None, raw: bytes | None) -> CatalogItem | Rejection | None:
    """One catalogue record: the item, None for a tombstone, or why it breaks the contract."""
    if raw is None:
        return None
    if len(raw) > _MAX_BYTES:
        return Rejection(f"payload: {len(raw)} bytes exceeds the limit of {_MAX_BYTES}")
    obj = _parse(raw)
    if isinstance(obj, Rejection):
        return obj
    if not isinstance(obj, dict):
        return Rejection(f"payload: expected a map (got {type(obj).__name__})")
    unknown = sorted(str(k) for k in obj if k not in _FIELDS)
    if unknown:
        return Rejection(f"payload: unknown field(s) {' '.join(unknown)}")
    item_id = obj.get("item_id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str):
        return Rejection(f"item_id: expected a string or integer but got {type(item_id).__name__}")
    why = validate_item_id(item_id)  # the clicks' rule: an item clicked can be published
    if why:
        return Rejection(why)
    if key is not None and key != item_id.encode():
        return Rejection(f"key: record key {key[:64]!r} differs from item_id {item_id!r}")
    cats = obj.get("categories", [])
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        return Rejection(f"categories: expected a list of strings (got {type(cats).__name__})")
    if len(cats) > _MAX_CATEGORIES:
        return Rejection(f"categories: {len(cats)} entries (at most {_MAX_CATEGORIES})")
    title = obj.get("title", "")
    if not isinstance(title, str) or len(title) > _MAX_TITLE:
        return Rejection(f"title: expected a string of at most {_MAX_TITLE} characters")
    # titles and categories reach every list that shows the item: a line break or a terminal
    # escape there forged rows of `diam recommend`'s output (the item ids' rule, spaces allowed)
    for name, text in (("title", title), *(("categories", c) for c in cats)):
        if (bad := unprintable(text, spaces=True)) is not None:
            return Rejection(f"{name}: contains {bad!r} (U+{ord(bad):04X}; printable characters)")
    first = obj.get("first_seen")
    if not isinstance(first, int) or isinstance(first, bool) or first < 0:
        return Rejection("first_seen: expected an integer epoch-millisecond time (not negative)")
    return CatalogItem(item_id, tuple(cats), title, first)


@dataclass
class Catalog:
    """The catalogue as read from the topic: newest record per item, tombstones applied."""

    items: dict[str, CatalogItem] = field(default_factory=dict)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    records: int = 0

    def __len__(self) -> int:
        return len(self.items)

    def item_rows(self) -> ItemRows:
        """The catalogue as the prepared-dataset writer takes it (any order)."""
        from online_model.datasets import ItemRows

        ids = sorted(self.items)
        return ItemRows(ids=ids, titles=[self.items[i].title for i in ids],
                        categories=[list(self.items[i].categories) for i in ids])


def ensure_catalog_topic(cfg: KafkaConfig, topic: str, partitions: int | None = None,
                         timeout: float = 30.0) -> None:
    """Create ``topic`` compacted when missing (an existing topic is left as it is)."""
    from streams.kafka_io import ensure_topic

    ensure_topic(cfg, topic, partitions, timeout, config=COMPACTED)


def publish_items(cfg: KafkaConfig, topic: str, items: Iterable[CatalogItem]) -> ProduceReport:
    """Produce catalogue records (created compacted when missing); the report counts failures."""
    from streams.producer import produce_raw

    ensure_catalog_topic(cfg, topic)
    return produce_raw(cfg, topic, ((it.item_id.encode(), encode_item(it)) for it in items))


def items_of_dataset(ds: PreparedDataset, titles: dict[str, str] | None = None) -> list[CatalogItem]:
    """A prepared dataset's item table as catalogue items; ``first_seen`` is the item's first
    click in the dataset (items never clicked: the dataset's first event time)."""
    import numpy as np

    ids = np.asarray(ds.items.ids).astype(str)
    rows = np.asarray(ds.item_index) if ds.item_index is not None else None
    ts = np.asarray(ds.ts_ms, dtype=np.int64)
    default = int(ts.min()) if ts.size else 0
    first = np.full(len(ids), np.iinfo(np.int64).max, dtype=np.int64)
    if rows is not None and ts.size:
        np.minimum.at(first, rows, ts)
    first[first == np.iinfo(np.int64).max] = default
    names = ds.items.category_names
    titles = titles or {}
    return [CatalogItem(i, tuple(names[c] for c in ds.items.categories[k]), titles.get(i, ""),
                        int(first[k])) for k, i in enumerate(ids.tolist())]


class Refusals(Protocol):
    """What a catalogue reader does with a record that breaks the contract: :meth:`refuse` is
    told each (the record and why; the same record read again, by a follower's first poll after
    :func:`read_catalog`, is told again), :meth:`done` after each read or poll."""

    def refuse(self, rec: RawRecord, reason: str) -> None: ...

    def done(self) -> None: ...


class RefusalLog:
    """Refusals as warnings: one line per record (its coordinates and reason) for the first
    ``cap`` records, then, at the end of each read that refused more, one line counting them.
    A record read again is not told twice. ``count``: the records refused."""

    def __init__(self, cap: int = 20, what: str = "refused") -> None:
        self.cap, self.what = cap, what
        self.count = 0
        self._seen: set[tuple[str, int, int]] = set()
        self._counted = 0
        self._lock = threading.Lock()

    def note(self, rec: RawRecord, reason: str) -> bool:
        """Count ``rec`` and log it while under the cap; False when it was told before."""
        with self._lock:
            where = (rec.topic, rec.partition, rec.offset)
            if where in self._seen:
                return False
            self._seen.add(where)
            self.count += 1
            if self.count <= self.cap:
                log.warning("catalogue record %s[%d]@%d %s: %s", rec.topic, rec.partition,
                            rec.offset, self.what, reason)
            return True

    def refuse(self, rec: RawRecord, reason: str) -> None:
        self.note(rec, reason)

    def done(self) -> None:
        with self._lock:
            if self.count > self.cap and self.count > self._counted:
                log.warning("%d more catalogue record(s) %s (%d in all; the first %d named above)",
                            self.count - max(self._counted, self.cap), self.what, self.count,
                            self.cap)
                self._counted = self.count


class CatalogDeadLetters:
    """``diam run``'s refusals: each refused catalogue record sent once per run to the
    dead-letter topic (``kafka.deadletter_topic``) in the dataflow's form
    (:func:`streams.online.deadletter_record`: the reason, the source topic, its Kafka id,
    partition and offset, the run's ``namespace``), and logged as :class:`RefusalLog` does. A
    restarted run (or each process of a run split by ``--partitions``) reads the catalogue
    from its start and sends them again: ``diam deadletters`` counts those as copies of one
    record, not as new ones. ``count``: the
    records sent (``diam run``'s summary); ``failed``: those the broker did not take, whose
    errors are logged. :meth:`close` waits for the deliveries."""

    def __init__(self, cfg: KafkaConfig, max_bytes: int, namespace: str | None = None,
                 timeout: float = 30.0) -> None:
        self.cfg, self.max_bytes, self.namespace, self.timeout = cfg, max_bytes, namespace, timeout
        self._log = RefusalLog(what="dead-lettered")
        self._topic_id: str | None = None  # "" when the broker gave none
        self.failed = 0
        self._producer: Any = None

    @property
    def count(self) -> int:
        return self._log.count

    def refuse(self, rec: RawRecord, reason: str) -> None:
        from confluent_kafka import Producer

        from streams.online import deadletter_record  # the one builder of a dead letter

        if not self._log.note(rec, reason):
            return
        if self._topic_id is None:  # once: the items topic's Kafka id, a copy's identity
            self._topic_id = self._id_of(rec.topic)
        out = deadletter_record(rec, reason, self.max_bytes, self.namespace,
                                topic_id=self._topic_id or None)
        if self._producer is None:
            self._producer = Producer({**self.cfg.client_config(), "linger.ms": 5})
        self._producer.produce(self.cfg.deadletter_topic, key=out.key, value=out.value,
                               headers=out.headers, on_delivery=self._delivered)

    def _id_of(self, topic: str) -> str:
        """``topic``'s Kafka id (``streams.forget_markers.topic_id``), "" when the broker gives
        none or does not answer (the dead letter is sent without it: the old identity rule)."""
        from confluent_kafka import KafkaException

        from streams.forget_markers import topic_id
        from streams.kafka_io import UnknownTopic

        try:
            return topic_id(self.cfg, topic, timeout=10.0) or ""
        except (KafkaException, UnknownTopic, TimeoutError) as exc:
            log.warning("the Kafka id of %s is unknown (%s): its refused records' dead letters "
                        "are sent without it", topic, exc)
            return ""

    def _delivered(self, err: object, msg: object) -> None:
        if err:
            self.failed += 1
            log.error("a refused catalogue record's dead letter was not delivered to %s: %s",
                      self.cfg.deadletter_topic, err)

    def done(self) -> None:
        self._log.done()
        if self._producer is not None and (left := self._producer.flush(self.timeout)):
            log.error("%d refused catalogue record(s) not yet delivered to %s after %.0f s",
                      left, self.cfg.deadletter_topic, self.timeout)

    def close(self) -> None:
        self.done()
        self._producer = None


def read_catalog(cfg: KafkaConfig, topic: str, timeout: float = 30.0,
                 refused: Refusals | None = None) -> Catalog:
    """Every record of ``topic`` up to its high watermarks, applied in offset order; each
    record that breaks the contract is counted (``Catalog.rejected``, ``reasons``) and told to
    ``refused`` (none: only counted; :meth:`Refusals.done` at the end)."""
    from streams.kafka_io import UnknownTopic, consume_all, partition_ids

    cat = Catalog()
    try:
        partition_ids(cfg, topic, timeout)
    except RuntimeError as exc:  # a missing topic stays an UnknownTopic (callers tell it apart)
        raise (UnknownTopic if isinstance(exc, UnknownTopic) else RuntimeError)(
            f"{exc} (publish a catalogue with `diam produce --catalog`)") from None
    for rec in consume_all(cfg, topic, timeout):
        cat.records += 1
        got = decode_item(rec.key, rec.value)
        if got is None:
            if rec.key is not None:
                cat.items.pop(rec.key.decode(errors="replace"), None)
        elif isinstance(got, Rejection):
            cat.rejected += 1
            if len(cat.reasons) < 20:
                cat.reasons.append(f"{topic}[{rec.partition}]@{rec.offset}: {got.reason}")
            if refused is not None:
                refused.refuse(rec, got.reason)
        else:
            cat.items[got.item_id] = got
    if refused is not None:
        refused.done()
    return cat


class CatalogFollower:
    """Tails the catalogue topic from its start, without blocking: :meth:`poll` returns the
    items that arrived (or changed) since the last call, the first call the whole catalogue.
    ``items`` keeps the current catalogue. The topic may not exist yet; it is looked for again
    on each poll. Bad records are counted (``rejected``) and told to ``refused`` (by default a
    :class:`RefusalLog`: warnings, capped), after each poll :meth:`Refusals.done`."""

    def __init__(self, cfg: KafkaConfig, topic: str, max_records: int = 10_000,
                 refused: Refusals | None = None) -> None:
        self.cfg, self.topic, self.max_records = cfg, topic, max_records
        self.items: dict[str, CatalogItem] = {}
        self.rejected = 0
        self.refused: Refusals = refused if refused is not None else RefusalLog()
        self._consumer: Any = None

    def _assign(self) -> bool:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from streams.kafka_io import partition_ids

        try:
            parts = partition_ids(self.cfg, self.topic, timeout=5.0)
        except Exception:  # noqa: BLE001 - not created yet, or the broker is away: next poll
            return False
        conf = dict(self.cfg.client_config())
        conf.update({"group.id": "diam-catalog", "enable.auto.commit": "false"})
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        return True

    def poll(self, timeout: float = 0.0) -> list[CatalogItem]:
        """New or changed items since the last poll (tombstones remove from ``items``)."""
        if self._consumer is None and not self._assign():
            return []
        out: dict[str, CatalogItem] = {}
        msgs = self._consumer.consume(self.max_records, timeout)
        while msgs:
            for m in msgs:
                if m.error() is not None:
                    continue
                key = m.key() if isinstance(m.key(), bytes) else None
                got = decode_item(key, m.value())
                if got is None:
                    if key is not None:
                        self.items.pop(key.decode(errors="replace"), None)
                        out.pop(key.decode(errors="replace"), None)
                elif isinstance(got, Rejection):
                    from streams.kafka_io import raw_record

                    self.rejected += 1
                    self.refused.refuse(raw_record(m), got.reason)
                else:
                    self.items[got.item_id] = got
                    out[got.item_id] = got
            msgs = self._consumer.consume(self.max_records, 0.0) if len(msgs) else []
        self.refused.done()
        return list(out.values())

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
