"""``diam serve``: the recommendation HTTP API."""

from __future__ import annotations

import click

from diam.commands import get_settings


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default: settings serve.host).")
@click.option("--port", type=int, default=None, help="Bind port (default: settings serve.port).")
@click.option(
    "--namespace",
    default=None,
    help="Redis namespace to read users from (default: settings redis.namespace).",
)
@click.option(
    "--reload-every",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between checks for a new active snapshot (hot reload).",
)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="FAISS (OpenMP) and numpy BLAS threads. One is fastest for the few small "
    "searches and products of a request; concurrency comes from request threads.",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--flow-metrics",
    multiple=True,
    metavar="URL",
    help="Metrics endpoint of a dataflow process (diam run --metrics-port), e.g. "
    "http://127.0.0.1:9108/metrics; repeat for each process. The /ui page shows their lag, "
    "events/s and freshness.",
)
@click.option("--ui/--no-ui", default=True, show_default=True, help="Serve the operator page at /ui.")
@click.option(
    "--follow-items/--no-follow-items",
    default=True,
    show_default=True,
    help="Tail the catalogue topic (kafka.items_topic): items the snapshot does not know get "
    "a content-tower embedding and are added to the FAISS index at once.",
)
@click.option(
    "--live-popularity/--no-live-popularity",
    default=True,
    show_default=True,
    help="Tail the clicks topic: cold users get the items most clicked lately (decayed count), "
    "and items first seen in clicks become recommendable.",
)
@click.option(
    "--popularity-half-life",
    type=click.FloatRange(min=1.0),
    default=3600.0,
    show_default=True,
    help="Half-life in seconds of the live click count.",
)
@click.pass_context
def serve_cmd(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    namespace: str | None,
    reload_every: float,
    threads: int,
    log_level: str,
    flow_metrics: tuple[str, ...],
    ui: bool,
    follow_items: bool,
    live_popularity: bool,
    popularity_half_life: float,
) -> None:
    """Serve recommendations over HTTP from Redis user vectors and the active snapshot.

    GET /users/{id}/recommendations?n=&mode=auto|manual|context&delta=&hour=&device=&seen=,
    GET /users/{id}/interests, GET /health (503 while Redis or the snapshot is missing),
    GET /metrics (Prometheus), OpenAPI schema at /openapi.json and docs at /docs, and the
    read-only operator page at /ui (lag, freshness, K_u and d_u of the namespace, alerts, users).
    A newly published snapshot is picked up within --reload-every seconds.
    """
    import uvicorn

    from serving_cache.api import get_app
    from serving_cache.connection import redis_client
    from serving_cache.keys import validate_namespace
    from serving_cache.reader import fail_fast
    from serving_cache.recommend import Recommender
    from snapshotter.store import ActiveWatcher, SnapshotStore

    s = get_settings(ctx)
    try:
        ns = validate_namespace(namespace or s.redis.namespace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--namespace") from None
    client = fail_fast(redis_client(s.redis))
    store = SnapshotStore(s.snapshot)
    if store.active_version() is None:
        click.echo(
            f"warning: no active snapshot in {store.root}; /health answers 503 until "
            "`diam snapshot publish` makes one",
            err=True,
        )
    watcher = ActiveWatcher(store, client, check_every_s=reload_every, ns=ns)
    sources = None
    if ui:
        from serving_cache.ui import UiSources
        from streams.tail import latest_alerts, user_drift_events

        kafka = s.kafka
        sources = UiSources(
            flow_metrics=list(flow_metrics),
            alerts=lambda n: latest_alerts(kafka, n),
            user_drift=lambda user, n: user_drift_events(kafka, user, n),
        )
    recommender = Recommender(None, client, ns, threads=threads)
    if follow_items:
        from streams.catalog import CatalogFollower

        # new catalogue items are recommendable at once (content tower, FAISS add, no rebuild)
        recommender.follow_catalog(CatalogFollower(s.kafka, s.kafka.items_topic))
    if live_popularity:
        from serving_cache.popularity import DecayedCounts
        from streams.new_items import ClickTail

        # cold lists from a decayed live click count; items first seen in clicks get added
        recommender.follow_clicks(ClickTail(s.kafka, s.kafka.clicks_topic),
                                  DecayedCounts(half_life_s=popularity_half_life))
    app = get_app(
        recommender,
        watcher=watcher,
        reload_every_s=reload_every,
        ui=sources,
    )
    h, p = host or s.serve.host, port or s.serve.port
    click.echo(f"serving on http://{h}:{p} (namespace {ns}, snapshots {store.root})", err=True)
    import sys

    sys.setswitchinterval(s.serve.gil_switch_interval_ms / 1000.0)
    uvicorn.run(app, host=h, port=p, log_level=log_level, access_log=False)


COMMANDS = [serve_cmd]
