"""``diam run``: the online learning dataflow."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from diam.commands import (
    _without_password,
    get_settings,
    hold_metrics,
    kafka_unusable,
    metrics_hold_option,
    namespace_filter_option,
    namespace_of,
    namespace_option,
    not_empty,
    redis_unusable,
    serve_registry,
    service_logging,
    stop_on_signals,
    topic_name,
    unreachable_service,
)
from diam.settings import Settings


class _EveryMinute(logging.Filter):
    """Lets a repeated log line through once a minute: the same words, arguments included, so
    a second refused snapshot (another version in the same message) is said at once, not up
    to a minute later or never (was keyed on the unformatted message). The snapshot watcher
    warned at every check (2 s) while Redis was down; the sink already says when the outage
    starts and ends."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, record.getMessage()), time.monotonic()
        if now - self._last.get(key, now - self.every_s) < self.every_s:
            return False
        self._last[key] = now
        return True


SUMMARY = ("{end}: {records} records ({valid} valid, {forgets} forgets, {rejected} dead-lettered, "
           "{unknown_items} on items the base does not know, "
           "{forgotten_clicks} skipped as forgotten), "
           "{users} user states ({resumed} resumed, {in_state} held), {learn_calls} learn calls, {pushes} pushes to Redis, "
           "{stale_pushes} kept out by Redis as not newer, "
           "{resumed_repushes} re-pushes of resumed users Redis held already, "
           "{forgotten_pushes} refused as forgotten, "
           "{lost_repushes} re-pushed after Redis lost data, "
           "{drift_events} drift events, {evictions} idle users dropped, {restarts} started over "
           "in {seconds} s ({per_s} records/s; {cpu_s} CPU s, {per_cpu_s} records per CPU second)")
"""The line ``diam run`` prints when its dataflow ends (``{end}``: done, or stopped by a signal),
written by :func:`summary_line` and read back by :func:`parse_summary`, which the benchmarks
and tests call for the counts: the one place its words are spelled."""

# each field is read by the words after it (up to their separator), so a line of a revision
# that said some of them otherwise (bench/stream_ab.py runs older trees) still gives the others
_FIELDS = [(m.group(1), re.compile(r"(-?\d[\d,]*(?:\.\d+)?)" + re.escape(m.group(2).rstrip(", "))))
           for m in re.finditer(r"\{(\w+)\}([^{]+)", SUMMARY) if m.group(1) != "end"]


def summary_line(end: str, counts: dict[str, float], seconds: float, cpu_s: float) -> str:
    """:data:`SUMMARY` filled from ``FlowStats.as_dict()`` and the run's wall and CPU time;
    ``end`` is one of :data:`SUMMARY_ENDS`."""
    if end not in SUMMARY_ENDS:
        raise ValueError(f"end {end!r}: expected one of {SUMMARY_ENDS}")
    per_s, per_cpu_s = counts["records"] / max(seconds, 1e-9), counts["records"] / max(cpu_s, 1e-9)
    return SUMMARY.format_map({**counts, "end": end, "seconds": f"{seconds:.1f}",
                               "per_s": f"{per_s:,.0f}", "cpu_s": f"{cpu_s:.1f}",
                               "per_cpu_s": f"{per_cpu_s:,.0f}"})


