"""``diam stack up | status | down | fetch | classpath``: the local Kafka + Redis stack."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from diam.commands import get_settings

if TYPE_CHECKING:
    from diam.settings import Settings


def _docker_flag(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--docker/--no-docker", "docker", default=None,
        help="Use docker-compose.yml (needs a Docker engine) instead of local processes. "
             "Default: the DIAM_STACK_USE_DOCKER setting (off).")(f)


@click.group("stack")
def stack_group() -> None:
    """Start, inspect and stop the local stack: a single-node Apache Kafka 4 broker (KRaft,
    from Maven Central jars, run with the machine's Java) and a Redis server, both on loopback.

    Logs, data and pid files live under DIAM_STACK_HOME (default .diam/); the Kafka jars are
    cached in DIAM_STACK_CACHE_DIR (default ~/.cache/diam-stream/). Ports: DIAM_STACK_KAFKA_PORT
    (9192), DIAM_STACK_CONTROLLER_PORT (9193), DIAM_STACK_REDIS_PORT (6390).

    Any Kafka client can read the topics, e.g. kcat (Debian package):

    \b
      kcat -b 127.0.0.1:9192 -C -t diam.deadletter -o beginning -e \\
           -f '%k %s headers=%h\\n'
    """


@stack_group.command("up")
@_docker_flag
@click.option("--redis-cluster", is_flag=True, default=False,
              help="Also start a Redis Cluster of three masters on the three ports above "
                   "DIAM_STACK_REDIS_PORT (clients: DIAM_REDIS_URL=<printed> DIAM_REDIS_CLUSTER=true).")
@click.pass_context
def up_cmd(ctx: click.Context, docker: bool | None, redis_cluster: bool) -> None:
    """Start Kafka and Redis unless they already run (idempotent).

    Returns once the broker answers a metadata request and Redis answers PING, and prints
    their addresses. The first run downloads the Kafka jars with Maven (about 45 MB, once).
    On failure, prints the tail of the broker's log.
    """
    from diam.stack import StackError, stack_up

    settings = get_settings(ctx)
    try:
        bootstrap, redis_url = stack_up(settings, echo=click.echo, docker_engine=docker)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    from diam.stack_cluster import cluster_running, cluster_up

    if redis_cluster:
        try:
            cluster_up(settings.stack, echo=click.echo)
        except StackError as exc:
            raise click.ClickException(str(exc)) from None
    note = settings_note(settings, bootstrap, redis_url,
                         redis_cluster or cluster_running(settings.stack))
    if note:
        click.echo(note)


def settings_note(settings: Settings, bootstrap: str, redis_url: str, cluster_up: bool) -> str | None:
    """What ``diam stack up`` tells when the clients' settings do not point at the stack it runs
    (Kafka at ``bootstrap``, the single Redis at ``redis_url``, and the Redis Cluster of
    ``diam.stack_cluster`` when ``cluster_up``), with the exports that do; None when they do.
    Clients set for a cluster (``DIAM_REDIS_CLUSTER=true``) may name any of its nodes."""
    from diam.stack_cluster import cluster_url, names_cluster_node

    if settings.redis.cluster and cluster_up:
        redis_ok = names_cluster_node(settings.stack, settings.redis.url)
        export = f"DIAM_REDIS_URL={cluster_url(settings.stack)} DIAM_REDIS_CLUSTER=true"
    else:
        redis_ok = settings.redis.url == redis_url and not settings.redis.cluster
        export = f"DIAM_REDIS_URL={redis_url}" + (" DIAM_REDIS_CLUSTER=false"
                                                   if settings.redis.cluster else "")
    if settings.kafka.bootstrap == bootstrap and redis_ok:
        return None
    return (f"note: the clients' settings point elsewhere; use\n"
            f"  export DIAM_KAFKA_BOOTSTRAP={bootstrap} {export}")


@stack_group.command("status")
@click.pass_context
def status_cmd(ctx: click.Context) -> None:
    """Print whether Kafka and Redis answer, with the version each reports.

    Kafka's version is the one the running broker logged at startup (AppInfoParser); Redis's is
    INFO server's redis_version. Exits 1 when either is down.
    """
    from diam.stack import stack_status

    rows = stack_status(get_settings(ctx))
    for s in rows:
        state = "up" if s.running else "DOWN"
        version = f"{s.name} {s.version}" if s.version else s.name
        pid = f"pid {s.pid}" if s.pid else "pid -"
        click.echo(f"{version:<16} {state:<5} {s.address:<28} {pid:<11} {s.detail}")
    if not all(s.running for s in rows):
        ctx.exit(1)


@stack_group.command("down")
@_docker_flag
@click.pass_context
def down_cmd(ctx: click.Context, docker: bool | None) -> None:
    """Stop Kafka and Redis started from this home (SIGTERM, then SIGKILL after
    DIAM_STACK_STOP_TIMEOUT_S) and check that no process is left and the ports are closed.
    Data under the home is kept; delete the directory to start afresh."""
    from diam.stack import StackError, stack_down
    from diam.stack_cluster import cluster_down

    try:
        cluster_down(get_settings(ctx).stack, echo=click.echo)  # (a no-op when none was started)
        stack_down(get_settings(ctx), echo=click.echo, docker_engine=docker)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None


@stack_group.command("fetch")
@click.pass_context
def fetch_cmd(ctx: click.Context) -> None:
    """Only download the Kafka jars (and the log4j2 backend) into the cache; nothing starts.
    CI runs this ahead of the tests."""
    from tqdm import tqdm

    from diam.stack import StackError, fetch
    from diam.stack_kafka import cached_classpath

    settings = get_settings(ctx)
    jars = cached_classpath(settings.stack)
    if jars is None:
        desc = f"maven: kafka {settings.stack.kafka_version} artifacts downloaded"
        with tqdm(desc=desc, unit=" file") as bar:
            try:
                jars = fetch(settings, on_download=lambda _: bar.update(1))
            except StackError as exc:
                raise click.ClickException(str(exc)) from None
    size = sum(j.stat().st_size for j in jars) / 2**20
    click.echo(f"{len(jars)} jars, {size:.0f} MiB in {jars[0].parent}")


@stack_group.command("classpath")
@click.pass_context
def classpath_cmd(ctx: click.Context) -> None:
    """Print the Kafka class path (fetching it if needed), to run Kafka's own tools, e.g.

    java -cp "$(diam stack classpath)" org.apache.kafka.tools.consumer.ConsoleConsumer
    --bootstrap-server 127.0.0.1:9192 --topic diam.deadletter --from-beginning
    """
    from diam.stack import StackError, fetch

    try:
        jars = fetch(get_settings(ctx))
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(os.pathsep.join(str(j) for j in jars))


COMMANDS = [stack_group]
