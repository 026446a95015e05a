"""``diam replay`` (a range of the clicks topic into a namespace of its own) and ``diam diff``
(compare two namespaces user by user)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from diam.commands import (
    _without_password,
    get_settings,
    kafka_unusable,
    not_empty,
    output_file,
    plot_file,
    progress_option,
    redis_unusable,
    stop_on_signals,
    topic_name,
    write_failed,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from diam.settings import Settings
    from serving_cache.diff import NamespaceDiff
    from streams.config import KafkaConfig
    from streams.replay import ReplayRange

REPLAY_AGAIN = ("replay it into a fresh namespace, or into this one with --clear (which deletes "
                "the namespace's keys, this record with them)")
"""How a replay refused over the namespace's partition count starts over (the end of
``streams.runner.repartitioned_line``'s line): a replay has no recovery store."""


@click.command("replay")
@click.option("--topic", default=None, callback=topic_name,
              help="Topic to replay [default: the clicks topic].")
@click.option("--from", "from_", default=None, metavar="BOUND",
              help="Start: ISO time (record timestamps, e.g. 2024-05-01T12:00:00Z), an offset for "
                   "every partition, or partition:offset pairs (0:100,1:80; a partition not "
                   "named is read from its oldest record) [default: the oldest].")
@click.option("--to", "to", default=None, metavar="BOUND",
              help="End, exclusive, same forms (a partition not named is read to its end) "
                   "[default: the end of the topic when the replay starts: what was committed "
                   "then, without a transaction still open].")
@click.option("--namespace", required=True,
              help="Redis namespace to write; never 'live' or the serving namespace.")
@click.option("--snapshot", default=None, callback=not_empty,
              help="Snapshot version to use as the base model [default: the active snapshot]. "
                   "Give at most one of --snapshot, --checkpoint, --base-from-data.")
@click.option("--checkpoint", default=None, callback=not_empty,
              help="Checkpoint or snapshot directory as the base (instead of the active snapshot).")
@click.option("--base-from-data", default=None, callback=not_empty,
              help="Build a co-occurrence base from this prepared dataset (instead of the active "
                   "snapshot; no snapshot needed).")
@click.option("--clear", is_flag=True,
              help="Delete the namespace's keys first (required when it holds an earlier run); "
                   "refused, nothing deleted, when the range selects no record or was clamped.")
