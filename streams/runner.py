"""Running the online dataflow against the real broker and Redis (used by ``diam run``,
``diam replay`` and the benchmarks)."""

from __future__ import annotations

import fcntl
import gc
import os
import shutil
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

from serving_cache.config import RedisConfig
from serving_cache.keys import validate_namespace
from streams.config import FlowConfig, KafkaConfig
from streams.kafka_health import BrokerHealth
from streams.kafka_io import ensure_topic, partition_ids
from streams.kafka_sink import KafkaEpochSink
from streams.kafka_source import ClickSource
from streams.metrics import FlowMetrics, instrument
from streams.online import FlowSinks, FlowStats, LearnerHolder, build_flow
from streams.preflight import check_kafka, check_redis
from streams.redis_sink import RedisVectorSink

__all__ = ["OnlineJob", "RecoveryInUse", "RecoveryUnusable", "UnknownPartitions", "hold_recovery",
           "job_io", "run_online", "prepare_recovery", "tune_gc"]


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
    epoch closes, dirty users are pushed, a recovery store keeps where to resume)."""


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


def job_io(job: OnlineJob) -> tuple[ClickSource, FlowSinks]:
    """The dataflow's source and sinks for ``job`` (nothing connects before the run starts).
    They share one view of the broker's health: an outage is one line for the run."""
    health = BrokerHealth(job.kafka.bootstrap)
    source = ClickSource(job.kafka, job.topic, start=job.start, end=job.end, bounded=job.bounded,
                         batch_size=job.flow.batch_size, partitions=job.partitions, stop=job.stop,
                         health=health)
    return source, FlowSinks(
        vectors=RedisVectorSink(job.redis, job.namespace, max_backoff_s=job.flow.redis_backoff_max_s,
                                max_queued=job.flow.sink_queue_batches),
        deadletter=KafkaEpochSink(job.kafka, job.kafka.deadletter_topic, health),
        drift=KafkaEpochSink(job.kafka, job.kafka.drift_topic, health),
    )


def run_online(job: OnlineJob, holder: LearnerHolder, stats: FlowStats | None = None,
               metrics: FlowMetrics | None = None) -> None:
    """Build the dataflow for ``job`` and run it until the input ends (bounded) or forever.

    ``stats`` is updated live (read it from another thread for progress); ``metrics``
    (``streams.metrics``, over the same ``stats``) observes the source and sinks. Raises
    :class:`UnknownPartitions` when ``job.partitions`` names one the topic lacks,
    ``streams.kafka_io.UnknownTopic`` when a bounded job's topic does not exist, and
    :class:`RecoveryInUse` when another process runs on the job's recovery store
    (:class:`RecoveryUnusable` when it cannot be opened or locked at all)."""
    validate_namespace(job.namespace)
    lock = None if job.recovery_dir is None else hold_recovery(Path(job.recovery_dir),
                                                                job.process_id or 0)
    try:
        _run_online(job, holder, stats, metrics)
    finally:
        if lock is not None:
            os.close(lock)


def _run_online(job: OnlineJob, holder: LearnerHolder, stats: FlowStats | None,
                metrics: FlowMetrics | None) -> None:
    check_kafka(job.kafka)  # a refused login or TLS handshake names its settings, at once
    check_redis(job.redis, wait=not job.bounded)
    if job.bounded:  # reads what the topic holds: a topic that does not exist is an error
        known = partition_ids(job.kafka, job.topic)  # UnknownTopic, not an empty topic created
    else:  # tails: the service may start before the first click is produced
        ensure_topic(job.kafka, job.topic)
    if job.partitions is not None:  # one metadata request, once per run
        known = partition_ids(job.kafka, job.topic)
        if missing := sorted(set(job.partitions) - set(known)):
            raise UnknownPartitions(f"topic {job.topic!r} has partitions {known}, not {missing}")
    for t in (job.kafka.deadletter_topic, job.kafka.drift_topic):
        ensure_topic(job.kafka, t)
    source, sinks = job_io(job)
    if stats is not None and isinstance(sinks.vectors, RedisVectorSink):
        sinks.vectors.counts = stats.counts  # stale pushes, on the writer threads' counters
    if metrics is not None:  # positions, dead letters, drift events, Redis writes
        source, sinks = instrument(metrics, source, sinks)
    if job.workers > 1:  # the worker threads share the learner: its kernels release the GIL
        holder.share()
    flow = build_flow(source, sinks, job.flow, holder, flow_id=job.flow_id, stats=stats,
                      namespace=job.namespace)
    recovery = None
    if job.recovery_dir is not None:
        recovery = prepare_recovery(Path(job.recovery_dir))
    epoch = timedelta(seconds=job.flow.epoch_interval_s)
    if job.workers == 1 and not job.addresses:
        run_main(flow, epoch_interval=epoch, recovery_config=recovery)
    else:
        cluster_main(flow, job.addresses, job.process_id or 0, epoch_interval=epoch,
                     recovery_config=recovery, worker_count_per_proc=job.workers)
