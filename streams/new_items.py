"""New items in a running stream: catalogue items the base does not know get a content embedding
at once and are appended to the base (same version: nobody is re-anchored).

:func:`extend_base` is what the dataflow's hot-reload hook calls (``diam run``): after every
poll of the catalogue (:class:`streams.catalog.CatalogFollower`) and after a new snapshot is
loaded, so catalogue items that a new snapshot does not know yet stay embedded.

Items first seen in clicks follow one rule, :class:`ClickFirst`, in the API
(``Recommender.follow_clicks``) and in the dataflow (:class:`ClickFirstFollower`, polled by the
same hook). Both read the clicks topic from its start, so a restarted API or dataflow gets the
same content-initialised items back: the catalogue topic is compacted and read whole, and the
clicks rule is re-run over the topic's retention.

>>> import numpy as np
>>> from online_model.base import toy_base
>>> from online_model.models.content import ContentTower
>>> from streams.catalog import CatalogItem
>>> base = toy_base(n_items=8, dim=4)
>>> tower = ContentTower(base.category_names, np.ones((len(base.category_names) + 8 + 1, 4)), 8)
>>> b2 = extend_base(base, [CatalogItem("new", ("c1",), "x", 0), CatalogItem("i3", (), "", 0)], tower)
>>> b2.index_of("new"), b2.category_of(8), b2.version == base.version
(8, 1, True)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streams.catalog import CatalogItem

__all__ = ["extend_base", "grow", "load_tower", "ClickFirst", "ClickFirstFollower", "ClickTail"]


def load_tower(snapshot_dir: str | Path) -> Any:
    """The snapshot's content tower, or None when it has none (new items then stay cold)."""
    from online_model.models.content import FILE, ContentTower

    path = Path(snapshot_dir) / FILE
    return ContentTower.load(path) if path.is_file() else None


def extend_base(base: Any, items: Sequence[CatalogItem], tower: Any) -> Any:
    """``base`` with the catalogue ``items`` it does not know appended (content embeddings);
    ``base`` itself when there is nothing to add or no tower."""
    return grow(base, items, tower)[0]


def grow(base: Any, items: Sequence[CatalogItem], tower: Any) -> tuple[Any, list[CatalogItem]]:
    """:func:`extend_base`, and the items it embedded, in order (empty when ``base`` is
    returned): what ``streams.growth_log.GrowthLog`` records, so that ``extend_base`` over them
    rebuilds the same rows with the same embeddings."""
    if tower is None or tower.dim != base.dim:
        return base, []
    new = [it for it in items if base.index_of(it.item_id) < 0]
    if not new:
        return base, []
    emb = tower.embed([list(it.categories) for it in new], [it.title for it in new])
    pos = {c: i for i, c in enumerate(base.category_names)}
    cats = np.array([pos.get(it.categories[0], -1) if it.categories else -1 for it in new],
                    dtype=np.int32)
    return base.with_items([it.item_id for it in new], emb, cats), new


class ClickFirst:
    """The rule for items first seen in clicks, the one both the API and the dataflow run: an
    item that ``known`` does not know (the base or index, the catalogue) becomes a new item with
    no metadata at its ``min_clicks``-th click. The clicks topic read in the same order gives
    the same items in the same order.

    >>> rule = ClickFirst(min_clicks=2)
    >>> known = {"a"}.__contains__
    >>> rule.feed([("a", 1), ("x", 2), ("y", 3)], known)
    []
    >>> [it.item_id for it in rule.feed([("x", 4), ("a", 5), ("x", 6)], known)]
    ['x']
    >>> sorted(rule.added)
    ['x']

    At most ``max_pending`` ids are counted; past it the id first counted longest ago is
    forgotten (``dropped`` counts them), so ids sent once each cannot grow it without bound:

    >>> rule = ClickFirst(min_clicks=2, max_pending=2)
    >>> rule.feed([("p", 1), ("q", 2), ("r", 3)], known), rule.dropped
    ([], 1)
    >>> [it.item_id for it in rule.feed([("q", 4), ("p", 5)], known)]  # p's count started over
    ['q']
    """

    def __init__(self, min_clicks: int, max_pending: int | None = None) -> None:
        if max_pending is None:
            from streams.config import FlowConfig

            max_pending = FlowConfig.model_fields["click_first_max_pending"].default
        assert max_pending is not None
        if min_clicks < 1:
            raise ValueError("min_clicks must be >= 1")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.min_clicks, self.max_pending = min_clicks, max_pending
        self.dropped = 0
        # in the order first counted; an OrderedDict drops its oldest in O(1) (a dict's first
        # key after many deletions from the front is found by a scan)
        self._counts: OrderedDict[str, int] = OrderedDict()
        self.added: dict[str, CatalogItem] = {}
        """Every item the rule made new so far, in that order (a new snapshot that does not
        know them gets them again)."""

    def feed(self, clicks: Iterable[tuple[str, int]],
             known: Callable[[str], bool]) -> list[CatalogItem]:
        """The items that became new with ``clicks`` (``(item_id, ts)``, in topic order)."""
        out: list[CatalogItem] = []
        counts = self._counts
        for item, ts in clicks:
            if item in self.added or known(item):
                continue
            c = counts.get(item, 0) + 1
            if c < self.min_clicks:
                if c == 1 and len(counts) >= self.max_pending:
                    counts.popitem(last=False)
                    self.dropped += 1
                counts[item] = c
                continue
            counts.pop(item, None)
            self.added[item] = it = CatalogItem(item, (), "", int(ts))
            out.append(it)
        return out