@click.option("-w", "--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Worker threads.")
@progress_option()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def replay(ctx: click.Context, topic: str | None, from_: str | None, to: str | None, namespace: str,
           snapshot: str | None, checkpoint: str | None, base_from_data: str | None, clear: bool,
           workers: int, progress: bool, as_json: bool) -> None:
    """Run the online dataflow over a bounded range of a topic into its own Redis namespace.

    The range is resolved once, at start (times by the broker's offsets-for-times), and the run
    stops at its end; one that selects no record warns, naming the topic's first and last record
    timestamps, and exits 0. The same range and base give the same vectors bit for bit. Base model: the
    one of --snapshot VERSION, --checkpoint DIR or --base-from-data DIR given (two are a usage
    error), else the active snapshot (pinned for the whole replay). A snapshot base starts with
    the new items known when the replay starts, as `diam run` does: the catalogue's, and those
    clicked at least flow.click_first_min_clicks times on the topic (all of it, not only the
    range); none is added while it runs. Dead letters go to
    <deadletter_topic>.replay.<namespace> and drift events to <drift_topic>.replay.<namespace>
    (settings kafka.deadletter_topic and kafka.drift_topic, e.g. diam.deadletter.replay.NS and
    diam.drift.replay.NS), not to the live topics; `diam deadletters --topic
    diam.deadletter.replay.NS` lists a replay's rejects. The namespace records the topic's
    partition count, as `diam run` does (diam:<namespace>:partitions): a namespace recorded
    with another count of the topic is refused before anything is written (--clear deletes the
    record with the rest). While it runs, a replay holds its namespace (diam:<namespace>:claim,
    set before the base is loaded; a claim whose process is gone on this host is taken over): a
    second replay or a `diam run` into it is refused, naming it, and so is a replay into a
    namespace a live `diam run` writes (diam:<namespace>:runs); `diam drop --force` deletes a
    claim a replay killed on another host left. SIGINT or SIGTERM stop it at its next batch,
    the claim released (exit 0, as `diam run`); a second one stops it at once, the claim
    released and the partial namespace said first. A namespace whose replay topics Kafka would
    refuse beside another namespace's (names that differ only by '.' and '_': a_b beside a.b)
    is refused, naming it, before anything is written. Configured side topics (dead-letter,
    drift, alerts, models, forget markers, catalogue), a replay's own topics and compacted
    topics are refused as input before anything is written. Compare with `diam diff live
    <namespace>`.
    """
    from confluent_kafka import KafkaException

    from diam.app import load_holder, one_base
    from diam.commands.run import refuse_input, require_broker
    from serving_cache import redis_client
    from serving_cache.keys import claim_key
    from serving_cache.outage import REDIS_ERRORS
    from streams.preflight import ServiceConfigError, check_redis
    from streams.replay import ReplayError, check_namespace, check_topic_collision, parse_bound

    s = get_settings(ctx)
    topic = topic if topic is not None else s.kafka.clicks_topic
    try:
        check_namespace(namespace, s.redis.namespace)
        start = parse_bound(from_) if from_ is not None else None
        end = parse_bound(to) if to is not None else None
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    one_base(snapshot=snapshot, checkpoint=checkpoint, base_from_data=base_from_data)
    try:  # before the holder: growing a snapshot base reads the catalogue and clicks topics
        require_broker(s)
    except click.ClickException:
        # a base that cannot be used is the first thing to fix, and loading it needs no broker
        load_holder(s, snapshot=snapshot, checkpoint=checkpoint, base_from_data=base_from_data,
                    hot_reload=False)
        raise
    refuse_input(s, topic)  # a side topic, a replay's own, a compacted one: nothing written
    try:  # its topics made at the dataflow's start: one Kafka would refuse is said now
        check_topic_collision(s.kafka, namespace)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    except (KafkaException, RuntimeError) as exc:
        raise kafka_unusable(s, exc) from None
    try:  # Redis's login, ACL and cluster checks before the claim's writes: an ACL user that
        # may not run a command is told which (not "not usable" from the claim's own calls)
        check_redis(s.redis, wait=False, namespace=namespace)
    except ServiceConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except REDIS_ERRORS as exc:
        raise redis_unusable(s, exc) from None
    client = redis_client(s.redis)
    stop = threading.Event()  # SIGINT/SIGTERM: the dataflow stops at its next batch, the
    # claim is released (installed first: no signal finds it unreleased); a second signal
    # stops the process at once, the claim released and the partial namespace said first
    held: dict[str, Any] = {}
    stop_on_signals(stop, forced=lambda: _forced_stop(s, namespace, held))
    claim = held["claim"] = _claim(s, client, namespace)
    try:
        report, holder, rng, grown = _replay_claimed(
            s, client, claim, topic, start, end, from_, to, namespace, snapshot, checkpoint,
            base_from_data, clear, workers, progress, as_json, stop, held)
    except _StoppedEarly:  # exit 0, as diam run stopped before it read anything
        click.echo(f"replay stopped by a signal before it cleared or wrote anything: namespace "
                   f"{namespace!r} untouched", err=True)
        return
    finally:
        try:
            _release(client, namespace, claim)
        except REDIS_ERRORS as exc:
            click.echo(f"warning: the namespace's claim {claim_key(namespace)} was not "
                       f"released ({exc}): `diam drop {namespace}` deletes it", err=True)
        client.close()
    stopped = stop.is_set() and report.records < rng.size  # a signal after the end: done
    if as_json:
        click.echo(json.dumps({"namespace": namespace, "topic": topic, "base": holder.version,
                               "new_items": grown,
                               "start": rng.start, "end": rng.end, "records": report.records,
                               "valid": report.valid, "forgets": report.forgets,
                               "forgotten_clicks": report.forgotten_clicks,
                               "users": report.users,
                               "deadlettered": report.deadlettered,
                               "drift_events": report.drift_events, "pushes": report.pushes,
                               "forgotten_pushes": report.forgotten_pushes,
                               "wall_s": round(report.wall_s, 3),
                               "stopped": stopped}))
    else:
        for line in report.lines():
            click.echo(line)
    if stopped:  # exit 0, as diam run stopped by a signal
        click.echo(_partial_line(namespace), err=True)


def _partial_line(namespace: str) -> str:
    """What a replay stopped by a signal before the end of its range says of its namespace."""
    return (f"replay stopped by a signal before the end of its range: namespace {namespace!r} "
            "holds a part of it; replay it again with --clear")


