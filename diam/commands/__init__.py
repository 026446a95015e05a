"""Subcommands of ``diam``, one module per area, each exposing ``COMMANDS`` (``diam.cli``
registers them). Commands parse options and print; ``diam.app`` builds what they run.

Bad input ends in ``Error: ...`` and exit code 1, never a traceback: :func:`get_settings` turns
a refused setting into that, and :func:`unreachable_service` words a Redis or Kafka that does not
answer (``diam.cli`` applies it to whatever a command lets escape)."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from diam.settings import Settings, SettingsInputError, load_settings

__all__ = ["MAX_SECONDS", "default_dataset", "finite", "get_settings", "hold_metrics",
           "kafka_unusable", "metrics_hold_option", "namespace_filter_option", "namespace_of", "namespace_option",
           "not_empty", "output_file", "serve_registry", "redis_unusable", "shown", "stop_on_signals",
           "unreachable_service", "write_failed"]

MAX_SECONDS = 315_360_000.0
"""Ten years: the most a duration option takes (a longer wait or window overflows a timedelta
or a sleep instead of doing anything anyone waits for)."""


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback: NaN slips through a FloatRange's bounds and would end in a traceback."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value}: must be a finite number")
    return value


def metrics_hold_option(stops: str) -> Callable[[Any], Any]:
    """``--metrics-hold SECONDS`` of a command that serves metrics (``--metrics-port``) and
    ends (``stops``: how it is stopped, in words), paired with :func:`hold_metrics`."""
    return click.option(
        "--metrics-hold", type=click.FloatRange(min=0, max=MAX_SECONDS), default=0.0,
        callback=finite, show_default=True,
        help=f"Seconds to keep serving metrics (with --metrics-port) after the run ends (a "
             f"bounded run's end, or {stops}), so that a scraper reads the final counts; a "
             "second Ctrl-C ends the wait.")


def hold_metrics(metrics_port: int | None, seconds: float) -> None:
    """Keep the metrics endpoint (a daemon thread: it ends with the process) up ``seconds``
    after a run, when it serves one (``--metrics-hold``); Ctrl-C ends the wait, not an error,
    and SIGTERM ends the process (the run's :func:`stop_on_signals` handlers would only set a
    stop nobody reads any more)."""
    if metrics_port is None or seconds <= 0:
        return
    _restore_signals({signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL})
    sys.stdout.flush()
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:  # asked to stop waiting
        pass

DEFAULT_DATASET_HELP = "<data_dir>/ml-100k"
"""How help texts name :func:`default_dataset` (``data_dir`` is DIAM_DATA_DIR)."""


def get_settings(ctx: click.Context) -> Settings:
    """The settings of this invocation, read once. A refused setting (environment or
    diam.toml) is a ClickException naming it and what was wrong."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings()
        except SettingsInputError as exc:
            raise click.ClickException(str(exc)) from None
    settings: Settings = obj["settings"]
    return settings


