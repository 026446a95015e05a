"""Running the online dataflow against the real broker and Redis (used by ``diam run``,
``diam replay`` and the benchmarks)."""

from __future__ import annotations

import fcntl
import functools
import gc
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

from serving_cache import redis_client
from serving_cache.config import RedisConfig
from serving_cache.forgotten import stored_markers
from serving_cache.keys import validate_namespace
from streams.config import FlowConfig, KafkaConfig
from streams.drift_flow import STORE_OWNER as DRIFT_STORE_OWNER
from streams.forget_markers import forget_markers_of
from streams.growth_log import GrowthLog, GrowthLogError
from streams.kafka_health import BrokerHealth
from streams.kafka_io import ensure_topic, partition_ids
from streams.kafka_sink import KafkaEpochSink
from streams.kafka_source import ClickSource
from streams.metrics import FlowMetrics, instrument
from streams.online import FlowSinks, FlowStats, LearnerHolder, build_flow, source_judge
from streams.preflight import check_address, check_kafka, check_redis
from streams.redis_sink import RedisVectorSink, SinkPending

__all__ = ["DRIFT_STORE", "PEERS_NOTE_S", "RUN_AGAIN", "RUN_STORE", "STORE_RECORD",
           "ClusterNotJoined", "ClusterPeerLost", "OnlineJob", "PreparedRun", "RecoveryForeign",
           "RecoveryInUse", "RecoveryUnusable", "TopicRepartitioned", "UnknownPartitions",
           "check_store_owner", "hold_recovery", "job_io", "peer_lost_line", "prepare_online",
           "prepare_recovery", "repartitioned_line", "run_online", "stopping_note", "store_owner",
           "tune_gc", "unwritten_line", "waiting_for"]

log = logging.getLogger(__name__)

PEERS_NOTE_S = 5.0
"""Seconds a process of a Bytewax cluster waits for the others before it says so (a warning,
once): until all of them answer it reads nothing and would otherwise print nothing. Also how
long after its input ended at a stop it waits for the others to stop too before it says so."""


def tune_gc() -> None:
    """The collector settings of a dataflow process, called once start-up is done.

    The dataflow allocates a few short-lived objects per event, all freed by reference
    counting; the cyclic collector's frequent passes over every live user state cost ~20% of
    throughput (measured with bench/stream.py). Freeze what start-up built and collect rarely.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


class UnknownPartitions(ValueError):
    """``OnlineJob.partitions`` names partitions the topic does not have (the message says
    which it has); raised by :func:`run_online` before the dataflow is built, so that it is
    one line, not an error buried in the dataflow's own."""


@dataclass
class OnlineJob:
    """One run of the online dataflow."""

    kafka: KafkaConfig
    redis: RedisConfig
    flow: FlowConfig
    topic: str
    namespace: str
    bounded: bool = False
    start: dict[int, int] | None = None
    end: dict[int, int] | None = None
    workers: int = 1
    process_id: int | None = None
    addresses: list[str] = field(default_factory=list)
    recovery_dir: Path | None = None
    flow_id: str = "diam-online"
    partitions: list[int] | None = None
    stop: threading.Event | None = None
    """Once set, the input ends at its next batch: the run stops at a clean point (the last
    epoch closes, dirty users are pushed, a recovery store keeps where to resume). Set while a
    process of a cluster still waits for the others, it ends the run at once
    (:class:`ClusterNotJoined`)."""
    joined: threading.Event = field(default_factory=threading.Event)
    """Set once this process's workers build the dataflow: for a Bytewax cluster, once every
    process answered (:func:`waiting_for`)."""
    growth: GrowthLog | None = None
    """The growth log in ``recovery_dir`` the run's holder follows (``diam.app.load_holder``):
    :func:`prepare_online` opens it for writing once the store is held and every check passed,
    :meth:`PreparedRun.close` closes it."""
    redis_checked: bool = False
    """Set by a caller that asked ``streams.preflight.check_redis`` of ``redis`` itself before
    :func:`prepare_online` (``diam run``, ``diam replay``: before they hold the namespace), so
    that :func:`prepare_online` does not ask it a second time; the other callers leave it
    False and are checked there."""
    sink_pending: Callable[[], SinkPending] | None = None
    """Set by the run once its Redis sink is built (``RedisVectorSink.pending``): what the sink
    has still to do after a loss beyond the pushes queued (a re-push, the markers' restore),
    for a stop at once to say (:func:`unwritten_line`); None: no Redis sink."""


class ClusterNotJoined(RuntimeError):
    """``OnlineJob.stop`` was set while this process of a Bytewax cluster still waited for the
    others (``waiting_for``, their addresses): no worker had started, so nothing was read or
    written and the run ends at once (raised by :func:`run_online`)."""

    def __init__(self, waiting_for: list[str]) -> None:
        super().__init__(f"stopped while waiting for {', '.join(waiting_for)}: nothing was read")
        self.waiting_for = waiting_for


class ClusterPeerLost(RuntimeError):
    """This process of a Bytewax cluster lost a peer while running (another process was
    killed, failed or became unreachable): Bytewax's exchange (timely's network threads)
    panics and ``cluster_main`` raises a ``PanicException`` that names no peer. Raised by
    :func:`run_online` instead, in one line (:func:`peer_lost_line`): what happened, what was
    kept, what to do. ``peers``: the addresses of the other processes, one of which was lost."""

    def __init__(self, job: OnlineJob, recovery: bool) -> None:
        super().__init__(peer_lost_line(job, recovery))
        self.peers = [a for i, a in enumerate(job.addresses) if i != (job.process_id or 0)]


