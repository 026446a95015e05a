"""Bytewax sink writing user vectors to Redis through the write-if-newer writer.

Writes run on a background thread per sink partition, so the dataflow computes the next batch
while Redis executes the previous one (a pipelined write of a few hundred users waits on the
server; on the dataflow's own thread that wait was a large share of a tailing run's time).
Batches queued while a write is in flight are merged, newest value per user, into one write.

Nothing is lost by not waiting:

- the queue is bounded, so a slow or absent Redis stalls the dataflow (backpressure) instead
  of growing memory; an outage is retried with backoff and never drops a batch. It is logged
  once when it starts and once when it ends, with its duration. A server that answers but
  refuses writes for a while (a replica after a failover: READONLY; ``maxmemory`` reached:
  OOM; a failed background save: MISCONF; a cluster resharding: TRYAGAIN, CLUSTERDOWN) is
  waited out the same way (:func:`_retried`);
- a batch in which a user leaves the dataflow's state returns only once Redis has executed
  it: a forgotten user's delete (the tombstone is not read again once its epoch is committed,
  and the resumed run knows nothing of the user, so a delete still queued at a crash would be
  lost) and an evicted user's last push (:data:`RELEASED` follows it; the user is gone from
  the recovery snapshot, so nothing would push them again). Only those batches wait: a sink
  that drained its queue at every epoch end would need Bytewax's stateful sink, whose
  partitions are routed by key across workers (every push would cross to another worker);
- ``close`` (end of a bounded run, shutdown) drains the queue; an error on the writer thread
  that is not waited out (:func:`_retried`: a missing ACL permission, a key of another type)
  ends the run's input at its next batch (``_Partition.stop``), and the run then raises
  :class:`RedisWriteFailed`, one line (in a Bytewax cluster, raised in the dataflow at the
  next batch);
- after a crash, writes still queued are gone, but every user in a recovery snapshot is
  marked for a push when resumed (``streams.online``), so the resumed run re-writes them.
  Write-if-newer makes the repeats harmless, and the writer's forget check (``topic``) refuses
  the push of a user forgotten since the snapshot (``diam forget`` deleted their key and
  recorded their tombstone's offset; the resumed state was learnt before it).

Nothing is lost when *Redis* loses data either (a restart without persistence, a FLUSHALL, an
AOF that lost its last second), for every user still in the dataflow's state (evicted users
are let go, below). Each partition keeps the newest value it wrote per such user and re-pushes
all of them when

- the namespace's generation marker (``diam:{ns}:gen``, a random token) is gone or changed:
  the key set was lost, or another worker already found it lost and re-created the marker;
- the connection to Redis broke (``serving_cache.outage.unreachable``; not a refusal such as
  OOM or READONLY, which answered and lost nothing): the server may have restarted, and with
  ``appendfsync everysec`` it may have lost up to a second of acknowledged writes that no
  marker reveals;
- on a Redis Cluster, where a primary can lose its data alone and redis-py's cluster client
  reconnects to a restarted node without an error: the marker of one primary
  (``diam:{ns}:gen:{<tag>}``, a hash tag in a slot that primary owns; ``_markers``) is gone or
  changed, or a primary's run id changed or it is no longer a primary (a restart, a failover
  to a replica that may have lagged; ``_lost``).

Before the re-push, when the key set was lost, ``diam forget``'s markers of the topic are
restored into Redis from their durable copy on Kafka (``streams.forget_markers
.restore_markers``; the sink is given the Kafka settings: ``markers_from``): the loss took
their hash too, and without it the re-push of a dataflow still behind a tombstone would write
the forgotten user back (and any later replay). Until they are restored (the broker does not
answer), nothing is written: the writer waits and retries as in an outage (said as a wait on
Kafka, not on Redis). A broken connection alone (no marker changed, no primary restarted)
re-pushes but reads no markers.

The loss is not left to the next check: the writer's forget check fails closed
(``RedisWriter``'s ``markers_required``; the command's start made the markers' hash exist,
``serving_cache.keys.FORGOTTEN_HELD``), so a write that finds the hash gone writes nothing and
the partition checks at once, restores the markers and re-pushes (``MarkersMissing``); a
push the re-push refuses has its key, if any, deleted in the same script. The partition's
close (a bounded run's end, a shutdown) checks once more, whenever the last check was.

With the re-push, the namespace's record of the topic's partition count
(``serving_cache.base_record.record_partitions``, ``diam:{ns}:partitions``) is written again
(and at the first check, in case the keys went between the run's start and it): the next
run's or replay's check of the count needs it, and the loss took it too.

The markers are checked at most once per ``check_every_s`` (one GET per marker, and on a
cluster one ``INFO server`` per primary), not per batch.

The re-push is write-if-newer, so users written since are never set back. The cost is memory:
one :class:`UserVectors` per user this worker has pushed and still holds in its state
(K_u×dim float32 plus ~200 bytes); an evicted user is let go (:data:`RELEASED`), so
``FlowConfig.evict_idle_s`` bounds this memory as it bounds the state's. An evicted user's key
is not re-pushed after Redis lost it: it is served as a new user until they click again (a
returning user starts over from the base anyway).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis.cluster import RedisCluster
from redis.crc import key_slot

from serving_cache import RedisConfig, RedisWriter, UserVectors
from serving_cache.base_record import BaseRecord, BaseRecordError, record_partitions, write_base
from serving_cache.config import url_host
from serving_cache.connection import redis_client_waiting
from serving_cache.keys import (
    added_key,
    base_key,
    generation_key,
    model_active_key,
    node_generation_key,
    partitions_key,
    user_key,
)
from serving_cache.outage import REDIS_ERRORS, outage, refusing, unreachable
from serving_cache.writer import MarkersMissing
from streams.config import KafkaConfig

__all__ = ["RELEASED", "RedisVectorSink", "RedisWriteFailed", "Released", "ResumedPush",
           "SinkPending", "resumed_push", "write_failed_line", "write_failed_what"]

log = logging.getLogger(__name__)


class _TopologyRefresh(logging.Filter):
    """redis-py's cluster client logs ``Topology refresh failed`` at ERROR at every retry while
    no node answers (one line a second or so); the sink says the outage once, when it begins
    and when it ends. Shown only where this module logs at DEBUG (``diam -v``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (not record.getMessage().startswith("Topology refresh failed")
                or log.isEnabledFor(logging.DEBUG))


logging.getLogger("redis.cluster").addFilter(_TopologyRefresh())

_STOP = None

STOP_NOTE_S = 10.0
"""How often a stopping run that waits for Redis through an outage says so
(``_Partition.stopping``)."""


class Released:
    """The marker item ``(user_id, RELEASED)``: the user left this worker's state (evicted
    after ``FlowConfig.evict_idle_s`` idle), after their last push if they had one. The sink
    stops holding the user's vectors for re-pushes, and the batch returns once Redis has the
    pushes before it (the epoch that dropped the user commits only after that)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RELEASED"


RELEASED = Released()


class ResumedPush(UserVectors):
    """The vectors of a user resumed from the recovery store, pushed with no click learnt
    since (``streams.online``: every resumed user is pushed again, in case the crash lost a
    write still queued). Written as any :class:`UserVectors`, byte for byte; Redis mostly
    holds them already (a clean stop, or a crash after the write), and such a push that it
    kept out as not newer is counted apart (``resumed_repushes``), not as a stale push."""


def resumed_push(uv: UserVectors) -> ResumedPush:
    """``uv`` as a :class:`ResumedPush` (its fields as they are, not copied)."""
    out = object.__new__(ResumedPush)
    out.__dict__.update(uv.__dict__)
    return out

@dataclass(frozen=True)
class SinkPending:
    """What the Redis sink has still to do beyond the pushes queued (``FlowStats.unwritten``),
    for a stopping run to say (``streams.runner.stopping_note``, ``unwritten_line``).

    ``repush``: the held users a re-push that is due has not written yet (0: none due);
    ``lost``: that re-push is due because Redis lost data (else a broken connection, after
    which it may have); ``restore``: the forget markers are to be restored from Kafka first;
    ``waiting``: what the write waits on now, ``"redis"`` (an outage) or ``"kafka"`` (the
    markers' restore), or None."""

    repush: int = 0
    lost: bool = False
    restore: bool = False
    waiting: str | None = None

    def __add__(self, other: SinkPending) -> SinkPending:
        """Two partitions' together (a wait on Kafka is said first)."""
        waits = {self.waiting, other.waiting}
        return SinkPending(self.repush + other.repush, self.lost or other.lost,
                           self.restore or other.restore,
                           "kafka" if "kafka" in waits else "redis" if "redis" in waits else None)


Item = tuple[str, "UserVectors | None | Released"]
"""What the sink takes, keyed by user: vectors to write, None to delete the user's key, or
:data:`RELEASED`."""


class _Partition(StatelessSinkPartition[Item]):
    observer: Callable[[list[tuple[str, UserVectors]], float], None] | None = None
    """Called on the writer thread after each acknowledged write that sent anything, with the
    pushes of its batch Redis took (:meth:`_acked`: not those it kept out or refused, nor a
    re-push's) and its seconds (``streams.metrics``: Redis write latency and freshness are
    measured where writes happen)."""

    def __init__(self, writer: RedisWriter, max_backoff_s: float, max_queued: int = 32,
                 check_every_s: float = 1.0, where: str = "") -> None:
        self.writer = writer
        self.max_backoff_s = max_backoff_s
        self.check_every_s = check_every_s
        self.where = where
        self.written = 0
        self.repushed = 0
        self.counts: Callable[[], Any] | None = None
        """The writer thread's counters (``FlowStats.counts``), where the pushes Redis did not
        write because it held the user at a newer or equal seq are counted: a resumed user's
        push of the state it was resumed with (:class:`ResumedPush`) as ``resumed_repushes``,
        any other as ``stale_pushes`` (the namespace holds another run's state, or this run
        replays what it wrote already; not a re-push after Redis lost data); and the pushes
        refused as forgotten (``forgotten_pushes``)."""
        self.base: Callable[[], BaseRecord | None] | None = None
        """The dataflow's current base (``LearnerHolder.base_record``): written to the
        namespace's base record (``serving_cache.keys.base_key``) and its list of added ids
        (``serving_cache.keys.added_key``: the ids the table grew by since this partition's
        last record, the whole list at its first and after a re-push) before a write whenever
        it differs from the one this partition wrote last, and again with a re-push; one call
        per write, not per user."""
        self.stop: Callable[[], None] | None = None
        """Called on the writer thread when a write fails with an error that is not waited out
        (``streams.runner``: the run's stop, which ends the input at its next batch; a run
        of one process). With it, the dataflow is not raised into (Bytewax turns an error
        there into a Rust panic): later batches are dropped, except one in which a user leaves
        the state (a forget's delete, an evicted user's last push), which raises, since its
        epoch must not commit without it; the caller says the error (:attr:`error`). Without
        it (a Bytewax cluster, whose processes stop only together), the error is raised at
        the next batch and the cluster's other processes see a lost peer."""
        self.partitions: tuple[str, int] | None = None
        """The clicks topic and its partition count the dataflow's values are learnt from
        (``diam:{ns}:partitions``): recorded at the first marker check and after a loss
        (None: not recorded)."""
        self.stopping: Callable[[SinkPending], str | None] | None = None
        """What to say while a stopping run waits for this partition's write through an outage
        or the markers' restore, given :meth:`pending` (``streams.runner.stopping_note``: the
        pushes not written yet, a re-push and a restore still due, what it waits on and what a
        second signal leaves), or None when the run is not stopping: said at most once per
        :data:`STOP_NOTE_S` (None: never)."""
        self.restore: Callable[[Any], tuple[int, int]] | None = None
        """Restores the forget markers of the dataflow's topic into Redis from their durable
        copy, given the writer's client (``streams.forget_markers.restore_markers``): called
        when the key set was found lost, before anything is written again (None: not done)."""
        self._restore_due = False  # the key set was lost and the markers are not restored yet
        self._repush_due = False  # a loss was found and the re-push has not been written yet
        self._data_lost = False  # the last check found a marker changed or a primary restarted
        self._markers_gone: str | None = None  # the writer found the markers' hash missing
        self._waiting: str | None = None  # what a write waits on now: "redis", "kafka"
        self._recorded: BaseRecord | None = None  # the base record this partition wrote last
        self._held: dict[str, UserVectors] = {}  # newest value written per user
        self._cluster = isinstance(writer.client, RedisCluster)
        self._gens: dict[str, bytes | None] = {}  # each marker's token when last checked
        self._runs: dict[str, str] = {}  # cluster: each primary's run id when last checked
        self._tags: dict[str, tuple[int, str]] = {}  # cluster: marker -> (its slot, its primary)
        self._checked = False  # the markers were checked once (then _gens says what they were)
        self._next_check = 0.0
        self._next_note = 0.0  # when a stopping run waiting out an outage says so again
        self._suspect = False  # the connection broke: Redis may have lost acknowledged writes
        self._had_active = False  # the namespace had an active-model key when first checked
        self._watch_evictions = True  # INFO stats read at each check (False: the ACL refused)
        self._evicted: int | None = None  # evicted_keys at the last check
        self._said_evicted = False
        self._q: queue.Queue[list[Item] | None] = queue.Queue(max_queued)
        self._error: BaseException | None = None
        self.wrong_type: list[str] = []  # with a WRONGTYPE error: the keys of another type
        self._raised = False  # the error was raised in the dataflow once: close() is quiet
        self._thread = threading.Thread(target=self._run, name="diam-redis-writer", daemon=True)
        self._thread.start()

    def write_batch(self, items: list[Item]) -> None:
        leaving = any(uv is None or uv is RELEASED for _, uv in items)
        if self._error is not None and self.stop is not None and not leaving:
            # the input ends at its next batch (``stop``): these pushes are not written, and
            # the users are in the state the run resumes from, which pushes them all again
            return
        self._raise()
        if items:
            self._q.put(list(items))  # blocks while the queue is full: backpressure
            if leaving:
                # a user left the state: their delete or last push must be in Redis before the
                # epoch that dropped them can commit
                self._q.join()
                self._raise()

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join()
        # Bytewax closes the partition also while it unwinds from the error write_batch
        # raised: raising it again there is a panic in a destructor, which aborts the
        # process; with ``stop`` the run ends cleanly and its caller says the error
        if not self._raised and self.stop is None:
            self._raise()

    def pending(self) -> SinkPending:
        """What this partition has still to do after a loss (read from any thread): the held
        users a due re-push has not written, the markers' restore, what its write waits on."""
        gone = self._markers_gone is not None
        restore = self._restore_due or (gone and self.restore is not None)
        due = self._repush_due or gone
        return SinkPending(len(self._held) if due else 0, due and (self._data_lost or gone),
                           restore, self._waiting)

    @property
    def error(self) -> BaseException | None:
        """The Redis error that stopped this partition's writes (not retried: :func:`_retried`),
        or None."""
        return self._error

    def _raise(self) -> None:
        if self._error is not None:
            self._raised = True
            raise RuntimeError(f"writing user vectors to Redis failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            got = 0  # batches taken from the queue, each marked done once written
            try:
                batch = self._q.get(timeout=self.check_every_s)
                got = 1
            except queue.Empty:
                # a quiet stream still notices a lost key set: check and re-push if needed
                batch = []
            stop = batch is _STOP
            items = [] if batch is None else batch
            while not stop:  # merge whatever queued up meanwhile into one write
                try:
                    more = self._q.get_nowait()
                except queue.Empty:
                    break
                got += 1
                if more is _STOP:
                    stop = True
                else:
                    items.extend(more)
            if stop:
                # the run's end (a bounded run's last batch, a shutdown): check for a loss once
                # more, whenever the last check was, so that one since is re-pushed and the
                # markers restored before the run says it is done
                self._next_check = 0.0
            if (items or self._held) and self._error is None:
                try:
                    t0 = time.perf_counter()
                    acked = self._write(items)  # type: ignore[arg-type]
                    if self.observer is not None and acked is not None:
                        self.observer(acked, time.perf_counter() - t0)
                except BaseException as exc:  # surfaced on the dataflow thread
                    self._error = exc
                    self.wrong_type = self._wrong_type(exc, items)  # type: ignore[arg-type]
                    if self.stop is not None:
                        self.stop()
                    # told now: the dataflow raises it at its next batch, which a quiet
                    # stream may not bring for a while
                    log.error("Redis%s namespace %r: writing user vectors failed: %s: %s; the "
                              "run stops at its next batch", self.where, self.writer.ns,
                              type(exc).__name__, exc)
            for _ in range(got):  # written, or failed with the error set: write_batch may go on
                self._q.task_done()
            if stop:
                return

    def _wrong_type(self, exc: BaseException, items: list[Item]) -> list[str]:
        """For a WRONGTYPE error (which names no key): the keys the failed write touches that
        hold another Redis type than the one it writes (a user's string, the base record's
        hash, its list of added ids, the forget markers' hash), the first three in that order;
        best effort (``[]`` when Redis does not answer). Every key's TYPE in one pipeline, not
        transactional (a cluster's spans slots): one round trip for up to a thousand keys."""
        if "WRONGTYPE" not in str(exc):
            return []
        ns, client = self.writer.ns, self.writer.client
        want = {user_key(ns, u): "string" for u, _ in items[:1000]}
        want.update({key: "string" for key in self._gens})
        want.update({base_key(ns): "hash", added_key(ns): "list", partitions_key(ns): "hash"})
        if self.writer.forgotten is not None:
            want[self.writer.forgotten] = "hash"
        try:
            pipe = client.pipeline(transaction=False)
            for key in want:
                pipe.type(key)
            types = pipe.execute(raise_on_error=False)
        except REDIS_ERRORS:
            return []
        found: list[str] = []
        for (key, kind), got in zip(want.items(), types, strict=True):
            if isinstance(got, Exception):
                continue  # that key unknown, the others still said
            got = got.decode() if isinstance(got, bytes) else str(got)
            if got not in ("none", kind):
                found.append(f"{key} holds a {got}, not a {kind}")
                if len(found) >= 3:
                    break
        return found

    def _markers(self) -> list[str]:
        """The generation markers to check: the namespace's (:func:`generation_key`) and, on a
        Redis Cluster, one on each primary (:func:`node_generation_key` with the smallest
        number whose slot the primary owns in the client's slot map), since a primary can lose
        its data alone. The choice is kept while the slot map gives every marker's slot to
        the same primary and the primaries are the same (a check of one slot per primary);
        chosen anew otherwise, the same way by every worker."""
        ns = self.writer.ns
        if not self._cluster:
            return [generation_key(ns)]
        client: Any = self.writer.client
        manager = client.nodes_manager
        primaries = {n.name for n in client.get_primaries()}

        def owner(slot: int) -> str | None:
            try:
                return str(manager.get_node_from_slot(slot).name)
            except redis.exceptions.RedisClusterException:  # a slot no node serves now
                return None

        if ({name for _, name in self._tags.values()} != primaries
                or any(owner(slot) != name for slot, name in self._tags.values())):
            serving = {str(nodes[0].name) for nodes in manager.slots_cache.values() if nodes}
            todo = primaries & serving  # a primary without slots holds no key of ours
            self._tags = {}
            i = 0
            while todo and i < 1 << 20:
                slot = key_slot(str(i).encode())
                name = owner(slot)
                if name is not None and name in todo:
                    todo.discard(name)
                    self._tags[node_generation_key(ns, str(i))] = (slot, name)
                i += 1
        return [generation_key(ns), *self._tags]

    def _lost(self) -> str | None:
        """Why this partition must re-push everything it holds (None: it need not); keeps the
        markers set. On a cluster also each primary's run id (``INFO server``): a primary
        restarted or replaced by a replica (a failover) may have lost acknowledged writes that
        no marker reveals, as a broken connection on a single Redis may, and redis-py's cluster
        client reconnects to it without an error reaching the sink."""
        client, ns = self.writer.client, self.writer.ns
        gens: dict[str, bytes | None] = {}
        changed: list[str] = []
        for key in self._markers():
            cur = client.get(key)
            if cur is None:
                client.set(key, uuid.uuid4().hex.encode(), nx=True)  # first finder wins
                cur = client.get(key)
            assert cur is None or isinstance(cur, bytes)
            gens[key] = cur
            if key in self._gens and (cur is None or cur != self._gens[key]):
                changed.append(key)  # a marker first chosen now (a resharding) is no loss
        runs: dict[str, str] = {}
        evicted: int | None = None  # keys Redis evicted so far (INFO stats), all primaries
        if self._cluster:
            cluster: Any = client
            evicted = 0
            for node in cluster.get_primaries():
                info = cluster.get_redis_connection(node).info("server", "stats")
                runs[str(node.name)] = str(info.get("run_id", ""))
                evicted += int(info.get("evicted_keys", 0))
        elif self._watch_evictions:
            try:
                evicted = int(client.info("stats").get("evicted_keys", 0))
            except redis.exceptions.NoPermissionError:  # REDIS_COMMANDS lack INFO: not watched
                self._watch_evictions = False
        self._note_evictions(evicted)
        moved = sorted(n for n, run in self._runs.items() if runs.get(n) != run)
        self._gens, self._runs = gens, runs
        # Redis lost data (the forget markers with it: restored before the re-push), not only
        # a connection (a blip; a single server's restart with everysec may lose a second of
        # writes, a marker's among them, which the next command start restores)
        self._data_lost = self._checked and bool(changed or moved)
        if not self._checked:
            self._checked = True
            self._had_active = bool(client.exists(model_active_key(ns)))
            return None
        if changed:
            return (f"its generation marker{'s' if len(changed) > 1 else ''} "
                    f"{', '.join(changed)} {'were' if len(changed) > 1 else 'was'} missing or "
                    "replaced (the key set was lost)")
        if moved:
            return (f"the cluster primar{'ies' if len(moved) > 1 else 'y'} {', '.join(moved)} "
                    "restarted or gave way to another node (a failover): acknowledged writes "
                    "may be lost")
        if self._suspect:
            return ("the connection broke (a restarted server may have lost its newest "
                    "writes)")
        return None

    def _note_evictions(self, evicted: int | None) -> None:
        """Say once, the first time it grows between two checks, that Redis evicted keys
        (``INFO stats`` evicted_keys; ``evicted``: None where not read): its
        ``maxmemory-policy`` deletes keys when memory is full (``streams.preflight.evicting``
        warned at the start), user vectors among them, without an error. Not re-pushed: into
        a full Redis a re-push evicts others."""
        last, self._evicted = self._evicted, evicted
        if evicted is None or last is None or evicted <= last or self._said_evicted:
            return
        self._said_evicted = True
        log.warning("Redis%s namespace %r: Redis evicted %d key(s) since the last check (its "
                    "maxmemory-policy deletes keys when memory is full): this namespace's user "
                    "vectors may be among them, and are not re-pushed (into a full Redis they "
                    "would evict others); set maxmemory-policy noeviction (a full Redis then "
                    "refuses writes and the run waits). Said once", self.where, self.writer.ns,
                    evicted - last)

    def _restore_markers(self) -> None:
        """Restore the forget markers (:attr:`restore`) after a loss; a failure of the broker
        is :class:`MarkersNotRestored` (waited out: ``_write`` retries, and the re-push with
        it), Redis's errors and a refusal (``MarkersUnusable``) are raised as they are."""
        from serving_cache.forgotten import MarkersUnusable

        assert self.restore is not None
        try:
            restored, recorded = self.restore(self.writer.client)
        except REDIS_ERRORS + (MarkersUnusable,):
            raise
        except Exception as exc:  # the broker: KafkaException, RangeStalled, RuntimeError
            # the next try restores again (_restore_due stays set), then re-pushes
            # (_repush_due): Redis is not suspect, Kafka is
            raise MarkersNotRestored(f"{type(exc).__name__}: {exc}") from exc
        self._restore_due = False
        if restored or recorded:
            log.warning("Redis%s namespace %r: restored %d forget marker(s) from their durable "
                        "copy on Kafka before pushing again (%d written to it)", self.where,
                        self.writer.ns, restored, recorded)

    def _record_partitions(self) -> None:
        """Record :attr:`partitions` in the namespace (the one owner's function); another count
        recorded there, or a key of another type, is logged (the run goes on: its own values
        are learnt from its count, and the next run's or replay's start check refuses)."""
        if self.partitions is None:
            return
        topic, count = self.partitions
        try:
            was = record_partitions(self.writer.client, self.writer.ns, topic, count)
        except BaseRecordError as exc:
            log.warning("Redis%s namespace %r: the partition count of topic %r was not recorded "
                        "(%s)", self.where, self.writer.ns, topic, exc)
            return
        if was is not None:
            log.warning("Redis%s namespace %r: it records topic %r with %d partitions, and this "
                        "run reads %d; kept (another run wrote it since the key set was lost)",
                        self.where, self.writer.ns, topic, was, count)

    def _write(self, items: list[Item]) -> list[tuple[str, UserVectors]] | None:
        """Write ``items`` (and every held user's vectors again when Redis lost them), retrying
        an outage until Redis acknowledges. Returns, for :attr:`observer`, the pushes of
        ``items`` that Redis took (:meth:`_acked`), or None when nothing was sent (no push,
        no re-push) or no observer is set (metrics off: the hot path takes no per-push pass)."""
        held = self._held
        deletes: set[str] = set()
        writes: list[tuple[str, UserVectors]] = []
        for user, uv in items:
            if uv is None:  # a forgotten user (streams.online): the key goes, not a value
                deletes.add(user)
                held.pop(user, None)
                continue
            if uv is RELEASED:  # an evicted user: their pushes are written, not held
                held.pop(user, None)
                continue
            assert isinstance(uv, UserVectors)
            deletes.discard(user)  # clicks after the forget: a new state, a newer seq
            writes.append((user, uv))
            prev = held.get(user)
            if prev is None or uv.seq > prev.seq:
                held[user] = uv
        sent = [(u, uv) for u, uv in writes if u not in deletes]
        backoff, down_since, why = 0.05, None, ""
        waited: set[str] = set()  # what an outage waited on: "redis", "kafka" (the markers)
        missed = 0  # the writer's forget check found the markers' hash missing, in a row
        retried = False  # a retried write may have written part of itself: its skips not counted
        said: str | None = None  # the loss this call's retries logged last
        while True:
            attempt = time.monotonic()  # a stopped server fails a call only at the socket timeout
            try:
                checked = self._checked
                now = attempt
                gone = self._markers_gone
                if self._suspect or gone is not None or now >= self._next_check:
                    cause = self._lost()
                    if cause is None and gone is not None:
                        cause = f"{gone}; restoring them"
                    self._next_check = now + self.check_every_s
                    if cause is not None:
                        self._repush_due = True
                        if self._data_lost or gone is not None:
                            self._restore_due = self.restore is not None
                    if cause is not None and cause != said:  # said once per outage
                        said = cause
                        gone_active = self._had_active and not self.writer.client.exists(
                            model_active_key(self.writer.ns))
                        log.warning("Redis%s namespace %r: %s; re-pushing the %d user(s) this "
                                    "worker holds%s", self.where, self.writer.ns, cause,
                                    len(held),
                                    f" (the active-model key {model_active_key(self.writer.ns)} "
                                    "is gone too: publish the snapshot again, `diam snapshot "
                                    "publish`)" if gone_active else "")
                self._markers_gone = None  # said, and the restore due (above)
                if self._restore_due:  # before any write: the loss took the markers' hash
                    self._restore_markers()
                repush = self._repush_due
                record = self.base() if self.base is not None else None
                if record is not None and (record != self._recorded or repush):
                    # before the values learnt on it: a reader never finds them under an
                    # older record (retried with them on an outage), nor their seen rows
                    # beyond the published table without the ids behind them (the list of
                    # added ids, sent whole after a loss, else what the table grew by)
                    write_base(self.writer.client, self.writer.ns, record,
                               listed=None if repush else self._recorded)
                    self._recorded = record
                if repush or checked != self._checked:  # the first check, or a lost key set
                    self._record_partitions()
                if deletes:
                    self.writer.client.delete(*(user_key(self.writer.ns, u) for u in deletes))
                # (a released user's last push is in ``sent`` only)
                n = self.writer.write_batch(
                    list(held.items()) + [w for w in sent if w[0] not in held] if repush else sent)
                skipped = self.writer.last_skipped
                counts = self.counts() if self.counts is not None else None
                if repush:
                    self.repushed += len(held)
                    if counts is not None:
                        counts.lost_repushes += len(held)
                elif skipped and not retried and counts is not None:
                    resumed = sum(type(uv) is ResumedPush for _, uv in skipped)
                    counts.resumed_repushes += resumed
                    counts.stale_pushes += len(skipped) - resumed
                if counts is not None:
                    # the forget check refuses a push again on a retry: counted once, here
                    counts.forgotten_pushes += self.writer.last_refused
                    counts.redis_answered += len(writes)
                self._suspect = self._repush_due = False
                self._waiting = None
                self.written += n
                if down_since is not None and waited == {"kafka"}:
                    log.warning("Redis%s namespace %r: the forget markers restored from Kafka "
                                "after %.1f s of waiting for the broker; nothing was dropped",
                                self.where, self.writer.ns, time.monotonic() - down_since)
                elif down_since is not None:
                    log.warning("Redis%s reachable again after %.1f s of outage; nothing was "
                                "dropped", self.where, time.monotonic() - down_since)
                if (not writes and not repush) or self.observer is None:
                    return None  # nothing sent, or no observer reads it: no per-push pass
                if n == len(writes) and not repush:
                    return writes  # every push written, each of its own user: nothing to sort
                return self._acked(sent, retried)
            except MarkersMissing as exc:
                # the forget check failed closed: Redis lost the markers' hash (and likely the
                # key set) since the last check; nothing of the call was written. The next
                # try checks now, restores the markers and re-pushes, as after a lost key set
                self._markers_gone = str(exc)
                retried = True
                missed += 1
                if missed > 1:  # lost again right after a restore: do not spin
                    time.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
            except REDIS_ERRORS + (MarkersNotRestored,) as exc:
                if not _retried(exc):
                    raise
                # An outage stalls the writer (and, once the queue is full, the dataflow) and
                # retries; it never drops the batch. Writes are idempotent (write-if-newer),
                # so a partial batch re-sent is harmless. Logged once per outage, not per try.
                # A broker that does not answer the markers' restore is no sign that Redis
                # lost anything: waited on as Kafka, said so (``waited``)
                kafka = isinstance(exc, MarkersNotRestored)
                waited.add("kafka" if kafka else "redis")
                self._waiting = "kafka" if kafka else "redis"
                if unreachable(exc):
                    # the server may have restarted and lost its newest writes: checked, and
                    # re-pushed, when it answers; a refusal (OOM, READONLY, MISCONF, TRYAGAIN)
                    # answered, and lost nothing
                    self._suspect = True
                retried = True
                if self._cluster:  # a failover, a resharding: the slot map the client holds
                    try:
                        self.writer.client.nodes_manager.initialize()  # type: ignore[attr-defined]
                    except REDIS_ERRORS:
                        pass  # no node answers yet: learnt again at the next try
                if down_since is None:
                    down_since, why = attempt, str(exc)
                    refused = refusing(exc)
                    # when it began, not how long: the failed call's own time is no duration
                    # of the outage (0.0 s on a refused connection); the recovery line has it
                    began = time.time() - (time.monotonic() - attempt)
                    log.warning("Redis%s %s since %s (%s); writes wait and retry with "
                                "backoff up to %.0f s (nothing is dropped)", self.where,
                                "the forget markers not restored" if isinstance(
                                    exc, MarkersNotRestored) else
                                "refusing writes" if refused else "unreachable",
                                time.strftime("%H:%M:%S", time.localtime(began)), why,
                                self.max_backoff_s)
                if self.stopping is not None and attempt >= self._next_note:
                    # a stopping run waits for this write: say so, and what a second signal
                    # leaves (the first signal's line promised a stop at the next batch)
                    note = self.stopping(self.pending())
                    if note is not None:
                        self._next_note = attempt + STOP_NOTE_S
                        log.warning("Redis%s namespace %r: %s", self.where, self.writer.ns, note)
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _acked(self, sent: list[tuple[str, UserVectors]], retried: bool
               ) -> list[tuple[str, UserVectors]]:
        """The pushes of a write's batch that Redis took, the one rule of what the metrics
        count as acknowledged (``diam_flow_redis_acked_total``) and observe as freshness: of
        ``sent`` (the batch's pushes, those before a forget in it left out), the pushes of the
        users whose key the write set, a push superseded by a newer one of its user in the
        same write among them (the key holds what its click learnt, from then on); not those
        of a user the forget check refused (``forgotten_pushes``) or Redis kept out as not
        newer (``stale_pushes``, ``resumed_repushes``: a restart's re-pushes of what Redis
        holds are no new values; after a retried write, whose first try may have written
        part of it, its skips are not told apart and all count as taken, as they do not count
        as stale), and not a resumed user's re-push superseded in the write (its event time
        is the user's previous click, before the restart). The held users a re-push after a
        loss writes again are not pushes (``lost_repushes``): their old event time would read
        as a click that took that long to reach Redis.

        Called only with an observer set (metrics on), and only when a write wrote fewer keys
        than the batch had pushes (a restart's re-pushes Redis holds already, a user pushed
        twice in a merged write, a stale or refused push) or re-pushed: a write of distinct
        users, all written, takes no per-push work here, nor does any write with metrics off."""
        out = {u for u, _ in self.writer.last_refused_entries}
        if not retried:
            out.update(u for u, _ in self.writer.last_skipped)
        newest: dict[str, UserVectors] = {}
        for user, uv in sent:
            prev = newest.get(user)
            if prev is None or uv.seq > prev.seq:
                newest[user] = uv
        return [(u, uv) for u, uv in sent
                if u not in out and (type(uv) is not ResumedPush or newest[u] is uv)]


class MarkersNotRestored(Exception):
    """After Redis lost its key set, the forget markers could not be restored from Kafka (the
    broker did not answer): the writes wait and retry, as in an outage (:func:`_retried`)."""


def _retried(exc: BaseException) -> bool:
    """Whether a failed write is waited out and retried rather than raised in the dataflow:
    a Redis outage (``serving_cache.outage.outage``: unreachable, a single server's or a whole
    cluster's, or refusing writes for a while) or the forget markers' restore waiting on the
    broker. Any other error is raised: a refused login, a missing ACL permission, a bad command.

    >>> _retried(redis.exceptions.RedisClusterUnreachableError("Redis Cluster cannot be connected"))
    True
    >>> _retried(redis.exceptions.AuthenticationError("invalid username-password pair"))
    False
    """
    return isinstance(exc, MarkersNotRestored) or outage(exc)


class RedisWriteFailed(RuntimeError):
    """A write of the sink failed with a Redis error that is not waited out (:func:`_retried`:
    a missing ACL permission, a key of another type, a bad command) and the dataflow stopped at
    its next batch. Raised by ``streams.runner.run_online`` instead of Bytewax's error (or
    panic), in one line (:func:`write_failed_line`)."""

    def __init__(self, line: str, error: BaseException, what: str | None = None) -> None:
        super().__init__(line)
        self.error = error
        self.what = line if what is None else what
        """What failed, without what was kept or what to do (:func:`write_failed_what`): a
        command whose remedy differs from a run's (``diam replay``) words its own."""


def write_failed_what(cfg: RedisConfig, where: str, ns: str, exc: BaseException,
                      wrong_type: list[str]) -> str:
    """The first half of :func:`write_failed_line`: which write failed and why (for a missing
    permission, what the ACL user needs: ``streams.preflight.redis_needs``; for a key of
    another type, which keys)."""
    from streams.preflight import redis_needs

    why = f"{type(exc).__name__}: {exc}"
    if wrong_type:
        why += "; " + ", ".join(wrong_type)
    if isinstance(exc, redis.exceptions.NoPermissionError):
        why += f"; the ACL user lacks a permission: {redis_needs(cfg)}"
    return f"Redis{where} namespace {ns!r}: a write of user vectors failed ({why})"


def write_failed_line(cfg: RedisConfig, where: str, ns: str, exc: BaseException,
                      wrong_type: list[str], recovery_dir: str | None) -> str:
    """The one wording of "the sink's write failed and the run stopped": the Redis error (for
    a missing permission, what the ACL user needs: ``streams.preflight.redis_needs``; for a
    key of another type, which keys), what was kept and what to do.

    >>> cfg = RedisConfig(url="redis://h:6379/0")
    >>> write_failed_line(cfg, " at h:6379/0", "ns", redis.ResponseError("WRONGTYPE Operation"),
    ...                   ["diam:ns:u:a holds a list, not a string"], None)[:150]
    "Redis at h:6379/0 namespace 'ns': a write of user vectors failed (ResponseError: WRONGTYPE Operation; diam:ns:u:a holds a list, not a string) and the "
    """
    kept = ("the recovery store " + str(recovery_dir) + " keeps the positions and state of its "
            "last committed epoch, and the run started again resumes from it and pushes every "
            "user it holds again" if recovery_dir is not None else
            "this run has no recovery store (--recovery-dir): started again, it re-reads the "
            "topic from its start (Redis keeps the newer writes: write-if-newer)")
    return (f"{write_failed_what(cfg, where, ns, exc, wrong_type)} and the run "
            f"stopped at its next batch; nothing is lost: {kept}. Fix the cause and start the "
            "run again with the same command")


class RedisVectorSink(DynamicSink[Item]):
    """Write ``(user_id, UserVectors)`` items into namespace ``cfg.namespace``; an item
    ``(user_id, None)`` deletes the user's key (a forgotten user, in order with the writes),
    ``(user_id, RELEASED)`` lets go of an evicted user.

    ``check_every_s``: how often each partition checks the namespace's generation marker;
    ``max_queued``: output batches queued per partition before the dataflow blocks;
    ``topic``: the clicks topic the dataflow reads, whose forgotten users' pushes learnt before
    their tombstone are refused (``RedisWriter``'s ``topic``; None: no check); ``topic_id``:
    its Kafka topic id, looked up at the run's start (``streams.forget_markers``; None: a
    broker without topic ids); ``partition_count``: the topic's count the run's values are
    learnt from, recorded in the namespace with the generation marker (``_Partition.partitions``;
    None: not recorded); ``markers_from``: the Kafka settings the forget markers of ``topic``
    are restored from when the key set was lost (``_Partition.restore``; None: not restored)."""

    observer: Callable[[list[tuple[str, UserVectors]], float], None] | None = None
    """Given to every partition: see ``_Partition.observer``."""

    counts: Callable[[], Any] | None = None
    """Given to every partition: the calling thread's counters (``FlowStats.counts``), where
    its stale and forgotten pushes are added (``_Partition.counts``)."""

    base: Callable[[], BaseRecord | None] | None = None
    """Given to every partition: the dataflow's current base record (``_Partition.base``)."""

    stop: Callable[[], None] | None = None
    """Given to every partition: see ``_Partition.stop``."""

    stopping: Callable[[SinkPending], str | None] | None = None
    """Given to every partition: see ``_Partition.stopping``."""

    def __init__(self, cfg: RedisConfig, namespace: str | None = None, max_backoff_s: float = 1.0,
                 check_every_s: float = 1.0, max_queued: int = 32, topic: str | None = None,
                 topic_id: str | None = None, partition_count: int | None = None,
                 markers_from: KafkaConfig | None = None) -> None:
        self.cfg = cfg
        self.markers_from = markers_from
        self.topic = topic
        self.topic_id = topic_id
        self.partition_count = partition_count
        self.namespace = namespace or cfg.namespace
        self.max_backoff_s = max_backoff_s
        self.check_every_s = check_every_s
        self.max_queued = max_queued
        self._parts: list[_Partition] = []  # built in this process (its worker threads)

    def pending(self) -> SinkPending:
        """What this process's partitions have still to do after a loss
        (``_Partition.pending``, added up)."""
        out = SinkPending()
        for part in list(self._parts):
            out = out + part.pending()
        return out

    def failure(self, recovery_dir: str | None) -> RedisWriteFailed | None:
        """The first error that stopped a partition's writes in this process, in one line
        (:func:`write_failed_line`; ``recovery_dir``: the run's store), or None."""
        for part in list(self._parts):
            if part.error is not None:
                return RedisWriteFailed(write_failed_line(
                    self.cfg, part.where, self.namespace, part.error, part.wrong_type,
                    recovery_dir), part.error, write_failed_what(
                    self.cfg, part.where, self.namespace, part.error, part.wrong_type))
        return None

    def _waiting(self, exc: BaseException) -> None:
        """Said once when a cluster client cannot be made at a partition's build (no node
        answers: an outage, waited out as a write's is: ``redis_client_waiting``)."""
        log.warning("Redis at %s unreachable at the sink's start (%s: %s); waiting and retrying "
                    "every %.0f s (nothing is dropped)", url_host(self.cfg.url),
                    type(exc).__name__, exc, self.max_backoff_s)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        # fails closed (no markers' hash: nothing written) where it restores them after a loss
        writer = RedisWriter(redis_client_waiting(self.cfg, self._waiting, self.max_backoff_s),
                             self.namespace, self.cfg.pipeline_batch,
                             self.cfg.keys_per_call, ttl_s=self.cfg.user_ttl_s, topic=self.topic,
                             topic_id=self.topic_id,
                             markers_required=self.markers_from is not None)
        where = f" at {self.cfg.url.split('@')[-1]}" + (f" (worker {worker_index})" if worker_count > 1 else "")
        part = _Partition(writer, self.max_backoff_s, self.max_queued, check_every_s=self.check_every_s,
                          where=where)
        part.observer = self.observer
        part.counts = self.counts
        part.base = self.base
        part.stop = self.stop
        part.stopping = self.stopping
        if self.markers_from is not None and self.topic is not None:
            part.restore = functools.partial(_restore, self.markers_from, self.topic,
                                             self.topic_id)
        if self.topic is not None and self.partition_count is not None:
            part.partitions = (self.topic, self.partition_count)
        self._parts.append(part)
        return part


def _restore(kafka: KafkaConfig, topic: str, tid: str | None, client: Any) -> tuple[int, int]:
    from streams.forget_markers import restore_markers

    return restore_markers(kafka, client, topic, tid)
