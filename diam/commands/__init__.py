"""Subcommands of ``diam``, one module per area, each exposing ``COMMANDS``."""

__all__: list[str] = []
