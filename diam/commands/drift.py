"""``diam drift run`` (the drift monitor) and ``diam drift watch`` (tail the alerts)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import click

from diam.commands import (
    MAX_SECONDS,
    finite,
    get_settings,
    hold_metrics,
    metrics_hold_option,
    namespace_filter_option,
    serve_registry,
    stop_on_signals,
    topic_name,
)


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
@click.option("--window-s", type=click.FloatRange(min=0.001, max=MAX_SECONDS), default=60.0,
              callback=finite, show_default=True, help="Tumbling window length, in event time.")
@click.option("--lateness-s", type=click.FloatRange(min=0, max=MAX_SECONDS), default=5.0,
              callback=finite, show_default=True,
              help="How far (event time) behind its user's newest event, and for the global "
              "counts every partition's, a record may arrive and still count in its window.")
@click.option("--flip-reversals", type=click.IntRange(min=1), default=2, show_default=True,
              help="Reversals of one user's K_u (A->B->A) in a window that raise k_flip_flop.")
@click.option("--user-changes", type=click.IntRange(min=1), default=4, show_default=True,
              help="K_u changes of one user in a window that raise k_churn.")
@click.option("--d-swing", type=click.FloatRange(min=0, min_open=True), default=0.4,
              callback=finite, show_default=True, help="max-min of one user's d_u in a window that raises d_swing.")
@click.option("--from-beginning/--from-end", default=False, show_default=True,
              help="Read the drift topic from its start, or only what arrives from now on. "
              "With a --recovery-dir that holds a position, only for partitions it has none for.")
@click.option("--bounded/--tail", default=False, show_default=True,
              help="Stop at the end of the topic as seen at start, or keep tailing it.")
@click.option("--recovery-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Bytewax recovery store of the monitor (created on first use): a restart "
              "resumes where the last run stopped, its windows, repeats seen and seq included, "
              "and accounts the drift events written while it was down. Without it a restart "
              "starts at the topic's end (--from-end: those events are skipped) or its start "
              "(--from-beginning: everything again). One store per drift topic, namespace and "
              "--window-s once it holds a position (a store whose runs never got that far, "
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
            alerts_topic: str | None, window_s: float,
            lateness_s: float, flip_reversals: int, user_changes: int, d_swing: float,
            from_beginning: bool, bounded: bool, recovery_dir: Path | None,
            metrics_port: int | None, metrics_hold: float, idle_close_s: float,
            summaries: bool) -> None:
    """Run the drift monitor: windows, per-user and global alerts, a Page-Hinkley detector.

    Per window: K_u changes (global and per user), users whose K_u flips back and forth,
    d_u swing, guard trips, rollbacks and freezes. Per-user alerts fire as soon as a user crosses
    a threshold; global ones when the window closes. Each alert is printed and sent to the
    alerts topic as JSON {kind, window, value, threshold, top_users, seq, ts_ms, detail, source,
    namespace} (source: the drift topic read; namespace: with --namespace). A user is a user
    of one namespace: two runs' user u1 are counted apart, and each of top_users says its
    namespace. In the K_u alerts (k_flip_flop, k_churn, k_change_rate, k_change_drift) each of
    top_users carries its last K_u change in the window as k_from and k_to. seq is the drift topic's position
    when the alert was raised (its records before the first one this run read, plus the drift
    events read since, repeats left out): a run resumed from its --recovery-dir goes on where the
    last one stopped and numbers on from it (an alert of its last second before a crash may come again, with the same seq),
    and a run over the same records (--from-beginning again, its partitions read in the same
    interleaving) gives the same alerts with the same seq. Without --recovery-dir nothing is
    resumed: a restart reads from the topic's end (the events written meanwhile are skipped;
    seq still counts them) or, with --from-beginning, everything again.

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
    from streams.drift import Alert, DriftConfig, format_alert
    from streams.drift_flow import DriftMetrics, StoreMismatch, run_drift
    from streams.kafka_io import UnknownTopic
    from streams.runner import RecoveryUnusable

    s = get_settings(ctx)
    cfg = DriftConfig(window_ms=int(window_s * 1000), lateness_ms=int(lateness_s * 1000),
                      flip_reversals=flip_reversals, user_changes=user_changes, d_swing=d_swing)
    metrics = DriftMetrics()
    if metrics_port is not None:
        bound = serve_registry(metrics.registry, metrics_port)
        click.echo(f"metrics on http://127.0.0.1:{bound}/metrics", err=True)

    def show(out: object) -> None:
        if isinstance(out, Alert):
            click.echo("ALERT " + format_alert(out.to_dict()))
        elif summaries:
            click.echo("window " + json.dumps(dataclasses.asdict(out)))  # type: ignore[call-overload]

    topic = topic if topic is not None else s.kafka.drift_topic
    alerts = alerts_topic if alerts_topic is not None else s.kafka.alerts_topic
    require_broker(s)  # an Error naming a broker that does not answer, before the start line
    click.echo(f"drift monitor: {topic}" + (f" (namespace {namespace})" if namespace else "")
               + f" -> {alerts} window {window_s:g}s" + (" (bounded)" if bounded else "")
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
    except (StoreMismatch, RecoveryUnusable) as exc:
        raise click.BadParameter(str(exc), param_hint="--recovery-dir") from None
    except (KafkaException, RuntimeError, TimeoutError) as exc:
        raise click.ClickException(f"Kafka at {s.kafka.bootstrap}: {exc}") from None
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
                except (TypeError, AttributeError, KeyError):
                    click.echo(f"(not an alert) {raw[:200]!r}")
            if exit_at_end and pending:  # the position: also where no record ends it (a marker)
                for part in read_to_ends(consumer, topic, pending):
                    del pending[part]
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


COMMANDS = [drift]