CATCH_UP_SLICE_S = 0.01
"""How long one ``consume`` of :class:`ClickTail` waits while the tail is still behind the ends
it started with (a caught-up tail waits out the whole poll timeout for a batch)."""


class ClickTail:
    """The item ids of valid clicks on the clicks topic (no group, no commits: a process's own
    view): valid as the dataflow judges them (``streams.online.record_judge`` with ``flow``,
    default ``FlowConfig()``: keyed by their user, within its size and time bounds), so that
    a click the dataflow dead-letters creates no item either; from the topic's start
    (``from_beginning``, the default: what a restarted process needs to re-run
    :class:`ClickFirst`) or from now on. :meth:`poll` never blocks longer than
    asked; the first :attr:`replayed` clicks a poll returns were on the topic before the tail
    started (a live count, e.g. popularity, skips those)."""

    def __init__(self, cfg: Any, topic: str, max_records: int = 20_000,
                 from_beginning: bool = True, flow: Any = None) -> None:
        from streams.config import FlowConfig
        from streams.online import record_judge

        self.cfg, self.topic, self.max_records = cfg, topic, max_records
        self.flow = flow if flow is not None else FlowConfig()
        self._judge = record_judge(self.flow)
        self.from_beginning = from_beginning
        self.replayed = 0
        self.caught_up = False
        """True once the clicks that were on the topic at the first poll have all been
        returned (at once when reading from now on, or when there is no topic yet)."""
        self._consumer: Any = None
        self._behind: dict[int, int] = {}  # partition -> end offset at start, until reached

    def _assign(self) -> bool:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        from streams.kafka_io import watermarks

        try:
            marks = watermarks(self.cfg, self.topic)
        except Exception:  # noqa: BLE001 - no topic yet, or the broker is away: next poll
            return False
        conf = dict(self.cfg.client_config())
        # a partition's end is seen by its end-of-partition event, not by a record at the end
        # offset minus one: a transaction's commit marker, or records compacted or deleted
        # away, leave that offset without a record to deliver (and the catch-up waited out
        # its whole limit, ``FlowConfig.click_first_catch_up_s``)
        conf.update({"group.id": "diam-click-tail", "enable.auto.commit": "false",
                     "enable.partition.eof": "true"})
        if self.from_beginning:
            # each partition's start offset as read, not OFFSET_BEGINNING: librdkafka resolves
            # that with a request of its own and fetched the first records half a second later;
            # an offset retention deleted meanwhile restarts at the oldest record still there,
            # as OFFSET_BEGINNING would
            conf["auto.offset.reset"] = "earliest"
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(self.topic, p, lo if self.from_beginning else OFFSET_END)
                               for p, (lo, _) in marks.items()])
        self._behind = ({p: hi for p, (lo, hi) in marks.items() if hi > lo}
                        if self.from_beginning else {})
        return True

    def poll(self, timeout: float = 0.0) -> list[tuple[str, int]]:
        """``(item_id, ts)`` of the valid clicks since the last poll, in each partition's
        order; the replayed ones first."""
        from confluent_kafka import KafkaError

        from streams.kafka_io import raw_record, read_to_ends
        from streams.online import Learn

        judge = self._judge

        self.replayed = 0
        if self._consumer is None and not self._assign():
            self.caught_up = True  # no topic (or no broker) yet: no history to wait for
            return []
        old: list[tuple[str, int]] = []
        out: list[tuple[str, int]] = []
        behind = self._behind
        deadline = time.monotonic() + timeout
        while True:
            # while behind, in short slices: consume() returns only when it has all it asked
            # for or at its timeout, and the catch-up must end as soon as the ends are read
            catching = bool(behind)
            left = max(0.0, deadline - time.monotonic())
            msgs = self._consumer.consume(self.max_records - len(old) - len(out),
                                          min(left, CATCH_UP_SLICE_S) if catching else left)
            # judged a consumed batch at a time (one verdict per record, in order)
            verdicts = iter(judge([raw_record(m) for m in msgs if m.error() is None])[0])
            for m in msgs:
                err, part = m.error(), m.partition()
                if err is None:
                    v = next(verdicts)
                    past = m.offset() < behind.get(part, 0)
                    if type(v) is tuple and type(v[1]) is Learn:
                        ev = v[1].click
                        (old if past else out).append((ev[1], ev[2]))
                    if past and m.offset() + 1 >= behind[part]:
                        del behind[part]
                elif (err.code() == KafkaError._PARTITION_EOF and part in behind
                      and m.offset() >= behind[part]):
                    del behind[part]  # the end, past offsets without a record
            if catching and behind:  # the position passes a marker at once, before the EOF
                for p in read_to_ends(self._consumer, self.topic, behind):
                    del behind[p]
            if (not catching or not behind or time.monotonic() >= deadline
                    or len(old) + len(out) >= self.max_records):
                break
        self.replayed = len(old)
        self.caught_up = not behind
        return old + out if old else out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class ClickFirstFollower:
    """The dataflow's side of :class:`ClickFirst`: a daemon thread tails the whole clicks topic
    (every partition, from its start, whatever partitions this process learns from, so every
    process and every restart finds the same items) and runs the rule; the hot-reload hook
    takes what became new (:meth:`take`) without waiting on Kafka in the dataflow's thread.
    ``known(item_id)`` is asked from the thread (the hook's current base and catalogue).
    :meth:`close` stops the thread; the tail's Kafka consumer is closed by the thread as it
    ends (never under a poll in progress)."""

    def __init__(self, cfg: Any, topic: str, min_clicks: int, known: Callable[[str], bool],
                 every_s: float = 0.2, max_pending: int | None = None, flow: Any = None) -> None:
        self.rule = ClickFirst(min_clicks, max_pending)
        self.tail = ClickTail(cfg, topic, flow=flow)
        self._known = known
        self._ready: list[CatalogItem] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._every_s = every_s
        self.caught_up = False
        self._thread = threading.Thread(target=self._run, name="click-first", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import logging

        try:
            while not self._stop.is_set():
                try:
                    clicks = self.tail.poll(timeout=self._every_s)
                    with self._lock:  # the rule has run over what caught_up covers
                        self._ready.extend(self.rule.feed(clicks, self._known))
                        self.caught_up = self.tail.caught_up
                except Exception as exc:  # noqa: BLE001 - the tail retries by itself next round
                    logging.getLogger(__name__).warning("click tail poll failed: %s", exc)
                    self._stop.wait(self._every_s)
        finally:  # the thread owns the consumer: closed here, after its last poll
            self.tail.close()

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until the tail read what was on the topic when it started (and the rule ran
        over it); False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def take(self) -> list[CatalogItem]:
        """The items that became new since the last call."""
        with self._lock:
            out, self._ready = self._ready, []
        return out

    def items(self) -> list[CatalogItem]:
        """Every item the rule made new so far (for a newly loaded snapshot)."""
        with self._lock:
            return list(self.rule.added.values())

    def close(self, timeout_s: float = 30.0) -> bool:
        """Stop the thread and wait for it (its consumer closed as it ends); False, with a
        warning, when it has not ended within ``timeout_s`` (a poll or a metadata request
        waiting on a broker that does not answer: it ends, and closes the consumer, when that
        returns). Idempotent."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            import logging

            logging.getLogger(__name__).warning(
                "the click-first reader of %r did not stop within %.0f s; it stops after its "
                "current Kafka request", self.tail.topic, timeout_s)
            return False
        return True