def _forced_stop(s: Settings, namespace: str, held: dict[str, Any]) -> None:
    """A second signal (``stop_on_signals``' ``forced``), just before the process stops at once:
    give back the claim ``held["claim"]`` when one was taken (left, it kept the namespace from
    any other replay or run; from another host only ``diam drop --force`` cleared it) and,
    once the replay may have cleared or written (``held["writing"]``), say the namespace holds
    a part of the range. A client of its own: the signal may have come while the main
    thread's client held its pool's lock."""
    from serving_cache import redis_client

    if held.get("writing"):
        click.echo(_partial_line(namespace), err=True)
    else:
        click.echo(f"replay stopped by a signal before it cleared or wrote anything: namespace "
                   f"{namespace!r} untouched", err=True)
    if "claim" in held:
        client = redis_client(s.redis)
        try:
            _release(client, namespace, held["claim"])
        finally:
            client.close()


class _StoppedEarly(Exception):  # noqa: N818 (a stop, not an error)
    """A signal came before the replay cleared or wrote anything."""


def _claim(s: Settings, client: Any, namespace: str) -> str:
    """Claim ``namespace`` for this replay (``SET NX`` of ``serving_cache.keys.claim_key``),
    returning the value that names this replay; a namespace another replay holds, or a live
    ``diam run`` writes (``serving_cache.holders.live_runs``, looked for after the claim is
    set: a run announces itself before it looks for a claim), is an ``Error:`` naming it. Two
    replays started together would otherwise both find the namespace fresh (the generation
    marker comes with the first write) and leave a mix of both ranges. A claim whose process
    is gone on this host is taken over with a warning; one of another host is cleared by
    ``diam drop --force``."""
    from serving_cache.holders import describe, live_runs, take_claim
    from serving_cache.keys import claim_key
    from serving_cache.outage import REDIS_ERRORS

    ours = describe("replay")
    key = claim_key(namespace)
    try:
        claimed, held, stale = take_claim(client, namespace, ours)
        for gone in stale:
            click.echo(f"warning: namespace {namespace!r} was claimed by {gone}, which is "
                       "gone: its claim taken over", err=True)
        if not claimed:
            holder = held or "another replay"
            raise click.ClickException(
                f"namespace {namespace!r} is held by {holder} ({key}): wait for it to end, or "
                f"replay into another namespace; if that process is gone on another host, "
                f"`diam drop --force {namespace}` deletes the namespace with its claim")
        runs = live_runs(client, namespace)
        if runs:
            _release(client, namespace, ours)
    except REDIS_ERRORS as exc:
        raise redis_unusable(s, exc) from None
    if runs:
        raise click.ClickException(
            f"namespace {namespace!r} is written by a running {', '.join(runs)}: a replay "
            "(with or without --clear) would leave a mix of both; stop it first, or replay "
            "into another namespace")
    return ours


def _holds_keys(client: Any, namespace: str) -> bool:
    """Whether ``--clear`` would delete a key of ``namespace`` (besides this replay's claim): a
    range of no record, or a clamped one, must not cost a namespace its keys; a fresh one has
    none to lose."""
    from serving_cache.keys import claim_key, namespace_pattern

    own = claim_key(namespace).encode()
    return any(k != own for k in client.scan_iter(match=namespace_pattern(namespace), count=1000))


def _release(client: Any, namespace: str, claim: str) -> None:
    """Give back this replay's claim (``serving_cache.holders.release_claim``)."""
    from serving_cache.holders import release_claim

    release_claim(client, namespace, claim)