def stale_warning(n: int, namespace: str, resumed: int = 0) -> str:
    """What ``diam run`` says after a run whose pushes Redis kept out (``FlowStats``'
    ``stale_pushes``): the namespace held those users at a newer or equal seq. The re-pushes
    of the state resumed users were resumed with are not among them (``resumed_repushes``:
    expected at every resume). A run resumed after a crash re-reads the records after its
    snapshot (at least once; the seq keeps Redis exact), whose pushes Redis may hold already,
    so for a run that resumed users this is said as possibly expected; it is a warning only
    for a run that resumed nobody."""
    if resumed:
        return (f"{n:,} pushes were already in Redis, at a newer or equal seq (nothing was "
                f"doubled). This run resumed {resumed:,} users from its recovery store (their "
                "re-pushes of the state they were resumed with are counted apart): resumed "
                "after a crash, a run reads again the records after its last snapshot, and "
                "Redis may hold what it learns from them already; resumed after a clean stop, "
                "it reads none again. More of them than the records it read again mean the "
                "namespace also holds another run's state: `diam inspect namespace "
                f"--namespace {namespace}`")
    return (f"warning: {n:,} pushes were not written: Redis held those users of namespace "
            f"{namespace!r} at a newer or equal seq. Either this run re-read what it had "
            "written already, or the namespace holds another run's state (seq is a Kafka "
            "offset: another topic's are not comparable): `diam inspect namespace --namespace "
            f"{namespace}` shows its models, `diam drop {namespace}` clears it")


SUMMARY_ENDS = ("done", "stopped")
"""The words ``{end}`` takes: ``done`` (a bounded run read its input to the end) or ``stopped``
(a signal stopped it at a clean point)."""


def summary_lines(text: str) -> list[str]:
    """The summary lines in ``text`` (a run's output, or several runs'), in order: the lines
    that begin with one of :data:`SUMMARY_ENDS` and a colon."""
    return [x for x in text.splitlines() if x.startswith(tuple(f"{e}:" for e in SUMMARY_ENDS))]


def parse_summary(text: str) -> dict[str, float]:
    """The fields of the last summary line in ``text`` (a run's whole output will do), by their
    names in :data:`SUMMARY`; a field the line lacks, or whose following words it spells
    otherwise (an older revision's line), is left out. Raises ``ValueError`` when ``text``
    holds no summary line."""
    lines = summary_lines(text)
    if not lines:
        raise ValueError(f"no 'diam run' summary line in {text[-500:]!r}")
    out: dict[str, float] = {}
    for name, pat in _FIELDS:
        m = pat.search(lines[-1])
        if m is not None:
            v = m.group(1).replace(",", "")
            out[name] = float(v) if "." in v else int(v)
    return out


def require_broker(settings: Settings) -> None:
    """Ask the broker for metadata once before a run prints its start line (``diam run``,
    ``diam drift run``): one that does not answer within ``streams.kafka_io.BROKER_ANSWER_S``
    seconds is an ``Error:`` naming it, instead of a start line and then a minute of silence
    while each client's metadata request waits out its own 30 s. With SASL or TLS configured,
    a login or handshake the broker refused says which settings to fix
    (``streams.preflight.check_kafka``)."""
    from confluent_kafka import KafkaError, KafkaException

    from streams.kafka_io import BROKER_ANSWER_S, broker_answers
    from streams.preflight import ServiceConfigError, check_kafka

    try:
        broker_answers(settings.kafka, BROKER_ANSWER_S)
        return
    except KafkaException as exc:
        failure = exc
    err = failure.args[0] if failure.args else None
    if not isinstance(err, KafkaError) or err.code() not in (KafkaError._TRANSPORT,
                                                             KafkaError._TIMED_OUT):
        raise unreachable_service(failure, settings) or failure  # a refused client property
    protocol = str(settings.kafka.client_config().get("security.protocol", "plaintext"))
    if protocol.lower() != "plaintext":  # a refused login looks like no answer at all here
        try:
            check_kafka(settings.kafka, timeout_s=BROKER_ANSWER_S)
        except ServiceConfigError as exc:
            raise click.ClickException(str(exc)) from None
    raise kafka_unusable(settings, TimeoutError(f"no answer within {BROKER_ANSWER_S:g} s"))


