"""``diam inspect``: what a Redis namespace holds, for people and for the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from diam.commands import (
    echo_json,
    finite,
    get_settings,
    kafka_unusable,
    namespace_of,
    namespace_option,
    note_empty_namespace,
    plot_file,
    redis_unusable,
    shown,
    topic_name,
    write_failed,
)
from serving_cache.recommend import DEVICE_DELTA, MAX_DELTA, MAX_N


@click.group("inspect")
def inspect_group() -> None:
    """Read user state back from Redis."""


@inspect_group.command("namespace")
@namespace_option("to summarise")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, callback=plot_file,
              help="Also write a PNG: K_u and d_u histograms and drift events over time.")
@click.option("--drift-topic", default=None, callback=topic_name,
              help="Drift events for --plot (default: the namespace's events in settings "
                   "kafka.drift_topic and, when it is a replay's, in its own "
                   "<drift_topic>.replay.NAMESPACE, both).")
@click.option("--drift-last", type=click.IntRange(0), default=100_000, show_default=True,
              help="For --plot: read at most this many latest drift events per partition.")
@click.pass_context
def namespace_cmd(ctx: click.Context, namespace: str | None, as_json: bool, plot_path: Path | None,
                  drift_topic: str | None, drift_last: int) -> None:
    """Summary of every user in a namespace: count, K_u histogram, d_u spread, value size, and
    the base its newest values were learnt on (version, item table, items taken after the
    writing run's start: what `diam diff` compares), and who holds it: a `diam replay`'s or
    `diam drop`'s claim (diam:NS:claim; a stale one, whose process is gone on this host, said
    so) and the live `diam run` processes (diam:NS:runs), in --json as claim, claim_stale
    and runs."""
    from dataclasses import asdict

    from serving_cache import redis_client
    from serving_cache.inspect import summarize_namespace

    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    summary = summarize_namespace(redis_client(s.redis), ns)
    if plot_path is not None:
        _plot_namespace(s, ns, plot_path,
                        [drift_topic] if drift_topic else _drift_topics_of(s, ns), drift_last)
    if as_json:
        body = asdict(summary)
        if summary.base is not None:  # the record's own types, not the strings of HGETALL
            from serving_cache.base_record import BaseRecord

            body["base"] = BaseRecord.from_fields(summary.base).typed()
        echo_json(body, indent=2)
        return
    click.echo(f"namespace {ns}: {summary.users} users, {summary.events} events applied")
    if not summary.users and not summary.undecodable:
        note_empty_namespace(ns)
    if summary.users:
        hist = "  ".join(f"K={k}: {n}" for k, n in summary.k_hist.items())
        click.echo(f"  K_u      {hist}")
        click.echo(f"  d_u      mean {summary.d_mean:.3f}  p10 {summary.d_p10:.3f}  p90 {summary.d_p90:.3f}")
        click.echo(f"  value    {summary.bytes_mean:.0f} bytes on average (msgpack, fp16 vectors)")
        click.echo(f"  models   {summary.models}")
    if summary.base is not None:  # the base its newest values were learnt on
        from serving_cache.base_record import BaseRecord

        click.echo(f"  base     {BaseRecord.from_fields(summary.base).describe()}")
    elif summary.base_problem is not None:
        click.echo(f"  base     record unreadable: {summary.base_problem}")
    if summary.undecodable:
        click.echo(f"  {summary.undecodable} values could not be decoded")
    for line in _holder_lines(summary):
        click.echo(line)


def _holder_lines(summary: Any) -> list[str]:
    """Who holds the namespace (``serving_cache.holders``), one line each: the claim of a
    ``diam replay`` or ``diam drop``, and the live ``diam run`` processes."""
    from serving_cache.keys import claim_key, runs_key

    ns = summary.namespace
    out = []
    if summary.claim is not None:
        gone = ("; its process is gone: the next replay, run or drop takes it over"
                if summary.claim_stale else "")
        out.append(f"  held by  {summary.claim} ({claim_key(ns)}{gone})")
    out += [f"  held by  {r} ({runs_key(ns)})" for r in summary.runs]
    return out or ["  held by  nobody (no replay's claim, no live run)"]


def _drift_topics_of(s, ns: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The drift topics of ``ns``: the live one, and a replay's own when it has one."""
    from confluent_kafka import KafkaException

    from streams.replay import namespace_topics

    try:
        return namespace_topics(s.kafka, ns)[1]
    except (KafkaException, RuntimeError) as exc:
        raise kafka_unusable(s, exc) from None