def _replay_claimed(s: Settings, client: Any, claim: str, topic: str, start: Any, end: Any,
                    from_: str | None, to: str | None, namespace: str, snapshot: str | None,
                    checkpoint: str | None, base_from_data: str | None, clear: bool,
                    workers: int, progress: bool, as_json: bool, stop: threading.Event,
                    held: dict[str, Any]) -> tuple[Any, Any, Any, int]:
    """``diam replay`` once its namespace is claimed: the base, the range, the checks, the
    ``--clear`` and the run; returns (report, holder, range, items grown). Sets
    ``held["writing"]`` once the namespace may be cleared or written (what a second signal
    says, :func:`_forced_stop`)."""
    from confluent_kafka import KafkaException

    from diam.app import load_holder
    from diam.commands.run import check_namespace_partitions
    from serving_cache.forgotten import MarkersUnusable, check_marker_keys
    from serving_cache.keys import claim_key
    from serving_cache.namespaces import drop_namespace, namespace_in_use
    from serving_cache.outage import REDIS_ERRORS
    from streams.forget_markers import topic_id
    from streams.kafka_io import UnknownTopic
    from streams.preflight import ServiceConfigError
    from streams.redis_sink import RedisWriteFailed
    from streams.replay import TIME_BOUNDS_HINT, ReplayError, resolve_range, run_replay
    from streams.runner import TopicRepartitioned

    # a fixed base for the whole replay (hot reload would make the result depend on timing),
    # grown at the start with the new items a live run starting now would take (diam.app)
    holder = load_holder(s, snapshot=snapshot, checkpoint=checkpoint, base_from_data=base_from_data,
                         topic=topic, pinned=True)
    try:
        rng = resolve_range(s.kafka, topic, start, end)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    except UnknownTopic as exc:  # a typo must not replay "0 records" into a fresh namespace
        raise click.BadParameter(str(exc), param_hint="--topic") from None
    except (KafkaException, RuntimeError) as exc:
        raise click.ClickException(f"cannot read topic {topic!r} at {s.kafka.bootstrap}: {exc}") from None
    # the range is checked, and said, before --clear deletes anything: a typo in --from/--to
    # must not cost the namespace someone was about to `diam diff`
    for line in rng.clamped:
        click.echo(f"warning: {line}", err=True)
    if rng.size == 0:
        timed = any(b is not None and b.time_ms is not None for b in (start, end))
        click.echo(f"warning: {_empty_range_note(s.kafka, rng, from_, to)}"
                   + (f" ({TIME_BOUNDS_HINT})" if timed else ""), err=True)
    if stop.is_set():  # a signal while the base loaded: nothing cleared, nothing written
        raise _StoppedEarly
    held["writing"] = True
    try:
        if clear and (rng.size == 0 or rng.clamped) and _holds_keys(client, namespace):
            raise click.ClickException(
                f"--clear refused: the range {'selects no record' if rng.size == 0 else 'was clamped'} "
                f"(warnings above), and namespace {namespace!r} was not touched; give a range of "
                "the topic's records")
        # the markers' keys are checked before --clear too: a key of another type refuses the
        # replay (streams.runner, at its start), and it must not have cost the namespace first
        check_marker_keys(client, topic, topic_id(s.kafka, topic))
        in_use = namespace_in_use(client, namespace)
        if in_use and not clear:
            raise click.ClickException(
                f"namespace {namespace!r} holds an earlier run; pass --clear to delete its keys "
                f"first, or `diam drop {namespace}` (write-if-newer would otherwise keep its "
                "newer entries)")
        if clear:  # every key, a namespace's records without users too (the partition count)
            # but this replay's claim, held throughout: a run or replay starting meanwhile
            # is refused (the claim deleted and set again left it unclaimed in between)
            n = drop_namespace(client, namespace, keep=claim_key(namespace))
            if n or in_use:
                click.echo(f"cleared {n:,} keys of namespace {namespace!r}", err=True)
        # the one rule of `diam run` (the count the namespace's values were learnt from): a
        # namespace recorded with another count of the topic is refused, one without recorded;
        # a range of no record writes nothing, the record neither
        try:
            if rng.size:
                check_namespace_partitions(s, namespace, topic, len(rng.start), REPLAY_AGAIN)
        except TopicRepartitioned as exc:
            raise click.ClickException(str(exc)) from None
    except MarkersUnusable as exc:
        raise click.ClickException(str(exc)) from None
    except REDIS_ERRORS as exc:
        raise redis_unusable(s, exc) from None
    # items the base was grown with at the start (catalogue, click-first): part of what the
    # replay's bytes depend on, besides the version
    base = getattr(holder.learner, "base", None)
    grown = int(base.meta.get("content_items", 0)) if base is not None else 0
    if not as_json:
        click.echo(f"replay {topic} {rng.describe()} ({rng.size:,} records) -> ns={namespace} "
                   f"base={holder.version}" + (f" +{grown} new items" if grown else ""), err=True)
    try:
        report = run_replay(s.kafka, s.redis, s.flow, rng, namespace, holder, workers=workers,
                            progress=progress, stop=stop, redis_checked=True)
    except MarkersUnusable as exc:  # refused before the dataflow started (its markers lookup)
        raise click.ClickException(str(exc)) from None
    except ServiceConfigError as exc:  # its start checks: a permission the ACL user lacks, ...
        raise click.ClickException(str(exc)) from None
    except RedisWriteFailed as exc:  # a replay has no store to resume: it starts over
        raise click.ClickException(
            f"{exc.what} and the replay stopped; the namespace holds a part of the range: fix the "
            "cause and replay it again with --clear") from None
    return report, holder, rng, grown