_PEER_PANICS = ("Send thread panic", "Recv thread panic", "timely communication error")
"""The words of the panics Bytewax 0.21.1's exchange (timely-dataflow's ``zero_copy``
allocator) raises when a peer's connection breaks: its send or receive thread panicked
(``communication/src/allocator/zero_copy/initialize.rs``: joined with ``expect``), or the
panic itself (``tcp.rs``: ``timely communication error: reading data: ...``)."""


def _peer_lost(exc: BaseException) -> bool:
    """Whether ``exc``, raised by ``cluster_main``, is Bytewax's panic over a lost peer
    (:data:`_PEER_PANICS`; ``pyo3_runtime.PanicException`` cannot be imported, only named)."""
    return type(exc).__name__ == "PanicException" and any(w in str(exc) for w in _PEER_PANICS)


def peer_lost_line(job: OnlineJob, recovery: bool) -> str:
    """The one wording of "this process of ``job``'s cluster lost a peer" (``recovery``: the
    run has a recovery store), with what was kept and what to do.

    >>> job = OnlineJob(None, None, None, "t", "ns", process_id=0, addresses=["a:1", "b:1"])
    >>> peer_lost_line(job, False)[:112]
    'process 0 of 2 (a:1) of the Bytewax cluster lost its peer b:1 (killed, failed or unreachable) and stopped: a clu'
    """
    me = job.process_id or 0
    others = [a for i, a in enumerate(job.addresses) if i != me]
    who = f"its peer {others[0]}" if len(others) == 1 else f"one of its peers {', '.join(others)}"
    kept = (f"the recovery store {Path(job.recovery_dir).resolve()} keeps every process's "
            "positions and state as of its last committed epoch, and Redis the newer writes "
            "(write-if-newer); restart every process of the cluster with the same command "
            "(the same -a and --recovery-dir, each its own -i): they resume from the store "
            "and lose nothing" if recovery and job.recovery_dir is not None else
            "this run has no recovery store (--recovery-dir), Redis keeps the newer writes "
            "(write-if-newer); restart every process of the cluster with the same command "
            "(the same -a, each its own -i): they re-read the topic from its start and "
            "lose nothing")
    return (f"process {me} of {len(job.addresses)} ({job.addresses[me]}) of the Bytewax "
            f"cluster lost {who} (killed, failed or unreachable) and stopped: a cluster runs "
            f"only whole. {kept[0].upper()}{kept[1:]}")


def waiting_for(job: OnlineJob) -> list[str]:
    """The addresses of the other processes of ``job``'s Bytewax cluster while this process
    has not started its workers (Bytewax starts them once every process answered), else ``[]``
    (one process, or joined). A stop asked meanwhile ends the run at once: there is no batch
    to stop at, and nothing was read.

    >>> job = OnlineJob(None, None, None, "t", "ns", process_id=1, addresses=["a:1", "b:1", "c:1"])
    >>> waiting_for(job)
    ['a:1', 'c:1']
    >>> job.joined.set(); waiting_for(job)
    []
    """
    if not job.addresses or job.joined.is_set():
        return []
    me = job.process_id or 0
    return [a for i, a in enumerate(job.addresses) if i != me]


def prepare_recovery(path: Path, partitions: int = 1, fresh: bool = False) -> RecoveryConfig:
    """A Bytewax recovery config over ``path``, creating its partitions on first use.

    ``fresh`` wipes an existing store (a replay must not resume a previous replay's state).
    """
    if fresh and path.exists():
        shutil.rmtree(path)
    if not path.exists() or not any(path.glob("part-*.sqlite3")):
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, partitions)
    return RecoveryConfig(str(path))


class RecoveryUnusable(RuntimeError):
    """The recovery store cannot be opened or locked (a file in its place, no permission, a
    file system without locks); says which and names the store."""


class RecoveryInUse(RecoveryUnusable):
    """Another process runs on the same recovery store as the same process of the dataflow."""


class RecoveryForeign(RecoveryUnusable):
    """The recovery store was written by a run of another topic, or of another set of its
    partitions (``--partitions``): refused at start, in one line, instead of Bytewax's panic
    over a state key "not in this worker's routing map" after the start line."""


class TopicRepartitioned(RecoveryUnusable):
    """The run's topic does not have the partition count its state was built from: refused at
    start when the recovery store's record (:data:`STORE_RECORD`) says another count, and
    raised by :func:`run_online` after a clean stop when the count grows while a tailing run
    reads it (``streams.kafka_source.ClickSource`` watches it). The message is
    :func:`repartitioned_line`'s."""


RUN_AGAIN = "run it into a fresh namespace with a fresh recovery store"
"""What :func:`repartitioned_line` tells a ``diam run`` to do (its default): its state is the
namespace's and the recovery store's."""


def repartitioned_line(topic: str, was: int, now: int, where: str, again: str = RUN_AGAIN) -> str:
    """The one wording of "``topic`` went from ``was`` to ``now`` partitions under state built
    from ``was``" (``where``: the state and what happened to it), with what to do: ``again``,
    how the caller's command starts over on the topic as it is (:data:`RUN_AGAIN`; ``diam
    replay`` has no recovery store, and its --clear deletes the namespace's record)."""
    return (f"topic {topic!r} has {now} partitions, but {where} was built from {was}: clicks "
            "are keyed to a partition by user id, so raising the count moved users' new clicks "
            "to other partitions, and a click's offset is comparable only with offsets of its "
            "own partition (the learner and Redis's write-if-newer would drop them as "
            "duplicates of clicks already applied). Kafka cannot lower the count again: produce "
            f"the events again into a new topic created with the wanted count "
            f"(DIAM_KAFKA_PARTITIONS) and {again}" if now > was else
            f"topic {topic!r} has {now} partitions, but {where} was built from {was}: it was "
            f"deleted and created again with another count; {again}")


