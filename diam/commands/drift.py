"""``diam drift run`` (the drift monitor) and ``diam drift watch`` (tail the alerts)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from diam.commands import (
    MAX_SECONDS,
    finite,
    get_settings,
    hold_metrics,
    json_text,
    metrics_hold_option,
    namespace_filter_option,
    serve_registry,
    stop_on_signals,
    topic_name,
)
from diam.settings import Settings, env_names
from streams.config import DriftConfig

OFF = "off"
"""What a count option of ``diam drift run`` takes for the setting's None (never alert)."""

class _CountOrOff(click.ParamType):
    """A count threshold of the drift monitor: an integer >= 1, or ``off`` (the setting's None:
    that alert is never raised)."""

    name = "N|off"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == OFF:
            return value
        text = str(value).strip()
        if text.lower() == OFF:
            return OFF
        try:
            count = int(text)
        except ValueError:
            self.fail(f"{value!r}: expected a count >= 1 or {OFF!r}", param, ctx)
        if count < 1:
            self.fail(f"{value!r}: expected a count >= 1 or {OFF!r}", param, ctx)
        return count


COUNT_OR_OFF = _CountOrOff()

_OPTIONS: dict[str, tuple[str, int]] = {}
"""``diam drift run``'s threshold options: click parameter name -> (field of
:class:`streams.config.DriftConfig`, its units per the option's unit), filled by
:func:`drift_option`, read by :func:`drift_config`."""


def drift_option(flag: str, field: str, type_: click.ParamType, text: str,
                 scale: int = 1) -> Callable[[Any], Any]:
    """An option of ``diam drift run`` that overrides the setting ``drift.<field>`` for one
    run. It has no default of its own: left out, the settings' value stands (``[drift]`` in
    diam.toml, ``DIAM_DRIFT_*``), and the help says which setting and its built-in value.
    ``scale``: setting units per option unit (1000 for an option in seconds of a setting in
    ms)."""
    info = DriftConfig.model_fields[field]
    env = next(k for k, v in env_names(Settings).items() if v == ("drift", field))
    builtin = OFF if info.default is None else f"{info.default:g}" if isinstance(
        info.default, float) else str(info.default)
    unit = " ms" if scale == 1000 else ""
    _OPTIONS[flag.lstrip("-").replace("-", "_")] = (field, scale)
    return click.option(flag, type=type_, default=None,
                        callback=finite if isinstance(type_, click.FloatRange) else None,
                        help=f"{text} [default: settings drift.{field} ({builtin}{unit}), "
                             f"{env}]")


