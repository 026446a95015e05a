"""``diam inspect``: what a Redis namespace holds, for people and for the demo."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from diam.commands import (
    get_settings,
    namespace_of,
    not_empty,
    output_file,
    redis_unusable,
    write_failed,
)
from serving_cache.recommend import MAX_DELTA


@click.group("inspect")
def inspect_group() -> None:
    """Read user state back from Redis."""


@inspect_group.command("namespace")
@click.option("--namespace", default=None, help="Namespace (default: settings redis.namespace).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, callback=output_file,
              help="Also write a PNG: K_u and d_u histograms and drift events over time.")
@click.option("--drift-topic", default=None, callback=not_empty,
              help="Drift events for --plot (default: settings kafka.drift_topic).")
@click.option("--drift-last", type=click.IntRange(0), default=100_000, show_default=True,
              help="For --plot: read at most this many latest drift events per partition.")
@click.pass_context
def namespace_cmd(ctx: click.Context, namespace: str | None, as_json: bool, plot_path: Path | None,
                  drift_topic: str | None, drift_last: int) -> None:
    """Summary of every user in a namespace: count, K_u histogram, d_u spread, value size."""
    from dataclasses import asdict

    from serving_cache import redis_client
    from serving_cache.inspect import summarize_namespace

    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    summary = summarize_namespace(redis_client(s.redis), ns)
    if plot_path is not None:
        topic = drift_topic if drift_topic is not None else s.kafka.drift_topic
        _plot_namespace(s, ns, plot_path, topic, drift_last)
    if as_json:
        click.echo(json.dumps(asdict(summary), indent=2))
        return
    click.echo(f"namespace {ns}: {summary.users} users, {summary.events} events applied")
    if summary.users:
        hist = "  ".join(f"K={k}: {n}" for k, n in summary.k_hist.items())
        click.echo(f"  K_u      {hist}")
        click.echo(f"  d_u      mean {summary.d_mean:.3f}  p10 {summary.d_p10:.3f}  p90 {summary.d_p90:.3f}")
        click.echo(f"  value    {summary.bytes_mean:.0f} bytes on average (msgpack, fp16 vectors)")
        click.echo(f"  models   {summary.models}")
    if summary.undecodable:
        click.echo(f"  {summary.undecodable} values could not be decoded")


def _plot_namespace(s, ns: str, out: Path, drift_topic: str, drift_last: int) -> None:  # type: ignore[no-untyped-def]
    from diam.plots import namespace_figure
    from serving_cache import redis_client
    from serving_cache.inspect import iter_users
    from streams.tail import drift_bodies

    ks, ds = [], []
    for _, uv, _size in iter_users(redis_client(s.redis), ns):
        if uv is not None:
            ks.append(uv.k)
            ds.append(uv.d)
    drift = drift_bodies(s.kafka, drift_last, drift_topic)
    try:
        namespace_figure(ns, ks, ds, drift, out)
    except OSError as exc:
        raise write_failed(out, exc) from None
    click.echo(f"plot written to {out} ({len(ks)} users, {len(drift)} drift events from "
               f"{drift_topic})", err=True)


@inspect_group.command("user")
@click.argument("user_id")
@click.option("--namespace", default=None, help="Namespace (default: settings redis.namespace).")
@click.pass_context
def user_cmd(ctx: click.Context, user_id: str, namespace: str | None) -> None:
    """One user's stored vectors: K_u, d_u, seq, norms and pairwise cosines."""
    from serving_cache import decode_user, redis_client, user_key
    from streams.events import validate_user_id

    why = validate_user_id(user_id)
    if why:
        raise click.ClickException(why)
    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    raw = redis_client(s.redis).get(user_key(ns, user_id))
    if not isinstance(raw, bytes):
        raise click.ClickException(f"no state for user {user_id!r} in namespace {ns!r}")
    uv = decode_user(raw)
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
@click.option("--namespace", default=None, help="Namespace to read the user from (default: settings redis.namespace).")
@click.option("-n", "--n", "n", default=20, show_default=True, help="How many items.")
@click.option("--mode", type=click.Choice(["auto", "manual", "context"]), default="auto", show_default=True,
              help="auto: the learned d_u; manual: d_u·(1+delta); context: a small adjustment by hour/device.")
@click.option("--delta", type=click.FloatRange(-MAX_DELTA, MAX_DELTA), default=0.0,
              show_default=True, help="Diversity shift for manual and context modes.")
@click.option("--keep-seen", is_flag=True,
              help="Keep the user's last seen items, which are left out by default (the "
                   "API's exclude_seen=false).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def recommend_cmd(ctx: click.Context, user_id: str, namespace: str | None, n: int, mode: str,
                  delta: float, keep_seen: bool, as_json: bool) -> None:
    """Recommend for one user from the active snapshot and the user's vectors in Redis
    (the same code path as `diam serve`, in process)."""
    from dataclasses import asdict

    from serving_cache import redis_client
    from serving_cache.recommend import Recommender
    from serving_cache.retrieval import SnapshotIndex
    from snapshotter.store import SnapshotStore
    from streams.events import validate_user_id

    why = validate_user_id(user_id)
    if why:
        raise click.ClickException(why)
    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    store = SnapshotStore(s.snapshot)
    version = store.active_version()
    if version is None:
        raise click.ClickException(f"no active snapshot in {store.root}: run `diam snapshot publish <checkpoint>`")
    rec = Recommender(SnapshotIndex.load(store.path(version), version=version),
                      redis_client(s.redis), ns)
    import redis

    try:
        r = rec.recommend(user_id, n=n, mode=mode, delta=delta,  # type: ignore[arg-type]
                          exclude_seen=not keep_seen)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except redis.RedisError as exc:
        raise redis_unusable(s, exc) from None
    if as_json:
        click.echo(json.dumps(asdict(r), indent=2))
        return
    head = "cold start (" + str(r.reason) + ")" if r.cold else f"K_u={r.k} d_u={r.d_user:.3f} d_used={r.d_used:.3f}"
    click.echo(f"user {user_id}: {head}, snapshot {r.snapshot}")
    for rank, (item, score, cat) in enumerate(zip(r.items, r.scores, r.categories, strict=True), 1):
        click.echo(f"  {rank:>3}. {item:<12} {cat or '-':<14} {score:8.4f}")


COMMANDS = [inspect_group, recommend_cmd]