STORE_RECORD = "diam-store.json"
"""The record a recovery store keeps beside Bytewax's files (asked by :func:`prepare_online`,
written by :meth:`PreparedRun.claim_store` once the run was refused nothing, when the store
first holds a run's state, or as inferred from an older store's state keys; never changed
after): the topic, its partition count then, and the partitions the run read
(``null``: all of them). Bytewax's snapshots hold
offsets per partition but not the count, and a count that changed under per-user state loses
clicks (:class:`TopicRepartitioned`)."""


def hold_recovery(path: Path, process_id: int = 0) -> int:
    """Lock ``path`` (a recovery store) for process ``process_id`` of a dataflow, for as long
    as the returned descriptor is open (the process's life: ``fcntl.flock``, released by the
    kernel when the process dies, so a killed run never leaves a stale lock). Two ``diam run``
    on one store would both resume from it and both write their snapshots into it, each
    undoing the other's progress; the second is refused with :class:`RecoveryInUse`, naming
    the holder's pid. The processes of one cluster share a store, each with its own lock."""
    fd = -1
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / f".diam-run-{process_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RecoveryInUse(
                f"the recovery store {path.resolve()} is in use by another diam run (pid "
                f"{holder}, process {process_id}): stop it first, or give this run a store of "
                "its own (--recovery-dir)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        if isinstance(exc, OSError):
            raise RecoveryUnusable(f"cannot use the recovery store {path}: {exc.strerror or exc}"
                                   " (--recovery-dir)") from None
        raise


def job_io(job: OnlineJob, topic_id: str | None = None,
           partition_count: int | None = None, *,
           stats: FlowStats) -> tuple[ClickSource, FlowSinks]:
    """The dataflow's source and sinks for ``job`` (nothing connects before the run starts).
    They share one view of the broker's health: an outage is one line for the run.
    ``topic_id``: the Kafka id of ``job.topic``, whose forget markers the Redis sink reads
    (:func:`prepare_online` looks it up; None: a broker without topic ids).
    ``partition_count``: the topic's count :func:`prepare_online` saw, which a tailing source
    watches (None: the count it lists at start) and the Redis sink records in the namespace
    again after Redis lost its keys. ``stats``: the run's counters, given to ``build_flow``
    too: a source that judges the records (``source.judge`` set: build the flow with
    ``judged=True``) counts them there, as the decode step would."""
    health = BrokerHealth(job.kafka.bootstrap)
    source = ClickSource(job.kafka, job.topic, start=job.start, end=job.end, bounded=job.bounded,
                         batch_size=job.flow.batch_size, partitions=job.partitions, stop=job.stop,
                         health=health, watch=True, partition_count=partition_count,
                         # the clock is read for idleness alone: the source judges the
                         # records (once: counted there, the decode step passes the verdicts
                         # on) only when it is
                         judge=source_judge(job.flow, stats) if job.flow.evict_idle_s else None)
    return source, FlowSinks(
        vectors=RedisVectorSink(job.redis, job.namespace, max_backoff_s=job.flow.redis_backoff_max_s,
                                max_queued=job.flow.sink_queue_batches, topic=job.topic,
                                topic_id=topic_id, partition_count=partition_count,
                                markers_from=job.kafka),
        deadletter=KafkaEpochSink(job.kafka, job.kafka.deadletter_topic, health),
        drift=KafkaEpochSink(job.kafka, job.kafka.drift_topic, health),
    )