def stop_on_signals(stop: threading.Event, echo=click.echo,
                    waiting: Callable[[], str | None] = lambda: None,
                    forced: Callable[[], None] = lambda: None) -> None:
    """SIGINT (Ctrl-C) and SIGTERM ask a run (``diam run``, ``diam drift run``) to stop at a
    clean point: ``stop`` is set, the input ends at its next batch, the last epoch closes (what
    it produced is delivered) and the run returns normally (exit 0). A second signal stops the
    process at once (``diam run``'s recovery store still resumes it), after ``forced()`` (what
    the command says of a run stopped at once: ``diam run``'s summary line and the pushes
    Redis never got; an error in it does not keep the process alive). While ``waiting()`` says
    what the run still waits for before it reads anything (a cluster's other processes), the
    first signal says the run stops now, not at a batch: the run sees ``stop`` in that wait.
    The handlers before are put back when the command's context closes (a program that invokes
    the command in process, a test, gets its own back); :func:`hold_metrics` puts the defaults
    back for its wait."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            echo(f"{name} again: stopping now", err=True)
            try:
                forced()
            except Exception as exc:  # the stop the user asked for comes first
                echo(f"(could not say what the run did: {type(exc).__name__}: {exc})", err=True)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop.set()
        if (what := waiting()) is not None:
            echo(f"{name}: stopping now, {what}: nothing was read, so nothing is lost", err=True)
            return
        echo(f"{name}: stopping at the next batch (send it again to stop at once)", err=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(lambda: _restore_signals(previous))


def _restore_signals(handlers: dict[signal.Signals, Any]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, h in handlers.items():
        if h is not None:  # None: installed from C, cannot be put back from Python
            signal.signal(sig, h)


def namespace_option(role: str) -> Callable[[Any], Any]:
    """``--namespace NS`` of a command that works on one Redis namespace, ``role`` saying what
    it does there ("to write", "to read users from"); :func:`namespace_of` resolves it. Commands
    on two namespaces (``diam diff A B``) or on one they delete (``diam drop NS``) name them as
    arguments instead, ``diam replay`` requires its own, and the readers of records several
    namespaces share filter by one (:func:`namespace_filter_option`)."""
    return click.option("--namespace", default=None,
                        help=f"Redis namespace {role} (default: settings redis.namespace, "
                             "DIAM_REDIS_NAMESPACE).")


def namespace_filter_option(what: str, extra: str = "") -> Callable[[Any], Any]:
    """``--namespace NS`` of a command that reads records runs into several Redis namespaces
    share (drift events, dead letters, alerts: ``streams.kafka_io.of_namespace``): only ``what``
    of runs into NS; records written before they named their namespace count for every one.
    A malformed NS is a usage error (not "nothing of that namespace")."""
    return click.option("--namespace", default=None, callback=_filter_namespace,
                        help=f"Only {what} of runs into this Redis namespace (default: every "
                             f"run's; those written before records named their namespace count "
                             f"for every namespace).{(' ' + extra) if extra else ''}")


def _filter_namespace(ctx: click.Context, param: click.Parameter, value: str | None
                      ) -> str | None:
    """Click callback of :func:`namespace_filter_option`: the namespace rule, no default."""
    from serving_cache.keys import validate_namespace

    if value is None:
        return None
    try:
        return validate_namespace(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def namespace_of(settings: Settings, namespace: str | None) -> str:
    """The Redis namespace a ``--namespace`` option names (None: settings redis.namespace); a
    malformed one is a usage error naming the option, or the setting when it came from there.
    An empty option is malformed, never "not given": ``--namespace "$NS"`` with NS unset must
    not write into the serving namespace."""
    from serving_cache.keys import validate_namespace

    hint = "--namespace" if namespace is not None else "DIAM_REDIS_NAMESPACE (redis.namespace)"
    try:
        return validate_namespace(namespace if namespace is not None else settings.redis.namespace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for options whose absence means a default (a topic, a namespace): an
    empty value (``--topic "$T"`` with T unset) is a usage error, never the default.

    >>> not_empty(None, None, "clicks")
    'clicks'
    >>> not_empty(None, None, "  ")
    Traceback (most recent call last):
    ...
    click.exceptions.BadParameter: must not be empty (leave the option out for its default)
    """
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty (leave the option out for its default)")
    return value


def topic_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback of a topic option: not empty (:func:`not_empty`) and a legal Kafka name
    (:func:`streams.config.topic_name_problem`, the rule ``KafkaConfig``'s topics are checked
    with too), so 'bad topic' is a usage error naming the option, not a broker that "is not
    usable"."""
    from streams.config import topic_name_problem

    value = not_empty(ctx, param, value)
    problem = None if value is None else topic_name_problem(value)
    if problem is not None:
        raise click.BadParameter(problem)
    return value


def json_text(obj: object, indent: int | None = None, sort_keys: bool = False) -> str:
    """``obj`` as JSON with NaN (a mean over no users, an interval over none) as null:
    ``json.dumps`` would write ``NaN``, which is not JSON and which strict parsers (``jq``,
    browsers) refuse. The one rule of every command's ``--json``, shared with the ``/ui`` routes
    (:func:`serving_cache.json_safe.nan_to_none`).

    >>> json_text({"d_mean": float("nan"), "n": [1.5]})
    '{"d_mean": null, "n": [1.5]}'
    """
    import json

    from serving_cache.json_safe import nan_to_none

    return json.dumps(nan_to_none(obj), indent=indent, allow_nan=False, sort_keys=sort_keys)


