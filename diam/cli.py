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
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.pass_context
def main(ctx: click.Context) -> None:
    """diam-stream: streaming online learning for multi-interest recommendation.

    Click events on Kafka are consumed by a Bytewax dataflow that keeps every user's interest
    vectors and diversity preference fresh in Redis. Settings come from DIAM_* environment
    variables over an optional diam.toml over defaults that point at the local stack
    (`diam stack up`).

    Typical first run:  diam stack up && diam data prepare ml-100k && diam produce && diam run
    """
    ctx.ensure_object(dict)


for _area in (stack, data, produce, run, model, stream_eval, snapshot, serve, replay, drift,
              inspect, forget, retrain):
    for _cmd in _area.COMMANDS:
        main.add_command(_cmd)