class PreparedRun:
    """A job whose every refusal has been asked (:func:`prepare_online`): its recovery store is
    held by this process until :meth:`close` (:func:`run_online` closes it when it ends).
    ``topic_id``: the Kafka id of ``job.topic`` whose ``diam forget`` markers the Redis sink
    checks (None: a broker without topic ids, or not looked up yet)."""

    def __init__(self, job: OnlineJob, lock: int | None, topic_id: str | None = None) -> None:
        self.job, self._lock, self.topic_id = job, lock, topic_id
        self.markers: dict[str, int] = {}
        """``diam forget``'s markers of the topic when the checks ended (user -> tombstone
        offset, :func:`_forget_markers`): the dataflow learns no click below its user's."""
        self.partition_count: int | None = None
        """The topic's partition count at the checks (None: not asked yet)."""
        self.store_record: dict[str, Any] | None = None
        """The recovery store's :data:`STORE_RECORD` to write (:meth:`claim_store`; None:
        none, or written)."""

    def claim_store(self) -> None:
        """Start writing into the recovery store, once every refusal of the run has been
        asked (a command's own too: ``diam run``'s of the namespace), since a refused run must
        leave the store as it was: the store's growth log (``job.growth``) starts writing
        (``GrowthLog.open``, which rewrites the file), then the store's :data:`STORE_RECORD`
        is written (when it holds no state yet, or was written by an earlier release without
        one), which makes it a run's store (:func:`store_owner`). :func:`run_online` calls it
        before the dataflow starts; a second call does nothing. Raises
        :class:`RecoveryUnusable` when either cannot be written, or when the growth log
        changed since the holder read it."""
        if self.job.growth is not None:
            try:
                self.job.growth.open()
            except GrowthLogError as exc:
                raise RecoveryUnusable(f"{exc} (--recovery-dir)") from None
        if self.store_record is None or self.job.recovery_dir is None:
            return
        path = Path(self.job.recovery_dir) / STORE_RECORD
        tmp = path.with_name(f".{STORE_RECORD}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.store_record))
            os.replace(tmp, path)
        except OSError as exc:
            raise RecoveryUnusable(f"cannot write {path} ({exc.strerror or exc}): the recovery "
                                   "store's record of the topic it is built from "
                                   "(--recovery-dir)") from None
        self.store_record = None

    def close(self) -> None:
        """Release the recovery store (once; a second call does nothing)."""
        if self.job.growth is not None:
            self.job.growth.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def prepare_online(job: OnlineJob) -> PreparedRun:
    """Everything that can refuse ``job`` before its dataflow starts, so that a command can say
    "started" only after it (``diam run`` prints its start line then): the namespace, the
    recovery store (:class:`RecoveryInUse`, :class:`RecoveryUnusable`; held from here on), the
    broker's and Redis's login and TLS (``streams.preflight.ServiceConfigError``), the topic
    (``streams.kafka_io.UnknownTopic`` for a bounded job's missing one; a tailing job's is
    created) and ``job.partitions`` (:class:`UnknownPartitions`); the recovery store's
    :data:`STORE_RECORD` against the topic (:class:`RecoveryForeign`, :class:`TopicRepartitioned`;
    written by :meth:`PreparedRun.claim_store` when the store holds no state yet); this
    process's own address of a Bytewax cluster (``streams.preflight.AddressTaken``); the
    dead-letter and drift topics are created when missing. Last, the topic's Kafka id is
    looked up, the markers an earlier release recorded under its name alone adopted and the
    markers restored from their durable copy on Kafka when Redis lost them
    (:func:`_forget_markers`; its notice is logged here, so before a start line too): a broker
    or Redis failing there raises the client's error (``redis.ConnectionError``,
    ``confluent_kafka.KafkaException``), a marker key of another type than a hash
    ``serving_cache.forgotten.MarkersNotAHash``, a markers' topic not compacted
    ``streams.forget_markers.MarkersTopicUnfit``. Nothing is written into the recovery store
    here (its lock aside): :meth:`PreparedRun.claim_store` writes its record and starts its
    growth log once the caller's own refusals are asked too."""
    validate_namespace(job.namespace)
    if job.recovery_dir is not None:  # before the lock: nothing written into another's store
        check_store_owner(Path(job.recovery_dir), RUN_STORE)
    lock = None if job.recovery_dir is None else hold_recovery(Path(job.recovery_dir),
                                                                job.process_id or 0)
    prepared = PreparedRun(job, lock)
    try:
        prepared.partition_count = _check_services(job)
        if job.recovery_dir is not None:
            prepared.store_record = _check_store(job, Path(job.recovery_dir),
                                                 prepared.partition_count)
        prepared.topic_id, prepared.markers = _forget_markers(job)
    except BaseException:
        prepared.close()
        raise
    return prepared


def _check_services(job: OnlineJob) -> int:
    """The checks of the services and the topic; returns the topic's partition count."""
    if job.addresses:  # Bytewax would say it only after the start line, in a panic
        check_address(job.addresses[job.process_id or 0], "--addresses")
    check_kafka(job.kafka)  # a refused login or TLS handshake names its settings, at once
    if not job.redis_checked:  # once per run: diam run and diam replay ask it first
        check_redis(job.redis, wait=not job.bounded, namespace=job.namespace)
    if not job.bounded:  # tails: the service may start before the first click is produced
        ensure_topic(job.kafka, job.topic)
    # one metadata request, once per run; a bounded job's missing topic is UnknownTopic here,
    # not an empty topic created
    known = partition_ids(job.kafka, job.topic)
    if job.partitions is not None:
        if missing := sorted(set(job.partitions) - set(known)):
            raise UnknownPartitions(f"topic {job.topic!r} has partitions {known}, not {missing}")
    for t in (job.kafka.deadletter_topic, job.kafka.drift_topic):
        ensure_topic(job.kafka, t)
    return len(known)


def _check_store(job: OnlineJob, path: Path, count: int) -> dict[str, Any] | None:
    """Refuse a recovery store whose state was built from another topic, other partitions of it
    or another partition count (:data:`STORE_RECORD`; for a store written before the record
    was kept, the source's state keys in Bytewax's files, from which its record is inferred:
    :func:`_inferred_record`). Returns the record to write (the run's when the store holds no
    state yet, or the inferred one; :meth:`PreparedRun.claim_store` writes it once the run is
    refused nothing), None when the store has its own."""
    reads = None if job.partitions is None else sorted(set(job.partitions))
    held = _store_partitions(path, f"{job.flow_id}.clicks")
    record_path = path / STORE_RECORD
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as exc:
        raise RecoveryUnusable(f"cannot read {record_path} ({exc}): the recovery store's record "
                               "of the topic it was built from (--recovery-dir)") from None
    if record is not None and held:
        _check_record(job, path, record, count, reads)
    foreign = sorted({key for key in held if not key.endswith(f"-{job.topic}")})
    if foreign:
        raise RecoveryForeign(
            f"the recovery store {path.resolve()} holds the state of a run of another topic "
            f"(input partitions {', '.join(foreign[:4])}), not of {job.topic!r}: give this run "
            "a store of its own (--recovery-dir), or run the topic the store was written for")
    parts = sorted(int(key.split("-", 1)[0]) for key in held)
    if reads is not None and (extra := sorted(set(parts) - set(reads))):
        raise RecoveryForeign(
            f"the recovery store {path.resolve()} holds the positions of partitions {parts} of "
            f"{job.topic!r}, and this run reads {reads} (--partitions): it was written by a run "
            f"of other partitions ({extra} would go unread); give each set of partitions its "
            "own store (--recovery-dir), or the set the store was written for")
    if not held:  # a store whose state starts now
        return {"topic": job.topic, "partitions": count, "reads": reads}
    if record is None:  # a store an earlier release wrote: its positions tell what it read
        record = _inferred_record(job.topic, parts, count, reads)
        _check_record(job, path, record, count, reads, held=parts)
        return record
    return None


RUN_STORE, DRIFT_STORE = "diam run", "drift monitor"
"""The dataflows a recovery store can belong to (:func:`check_store_owner`)."""


def store_owner(path: Path) -> str | None:
    """Whose recovery store ``path`` is, by the files in it: :data:`DRIFT_STORE` when it holds
    the drift monitor's claim (``streams.drift_flow.STORE_OWNER``), else :data:`RUN_STORE` when
    it holds a ``diam run``'s record (:data:`STORE_RECORD`) or Bytewax's files (a store an
    earlier release wrote has no record); None: nobody's yet. The one rule of it, which
    :func:`check_store_owner` applies for both dataflows."""
    if (path / DRIFT_STORE_OWNER).exists():
        return DRIFT_STORE
    if (path / STORE_RECORD).exists() or (path.is_dir() and any(path.glob("part-*.sqlite3"))):
        return RUN_STORE
    return None


def check_store_owner(path: Path, dataflow: str) -> None:
    """Refuse ``path`` as the recovery store of ``dataflow`` (:data:`RUN_STORE` or
    :data:`DRIFT_STORE`) when it is the other dataflow's (:func:`store_owner`): the run would
    write its state into it, and each would resume from the mix. Raises
    :class:`RecoveryForeign`, naming whose it is and why; called before the store is locked
    or written (``diam run``: :func:`prepare_online`; ``diam drift run``:
    ``streams.drift_flow.check_store``)."""
    owner = store_owner(path)
    if owner is None or owner == dataflow:
        return
    why = (f"diam drift run --recovery-dir; it holds {DRIFT_STORE_OWNER}" if owner == DRIFT_STORE
           else f"it holds {STORE_RECORD if (path / STORE_RECORD).exists() else 'Bytewax files'}"
           f" and no {DRIFT_STORE_OWNER}")
    raise RecoveryForeign(f"the recovery store {path.resolve()} is a {owner}'s ({why}), not a "
                          f"{dataflow} store: give the {dataflow} a store of its own "
                          "(--recovery-dir)")


def _inferred_record(topic: str, parts: list[int], count: int,
                     reads: list[int] | None) -> dict[str, Any]:
    """The :data:`STORE_RECORD` of a store written before records were kept, from the
    partitions ``parts`` it holds positions of: Bytewax keeps one for every partition a run
    listed, read from or not (tests/integration/test_older_recovery_store.py), so ``parts`` are
    the partitions its runs read. Partitions 0..k-1 are a run of all of a k-partition topic,
    unless this run reads exactly those (``--partitions``: a count it cannot tell, so the
    topic's now); any other set is a ``--partitions`` run's (count unknown: not checked).

    >>> _inferred_record("t", [0, 1], 4, None)
    {'topic': 't', 'partitions': 2, 'reads': None}
    >>> _inferred_record("t", [0, 1], 4, [0, 1])
    {'topic': 't', 'partitions': 4, 'reads': [0, 1]}
    >>> _inferred_record("t", [1, 3], 4, None)
    {'topic': 't', 'partitions': None, 'reads': [1, 3]}
    """
    if parts == reads:
        return {"topic": topic, "partitions": count, "reads": reads}
    if parts == list(range(len(parts))):
        return {"topic": topic, "partitions": len(parts), "reads": None}
    return {"topic": topic, "partitions": None, "reads": parts}


def _check_record(job: OnlineJob, path: Path, record: dict[str, Any], count: int,
                  reads: list[int] | None, held: list[int] | None = None) -> None:
    """``held``: the partitions the store holds positions of, when ``record`` was inferred
    from them (:func:`_inferred_record`), which the refusals then say."""
    where = f"the recovery store {path.resolve()}"
    state = f"{where}'s state"
    if held is not None:
        where += (f" (no {STORE_RECORD}, as an earlier release left it: it holds the positions "
                  f"of partitions {held} only)")
        state = f"the state of {where}"
    if record.get("topic") != job.topic:
        raise RecoveryForeign(
            f"{where} was written by a run of topic {record.get('topic')!r}, not {job.topic!r}: "
            "give this run a store of its own (--recovery-dir), or run the topic the store was "
            "written for")
    was = record.get("partitions")
    if isinstance(was, int) and was != count:
        raise TopicRepartitioned(repartitioned_line(job.topic, was, count, state) + (
            "" if held is None or was > count else
            "; if the run that wrote it read only those partitions, run it with --partitions "
            + ",".join(map(str, held))))
    had = record.get("reads")
    if (reads or list(range(count))) != (had or list(range(count))):
        raise RecoveryForeign(
            f"{where} was written by a run of partitions "
            f"{had if had is not None else 'all'} of {job.topic!r}, and this run reads "
            f"{reads if reads is not None else 'all'} (--partitions): give each set of "
            "partitions its own store (--recovery-dir), or the set the store was written for")


def _store_partitions(path: Path, step_id: str) -> set[str]:
    """The input partitions (``<partition>-<topic>``) whose positions the recovery store at
    ``path`` keeps for the input step ``step_id`` (empty: a store holding no state)."""
    keys: set[str] = set()
    for db in sorted(path.glob("part-*.sqlite3")):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                rows = con.execute("SELECT DISTINCT state_key FROM snaps WHERE step_id = ?",
                                   (step_id,)).fetchall()
            finally:
                con.close()
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                continue  # created, never written
            raise RecoveryUnusable(f"cannot read the recovery store {db}: {exc} "
                                   "(--recovery-dir)") from None
        keys.update(str(r[0]) for r in rows)
    return keys


def run_online(job: OnlineJob, holder: LearnerHolder, stats: FlowStats | None = None,
               metrics: FlowMetrics | None = None, prepared: PreparedRun | None = None) -> None:
    """Build the dataflow for ``job`` and run it until the input ends (bounded) or forever.

    ``stats`` is updated live (read it from another thread for progress); ``metrics``
    (``streams.metrics``, over the same ``stats``) observes the source and sinks. ``prepared``:
    the job's :func:`prepare_online`, already asked (closed here when the run ends); without
    it, this asks it first and raises what it raises: :class:`UnknownPartitions` when
    ``job.partitions`` names one the topic lacks, ``streams.kafka_io.UnknownTopic`` when a
    bounded job's topic does not exist, and :class:`RecoveryInUse` when another process runs
    on the job's recovery store (:class:`RecoveryUnusable` when it cannot be opened or locked
    at all). Raises :class:`ClusterNotJoined` when ``job.stop`` is set before the other
    processes of the job's Bytewax cluster answered, :class:`ClusterPeerLost` when one of
    them is lost once running (Bytewax's panic, in one line), and
    ``streams.redis_sink.RedisWriteFailed`` when a write to Redis failed with an error that is
    not waited out (a missing ACL permission, a key of another type)."""
    if prepared is None:
        prepared = prepare_online(job)
    try:
        prepared.claim_store()
        _run_online(job, holder, stats, metrics, prepared.topic_id, prepared.partition_count,
                    prepared.markers)
    finally:
        prepared.close()


def _forget_markers(job: OnlineJob) -> tuple[str | None, dict[str, int]]:
    """The Kafka id of ``job.topic`` and its ``diam forget`` markers, once per run (and again
    at every restart or resume): the markers of the topic the name holds now are the ones its
    pushes are checked against, not those of a topic deleted and created again under the same
    name. Markers an earlier release recorded under the name alone are adopted first when they
    are this id's, or ignored, with a warning saying which, and those Redis lost are restored
    from their durable copy (``streams.forget_markers``); then the hash is read once
    (``serving_cache.forgotten.stored_markers``): the dataflow does not learn a click below its
    user's marker (``streams.online.skip_forgotten``). A forget during the run is the
    tombstone's and the Redis writer's check."""
    client = redis_client(job.redis)
    try:
        adoption = forget_markers_of(job.kafka, client, job.topic)
        markers = stored_markers(client, job.topic, adoption.topic_id)
    finally:
        client.close()
    if (line := adoption.line()) is not None:
        log.warning(line)
    return adoption.topic_id, markers


def _run_online(job: OnlineJob, holder: LearnerHolder, stats: FlowStats | None,
                metrics: FlowMetrics | None, topic_id: str | None,
                partition_count: int | None = None,
                markers: dict[str, int] | None = None) -> None:
    # a judging source counts into the flow's stats (None: nobody reads the counts, and
    # build_flow keeps its own)
    clicks, sinks = job_io(job, topic_id, partition_count,
                           stats=stats if stats is not None else FlowStats())
    try:
        _run_flow(job, holder, stats, metrics, clicks, sinks, markers,
                  judged=clicks.judge is not None)
    finally:
        clicks.close_watch()
    if clicks.grown is not None:  # stopped cleanly at the next batch (ClickSource)
        was, now = clicks.grown
        raise TopicRepartitioned(repartitioned_line(
            job.topic, was, now, "this run's state") + "; the run stopped at its next batch "
            "with its positions kept (--recovery-dir), and read none of the new partitions")


def _run_flow(job: OnlineJob, holder: LearnerHolder, stats: FlowStats | None,
              metrics: FlowMetrics | None, source: Any, sinks: FlowSinks,
              markers: dict[str, int] | None = None, judged: bool = False) -> None:
    if stats is not None and isinstance(sinks.vectors, RedisVectorSink):
        sinks.vectors.counts = stats.counts  # stale and forgotten pushes, on the writer threads' counters
    if isinstance(sinks.vectors, RedisVectorSink):  # the namespace says which base it learnt on
        sinks.vectors.base = lambda: holder.base_record
    # the Redis sink itself (instrument wraps it)
    vectors = sinks.vectors if isinstance(sinks.vectors, RedisVectorSink) else None
    if metrics is not None:  # positions, dead letters, drift events, Redis writes
        source, sinks = instrument(metrics, source, sinks)
    if job.workers > 1:  # the worker threads share the learner: its kernels release the GIL
        holder.share()
    joining = None
    if job.addresses:  # says when the other processes have answered, and when its input ended
        source = joining = _Joining(source, job.joined)
    # the clicks topic given, not read from ``source``: the wrappers above have no ``topic``
    flow = build_flow(source, sinks, job.flow, holder, flow_id=job.flow_id, stats=stats,
                      namespace=job.namespace, markers=markers, judged=judged, topic=job.topic)
    recovery = None
    if job.recovery_dir is not None:
        recovery = prepare_recovery(Path(job.recovery_dir))
    epoch = timedelta(seconds=job.flow.epoch_interval_s)
    if vectors is not None and job.stop is not None and not job.addresses:
        vectors.stop = job.stop.set  # a failed write ends the input: one process stops alone
    if vectors is not None:  # what a stop at once leaves undone (unwritten_line)
        job.sink_pending = vectors.pending
    if vectors is not None and job.stop is not None:  # a stop waiting out a Redis outage
        vectors.stopping = functools.partial(stopping_note, job.stop, stats, recovery is not None)
    store = None if job.recovery_dir is None else str(Path(job.recovery_dir).resolve())
    try:
        if job.workers == 1 and not job.addresses:
            run_main(flow, epoch_interval=epoch, recovery_config=recovery)
        elif not job.addresses:  # worker threads of one process: nothing to wait for
            cluster_main(flow, [], 0, epoch_interval=epoch, recovery_config=recovery,
                         worker_count_per_proc=job.workers)
        else:
            _run_cluster(job, flow, epoch, recovery, joining)
    except BaseException as exc:
        # a Redis error the sink does not wait out stopped the dataflow: Bytewax raises its
        # own error (or, in a cluster, a panic) around it; said in one line instead
        failed = None if vectors is None else vectors.failure(store)
        if failed is not None:
            raise failed from exc
        raise
    if vectors is not None and (failed := vectors.failure(store)) is not None:
        raise failed  # the input ended at the failed write's next batch (vectors.stop)


class _Joining(FixedPartitionedSource[Any, Any]):
    """``inner`` with ``joined`` set when a worker first lists its partitions: Bytewax starts
    the workers of a cluster's process once every process answered, so the first call says
    the wait is over. :attr:`reading` counts this process's partitions whose input has not
    ended (a stop ends each at its next batch)."""

    def __init__(self, inner: FixedPartitionedSource[Any, Any], joined: threading.Event) -> None:
        self.inner, self.joined = inner, joined
        self.reading = 0
        self._lock = threading.Lock()  # the process's worker threads build and end partitions

    def list_parts(self) -> list[str]:
        self.joined.set()
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str,
                   resume_state: Any) -> StatefulSourcePartition[Any, Any]:
        part = self.inner.build_part(step_id, for_part, resume_state)
        with self._lock:
            self.reading += 1
        return _Ending(part, self)

    def ended(self) -> None:
        with self._lock:
            self.reading -= 1


