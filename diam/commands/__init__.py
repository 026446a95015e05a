"""Subcommands of ``diam``, one module per area, each exposing ``COMMANDS`` (``diam.cli``
registers them). Commands parse options and print; ``diam.app`` builds what they run.

Bad input ends in ``Error: ...`` and exit code 1, never a traceback: :func:`get_settings` turns
a refused setting into that, and :func:`unreachable_service` words a Redis or Kafka that does not
answer (``diam.cli`` applies it to whatever a command lets escape)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click

from diam.settings import Settings, SettingsInputError, load_settings

__all__ = ["default_dataset", "get_settings", "kafka_unusable", "namespace_of", "redis_unusable",
           "unreachable_service"]

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


def namespace_of(settings: Settings, namespace: str | None) -> str:
    """The Redis namespace a ``--namespace`` option names (default: settings redis.namespace);
    a malformed one is a usage error naming the option."""
    from serving_cache.keys import validate_namespace

    try:
        return validate_namespace(namespace or settings.redis.namespace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--namespace") from None


def default_dataset(settings: Settings) -> Path:
    """The prepared dataset a command reads when given none: ml-100k under ``data_dir``."""
    return Path(settings.data_dir) / "ml-100k"


def unreachable_service(exc: BaseException, settings: Settings | None) -> click.ClickException | None:
    """The error to print for ``exc`` when it says Redis or Kafka did not answer (a connection
    refused or timed out, a KafkaException, a topic read that stalled), else None: anything
    else is a bug to show whole."""
    import redis
    from confluent_kafka import KafkaException

    from streams.kafka_io import RangeStalled

    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return redis_unusable(settings, exc)
    if isinstance(exc, KafkaException | RangeStalled):
        return kafka_unusable(settings, exc)
    return None


def redis_unusable(settings: Settings | None, exc: BaseException) -> click.ClickException:
    """The one wording of "Redis failed this command" (the URL without its password)."""
    url = _without_password(settings.redis.url) if settings else "the configured URL"
    return click.ClickException(
        f"Redis at {url} is not usable ({exc}); is the stack up? (`diam stack up`)")


def kafka_unusable(settings: Settings | None, exc: BaseException) -> click.ClickException:
    """The one wording of "Kafka failed this command"."""
    where = settings.kafka.bootstrap if settings else "the configured bootstrap"
    return click.ClickException(
        f"Kafka at {where} is not usable ({exc}); is the stack up? (`diam stack up`)")


def _without_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (error messages end up in logs).

    >>> _without_password("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    >>> _without_password("redis://127.0.0.1:6390/0")
    'redis://127.0.0.1:6390/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