def drift_config(base: DriftConfig, given: Mapping[str, object]) -> DriftConfig:
    """The monitor's configuration: the settings' ``base`` (``Settings.drift``) with every
    threshold option that was given (``given``: click parameter name -> value, None: left
    out) in its place, validated by the model. An option in seconds becomes whole ms,
    rounded (1.001 s is 1001 ms; int() made it 1000).

    >>> cfg = drift_config(DriftConfig(user_changes=2), {"window_s": 1.001, "guard_trips": "off",
    ...                                                 "user_changes": None})
    >>> cfg.window_ms, cfg.guard_trips, cfg.user_changes, cfg.rollbacks
    (1001, None, 2, 20)
    """
    update: dict[str, object] = {}
    for name, value in given.items():
        field, scale = _OPTIONS[name]
        if value is None:
            continue
        if value == OFF:
            update[field] = None
        elif scale != 1:
            update[field] = round(float(value) * scale)  # type: ignore[arg-type]
        else:
            update[field] = value
    try:
        return DriftConfig.model_validate({**base.model_dump(), **update})
    except ValidationError as exc:  # the options' types admit what the model does; kept honest
        raise click.UsageError("; ".join(f"drift.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                         for e in exc.errors())) from None


def describe(cfg: DriftConfig) -> str:
    """The configuration in force, for the start line, each threshold by its setting's name
    (an operator sees what a DIAM_DRIFT_* or an option changed).

    >>> describe(DriftConfig())  # doctest: +NORMALIZE_WHITESPACE
    'window 60s, lateness 5s; thresholds user_changes 4, flip_reversals 2, d_swing 0.4,
     guard_trips 100, rollbacks 20, freezes 20, k_changes off, ph_delta 0.5, ph_threshold 8,
     ph_min_windows 10, top_n 5'
    """
    def shown(v: object) -> str:
        return OFF if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    rest = cfg.model_dump(exclude={"window_ms", "lateness_ms"})
    return (f"window {cfg.window_ms / 1000:g}s, lateness {cfg.lateness_ms / 1000:g}s; "
            "thresholds " + ", ".join(f"{k} {shown(v)}" for k, v in rest.items()))


@click.group("drift")
def drift() -> None:
    """Monitor K_u instability, d_u swings and guard trips of the online learner.

    `run` consumes the drift topic (settings kafka.drift_topic) and aggregates per tumbling
    event-time window; alerts go to the alerts topic (settings kafka.alerts_topic) and to
    Prometheus metrics. `watch` prints the
    alerts as they arrive.
    """


@drift.command("run")
@click.option("--topic", default=None, callback=topic_name,
              help="Drift topic to read [default: settings kafka.drift_topic]. A replay's "
              "drift events are in <drift topic>.replay.<namespace>.")
@namespace_filter_option("the drift events", "Runs into several namespaces share the drift "
                         "topic; the alerts say the namespace.")
@click.option("--alerts-topic", default=None, callback=topic_name,
              help="Where alerts go [default: settings kafka.alerts_topic].")
@drift_option("--window-s", "window_ms", click.FloatRange(min=0.001, max=MAX_SECONDS),
              "Tumbling window length, in event time, in seconds.", scale=1000)
@drift_option("--lateness-s", "lateness_ms", click.FloatRange(min=0, max=MAX_SECONDS),
              "How far (event time, in seconds) behind its user's newest event, and for the "
              "global counts every partition's, a record may arrive and still count in its "
              "window.", scale=1000)
@drift_option("--flip-reversals", "flip_reversals", click.IntRange(min=1),
              "Reversals of one user's K_u (A->B->A) in a window that raise k_flip_flop.")
@drift_option("--user-changes", "user_changes", click.IntRange(min=1),
              "K_u changes of one user in a window that raise k_churn.")
@drift_option("--d-swing", "d_swing", click.FloatRange(min=0, min_open=True),
              "max-min of one user's d_u in a window that raises d_swing.")
@drift_option("--guard-trips", "guard_trips", COUNT_OR_OFF,
              "Guard trips in a window (all users) that raise guard_trips; off: never.")
@drift_option("--rollbacks", "rollbacks", COUNT_OR_OFF,
              "Rollbacks in a window (all users) that raise rollbacks; off: never.")
@drift_option("--freezes", "freezes", COUNT_OR_OFF,
              "Freezes (rate-limited users) in a window that raise freezes; off: never.")
@drift_option("--k-changes", "k_changes", COUNT_OR_OFF,
              "K_u changes in a window (all users) that raise k_change_rate; off: the rate is "
              "left to the Page-Hinkley detector (k_change_drift).")
@drift_option("--ph-delta", "ph_delta", click.FloatRange(min=0),
              "Page-Hinkley allowance per window, in standard deviations of the stabilised "
              "K_u change count.")
@drift_option("--ph-threshold", "ph_threshold", click.FloatRange(min=0, min_open=True),
              "Page-Hinkley threshold (same units) that raises k_change_drift.")
@drift_option("--ph-min-windows", "ph_min_windows", click.IntRange(min=1),
              "Windows seen before the detector may fire.")
@drift_option("--top-n", "top_n", click.IntRange(min=1), "Users listed in an alert.")
@click.option("--from-beginning/--from-end", default=False, show_default=True,
              help="Read the drift topic from its start, or only what arrives from now on. "
              "With a --recovery-dir that holds a position, only for partitions it has none for.")
@click.option("--bounded/--tail", default=False, show_default=True,
              help="Stop at the end of the topic as seen at start, or keep tailing it.")
@click.option("--recovery-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Bytewax recovery store of the monitor (created on first use): a restart "
              "resumes where the last run stopped, its windows, the detector and what it saw of "
              "each user to tell repeats included, and accounts the drift events written while "
              "it was down. Without it a restart "
              "starts at the topic's end (--from-end: those events are skipped) or its start "
              "(--from-beginning: everything again). One store per drift topic (a topic deleted "
              "and re-created since is another: refused), namespace and "
              "window length (--window-s, settings drift.window_ms) once it holds a position (a "
              "store whose runs never got that far, "
              "e.g. refused for a misspelt --topic, is claimed by the next run); not a diam "
              "run store.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (/metrics); 0 picks a free port (printed).")
@metrics_hold_option("a stop by SIGINT/SIGTERM")
@click.option("--idle-close-s", type=click.FloatRange(min=0, min_open=True, max=MAX_SECONDS),
              default=10.0, callback=finite, show_default=True, help="Close open windows after this much wall time without input.")
@click.option("--summaries", is_flag=True, help="Also print every closed window's aggregates.")
@click.pass_context
def run_cmd(ctx: click.Context, topic: str | None, namespace: str | None,
            alerts_topic: str | None, from_beginning: bool, bounded: bool,
            recovery_dir: Path | None, metrics_port: int | None, metrics_hold: float,
            idle_close_s: float, summaries: bool, **thresholds: object) -> None:
    """Run the drift monitor: windows, per-user and global alerts, a Page-Hinkley detector.

    Per window: K_u changes (global and per user), users whose K_u flips back and forth,
    d_u swing, guard trips, rollbacks and freezes. Every threshold and the window are the
    settings' ([drift] in diam.toml, DIAM_DRIFT_*); an option overrides its setting for this
    run, and the start line on stderr says the values in force. Per-user alerts fire as soon as a user crosses
    a threshold; global ones when the window closes. Each alert is printed and sent to the
    alerts topic as JSON {kind, window, value, threshold, top_users, seq, ts_ms, detail, source,
    namespace} (source: the drift topic read; namespace: with --namespace). A user is a user
    of one namespace: two runs' user u1 are counted apart, and each of top_users says its
    namespace. In the K_u alerts (k_flip_flop, k_churn, k_change_rate, k_change_drift) each of
    top_users carries its last K_u change in the window as k_from and k_to. seq is the place in the drift topic
    of the record that raised the alert (offset x 1024 + partition + 1; for a window's
    alert the newest record in its counts), whatever order the partitions are read in and
    however many the topic has (one of more than 1024 partitions is refused): a run
    resumed from its --recovery-dir goes on where the last one stopped (an alert of its last
    second before a crash may come again, with the same seq, even after a kill -9), and a run
    over the same records (--from-beginning again) gives the same per-user alerts with the same
    seq; key alerts on (source, seq, kind). Without --recovery-dir nothing is resumed: a restart
    reads from the topic's end (the events written meanwhile are skipped) or, with
    --from-beginning, everything again.

    Late events are judged per user: an event is dropped and counted as late only when its
    user's own newer events have passed its window's end by --lateness-s (a user's events come
    in order, so only one going back). A window's global counts (guard trips, rollbacks,
    freezes, k_change_rate, the detector) close once every partition's event time has passed
    its end by --lateness-s; an event that comes after that still counts for its user, not in
    them: the learner writes a batch user by user (a later user's earlier events follow), and
    a replay's drift topic interleaves its partitions unevenly. At the end one line on stderr
    gives the records read, the ones not drift events, those of other namespaces, duplicates,
    late ones dropped and the alerts raised.

    The broker is asked first: one that does not answer within 5 s
    (streams.kafka_io.BROKER_ANSWER_S) is an error naming it, before anything starts.
    """
    from confluent_kafka import KafkaException

    from diam.commands.run import require_broker
    from streams.drift import QUIET_CAP, Alert, format_alert
    from streams.drift_flow import DriftMetrics, DriftTopicUnusable, StoreMismatch, run_drift
    from streams.kafka_io import UnknownTopic
    from streams.runner import RecoveryUnusable

    s = get_settings(ctx)
    cfg = drift_config(s.drift, thresholds)
    metrics = DriftMetrics()
    if metrics_port is not None:
        bound = serve_registry(metrics.registry, metrics_port)
        click.echo(f"metrics on http://127.0.0.1:{bound}/metrics", err=True)

    def show(out: object) -> None:
        if isinstance(out, Alert):
            click.echo("ALERT " + format_alert(out.to_dict()))
            return
        skipped = getattr(out, "quiet_skipped", 0)
        if skipped:  # a jump in event time: the windows before the last QUIET_CAP are skipped
            click.echo(f"drift monitor: {skipped} windows without drift events before "
                       f"{_when(getattr(out, 'start_ms', 0))} skipped (event time jumped "
                       f"forward; the last {QUIET_CAP} closed as zeros)", err=True)
        if summaries:
            click.echo("window " + json_text(dataclasses.asdict(out)))  # type: ignore[call-overload]

    topic = topic if topic is not None else s.kafka.drift_topic
    alerts = alerts_topic if alerts_topic is not None else s.kafka.alerts_topic
    require_broker(s)  # an Error naming a broker that does not answer, before the start line
    click.echo(f"drift monitor: {topic}" + (f" (namespace {namespace})" if namespace else "")
               + f" -> {alerts} " + describe(cfg) + (" (bounded)" if bounded else "")
               + (f" recovery={recovery_dir.resolve()}" if recovery_dir is not None else ""),
               err=True)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        run_drift(s.kafka, cfg, topic=topic, alerts_topic=alerts, bounded=bounded,
                  from_end=not from_beginning, metrics=metrics, on_output=show,
                  idle_close_s=idle_close_s, namespace=namespace, stop=stop,
                  recovery_dir=recovery_dir)
    except KeyboardInterrupt:  # a signal handler other than ours (an embedding program)
        click.echo(metrics.summary_line("stopped"), err=True)
        hold_metrics(metrics_port, metrics_hold)
        return
    except UnknownTopic as exc:  # --bounded reads what a topic holds; a typo is not "no drift"
        raise click.BadParameter(f"{exc}; nothing to read", param_hint="--topic") from None
    except DriftTopicUnusable as exc:
        raise click.BadParameter(str(exc), param_hint="--topic") from None
    except (StoreMismatch, RecoveryUnusable) as exc:
        raise click.BadParameter(str(exc), param_hint="--recovery-dir") from None
    except (KafkaException, RuntimeError, TimeoutError) as exc:
        raise dataflow_error(exc, s.kafka.bootstrap) from None
    click.echo(metrics.summary_line("stopped" if stop.is_set() else "done"), err=True)
    hold_metrics(metrics_port, metrics_hold)


@drift.command("watch")
@click.option("--topic", default=None, callback=topic_name,
              help="Alerts topic [default: settings kafka.alerts_topic].")
@click.option("--from-beginning/--from-end", default=False, show_default=True,
              help="Show the alerts already in the topic too.")
@click.option("--exit-at-end", is_flag=True, help="Stop once the alerts present at start are shown (those committed then: "
              "not a transaction still open).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON records.")
@namespace_filter_option("the alerts", "Alerts of a monitor of every namespace (without diam "
                         "drift run --namespace) are shown too.")
@click.pass_context
def watch(ctx: click.Context, topic: str | None, from_beginning: bool, exit_at_end: bool,
          as_json: bool, namespace: str | None) -> None:
    """Tail the alerts topic in readable form (one line per alert; Ctrl-C to stop)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from streams.drift import format_alert
    from streams.kafka_io import UnknownTopic, ensure_topic, of_namespace, read_to_ends, watermarks

    s = get_settings(ctx)
    topic = topic if topic is not None else s.kafka.alerts_topic
    try:
        if not exit_at_end:  # tails: the monitor may not have written an alert yet
            ensure_topic(s.kafka, topic)
        marks = watermarks(s.kafka, topic)  # UnknownTopic: never creates it
    except UnknownTopic as exc:  # --exit-at-end reads what it holds: a typo is not "no alerts"
        raise click.BadParameter(f"{exc}; nothing to show", param_hint="--topic") from None
    except (KafkaException, RuntimeError, TimeoutError) as exc:
        raise click.ClickException(f"Kafka at {s.kafka.bootstrap}: {exc}") from None
    conf = s.kafka.client_config()
    # a low offset that retention deletes before the assignment: on from the oldest left, not
    # from the end (librdkafka's default), which would skip every alert still held
    conf.update({"group.id": "diam-drift-watch", "enable.auto.commit": "false",
                 "auto.offset.reset": "earliest" if from_beginning else "latest"})
    consumer = Consumer(conf)
    consumer.assign([TopicPartition(topic, p, lo if from_beginning else hi)
                     for p, (lo, hi) in marks.items()])
    pending = {p: hi for p, (lo, hi) in marks.items() if from_beginning and hi > lo}
    try:
        while not (exit_at_end and not pending):
            for m in consumer.consume(100, 0.5):
                if m.error() is not None:
                    continue
                raw = m.value() or b""
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                ns = body.get("namespace") if isinstance(body, dict) else None
                if not of_namespace(ns if isinstance(ns, str) else None, namespace):
                    continue
                if as_json:
                    click.echo(raw.decode(errors="replace"))
                    continue
                try:
                    click.echo(format_alert(body))  # type: ignore[arg-type]
                except (TypeError, AttributeError, KeyError, ValueError, OverflowError):
                    # ValueError: a value not a number ({"value": "abc"}) or a time no date
                    # has; OverflowError: a time past the platform's (start_ms 1e300)
                    click.echo(f"(not an alert) {raw[:200]!r}")
            if exit_at_end and pending:  # the position: also where no record ends it (a marker)
                for part in read_to_ends(consumer, topic, pending):
                    del pending[part]
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def dataflow_error(exc: BaseException, bootstrap: str) -> click.ClickException:
    """The Error: line of a monitor run that failed with ``exc``. Bytewax wraps an error raised
    in a step in a RuntimeError (``error calling ... in step ...``) whose causes lead to the
    error itself: a Kafka client's (``KafkaException``, a ``TimeoutError``, the plain
    RuntimeError the Kafka source and sink raise) names the broker; any other is a fault of
    the monitor's code or input, named as such with its type, message and where it was raised
    (a broker is not to blame for it).

    >>> dataflow_error(RuntimeError("consuming t[0]: broker down"), "k:9092").message
    'Kafka at k:9092: consuming t[0]: broker down'
    """
    from confluent_kafka import KafkaException

    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, (KafkaException, TimeoutError)) or type(root) is RuntimeError:
        return click.ClickException(f"Kafka at {bootstrap}: {root}")
    where = ""
    tb = root.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
    step = f" ({exc})" if root is not exc else ""
    return click.ClickException(f"the drift monitor failed: {type(root).__name__}: {root}"
                                f"{where}{step}")


def _when(ms: int) -> str:
    """An event time in ms as an ISO-8601 UTC second."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


COMMANDS = [drift]