def refuse_input(settings: Settings, topic: str) -> None:
    """Refuse ``topic`` as the clicks input of ``diam run``, ``diam replay`` or ``diam train
    --topic`` when ``streams.clicks_topic.input_refusal`` (the one rule) does: a side topic (the
    dead-letter topic read as clicks feeds itself without end), a replay's own, a compacted
    one. An ``Error:`` naming it, before anything is written."""
    from confluent_kafka import KafkaException

    from streams import input_refusal

    try:
        refused = input_refusal(settings.kafka, topic)
    except (KafkaException, RuntimeError) as exc:
        raise kafka_unusable(settings, exc) from None
    if refused is not None:
        raise click.BadParameter(refused, param_hint="--topic")


def refuse_replay_held(settings: Settings, ns: str) -> None:
    """Refuse a run into namespace ``ns`` while a ``diam replay`` holds it
    (``serving_cache.keys.claim_key``): the two would write a mix of both. A claim whose
    process is gone on this host (``serving_cache.holders.claim_holder``) is deleted
    with a warning. Called after the run announced itself (:func:`announce_run`): a replay
    claims first and then looks for runs, so one of the two always sees the other."""
    from serving_cache import redis_client
    from serving_cache.holders import claim_holder
    from serving_cache.keys import claim_key
    from serving_cache.outage import REDIS_ERRORS

    client = redis_client(settings.redis)
    try:
        holder, stale = claim_holder(client, ns)
        if stale is not None:
            click.echo(f"warning: namespace {ns!r} was claimed by {stale}, which is gone: "
                       f"its claim ({claim_key(ns)}) deleted", err=True)
    except REDIS_ERRORS as exc:
        raise redis_unusable(settings, exc) from None
    finally:
        client.close()
    if holder is not None:
        raise click.ClickException(
            f"namespace {ns!r} is held by {holder} "
            f"({claim_key(ns)}): wait for it to end, or run into another namespace; if that "
            f"process is gone on another host, `diam drop --force {ns}` deletes the namespace "
            "with its claim")


def announce_run(ctx: click.Context, settings: Settings, ns: str) -> Callable[[], None]:
    """Announce this run in namespace ``ns`` (``serving_cache.holders.RunAnnouncement``) until
    the command's context closes, or until the returned function is called (the dataflow
    ended: a ``--metrics-hold`` after it writes nothing); a ``diam replay`` or ``diam drop``
    of it is refused meanwhile. Every process of a cluster run is a holder of its own."""
    from serving_cache import redis_client
    from serving_cache.holders import RunAnnouncement
    from serving_cache.outage import REDIS_ERRORS

    client = redis_client(settings.redis)
    announcement = RunAnnouncement(client, ns)
    try:
        announcement.start()
    except REDIS_ERRORS as exc:
        client.close()
        raise redis_unusable(settings, exc) from None

    closed: list[bool] = []

    def close() -> None:  # once: at the dataflow's end, or when the command ends
        if not closed:
            closed.append(True)
            announcement.close()
            client.close()

    ctx.call_on_close(close)
    return close


def _parse_cluster(process_id: int | None, addresses: str | None) -> list[str] | None:
    """``--addresses`` as a list, checked against ``--process-id``: a cluster needs both, the
    id must index the list (a process that guessed its place would read no partition, or
    another's), and no address may repeat (two processes cannot both listen on it, and the
    one that waits for the other would wait forever).

    >>> _parse_cluster(1, "h:1; h:2")
    ['h:1', 'h:2']
    >>> _parse_cluster(None, None) is None
    True
    """
    if addresses is None:
        if process_id is not None:  # an id alone would run one process and ignore it
            raise click.BadParameter(f"{process_id}: a process id is an index into --addresses "
                                     "(a Bytewax cluster); without them leave it out",
                                     param_hint="--process-id")
        return None
    hosts = [x.strip() for x in addresses.split(";") if x.strip()]
    bad = [h for h in hosts if not re.fullmatch(r"[^:\s]+:\d{1,5}", h)]
    if not hosts or bad:
        raise click.BadParameter(f"{addresses!r}: expected host:port entries separated by ';'",
                                 param_hint="--addresses")
    names = [h.lower() for h in hosts]
    if twice := sorted({h for h in names if names.count(h) > 1}):
        raise click.BadParameter(f"{', '.join(twice)} listed more than once: each process of "
                                 "the cluster needs an address of its own",
                                 param_hint="--addresses")
    if process_id is None:
        raise click.BadParameter("a cluster needs this process's index, 0.."
                                 f"{len(hosts) - 1}, as --process-id", param_hint="--addresses")
    if process_id >= len(hosts):
        raise click.BadParameter(f"{process_id}: --addresses lists {len(hosts)} process(es), "
                                 f"0..{len(hosts) - 1}", param_hint="--process-id")
    return hosts