def _empty_range_note(kafka: KafkaConfig, rng: ReplayRange, from_: str | None, to: str | None
                      ) -> str:
    """Why a replay writes nothing: the topic is empty, or the range selected none of its
    records; then the topic's first and last record timestamps, read from each partition's
    first and last record, say where a range would find some (left out if they cannot be read
    within a few seconds)."""
    asked = " ".join(f"{opt} {val}" for opt, val in (("--from", from_), ("--to", to))
                     if val is not None) or "the whole topic"
    stamps = _end_stamps(kafka, rng.topic)
    if stamps == []:
        return f"{rng.topic} holds no record to replay ({asked}): the namespace gets no user"
    span = ""
    if stamps:
        first, last = (datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
                       .replace("+00:00", "Z") for ms in (min(stamps), max(stamps)))
        span = f" (its records' timestamps run from {first} to {last})"
    return f"the range {asked} selected no record of {rng.topic}{span}: the namespace gets no user"


def _end_stamps(kafka: KafkaConfig, topic: str) -> list[int] | None:
    """The timestamps of each partition's first and last record ([]: the topic holds none);
    None when they cannot be read in time."""
    from confluent_kafka import KafkaException

    from streams.kafka_io import RangeStalled, end_timestamps

    try:
        return [ms for stamps in end_timestamps(kafka, topic, stall_s=3.0).values()
                for ms in stamps]
    except (KafkaException, RuntimeError, RangeStalled):
        return None


@click.command("diff")
@click.argument("ns_a")
@click.argument("ns_b")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=output_file, help="Write one row per user to this CSV file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--top", type=click.IntRange(0), default=5, show_default=True,
              help="List this many most different users.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=plot_file,
              help="Write a PNG of per-user interest movement (matched cosine, d_u, K_u changes).")
@click.option("--exit-code", is_flag=True,
              help="Exit 1 when any user differs (values not byte-identical, undecodable on a "
                   "side) or is in one namespace only, as `git diff --exit-code`; 0 otherwise.")
@click.pass_context
def diff(ctx: click.Context, ns_a: str, ns_b: str, csv_path: Path | None, as_json: bool,
         top: int, plot_path: Path | None, exit_code: bool) -> None:
    """Compare two Redis namespaces user by user.

    Per user: K_u difference, cosine of the interests matched by the Hungarian algorithm (the
    pairing that maximises total cosine; vector order carries no meaning), d_u difference, and
    whether the stored values are identical bytes. Summary: users in both or one only, K_u
    agreement rate, mean and minimum matched cosine, mean |Δd_u|. Users whose two values were
    written on different base models (e.g. a --base-from-data run and one on a snapshot) get a
    note on stderr (--json: bases_a, bases_b, different_bases, bases_note): their cosines
    compare different embedding spaces. Each namespace also records the base its values were
    learnt on (version and item table, --json: base_a, base_b; `diam inspect namespace` shows
    it): when values differ and the two bases do (e.g. a tailing run took items that arrived
    after its start, which a later replay of the topic finds at its start or not at all), the
    note says how, e.g. "run-1 took 3 more items than replay-1 on base V (62 vs 59 items; ...)".
    The text names up to 5 users of each one-sided set. Exit 0, unless --exit-code and a user
    differs (a relabelled one too: its bytes differ) or is on one side only: then 1, for
    scripts checking that a replay reproduced a run (a namespace that does not exist holds no
    user: against one that has users, they are all one-sided).
    """
    from diam.commands import echo_json
    from serving_cache import redis_client, validate_namespace
    from serving_cache.diff import diff_namespaces, summary_dict
    from serving_cache.outage import REDIS_ERRORS

    s = get_settings(ctx)
    for ns in (ns_a, ns_b):
        try:
            validate_namespace(ns)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        result = diff_namespaces(redis_client(s.redis), ns_a, ns_b)
    except REDIS_ERRORS as exc:
        raise redis_unusable(s, exc) from None
    if csv_path is not None:
        try:
            result.write_csv(csv_path)
        except OSError as exc:
            raise write_failed(csv_path, exc) from None
    if plot_path is not None:
        from diam.plots import diff_figure

        try:
            diff_figure(result, plot_path)
        except OSError as exc:
            raise write_failed(plot_path, exc) from None
        click.echo(f"plot written to {plot_path}", err=True)
    bases = _bases(result, _weights_of(s))
    if as_json:  # means over no common users are NaN: null in JSON
        echo_json({**summary_dict(result), **bases})
    else:
        _print_diff(result, ns_a, ns_b, bases, top, csv_path)
    m = result.summary
    if exit_code and (m.only_a or m.only_b or m.undecodable or m.both > m.identical):
        ctx.exit(1)


