"""The ``diam`` command line.

Each area keeps its commands in ``diam/commands/<area>.py`` and exposes them as a module-level
list ``COMMANDS``; this module only assembles them (the commands never import it). Heavy
imports (torch, faiss, bytewax) happen inside the commands, so ``diam --help`` stays fast.
"""

from __future__ import annotations

import click

from diam.commands import (
    data,
    drift,
    forget,
    inspect,
    model,
    produce,
    replay,
    retrain,
    run,
    serve,
    snapshot,
    stack,
    stream_eval,
    unreachable_service,
)


class _Main(click.Group):
    """The ``diam`` group: a Redis or Kafka that does not answer, escaping any command, ends in
    ``Error: ...`` and exit code 1 instead of a traceback (the one place that words it:
    :func:`diam.commands.unreachable_service`)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            settings = (ctx.obj or {}).get("settings")
            clean = unreachable_service(exc, settings)
            if clean is None:
                raise
            raise clean from None


@click.group(cls=_Main,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True,
              help="Print the Kafka clients' (librdkafka's) log lines, each refused connection "
                   "included; without it a broker that does not answer is one error line (in a "
                   "dataflow: one when the outage starts, one when it ends).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """diam-stream: streaming online learning for multi-interest recommendation.

    Click events on Kafka are consumed by a Bytewax dataflow that keeps every user's interest
    vectors and diversity preference fresh in Redis. Settings come from DIAM_* environment
    variables over an optional diam.toml over defaults that point at the local stack
    (`diam stack up`).

    Typical first run (`make demo` runs the whole of it, diam/resources/demo.sh):

    \b
      diam stack up
      diam data prepare ml-100k
      diam train --model diam --data data/ml-100k --out checkpoints/first --epochs 4
      diam snapshot publish checkpoints/first
      diam produce --data data/ml-100k --catalog
      diam run --bounded
      diam recommend 1 -n 10
    """
    ctx.ensure_object(dict)
    if verbose:
        from streams.kafka_log import log_clients_verbosely

        log_clients_verbosely()


for _area in (stack, data, produce, run, model, stream_eval, snapshot, serve, replay, drift,
              inspect, forget, retrain):
    for _cmd in _area.COMMANDS:
        main.add_command(_cmd)