def check_namespace_partitions(s: Settings, ns: str, topic: str, count: int | None,
                               again: str | None = None) -> None:
    """Refuse a run of ``topic``, now of ``count`` partitions, into namespace ``ns`` (of
    ``s.redis``) when the namespace's values were learnt from another count of it
    (``serving_cache.base_record.record_partitions``, which records this run's count
    otherwise): raises ``streams.runner.TopicRepartitioned`` in its wording, ``again`` saying
    how the caller's command starts over (default ``streams.runner.RUN_AGAIN``, a run's). A
    Redis that refuses the record (out of memory, a read-only replica, unreachable) is
    ``diam.commands.redis_unusable``'s error. A recovery store of another count is refused
    before this (``streams.runner.prepare_online``); this covers the runs without one. ``diam
    replay`` asks it too, before its first write."""
    from serving_cache import redis_client
    from serving_cache.base_record import BaseRecordError, record_partitions
    from serving_cache.keys import partitions_key
    from serving_cache.outage import REDIS_ERRORS
    from streams.runner import RUN_AGAIN, TopicRepartitioned, repartitioned_line

    if count is None:
        return
    client = redis_client(s.redis)
    try:
        was = record_partitions(client, ns, topic, count)
    except BaseRecordError as exc:
        raise click.ClickException(f"namespace {ns!r}: {exc} (a key of another program under "
                                   "the name: remove it, or run into another namespace)") from None
    except REDIS_ERRORS as exc:  # OOM, READONLY: the sink retries them, a start cannot
        raise redis_unusable(s, exc) from None
    finally:
        client.close()
    if was is not None:
        raise TopicRepartitioned(repartitioned_line(
            topic, was, count, f"the state in namespace {ns!r} ({partitions_key(ns)})",
            RUN_AGAIN if again is None else again))


def _parse_partitions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        parts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated partition numbers",
                                 param_hint="--partitions") from None
    if not parts or min(parts) < 0:
        raise click.BadParameter(f"{text!r}: expected partition numbers >= 0",
                                 param_hint="--partitions")
    return parts


@click.command("run")
@click.option("--topic", default=None, callback=topic_name,
              help="Input topic (default: settings kafka.clicks_topic).")
@namespace_option("to write")
@click.option("-w", "--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Worker threads in this process. They share one learner, whose network "
                   "kernels then release the GIL, so learning uses that many cores; decoding "
                   "and Bytewax's own steps still take turns. Two add throughput to a process "
                   "bound by it (a backlog, a replay) at more CPU per event, and change no "
                   "byte of the output; at a rate one worker keeps up with they do not make "
                   "vectors fresher (bench/results/stream.md).")
@click.option("-i", "--process-id", type=click.IntRange(0), default=None,
              help="This process's index in a Bytewax cluster, into --addresses (only with "
                   "them).")
@click.option("-a", "--addresses", default=None,
              help="host:port of every process of a Bytewax cluster, ';'-separated, each "
                   "once, the same list in each; give each its -i. A process reads nothing "
                   "until all have answered (it says so after 5 s; Ctrl-C or SIGTERM stops it "
                   "meanwhile). Once running, the cluster ends as a whole: a stopped process "
                   "exits only once every other one is stopped too (it names them 5 s after "
                   "its input ended), so stop each; a second signal stops it at once, the "
                   "others then fail, and all restarted resume from --recovery-dir (without "
                   "one: re-read the topic).")