#: How many user ids of each one-sided set ``diam diff``'s text names.
ONE_SIDED_SHOWN = 5


def _print_diff(result: NamespaceDiff, ns_a: str, ns_b: str, bases: dict[str, Any], top: int,
                csv_path: Path | None) -> None:
    """``diam diff``'s text: notes on stderr, the summary, the one-sided users (up to
    :data:`ONE_SIDED_SHOWN` of each side named) and the ``top`` most different users."""
    from diam.commands import note_empty_namespace

    for line in (bases["bases_note"] or "").splitlines():
        click.echo(f"note: {line}", err=True)
    m = result.summary
    for ns, users in ((ns_a, m.users_a), (ns_b, m.users_b)):
        if not users and not m.undecodable:
            note_empty_namespace(ns)
    click.echo(f"{ns_a} vs {ns_b}: users {m.users_a:,} / {m.users_b:,}; in both {m.both:,}, "
               f"only in {ns_a} {m.only_a:,}, only in {ns_b} {m.only_b:,}")
    for ns, ids in ((ns_a, result.only_a), (ns_b, result.only_b)):
        if ids:
            more = len(ids) - ONE_SIDED_SHOWN
            click.echo(f"  only in {ns}: {', '.join(ids[:ONE_SIDED_SHOWN])}"
                       + (f" (and {more:,} more)" if more > 0 else ""))
    if m.both:
        click.echo(f"  identical values {m.identical:,} ({m.identical / m.both:.1%})  "
                   f"K_u agreement {m.k_agree_rate:.1%}  matched cosine mean {m.mean_matched_cos:.4f} "
                   f"min {m.min_matched_cos:.4f}  mean |dd_u| {m.mean_abs_dd:.4f}")
    if m.relabelled:
        labels = sorted({(u.model_a, u.model_b) for u in result.users if u.relabelled})[:3]
        click.echo(f"  {m.relabelled:,} users differ only in their model label (the same vectors, "
                   f"K_u, d_u and seq: "
                   + "; ".join(f"{a!r} vs {b!r}" for a, b in labels) + "): not listed below")
    if m.undecodable:
        click.echo(f"  {m.undecodable:,} users had an undecodable value on one side")
    worst = sorted((u for u in result.users if not u.identical and not u.relabelled),
                   key=lambda u: (u.mean_cos, -abs(u.dd), u.user_id))[:top]
    for u in worst:
        click.echo(f"  {u.user_id}: K {u.k_a}->{u.k_b}  cos mean {u.mean_cos:.4f} min {u.min_cos:.4f}  "
                   f"d {u.d_a:.3f}->{u.d_b:.3f}")
    if csv_path is not None:
        click.echo(f"  per-user rows written to {csv_path}")


def _weights_of(s: Settings) -> Callable[[str], tuple[object, str] | None]:
    """``(model, weights sha256 or its prefix)`` a stored ``model`` label names, or None: a
    checkpoint label names them itself (``checkpoint_label``), a snapshot version through its
    manifest in the store (``source.weights_sha256``); anything else (a co-occurrence base, a
    version no longer kept) names none."""
    from online_model.checkpoint_config import label_weights
    from snapshotter.store import SnapshotError, SnapshotStore

    store = SnapshotStore(s.snapshot)
    seen: dict[str, tuple[object, str] | None] = {}

    def weights(label: str) -> tuple[object, str] | None:
        if label not in seen:
            named: tuple[object, str] | None = label_weights(label)
            if named is None:
                try:
                    man = store.manifest(label)
                    sha = (man.get("source") or {}).get("weights_sha256")
                    named = (man.get("model"), str(sha)) if sha else None
                except (SnapshotError, OSError):
                    named = None
            seen[label] = named
        return seen[label]

    return weights


def _same_model(a: str, b: str, weights: Callable[[str], tuple[object, str] | None]) -> bool:
    """Labels ``a`` and ``b`` name one model: the same label, or the same weights under two
    names (a checkpoint and the snapshot made from it)."""
    if a == b:
        return True
    wa, wb = weights(a), weights(b)
    return (wa is not None and wb is not None and wa[0] == wb[0]
            and (wa[1].startswith(wb[1]) or wb[1].startswith(wa[1])))


