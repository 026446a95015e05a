"""The ``diam`` command line.

Each area keeps its commands in ``diam/commands/<area>.py`` and exposes them as a module-level
list ``COMMANDS``; this module only assembles them. Heavy imports (torch, faiss, bytewax) happen
inside the commands, so ``diam --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

from diam.settings import Settings, load_settings

_COMMAND_MODULES = (
    "stack",
    "data",
    "produce",
    "run",
    "model",
    "stream_eval",
    "snapshot",
    "serve",
    "replay",
    "drift",
    "inspect",
    "forget",
    "retrain",
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


def get_settings(ctx: click.Context) -> Settings:
    """The settings of this invocation, read once."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    settings: Settings = obj["settings"]
    return settings


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"diam.commands.{_name}")
    except ModuleNotFoundError as exc:  # an area not built yet in this checkout
        if exc.name != f"diam.commands.{_name}":
            raise
        continue
    for _cmd in _mod.COMMANDS:
        main.add_command(_cmd)
