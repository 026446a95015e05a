"""A training corpus from a range of the clicks topic and the ``diam.items`` catalogue
(``diam train --topic``, the retrain service).

The range is resolved as ``diam replay`` resolves it (:func:`streams.replay.resolve_range`:
record times, offsets or partition:offset pairs). Each record is judged by the dataflow's own
rule (:func:`streams.online.record_judge`: decoding, validation, the key check, tombstones):
what the dataflow would dead-letter is left out and counted here with its first reasons, and a
user's tombstone (``diam forget``) drops the clicks of theirs read before it, as the dataflow
drops their state; their later clicks count again, as a new start. A tombstone at or after the
range's end forgets too: ``diam forget``'s markers (user -> tombstone offset, read from their
durable copy, :func:`streams.forget_markers.read_markers`, of the topic id the name holds now)
drop each user's clicks at offsets below their marker (:func:`streams.online.skip_forgotten`, the
dataflow's own rule), the rule the Redis writer refuses a push
by (``serving_cache.writer``), so a model trained on a range ending before a forget never learnt
the user either. Each user's sequence is the
offset order of their partition (clicks are keyed by user), i.e. the order the online learner
saw. The item
table is the catalogue's, completed with items only the clicks name (category ``unknown``),
in the prepared-dataset order, so the same events and items give the same
:class:`~online_model.corpus.Corpus` as a prepared folder does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from streams.catalog import Catalog
from streams.config import FlowConfig, KafkaConfig
from streams.kafka_io import RawRecord
from streams.online import DeadLetter, Forget, record_judge, skip_forgotten
from streams.replay import ReplayRange

__all__ = ["TopicClicks", "read_range", "read_clicks", "clicks_of", "dataset_of",
           "corpus_from_topic", "forget_floors"]


@dataclass
class TopicClicks:
    """The valid clicks of a range, in offset order per partition, and what was left out."""

    topic: str
    range: ReplayRange
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    records: int = 0
    rejected: int = 0
    """Records the dataflow would dead-letter."""
    reasons: list[str] = field(default_factory=list)
    """The first 20 rejected records' coordinates and reasons."""
    forgets: int = 0
    """Tombstones keyed by a user (``diam forget``): neither clicks nor rejected."""
    forgotten: int = 0
    """Valid clicks left out because a later tombstone of their user forgot them (in the range,
    or after it: ``diam forget``'s markers)."""
    forgotten_users: int = 0
    """Users with at least one click left out as forgotten."""

    def __len__(self) -> int:
        return len(self.ts)


def read_range(cfg: KafkaConfig, rng: ReplayRange, timeout: float = 30.0) -> Iterator[RawRecord]:
    """Every record of ``rng`` (per partition ``[start, end)``), partition by partition.

    Raises ``streams.kafka_io.RangeStalled`` (a TimeoutError) when a partition stops delivering
    before its end offset for ``timeout`` seconds (a broker gone, or records deleted by
    retention under the reader): :func:`streams.kafka_io.read_partition` reads each range."""
    from confluent_kafka import Consumer

    from streams.kafka_io import BOUNDED_READ_CONF, raw_record, read_partition

    conf = dict(cfg.client_config())
    conf.update({"group.id": "diam-train", "enable.auto.commit": "false",
                 "enable.partition.eof": "false", **BOUNDED_READ_CONF})
    c = Consumer(conf)
    try:
        for p in sorted(rng.start):
            lo, hi = rng.start[p], rng.end[p]
            if hi > lo:
                for m in read_partition(c, rng.topic, p, lo, hi, timeout, batch=10_000):
                    yield raw_record(m)
    finally:
        c.close()


def forget_floors(cfg: KafkaConfig, topic: str, timeout: float = 30.0) -> dict[str, int]:
    """``diam forget``'s markers of ``topic`` as the topic holds them now (its Kafka id, so a
    topic deleted and created again is not bound by the old one's): user -> tombstone offset,
    from their durable copy on the compacted markers' topic, which a Redis that lost its data
    does not lose and which every forget writes before the Redis hash. A corpus is not read
    without them: raises ``RuntimeError`` with the refusal's own message when the markers'
    topic is unfit (``streams.forget_markers.MarkersTopicUnfit``, which commands report as a
    read failure), the Kafka client's errors when the broker does not answer."""
    from serving_cache.forgotten import MarkersUnusable
    from streams.forget_markers import read_markers, topic_id

    try:
        return read_markers(cfg, topic, topic_id(cfg, topic, timeout=timeout), timeout=timeout)
    except MarkersUnusable as exc:
        raise RuntimeError(str(exc)) from exc