def _bases(result: NamespaceDiff,
           weights: Callable[[str], tuple[object, str] | None] = lambda _: None) -> dict[str, Any]:
    """The base models of the users in both namespaces, and a note when they differ.

    Per user, the stored ``model`` labels: vectors learnt over different bases live in
    different embedding spaces, so their cosines say nothing about how the user moved. Users
    whose two labels name the same weights (``weights``: a checkpoint and its snapshot), or
    whose values differ only in the label, are left out.

    Per namespace, its base record (``serving_cache.base_record``: ``base_a``, ``base_b``):
    one version grows (catalogue and click-first items), and the item table enters every
    user's sampled negatives, so two namespaces on one version whose tables differ differ for
    users no label tells apart. When users in both differ and the records name different
    bases (a difference the labels have not said already), those users count in
    ``different_bases`` and the note says how the bases differ."""
    from serving_cache.base_record import base_difference

    apart = [u for u in result.users
             if not u.relabelled and not _same_model(u.model_a, u.model_b, weights)]
    out: dict[str, Any] = {
        "bases_a": sorted({u.model_a for u in result.users}),
        "bases_b": sorted({u.model_b for u in result.users}),
        "base_a": None if result.base_a is None else result.base_a.typed(),
        "base_b": None if result.base_b is None else result.base_b.typed(),
        "different_bases": len(apart), "bases_note": None}
    notes = list(result.base_problems)
    if apart:
        pairs = sorted({(u.model_a, u.model_b) for u in apart})
        shown = "; ".join(f"{a!r} vs {b!r}" for a, b in pairs[:3]) + (
            f"; {len(pairs) - 3} more" if len(pairs) > 3 else "")
        notes.append(
            f"{len(apart):,} of {len(result.users):,} users in both were written on different "
            f"base models ({shown}): their matched cosines compare different embedding spaces, "
            "not how the users moved (unless those are one model under two names, e.g. a "
            "checkpoint and its snapshot)")
    differing = [u for u in result.users if not u.identical and not u.relabelled]
    a, b = result.base_a, result.base_b
    how = (base_difference(result.ns_a, a, result.ns_b, b)
           if a is not None and b is not None and differing else None)
    if how is not None and (not apart or a.version == b.version):  # type: ignore[union-attr]
        out["different_bases"] = max(len(apart), len(differing))
        notes.append(
            f"the namespaces' bases differ: {how}. {len(differing):,} of {len(result.users):,} "
            "users in both have different values: the item table (its size and rows) enters "
            "every user's sampled negatives, so users who never clicked an added item differ "
            "too")
    out["bases_note"] = "\n".join(notes) if notes else None  # one line per note
    return out


@click.command("drop")
@click.argument("namespace")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--keep-topics", is_flag=True,
              help="Keep the replay's own dead-letter and drift topics "
                   "(<deadletter_topic>.replay.NAMESPACE, <drift_topic>.replay.NAMESPACE).")
@click.option("--force", is_flag=True,
              help="Drop it even while a replay's claim or a run's announcement holds it: the "
                   "way out of a claim left by a replay killed on another host.")