@click.option("--recovery-dir", type=click.Path(path_type=Path), default=None,
              help="Bytewax recovery store; created on first use. Resume after a crash re-reads "
                   "from the snapshotted offsets and gives the same Redis state. Default when "
                   "tailing in one process: <stack home>/recovery/<namespace>--<topic>[--p<parts>]; "
                   "bounded runs (replays, batch jobs) use none unless given.")
@click.option("--no-recovery", is_flag=True, default=False,
              help="Tail without a recovery store (a restart then re-reads from the start).")
@click.option("--bounded/--tail", default=False, show_default=True,
              help="Stop at the end offsets seen at start (what was committed then: the "
                   "records of a transaction still open are not read, even once committed), or "
                   "keep tailing the topic.")
@click.option("--partitions", default=None, metavar="0,1,...",
              help="Read only these partitions of the topic: run one independent process per "
                   "subset to scale out without a Bytewax cluster (clicks are keyed by user, so "
                   "each user's state lives in one process). Give each its own --recovery-dir.")
@click.option("--checkpoint", default=None, callback=not_empty,
              help="Base model checkpoint or snapshot directory, instead of the active snapshot "
                   "(not with --base-from-data).")
@click.option("--base-from-data", default=None, callback=not_empty,
              help="Build a co-occurrence base from this prepared dataset, instead of the active "
                   "snapshot (not with --checkpoint).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics (lag, events/s, freshness, pushes, drift...) on this "
                   "port at /metrics; 0 picks a free port (printed). Off when not given.")