def _plot_namespace(s, ns: str, out: Path, drift_topics: list[str], drift_last: int) -> None:  # type: ignore[no-untyped-def]
    from diam.plots import namespace_figure
    from serving_cache import redis_client
    from serving_cache.inspect import iter_users
    from streams.tail import drift_bodies

    ks, ds = [], []
    for _, uv, _size in iter_users(redis_client(s.redis), ns):
        if uv is not None:
            ks.append(uv.k)
            ds.append(uv.d)
    from confluent_kafka import KafkaException

    from streams.kafka_io import UnknownTopic

    drift: list[dict[str, Any]] = []
    not_drift, read = 0, []
    missing: UnknownTopic | None = None
    for topic in drift_topics:
        try:
            got = drift_bodies(s.kafka, drift_last, topic, namespace=ns)
        except UnknownTopic as exc:
            missing = exc
            continue
        except (KafkaException, RuntimeError, TimeoutError) as exc:
            raise kafka_unusable(s, exc) from None
        drift += got.events
        not_drift += got.not_drift
        read.append(topic)
    if not read:  # a typo is not "0 drift events"
        raise click.BadParameter(f"{missing}; nothing to plot", param_hint="--drift-topic")
    if len(read) > 1:  # each in time order already: a stable sort merges them
        drift.sort(key=lambda e: e.get("ts_ms") or 0)
    drift_topic = " and ".join(read)
    try:
        namespace_figure(ns, ks, ds, drift, out)
    except OSError as exc:
        raise write_failed(out, exc) from None
    skipped = f", {not_drift} not drift events (skipped)" if not_drift else ""
    click.echo(f"plot written to {out} ({len(ks)} users, {len(drift)} drift events from "
               f"{drift_topic}{skipped})", err=True)


@inspect_group.command("user")
@click.argument("user_id")
@namespace_option("to read the user from")
@click.pass_context
def user_cmd(ctx: click.Context, user_id: str, namespace: str | None) -> None:
    """One user's stored vectors: K_u, d_u, seq, norms and pairwise cosines."""
    from serving_cache import CodecError, redis_client
    from serving_cache.reader import UserReader
    from streams.events import validate_user_id

    why = validate_user_id(user_id)
    if why:
        raise click.ClickException(why)
    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    try:  # the serving reader: a value that does not decode, or a key of another type, says so
        uv = UserReader(redis_client(s.redis), ns).get_checked(user_id)
    except CodecError as exc:
        raise click.ClickException(
            f"value of user {user_id!r} in namespace {ns!r} does not decode: {exc}") from None
    if uv is None:
        raise click.ClickException(f"no state for user {user_id!r} in namespace {ns!r}")
    norms = np.linalg.norm(uv.vecs, axis=1)
    unit = uv.vecs / np.maximum(norms[:, None], 1e-9)
    cos = unit @ unit.T
    off = cos[~np.eye(uv.k, dtype=bool)]
    click.echo(f"user {user_id} in {ns}: K_u={uv.k} d_u={uv.d:.3f} seq={uv.seq} events={uv.n} "
               f"model={uv.model} dim={uv.dim}")
    click.echo(f"  norms     {np.array2string(norms, precision=3)}")
    if off.size:
        click.echo(f"  cosines   max {off.max():.3f} mean {off.mean():.3f} between interests")


@click.command("recommend")
@click.argument("user_id")
@namespace_option("to read the user from")
@click.option("-n", "--n", "n", type=click.IntRange(1, MAX_N), default=20, show_default=True,
              help="How many items (the API's bound on n).")
@click.option("--mode", type=click.Choice(["auto", "manual", "context"]), default="auto", show_default=True,
              help="auto: the learned d_u; manual: d_u·(1+delta); context: d_u·(1+delta+c), "
                   "c a shift by --hour and --device (the API's mode=context).")
@click.option("--delta", type=click.FloatRange(-MAX_DELTA, MAX_DELTA), callback=finite,
              default=None,
              help="Diversity shift for --mode manual and context (default 0; the sum with "
                   "the context's is clipped to the same bounds).")
@click.option("--hour", type=click.IntRange(0, 23), default=None,
              help="Local hour, for --mode context (the API's hour): leisure hours browse "
                   "wider, working hours narrower (serving_cache.recommend.context_delta).")
@click.option("--device", type=click.Choice(list(DEVICE_DELTA)), default=None,
              help="Device kind, for --mode context (the API's device): "
                   + ", ".join(f"{k} {v:+g}" for k, v in DEVICE_DELTA.items()) + ".")