@click.pass_context
def drop(ctx: click.Context, namespace: str, yes: bool, keep_topics: bool, force: bool) -> None:
    """Delete every key of NAMESPACE: a replay's or a shadow's users, its active-model key and
    its generation marker, once nobody reads it (after `diam diff`), and the dead-letter and
    drift topics `diam replay` made for it (unless --keep-topics): left behind, one pair per
    replay piles up on the broker.

    Refuses 'live' and the serving namespace (DIAM_REDIS_NAMESPACE), as `diam replay` does.
    Refuses, naming the holder, a namespace a running `diam replay` holds (its claim,
    diam:NAMESPACE:claim) or a running `diam run` writes (diam:NAMESPACE:runs, refreshed every
    few seconds; a killed run ages out in 15 s): the run would push every user it holds again,
    the replay would end with a part of its range. The drop claims the namespace itself first
    (diam:NAMESPACE:claim, then looks for runs; released when it is done), so a replay or run
    starting meanwhile is refused. A claim whose replay is gone on this host is stale and
    taken over; --force drops anyway (a claim of a replay killed on another host, which is
    counted as one of the keys deleted). Keys go in batches of 1000 by SCAN and UNLINK;
    prints how many went.
    """
    from confluent_kafka import KafkaException

    from serving_cache import redis_client
    from serving_cache.holders import describe, release_claim
    from serving_cache.keys import claim_key
    from serving_cache.namespaces import drop_namespace
    from serving_cache.outage import REDIS_ERRORS
    from streams.kafka_io import delete_topics
    from streams.replay import ReplayError, check_namespace, replay_topics

    s = get_settings(ctx)
    try:
        check_namespace(namespace, s.redis.namespace, verb="drop")
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    client = redis_client(s.redis)
    ours = describe("drop")
    try:  # claimed first, then the runs looked for (a run announces itself before it looks
        # for a claim): a replay or run starting meanwhile is refused, or seen here
        claimed, held = _hold_for_drop(client, namespace, ours)  # before the question: a
        # refusal asks nothing
        if held and not force:
            release_claim(client, namespace, ours)
            raise click.ClickException(
                f"namespace {namespace!r} is held by {'; '.join(held)}: wait for it to end (or "
                "stop it); if that process is gone on another host, `diam drop --force "
                f"{namespace}`")
        for h in held:
            click.echo(f"warning: --force: dropping namespace {namespace!r} held by {h}", err=True)
        took = claimed
        try:
            if not yes:
                click.confirm(f"delete every key of namespace {namespace!r} at "
                              f"{_without_password(s.redis.url)}?", abort=True, err=True)
            if not claimed:  # --force, and confirmed: over another's claim, counted as one
                # of the keys (not before the question: a "no" leaves the other's claim)
                client.set(claim_key(namespace), ours)
                took = True
            # its own claim last, when the rest is gone
            n = drop_namespace(client, namespace, keep=claim_key(namespace)) + (not claimed)
        finally:
            if took:
                release_claim(client, namespace, ours)
    except REDIS_ERRORS as exc:
        raise redis_unusable(s, exc) from None
    finally:
        client.close()
    click.echo(f"dropped {n:,} keys of namespace {namespace!r}")
    _forget_announced(s, namespace)
    if keep_topics:
        return
    own = replay_topics(s.kafka, namespace)
    try:
        gone = delete_topics(s.kafka, [own.deadletter_topic, own.drift_topic], timeout=15.0)
    except (KafkaException, RuntimeError, TimeoutError) as exc:  # the keys are gone: say what
        # is left (a broker that does not answer in time raises TimeoutError)
        click.echo(f"warning: the replay's topics {own.deadletter_topic} and {own.drift_topic} "
                   f"were not deleted (Kafka at {s.kafka.bootstrap}: "
                   f"{str(exc) or 'no answer in time'})", err=True)
        return
    if gone:
        click.echo(f"deleted the replay's topic(s) {', '.join(gone)}")


def _hold_for_drop(client: Any, namespace: str, ours: str) -> tuple[bool, list[str]]:
    """Claim ``namespace`` for a ``diam drop`` (``SET NX`` of its claim, ``ours``; a stale claim
    of this host taken over, ``serving_cache.holders.claim_holder``), then look for the live
    runs writing it; returns whether it was claimed, and its other holders: the replay's claim
    that kept it from being claimed, and the runs."""
    from serving_cache.holders import live_runs, take_claim
    from serving_cache.keys import claim_key, runs_key

    claimed, holder, stale = take_claim(client, namespace, ours)
    for gone in stale:
        click.echo(f"warning: namespace {namespace!r} was claimed by {gone}, which is "
                   "gone: its claim taken over", err=True)
    held = [] if holder is None else [f"{holder} ({claim_key(namespace)})"]
    return claimed, held + [f"{r} ({runs_key(namespace)})" for r in live_runs(client, namespace)]


def _forget_announced(s: Any, namespace: str) -> None:
    """Remove ``namespace``'s line from the ANNOUNCED record of snapshot.dir (its
    ``model:active`` key is gone), so a ``--no-redis`` prune no longer keeps its version."""
    from diam.commands.snapshot import _store
    from snapshotter.store import ANNOUNCED, SnapshotError

    store = _store(s)
    if not (store.root / ANNOUNCED).is_file() or namespace not in store.announcements():
        return
    try:
        with store.locked():
            store.forget_announced([namespace])
    except (SnapshotError, OSError) as exc:  # the keys are gone: say what is left
        click.echo(f"warning: {store.root / ANNOUNCED} still names namespace {namespace!r} "
                   f"({exc}); a snapshot prune keeps its version until the next publish with "
                   "Redis", err=True)
        return
    click.echo(f"removed namespace {namespace!r} from {store.root / ANNOUNCED}")


COMMANDS = [replay, diff, drop]