@metrics_hold_option("a stop by SIGINT/SIGTERM")
@click.pass_context
def run_cmd(ctx: click.Context, topic: str | None, namespace: str | None, workers: int,
            process_id: int | None, addresses: str | None, recovery_dir: Path | None, bounded: bool,
            no_recovery: bool, partitions: str | None, checkpoint: str | None,
            base_from_data: str | None, metrics_port: int | None, metrics_hold: float) -> None:
    """Consume click events and keep every user's interest vectors fresh in Redis.

    Invalid events go to the dead-letter topic with their reason; drift events (K_u changes,
    guard trips) go to the drift topic. Base weights come from --checkpoint or --base-from-data
    when one is given (not both), else from the active snapshot (hot-reloaded when a new one is
    published).

    The broker is asked first: one that does not answer within 5 s
    (streams.kafka_io.BROKER_ANSWER_S) is an error naming it, before anything starts.
    """
    from diam.app import load_holder, one_base, online_job
    from serving_cache.forgotten import MarkersUnusable
    from serving_cache.outage import REDIS_ERRORS
    from streams.kafka_io import UnknownTopic
    from streams.online import FlowStats
    from streams.preflight import ServiceConfigError, check_redis, redis_refusal
    from streams.redis_sink import RedisWriteFailed
    from streams.runner import (
        ClusterNotJoined,
        ClusterPeerLost,
        RecoveryUnusable,
        TopicRepartitioned,
        UnknownPartitions,
        prepare_online,
        run_online,
        tune_gc,
        unwritten_line,
        waiting_for,
    )

    @contextlib.contextmanager
    def refusals() -> Iterator[None]:  # prepare_online's, in words for the command line
        try:
            yield
        except ServiceConfigError as exc:  # a refused login or TLS handshake: say which setting
            raise click.ClickException(str(exc)) from None
        except RecoveryUnusable as exc:  # in use by another run, or not a store
            raise click.ClickException(str(exc)) from None
        except MarkersUnusable as exc:  # a key of another type, a markers topic not compacted
            raise click.ClickException(str(exc)) from None
        except UnknownPartitions as exc:
            raise click.BadParameter(str(exc), param_hint="--partitions") from None
        except UnknownTopic as exc:  # --bounded reads what a topic holds; a typo is not "0 records"
            raise click.BadParameter(f"{exc}; nothing to read", param_hint="--topic") from None
        except REDIS_ERRORS as exc:  # after check_redis: a permission, a cluster node
            if (refused := redis_refusal(job.redis, exc)) is None:
                # OOM, READONLY at the start's writes (the forget markers' restore): the one
                # wording of "Redis failed this command", as the partition record's
                raise redis_unusable(s, exc) from None
            raise click.ClickException(str(refused)) from None

    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    if no_recovery and recovery_dir is not None:
        raise click.BadParameter("give --recovery-dir or --no-recovery, not both")
    stop = threading.Event()
    job = online_job(s, topic=topic, namespace=ns, bounded=bounded, workers=workers,
                     process_id=process_id, addresses=_parse_cluster(process_id, addresses),
                     recovery_dir=recovery_dir, no_recovery=no_recovery,
                     partitions=_parse_partitions(partitions), stop=stop)
    one_base(checkpoint=checkpoint, base_from_data=base_from_data)  # a usage error at once
    try:  # before the holder: following the active snapshot reads Kafka (the clicks' tail)
        require_broker(s)
    except click.ClickException:
        # a base that cannot be used is the first thing to fix, and loading it needs no broker
        load_holder(s, checkpoint=checkpoint, base_from_data=base_from_data,
                    namespace=job.namespace, topic=job.topic, hot_reload=False)
        raise
    refuse_input(s, job.topic)  # before anything reads or writes (the markers' hash, a record)
    with refusals():  # Redis's login, ACL and cluster checks before the announcement's writes
        # (a tailing run waits for an unreachable server here, as its dataflow would)
        check_redis(job.redis, wait=not job.bounded, namespace=job.namespace)
    job.redis_checked = True  # prepare_online does not ask it again
    # first, then the replay's claim: one sees the other
    leave_namespace = announce_run(ctx, s, job.namespace)
    refuse_replay_held(s, job.namespace)
    # refused catalogue records: dead-lettered by one process of a cluster (each reads the
    # whole catalogue), the others log them (streams.catalog's default)
    from streams.catalog import CatalogDeadLetters

    catalog_refused = (CatalogDeadLetters(s.kafka, s.flow.deadletter_max_bytes, job.namespace)
                       if not process_id else None)
    # the store's growth log: the order of the new items its users' rows refer to
    holder = load_holder(s, checkpoint=checkpoint, base_from_data=base_from_data,
                         namespace=job.namespace, topic=job.topic, growth=job.growth, stop=stop,
                         catalog_refused=catalog_refused)
    # its followers (the click-first reader's thread, the catalogue's and the clicks' consumers)
    # stop when the command ends, however: done, refused, failed or interrupted
    if catalog_refused is not None:
        ctx.call_on_close(catalog_refused.close)  # after the holder's (LIFO): the deliveries
    ctx.call_on_close(holder.close)

    def waiting() -> str | None:
        peers = waiting_for(job)
        return f"before the cluster's other process(es) {', '.join(peers)} answered" if peers else None

    clock: list[float] = []  # the dataflow's start (wall, CPU): a stop at once says its summary

    def forced() -> None:  # a second signal: the summary, and the pushes Redis never got
        if not clock:
            return  # nothing was read yet
        click.echo(summary_line("stopped", stats.as_dict(), time.perf_counter() - clock[0],
                                time.process_time() - clock[1]))
        pending = job.sink_pending() if job.sink_pending is not None else None
        click.echo(unwritten_line(stats.unwritten(), job.recovery_dir is not None, pending),
                   err=True)

    stop_on_signals(stop, waiting=waiting, forced=forced)
    # outages (broker, Redis) are logged once when they start and once when they end
    service_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("snapshotter.store").addFilter(_EveryMinute())
    stats = FlowStats()
    metrics = None
    if metrics_port is not None:  # a taken port is an Error before the start line
        from streams.metrics import FlowMetrics, process_label

        metrics = FlowMetrics(stats, holder, process_label(process_id, addresses, job.partitions),
                              kafka=s.kafka, topic=job.topic)
        bound = serve_registry(metrics.registry, metrics_port)
        click.echo(f"metrics: http://127.0.0.1:{bound}/metrics (process={metrics.process})", err=True)
    with refusals():  # before the start line: a refused run never says it started
        prepared = prepare_online(job)
        try:
            check_namespace_partitions(s, job.namespace, job.topic, prepared.partition_count)
            prepared.claim_store()  # the store is the run's only once nothing refused it
        except BaseException:
            prepared.close()
            raise
    holder.learner.warm_up()  # compile the kernels before the start line, not on event one
    tune_gc()
    click.echo(f"online dataflow: {job.topic} -> redis {_without_password(s.redis.url)} "
               f"ns={job.namespace} "
               f"base={holder.version} workers={workers}" + (" (bounded)" if bounded else "")
               + (f" recovery={Path(job.recovery_dir).resolve()}" if job.recovery_dir is not None else ""))
    t0, c0 = time.perf_counter(), time.process_time()
    clock[:] = [t0, c0]
    grown: TopicRepartitioned | ClusterPeerLost | RedisWriteFailed | None = None
    try:
        with refusals():
            try:
                run_online(job, holder, stats, metrics, prepared=prepared)
            except TopicRepartitioned as exc:  # a clean stop: its summary first, then why
                grown = exc
    except ClusterNotJoined:  # stopped before the other processes answered: nothing was read
        pass
    except ClusterPeerLost as exc:  # another process killed or failed: the summary, then why
        grown = exc
    except RedisWriteFailed as exc:  # Redis refused a write: the summary, then why
        grown = exc
    leave_namespace()  # the dataflow wrote its last: a metrics hold holds no namespace
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = stats.as_dict()
    # CPU seconds of this process (all its threads): on a machine shared with the broker and
    # Redis, records per CPU second says what the dataflow costs, records/s what it got
    click.echo(summary_line("stopped" if stop.is_set() or grown else "done", st, dt, cpu))
    if catalog_refused is not None and catalog_refused.count:
        click.echo(f"catalogue: {catalog_refused.count} refused record(s) of "
                   f"{s.kafka.items_topic} dead-lettered to {s.kafka.deadletter_topic} (`diam "
                   f"deadletters --source-topic {s.kafka.items_topic}`)", err=True)
    if st["stale_pushes"]:
        click.echo(stale_warning(int(st["stale_pushes"]), job.namespace, int(st["resumed"])),
                   err=True)
    if grown is not None:
        raise click.ClickException(str(grown))
    if job.growth is not None and job.growth.failed is not None:  # stopped at its next batch
        raise click.ClickException(f"{job.growth.failed}: the run stopped with its positions "
                                   "kept (--recovery-dir); fix the cause and start it again")
    if metrics is not None:
        hold_metrics(metrics_port, metrics_hold)