def read_clicks(cfg: KafkaConfig, rng: ReplayRange, flow: FlowConfig | None = None,
                timeout: float = 30.0) -> TopicClicks:
    """The valid clicks of ``rng``, judged record by record as the dataflow judges them, less
    those of forgotten users (:func:`forget_floors`)."""
    floors = forget_floors(cfg, rng.topic, timeout)
    return clicks_of(read_range(cfg, rng, timeout), rng, flow, floors)


def clicks_of(records: Iterable[RawRecord], rng: ReplayRange,
              flow: FlowConfig | None = None,
              floors: Mapping[str, int] | None = None) -> TopicClicks:
    """The valid clicks among ``records`` (those of ``rng``, in offset order per partition)
    under the dataflow's rule (:func:`streams.online.record_judge`), less the clicks of users
    forgotten by a later tombstone: one in the range, or a marker in ``floors`` (user ->
    tombstone offset, :func:`forget_floors`) above the click's offset.

    >>> from streams.replay import ReplayRange
    >>> from streams.events import ClickEvent, encode_event
    >>> recs = [RawRecord("t", 0, o, u.encode(), encode_event(ClickEvent(u, "i1", 10**12 + o)), 0)
    ...         for o, u in enumerate(["u1", "u2", "u1", "u1"])]
    >>> got = clicks_of(recs, ReplayRange("t", {0: 0}, {0: 4}), floors={"u1": 3, "u9": 1})
    >>> got.users, got.forgotten, got.forgotten_users
    (['u2', 'u1'], 2, 1)
    """
    judge = record_judge(flow or FlowConfig())
    records = iter(records)  # read in batches, as the dataflow judges them
    out = TopicClicks(rng.topic, rng)
    users, items, ts = out.users, out.items, out.ts
    floors = floors or {}
    marked: set[str] = set()
    forgot_at: dict[str, int] = {}  # user -> how many clicks were kept at their last tombstone
    while batch := list(islice(records, 4_096)):
        out.records += len(batch)
        verdicts, rejected, _forgets = judge(batch)
        out.rejected += rejected
        if floors:  # the writer refuses a push learnt below the marker; the dataflow skips it
            verdicts, skipped = skip_forgotten(verdicts, floors)
            out.forgotten += len(skipped)
            marked.update(skipped)
        for v in verdicts:
            if isinstance(v, DeadLetter):
                if len(out.reasons) < 20:
                    rec = v.record
                    out.reasons.append(f"{rec.topic}[{rec.partition}]@{rec.offset}: {v.reason}")
                continue
            user, what = v
            if isinstance(what, Forget):
                out.forgets += 1
                forgot_at[user] = len(ts)
                continue
            click = what.click
            users.append(user)
            items.append(click[1])
            ts.append(click[2])
    if forgot_at:
        keep = [i for i, u in enumerate(users) if i >= forgot_at.get(u, 0)]
        marked.update(users[i] for i in range(len(users)) if i < forgot_at.get(users[i], 0))
        out.forgotten += len(users) - len(keep)
        out.users = [users[i] for i in keep]
        out.items = [items[i] for i in keep]
        out.ts = [ts[i] for i in keep]
    out.forgotten_users = len(marked)
    return out


def dataset_of(clicks: TopicClicks, catalog: Catalog, name: str):  # -> PreparedDataset
    """The clicks and the catalogue as an in-memory prepared dataset."""
    from online_model.datasets import dataset_from_events

    return dataset_from_events(name, np.asarray(clicks.users, dtype=str),
                               np.asarray(clicks.items, dtype=str),
                               np.asarray(clicks.ts, dtype=np.int64), catalog.item_rows())


def corpus_from_topic(clicks: TopicClicks, catalog: Catalog, name: str | None = None,
                      items_topic: str | None = None):
    """The :class:`~online_model.corpus.Corpus` of ``clicks`` over ``catalog``'s items; its
    ``info`` records the topic and the offset range it was read from, and ``items_topic``, the
    catalogue topic, when given (``diam evaluate`` reads the same range and catalogue again)."""
    from online_model.corpus import corpus_from_prepared

    titles = {k: v.title for k, v in catalog.items.items()}  # the checkpoint keeps them
    corpus = corpus_from_prepared(dataset_of(clicks, catalog, name or clicks.topic), titles)
    if items_topic is not None:
        corpus.info["items_topic"] = items_topic
    corpus.info.update({"topic": clicks.topic,
                        "start": {str(p): o for p, o in clicks.range.start.items()},
                        "end": {str(p): o for p, o in clicks.range.end.items()},
                        "records": clicks.records, "rejected": clicks.rejected,
                        "forgets": clicks.forgets, "forgotten": clicks.forgotten,
                        "forgotten_users": clicks.forgotten_users,
                        "catalog_items": len(catalog)})
    return corpus