@click.option("--keep-seen", is_flag=True,
              help="Keep the user's last seen items, which are left out by default (the "
                   "API's exclude_seen=false).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: the answer's fields with parallel lists (items, scores, "
                   "categories, titles), not the API's items: [{item_id, score, category, "
                   "title}].")
@click.pass_context
def recommend_cmd(ctx: click.Context, user_id: str, namespace: str | None, n: int, mode: str,
                  delta: float | None, hour: int | None, device: str | None, keep_seen: bool,
                  as_json: bool) -> None:
    """Recommend for one user from the user's vectors in Redis and the index of their
    snapshot (the recommendation code of `diam serve`, in process): the version the vectors
    belong to while it is in the snapshot store, else the active one (a stale answer, which
    says so). Every snapshot used has its files' hashes verified first, as `diam serve` does.

    Two differences from the API: a cold user gets the snapshot's training click counts,
    where `diam serve --live-popularity` (its default) answers from the live click count of
    the clicks topic, so the two lists can differ; and --json prints parallel lists (items,
    scores, categories, titles), not the API's items: [{item_id, score, category, title}].

    --mode, --delta, --hour and --device are the API's mode, delta, hour and device. An option
    the chosen mode does not use is refused (the API ignores it; here it would only make two
    different-looking commands print the same list)."""
    from dataclasses import asdict

    from serving_cache import redis_client
    from serving_cache.namespaces import namespace_in_use
    from serving_cache.recommend import Recommender, load_verified, store_loader
    from snapshotter.store import SnapshotError, SnapshotStore, resolve_active
    from streams.events import validate_user_id

    why = validate_user_id(user_id)
    if why:
        raise click.ClickException(why)
    for name, value, modes in (("--delta", delta, ("manual", "context")),
                               ("--hour", hour, ("context",)), ("--device", device, ("context",))):
        if value is not None and mode not in modes:
            raise click.UsageError(f"{name} is used by --mode {' and '.join(modes)} only, not "
                                   f"--mode {mode}", ctx)
    context = {k: v for k, v in (("hour", hour), ("device", device)) if v is not None}
    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    store = SnapshotStore(s.snapshot)
    client = redis_client(s.redis)
    try:  # the version diam serve follows for this namespace: Redis's, else the pointer file
        version = resolve_active(store, client, ns)
    except SnapshotError as exc:  # a pointer that names no usable version
        raise click.ClickException(str(exc)) from None
    if version is None:
        raise click.ClickException(f"no active snapshot in {store.root}: run `diam snapshot publish <checkpoint>`")
    try:
        active = load_verified(store, version)
    except (SnapshotError, ValueError, OSError, RuntimeError) as exc:  # RuntimeError: FAISS
        raise click.ClickException(
            f"cannot use the active snapshot {version} in {store.root}: {exc}") from None

    def refused(other: str, exc: Exception) -> None:
        click.echo(f"warning: not using snapshot {other}, the user's vectors' version: {exc}",
                   err=True)

    rec = Recommender(active, client, ns, load_version=store_loader(store, refused))
    from serving_cache.outage import REDIS_ERRORS

    try:
        r = rec.recommend(user_id, n=n, mode=mode, delta=delta or 0.0,  # type: ignore[arg-type]
                          context=context, exclude_seen=not keep_seen)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except REDIS_ERRORS as exc:
        raise redis_unusable(s, exc) from None
    if r.cold and r.reason == "unknown user" and not namespace_in_use(client, ns):
        note_empty_namespace(ns)  # every user of an empty namespace is cold
    if as_json:
        echo_json(asdict(r), indent=2)
        return
    head = "cold start (" + str(r.reason) + ")" if r.cold else f"K_u={r.k} d_u={r.d_user:.3f} d_used={r.d_used:.3f}"
    click.echo(f"user {user_id}: {head}, snapshot {r.snapshot}")
    if r.stale and not r.cold:  # a cold answer printed its reason in the head line
        click.echo(f"  stale: {r.reason}")
    rows = zip(r.items, r.scores, r.categories, r.titles, strict=True)
    for rank, (item, score, cat, title) in enumerate(rows, 1):
        # ids, categories and titles are the checkpoint's or the catalogue's, whatever they
        # hold: escaped, a title with a line break cannot print a row of its own
        click.echo(f"  {rank:>3}. {shown(item):<12} {shown(cat or '-'):<14} {score:8.4f}"
                   + (f"  {shown(title)}" if title else ""))


COMMANDS = [inspect_group, recommend_cmd]
