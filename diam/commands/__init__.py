"""Subcommands of ``diam``, one module per area, each exposing ``COMMANDS`` (``diam.cli``
registers them). Commands parse options and print; ``diam.app`` builds what they run."""

from __future__ import annotations

import click

from diam.settings import Settings, load_settings

__all__ = ["get_settings"]


def get_settings(ctx: click.Context) -> Settings:
    """The settings of this invocation, read once."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    settings: Settings = obj["settings"]
    return settings