@click.command("deadletters")
@click.option("--topic", default=None, callback=topic_name,
              help="Dead-letter topic (default: settings kafka.deadletter_topic).")
@click.option("--source-topic", default=None,
              help="Only the records rejected from this input topic (default: all of them).")
@namespace_filter_option("the dead letters")
@click.option("--last", type=click.IntRange(1), default=20, show_default=True,
              help="Show the N most recently dead-lettered records, oldest first.")
@click.pass_context
def deadletters_cmd(ctx: click.Context, topic: str | None, source_topic: str | None,
                    namespace: str | None, last: int) -> None:
    """List rejected events with their reason, source topic, partition and offset, and the
    Redis namespace of the run that refused them (ns=...).

    Runs into several namespaces share the dead-letter topic; a replay has its own
    (<deadletter_topic>.replay.NAMESPACE): --namespace reads the shared topic's records of the
    namespace and the replay's own topic when there is one, both, and names the topics read. Each run refuses a bad record once, so one record
    can be listed once per namespace; the copies a resumed run or a second run into the same
    namespace wrote (the same record: source topic and its Kafka id, partition, offset,
    namespace; one in both the shared topic and the replay's own) are counted, not listed. The count covers every record in the topic (or from
    --source-topic, or --namespace); the list shows the last N by the time they were
    dead-lettered, across the topic's partitions."""
    from streams.kafka_io import UnknownTopic, merge_copies, read_deadletters

    s = get_settings(ctx)
    if topic is not None:
        names = [topic]
    elif namespace is not None:  # the shared topic and a replay's own, when it has one
        from confluent_kafka import KafkaException

        from streams.replay import namespace_topics

        try:
            names = namespace_topics(s.kafka, namespace)[0]
        except (KafkaException, RuntimeError) as exc:
            raise kafka_unusable(s, exc) from None
    else:
        names = [s.kafka.deadletter_topic]
    recs: list[dict[str, object]] = []
    read: list[str] = []
    missing: UnknownTopic | None = None
    for one in names:
        try:
            # a stalled read ends in `Error:` (diam.cli)
            recs += read_deadletters(s.kafka, one, namespace=namespace)
            read.append(one)
        except UnknownTopic as exc:
            if topic is not None:  # a typo must not read as "nothing was rejected"
                raise click.BadParameter(str(exc), param_hint="--topic") from None
            missing = exc
        except RuntimeError as exc:  # the broker refused the name (malformed)
            if topic is not None:
                raise click.BadParameter(str(exc), param_hint="--topic") from None
            raise click.ClickException(f"{exc} (settings kafka.deadletter_topic)") from None
    if len(read) > 1:  # a record rejected into both topics is one record, two copies
        recs = merge_copies(recs)
    if not read:
        click.echo(f"0 dead-lettered record(s): {missing} yet (settings kafka.deadletter_topic; "
                   "the dataflow creates it when it starts)")
        return
    name = " and ".join(read)
    if recs and all(r["reason"] is None for r in recs):  # e.g. the clicks topic by mistake
        raise click.BadParameter(
            f"{name} holds {len(recs)} record(s), none with the dead-letter headers "
            "(diam.reason): not a dead-letter topic", param_hint="--topic")
    if source_topic is not None:
        recs = [r for r in recs if r["topic"] == source_topic]
    extra = sum(int(r["copies"]) - 1 for r in recs)  # type: ignore[call-overload]
    click.echo(f"{len(recs)} dead-lettered record(s) in {name}"
               + (f" from {source_topic}" if source_topic is not None else "")
               + (f" of namespace {namespace}" if namespace is not None else "")
               # a resumed run re-refuses its uncommitted epoch, and so does a second bounded
               # run into the same namespace: the line must be true of both
               + (f" ({extra} repeated cop{'y' if extra == 1 else 'ies'}, from a resumed or "
                  "repeated run, not shown)" if extra else ""))
    recs.sort(key=lambda r: (r["ts_ms"], str(r["topic"]), r["partition"], r["offset"]))  # type: ignore[arg-type, return-value]
    for r in recs[-last:]:
        value = r["value"] or b""
        assert isinstance(value, bytes)
        cut = f", cut from {r['truncated']}" if r.get("truncated") else ""
        ns = f"  ns={r['namespace']}" if r.get("namespace") is not None else ""
        click.echo(f"  {r['topic']}[{r['partition']}]@{r['offset']}: {r['reason']}  "
                   f"({len(value)} bytes{cut}: {value[:40]!r}){ns}")


COMMANDS = [run_cmd, deadletters_cmd]