class _Ending(StatefulSourcePartition[Any, Any]):
    """``inner``, telling ``source`` when its input ends (one call per batch, not per event)."""

    def __init__(self, inner: StatefulSourcePartition[Any, Any], source: _Joining) -> None:
        self.inner, self.source, self._ended = inner, source, False

    def next_batch(self) -> Any:
        try:
            return self.inner.next_batch()
        except StopIteration:
            if not self._ended:
                self._ended = True
                self.source.ended()
            raise

    def next_awake(self) -> Any:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


def _run_cluster(job: OnlineJob, flow: Dataflow, epoch: timedelta,
                 recovery: RecoveryConfig | None, source: _Joining | None = None) -> None:
    """``cluster_main`` in a thread of its own, this one waiting on it. Bytewax's
    ``cluster_main`` connects to the other processes in native code (GIL released) and only
    then enters its loop that checks for signals, so called from the main thread it ran no
    handler, and only SIGKILL ended it, while a process was missing; here the main thread
    stays in Python, where signal handlers run (``cluster_main``'s own check does nothing
    outside the main thread). A stop before the workers start raises :class:`ClusterNotJoined`
    (nothing was read); the thread left waiting (a daemon, blocked in connect or accept) ends
    with the process. Once joined, a stop ends the input at its next batch as in one
    process, but the run ends only once every process's input has ended: a Bytewax cluster
    completes as a whole (a process whose input ended still exchanges with the others), and a
    process that leaves it makes the others fail. So once this one's input ended (``source``
    says so; without it, at the stop) and the run still goes on after :data:`PEERS_NOTE_S`,
    one warning names the processes it waits for."""
    if job.stop is not None and job.stop.is_set():  # asked during the checks above
        raise ClusterNotJoined(waiting_for(job))
    failed: list[BaseException] = []

    def main() -> None:
        try:
            cluster_main(flow, job.addresses, job.process_id or 0, epoch_interval=epoch,
                         recovery_config=recovery, worker_count_per_proc=job.workers)
        except BaseException as exc:  # raised again in the waiting thread
            failed.append(exc)

    t0 = time.monotonic()
    noted = False
    input_end: float | None = None  # when this process's input ended after a stop
    thread = threading.Thread(target=main, name="bytewax-cluster", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)  # returns for signal handlers, and to look at stop and the clock
        if job.joined.is_set():
            if noted:
                log.info("the cluster's other processes answered after %.0f s", time.monotonic() - t0)
                noted = False
            if input_end is None:
                if job.stop is not None and job.stop.is_set() and (source is None or
                                                                   source.reading <= 0):
                    input_end = time.monotonic()
            elif input_end >= 0 and time.monotonic() - input_end >= PEERS_NOTE_S:
                input_end = -1.0  # said once
                _note_stopping(job, recovery is not None)
            continue
        if job.stop is not None and job.stop.is_set():
            raise ClusterNotJoined(waiting_for(job))
        if not noted and time.monotonic() - t0 >= PEERS_NOTE_S:
            noted = True
            me = job.process_id or 0
            log.warning("process %d of %d (%s) is waiting for the cluster's other process(es): "
                        "%s; nothing is read until all of them run (Ctrl-C or SIGTERM stops it)",
                        me, len(job.addresses), job.addresses[me], ", ".join(waiting_for(job)))
    if failed:
        if _peer_lost(failed[0]):  # Bytewax's panic, which names no peer: say it in one line
            raise ClusterPeerLost(job, recovery is not None) from failed[0]
        raise failed[0]