def shown(text: str) -> str:
    """``text`` for a line of a command's text output: every character a list may not show as
    it is (``streams.events.unprintable``: control characters, line and paragraph separators,
    direction overrides) written as its Python escape, so that nothing read from a checkpoint,
    a snapshot or Redis can forge rows or drive the terminal. JSON output escapes them itself.

    >>> print(shown("Scream\\n  2. Star Wars\\x1b[31m"))
    Scream\\n  2. Star Wars\\x1b[31m
    >>> shown("Am\\u00e9lie (2001)")
    'Amélie (2001)'
    """
    from streams.events import unprintable

    if unprintable(text, spaces=True) is None:
        return text
    return "".join(c if unprintable(c, spaces=True) is None
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def echo_json(obj: object, indent: int | None = None) -> None:
    """Print :func:`json_text` of ``obj``."""
    click.echo(json_text(obj, indent))


def note_empty_namespace(ns: str) -> None:
    """The one wording of "this namespace is empty": an empty namespace and a typo'd one look
    alike, so a command whose answer is empty because of that says so (on stderr)."""
    click.echo(f"note: namespace {ns!r} holds no users (not written by a dataflow yet, or "
               "a typo?)", err=True)


def output_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Click callback for an option naming a file to write (--csv, --plot; its type refuses a
    directory): the file's directory must exist, checked before any work is done, so a typo
    is a usage error naming the option rather than a FileNotFoundError after the work. A
    path through a file (``afile/x.json``) says that file is not a directory."""
    if value is None:
        return None
    parent = value.parent
    if not parent.is_dir():
        above = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if above is not None and not above.is_dir():
            raise click.BadParameter(f"cannot write {value}: {above} is not a directory")
        raise click.BadParameter(f"cannot write {value}: directory {parent} does not exist")
    return value


def plot_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """:func:`output_file` for a figure (--plot): its suffix must be a format matplotlib writes
    (png, pdf, svg...), checked before any work; none: png."""
    value = output_file(ctx, param, value)
    if value is None or not value.suffix:
        return value
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if value.suffix[1:].lower() not in kinds:
        raise click.BadParameter(f"cannot plot to {value.name}: matplotlib writes "
                                 f"{', '.join('.' + k for k in sorted(kinds))}")
    return value


def write_failed(path: Path | str, exc: OSError) -> click.ClickException:
    """The error for an output file that could not be written (permissions, a full disk)."""
    return click.ClickException(f"cannot write {path}: {exc.strerror or exc}")


def serve_registry(registry: object, port: int) -> int:
    """Serve a Prometheus ``registry`` over HTTP on ``port`` (0: any free port) for a command
    (``diam run``, ``drift run``, ``retrain``); returns the port bound. A port that is taken,
    or not ours to bind, is an ``Error:`` naming it."""
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, registry=registry)  # type: ignore[arg-type]
    except OSError as exc:
        raise click.ClickException(f"cannot serve metrics on port {port}: {exc}") from None
    return int(server.server_port)


def default_dataset(settings: Settings) -> Path:
    """The prepared dataset a command reads when given none: ml-100k under ``data_dir``."""
    return Path(settings.data_dir) / "ml-100k"


def unreachable_service(exc: BaseException, settings: Settings | None) -> click.ClickException | None:
    """The error to print for ``exc`` when it says Redis or Kafka did not answer (a connection
    refused or timed out, a Redis Cluster none of whose nodes answers, a KafkaException, a
    topic read that stalled) or that their settings cannot work (``RedisSettingsError``, a
    refused login, a cluster client's refused configuration), else None: anything else is a
    bug to show whole."""
    import redis
    from confluent_kafka import KafkaException

    from serving_cache.config import RedisSettingsError
    from serving_cache.outage import unreachable
    from streams.kafka_io import RangeStalled

    if isinstance(exc, RedisSettingsError):
        return click.ClickException(str(exc))
    if (isinstance(exc, redis.ConnectionError | redis.TimeoutError) or unreachable(exc)
            or type(exc) is redis.exceptions.RedisClusterException):  # a refused configuration
        return redis_unusable(settings, exc)
    if isinstance(exc, KafkaException | RangeStalled):
        if isinstance(exc, KafkaException) and _kafka_config_error(exc):
            return click.ClickException(
                f"the Kafka client refused its configuration ({exc}); check DIAM_KAFKA_EXTRA "
                "and the other DIAM_KAFKA_* settings")
        return kafka_unusable(settings, exc)
    return None


def _kafka_config_error(exc: BaseException) -> bool:
    """Whether a KafkaException is librdkafka refusing a client property (an unknown name or a
    bad value), not a broker that failed to answer."""
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError._INVALID_ARG


def redis_unusable(settings: Settings | None, exc: BaseException) -> click.ClickException:
    """The one wording of "Redis failed this command" (the URL without its password). The
    hint after it fits the failure: where the server did not answer
    (:func:`serving_cache.outage.unreachable`), start the stack or check the URL; where it
    refused the login, the credentials; where it answered and refused the command (OOM,
    READONLY, a permission), none: the server's own words say it."""
    import redis

    from serving_cache.outage import unreachable

    url = "the configured URL" if settings is None else _without_password(settings.redis.url)
    said = f"Redis at {url} is not usable ({exc})"
    if isinstance(exc, redis.AuthenticationError):
        return click.ClickException(f"{said}; check the credentials in DIAM_REDIS_URL / "
                                    "DIAM_REDIS_USERNAME / DIAM_REDIS_PASSWORD")
    if not unreachable(exc):
        return click.ClickException(said)
    if settings is None:
        return click.ClickException(f"{said}; is the stack up? (`diam stack up`)")
    from diam.stack import addresses

    return click.ClickException(f"{said}; " + _what_to_check(
        "DIAM_REDIS_URL", url, _same_servers(_redis_server(settings.redis.url),
                                             _redis_server(addresses(settings)[1]))))


def kafka_unusable(settings: Settings | None, exc: BaseException) -> click.ClickException:
    """The one wording of "Kafka failed this command"."""
    if settings is None:
        return click.ClickException(f"Kafka at the configured bootstrap is not usable ({exc}); "
                                    "is the stack up? (`diam stack up`)")
    from diam.stack import addresses

    where = settings.kafka.bootstrap
    return click.ClickException(f"Kafka at {where} is not usable ({exc}); " + _what_to_check(
        "DIAM_KAFKA_BOOTSTRAP", where, _same_servers(where, addresses(settings)[0])))


def _what_to_check(variable: str, value: str, local_stack: bool) -> str:
    """The hint after a service failed: start the stack when ``value`` is the local stack's own
    address (``diam stack up`` starts exactly that), else look at the setting, which a mistyped
    host or port would leave pointing at nothing."""
    if local_stack:
        return "is the stack up? (`diam stack up`)"
    return f"check {variable}={value} (not the local stack's address)"


def _redis_server(url: str) -> str:
    """``host:port`` of a Redis URL (port 6379 when it names none; ``url`` itself when it has
    no host, a unix socket)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    try:
        port = parts.port or 6379
    except ValueError:  # a port that is not a number: not the stack's
        return url
    return f"{parts.hostname}:{port}"


def _same_servers(servers: str, stack: str) -> bool:
    """Whether every ``host:port`` in the comma-separated ``servers`` is ``stack``'s, taking
    ``localhost`` for the loopback address the stack binds.

    >>> _same_servers("localhost:9192", "127.0.0.1:9192")
    True
    >>> _same_servers("127.0.0.1:9198", "127.0.0.1:9192")
    False
    """
    def norm(server: str) -> str:
        host, _, port = server.strip().rpartition(":")
        return f"{'127.0.0.1' if host == 'localhost' else host}:{port}"

    named = [norm(s) for s in servers.split(",") if s.strip()]
    return bool(named) and all(s == norm(stack) for s in named)


def _without_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``serving_cache.config.without_password``,
    the one rule)."""
    from serving_cache.config import without_password

    return without_password(url)


def service_logging(fmt: str) -> None:
    """INFO logging for a long-running command (run, retrain, snapshot watch), in ``fmt``.
    FAISS's loader logs at INFO which instruction set it loaded and a failed AVX512 probe,
    on every start: nothing an operator acts on, so it is kept to warnings."""
    import logging

    logging.basicConfig(level=logging.INFO, format=fmt)
    logging.getLogger("faiss").setLevel(logging.WARNING)


def progress_option(what: str = "Show a progress bar."):  # type: ignore[no-untyped-def]
    """``--progress/--no-progress`` for every command with long work: on by default when
    stderr is a terminal, off when it goes to a file or a pipe (a bar's carriage-return
    redraws fill a log)."""
    import sys

    def resolve(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool:
        return sys.stderr.isatty() if value is None else value

    return click.option("--progress/--no-progress", default=None, callback=resolve,
                        help=f"{what} [default: when stderr is a terminal]")
