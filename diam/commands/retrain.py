"""``diam retrain``: the retrain service (or one retrain with ``--once``)."""

from __future__ import annotations

import json

import click

from diam.commands import (
    get_settings,
    namespace_of,
    namespace_option,
    serve_registry,
    service_logging,
    topic_name,
    unreachable_service,
)


@click.command("retrain")
@click.option("--once", is_flag=True,
              help="Run one retrain now and exit (for cron); exit status 0 whether the candidate "
                   "was published or refused, 1 on an error, a publish that Redis did not "
                   "take (on disk, not announced), or a retrain refused before training "
                   "(another retrain of the snapshot store runs; the snapshot directory "
                   "cannot be used; no active version while the store holds versions or "
                   "Redis names one it lacks; no dataflow could use a model of the size it "
                   "would train at). A fresh empty store trains from scratch.")
@click.option("--topic", default=None, callback=topic_name,
              help="Clicks topic [default: settings kafka.clicks_topic].")
@namespace_option("whose active version a publish moves")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Epochs per retrain [default: settings retrain.epochs].")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port; 0 picks a free port (printed) "
                   "[default: settings retrain.metrics_port; none].")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON (only with --once).")
@click.pass_context
def retrain_cmd(ctx: click.Context, once: bool, topic: str | None, namespace: str | None,
                epochs: int | None, metrics_port: int | None, as_json: bool) -> None:
    """Retrain the base model from the clicks topic, behind a promotion gate.

    Every DIAM_RETRAIN_EVERY_EVENTS new clicks or DIAM_RETRAIN_EVERY_MINUTES (with new clicks):
    train on the newest DIAM_RETRAIN_WINDOW_EVENTS records minus the newest
    DIAM_RETRAIN_HOLDOUT_FRACTION of them, warm-started from the active snapshot; compare
    candidate and active on that held-out slice (Recall@20, Entropy@20); publish only when the
    candidate is within the gate's tolerances. Every decision goes to the diam.models topic, to
    Prometheus and to the log; refused candidates stay in DIAM_RETRAIN_CANDIDATES_DIR.
    """

    from diam.retrain import CannotRetrain, Retrainer
    from snapshotter.store import SnapshotError

    if as_json and not once:  # the service's decisions go to diam.models and the log
        raise click.UsageError("--json needs --once: the service (without --once) writes each "
                               "decision to the models topic and the log, not to stdout")
    s = get_settings(ctx)
    # checked before anything is trained: a bad namespace would otherwise fail only at the
    # Redis step, after a publish on disk
    ns = namespace_of(s, namespace)
    if topic is not None:  # the one rule of a topic read as clicks (streams.clicks_topic)
        from diam.commands.run import refuse_input

        refuse_input(s, topic)
    if epochs is not None:
        s = s.model_copy(update={"retrain": s.retrain.model_copy(update={"epochs": epochs})})
    service_logging("%(asctime)s %(name)s %(message)s")
    svc = Retrainer(s, topic=topic, namespace=ns,
                    log_line=lambda line: click.echo(line, err=True))
    port = metrics_port if metrics_port is not None else s.retrain.metrics_port
    if port is not None:
        bound = serve_registry(svc.metrics.registry, port)
        click.echo(f"Prometheus metrics on :{bound}/metrics", err=True)
    try:
        if not once:
            svc.serve()
            return
        d = svc.run_once()
    except (SnapshotError, CannotRetrain) as exc:
        # nothing trained, or a store refusing a step (its lock held by another retrain, a
        # directory it cannot use, a damaged pointer): the message says why and what to do
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        if not once:
            raise
        # a broker or Redis that did not answer is worded as in every other command (naming
        # the address and what to check); anything else is the retrain's own failure
        raise (unreachable_service(exc, s)
               or click.ClickException(f"retrain failed: {type(exc).__name__}: {exc}")) from None
    if as_json:
        click.echo(json.dumps(json.loads(d.to_json()), indent=1, sort_keys=True))
    if not d.published and not d.window_done:  # a setting to fix (Decision.window_done)
        raise click.ClickException(f"retrain {d.candidate}: {d.reason}; nothing published, "
                                   "the window stays to be trained")
    if not as_json and (not d.published or d.announced):
        click.echo(f"{'published ' + str(d.version) if d.published else 'refused'}: {d.reason} "
                   f"(candidate {d.candidate_path or d.candidate}, {d.seconds['total']:.1f} s)")
    if d.published and not d.announced:
        # no service stays to retry the announcement: the operator finishes the job
        raise click.ClickException(
            f"{d.reason}. Servers keep the version Redis names until it is announced: run "
            f"`diam snapshot rollback {d.version}` (or keep `diam snapshot watch` or `diam "
            "retrain` running) once Redis answers")


COMMANDS = [retrain_cmd]