def _unwritten_fate(recovery: bool, pending: SinkPending | None = None) -> str:
    """What a run started again does about pushes a stop at once left unwritten (and about a
    re-push and a markers' restore the sink had still to do: ``pending``)."""
    first = ("restores the forget markers from Kafka at its start, then "
             if pending is not None and pending.restore else "")
    if recovery:
        return (f"the run started again with the same command {first}resumes from its recovery "
                "store and pushes every user it holds again (what its last epoch had not "
                "committed is read and pushed again)")
    return ("this run has no recovery store (--no-recovery): started again, it "
            f"{first}re-reads the topic from its start and writes them again (Redis keeps the "
            "newer writes)")


def _sink_undone(pending: SinkPending | None, past: bool) -> list[str]:
    """What ``pending`` says the Redis sink has still to do, as clauses (``past``: of a run
    that stopped at once)."""
    if pending is None:
        return []
    out = []
    if pending.repush:
        why = ("Redis lost its data" if pending.lost else
               "the connection to Redis broke (it may have lost its newest writes)")
        out.append(f"{why}: {pending.repush:,} held user(s) "
                   + ("were not re-pushed" if past else "not re-pushed yet"))
    if pending.restore and (past or pending.waiting != "kafka"):  # else said by the wait
        out.append("the forget markers " + ("were not restored from Kafka" if past
                                             else "not restored from Kafka yet"))
    return out


def stopping_note(stop: threading.Event, stats: FlowStats | None, recovery: bool,
                  pending: SinkPending | None = None) -> str | None:
    """What a run stopping (``stop`` set) says while a write of its Redis sink waits out an
    outage or the forget markers' restore (``streams.redis_sink._Partition.stopping``, which
    gives what it has still to do: ``pending``), or None when it is not stopping.

    >>> ev = threading.Event(); ev.set()
    >>> stopping_note(ev, FlowStats(), True)[:60]
    'waiting for Redis: 0 push(es) not written yet (a second Ctrl'
    >>> print(stopping_note(ev, FlowStats(), True, SinkPending(36, True, True, "kafka")))
    ... # doctest: +NORMALIZE_WHITESPACE
    waiting for Kafka to restore the forget markers: Redis lost its data: 36 held user(s) not
    re-pushed yet; 0 push(es) not written yet (a second Ctrl-C / SIGTERM stops now; then the run started again with the same command
    restores the forget markers from Kafka at its start, then resumes from its recovery store
    and pushes every user it holds again (what its last epoch had not committed is read and
    pushed again))
    """
    if not stop.is_set():
        return None
    pushes = "pushes" if stats is None else f"{stats.unwritten():,} push(es)"
    said = [*_sink_undone(pending, past=False), f"{pushes} not written yet"]
    waits = ("Kafka to restore the forget markers"
             if pending is not None and pending.waiting == "kafka" else "Redis")
    return (f"waiting for {waits}: {'; '.join(said)} (a second Ctrl-C / SIGTERM stops now; "
            f"then {_unwritten_fate(recovery, pending)})")


def unwritten_line(unwritten: int, recovery: bool, pending: SinkPending | None = None) -> str:
    """What ``diam run`` says after its summary line when a second signal stopped it at once:
    how many pushes Redis never got, what its Redis sink had still to do after a loss
    (``pending``: ``OnlineJob.sink_pending``; a re-push, the markers' restore), and what a run
    started again does about them. "every push was written" only when nothing is left.

    >>> unwritten_line(0, True)
    'stopped at once: every push was written to Redis'
    >>> unwritten_line(36, False)[:63]
    'stopped at once: 36 push(es) were not written to Redis; nothing'
    >>> print(unwritten_line(0, True, SinkPending(36, True, True, "kafka")))
    ... # doctest: +NORMALIZE_WHITESPACE
    stopped at once: Redis lost its data: 36 held user(s) were not re-pushed; the forget
    markers were not restored from Kafka; nothing is lost: the run started again with the same
    command restores the forget markers from Kafka at its start, then resumes from its recovery
    store and pushes every user it holds again (what its last epoch had not committed is read
    and pushed again)
    """
    said = ([f"{unwritten:,} push(es) were not written to Redis"] if unwritten else []
            ) + _sink_undone(pending, past=True)
    if not said:
        return "stopped at once: every push was written to Redis"
    return (f"stopped at once: {'; '.join(said)}; nothing is lost: "
            f"{_unwritten_fate(recovery, pending)}")


def _note_stopping(job: OnlineJob, recovery: bool) -> None:
    me = job.process_id or 0
    others = [a for i, a in enumerate(job.addresses) if i != me]
    resume = ("resume from the recovery store" if recovery else
              "re-read the topic from its start (no --recovery-dir; Redis keeps newer writes)")
    log.warning("process %d of %d (%s) has stopped reading and waits for the cluster's other "
                "process(es) to stop too: %s (a Bytewax cluster ends only with all of its "
                "processes: stop each of them; a second signal stops this one at once, the "
                "others then fail, and restarting them all loses nothing: they %s)",
                me, len(job.addresses), job.addresses[me], ", ".join(others), resume)
