"""The one settings object: defaults < ``diam.toml`` < ``DIAM_*`` environment variables.

Each room defines the small config model it needs; this module composes them and reads the
environment. Environment names are ``DIAM_<SECTION>_<FIELD>``, split once, e.g.
``DIAM_KAFKA_BOOTSTRAP``, ``DIAM_REDIS_URL``, ``DIAM_SNAPSHOT_DIR``, ``DIAM_ONLINE_K_MAX``; a
field of a model nested in a section is ``DIAM_<SECTION>_<FIELD>_<SUBFIELD>`` (one rule for
every nested model, :class:`_NestedEnvSource`), e.g. ``DIAM_RETRAIN_GATE_EPS_RECALL``. A
section's (or a nested model's) JSON, ``DIAM_RETRAIN='{"gate": {"eps_recall": 0.02}}'``, is
accepted too; :func:`env_names` lists every name and refuses one that two settings would share.

A setting that can be none (``DIAM_DRIFT_GUARD_TRIPS``, ``DIAM_FLOW_EVICT_IDLE_S``, ...) takes
``none`` or ``null`` (:data:`NONE_WORDS`, any case) for None in its variable, in diam.toml (TOML
has no null) and as a string in a section's JSON (beside JSON's own ``null``); one rule for every
such setting (:func:`_none_words_read`). A setting that cannot be none refuses the word, saying so; a
text setting (``str | None``: passwords, paths, the Kafka protocol) keeps it as text, since it
could be one, and is none by being left out (every one of them defaults to None).

>>> s = Settings()
>>> s.kafka.clicks_topic
'diam.clicks'
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from diam.retrain import RetrainConfig
from online_model.config import OnlineConfig
from serving_cache.config import RedisConfig
from snapshotter.config import SnapshotConfig
from streams.config import DriftConfig, FlowConfig, KafkaConfig


class StackConfig(BaseModel):
    """The local stack launched by ``diam stack up`` (no Docker needed)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    home: str = ".diam"
    """Directory holding the stack's logs, data, pid files and the Kafka jar cache."""

    kafka_version: str = "4.1.1"
    """Apache Kafka release resolved from Maven Central (``org.apache.kafka:kafka_2.13``)."""

    kafka_port: int = Field(default=9192, ge=1, le=65535)
    """Broker listener port on loopback."""

    controller_port: int = Field(default=9193, ge=1, le=65535)
    """KRaft controller listener port on loopback."""

    redis_port: int = Field(default=6390, ge=1, le=65535)
    """Redis port on loopback."""

    kafka_heap: str = "768m"
    """JVM heap of the broker. A single-node test broker needs far less than the 1 GB default
    of kafka-server-start.sh, and the machine has two cores shared with the dataflow."""

    kafka_jvm_opts: list[str] = Field(
        default_factory=lambda: ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
    )
    """JVM options of the broker besides the heap. Serial GC: one node on two cores gains nothing
    from G1's concurrent threads. C1-only JIT (TieredStopAtLevel=1): C2's compile threads fight
    the broker for the two cores at start, so the broker answers in ~4 s instead of ~10 s, and a
    single-machine pipeline is never bound by the broker's CPU. Use ``[]`` for JVM defaults
    (``DIAM_STACK_KAFKA_JVM_OPTS='[]'``)."""

    start_timeout_s: float = 120.0
    """How long ``up`` waits for the broker to answer a metadata request."""

    use_docker: bool = False
    """Use docker-compose.yml when a Docker engine answers, instead of local processes."""

    cache_dir: str = "~/.cache/diam-stream"
    """Where the resolved Kafka jars live (``kafka-<version>/lib``). Outside ``home`` so that
    ``rm -rf .diam`` and test stacks with a temporary home reuse one download."""

    log4j_version: str = "2.25.3"
    """log4j2 backend added to the broker's class path: Kafka 4.x logs through log4j2 but its
    POM brings no backend."""

    slf4j_version: str = "2.0.17"
    """slf4j-api pinned over the 1.7 line Kafka's POM names, so the log4j SLF4J 2 bridge binds."""

    java: str = ""
    """Java 17+ executable; empty uses ``$JAVA_HOME/bin/java`` or ``java`` on the PATH."""

    redis_server: str = "redis-server"
    """The redis-server executable (Debian package ``redis-server``)."""

    stop_timeout_s: float = 30.0
    """How long ``down`` waits after SIGTERM before SIGKILL. A single-node broker's controlled
    shutdown takes a few seconds; a hung one must still go."""


class ServeConfig(BaseModel):
    """The HTTP recommendation API."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = "127.0.0.1"
    """Bind address."""

    port: int = Field(default=8088, ge=1, le=65535)
    """Bind port."""

    gil_switch_interval_ms: float = Field(default=0.5, gt=0)
    """The server process's GIL switch interval (``sys.setswitchinterval``): how long a
    background thread (the snapshot reload, the catalogue and click followers, the rare routes'
    workers) may hold the GIL while the event loop, which computes the recommendations, waits
    for it. Python's default is 5 ms; requests are short, so a shorter hand-over cuts the tail
    under concurrent load (``bench/results/serve.md`` compares both)."""

    processes: int = Field(default=1, ge=1)
    """Server processes sharing the port (``diam serve --processes``). One process computes
    one request at a time (the GIL), so its CPU per request bounds its rate; more processes
    multiply that bound on more cores. Each is a full server: its own Redis client, snapshot
    index, catalogue and click followers, and its own ``/metrics``."""

    redis_read_timeout_s: float = Field(default=0.25, gt=0)
    """The socket timeout of the server's reads that a user waits on (the user routes, the
    /ui user view, ``/health``), in place of ``[redis] socket_timeout_s`` (5 s, for the writers'
    pipelined batches, which the snapshot watcher and the /ui namespace scan keep): one user's
    GET answers in well under a millisecond (``bench/results/serve.md``: the server's own p99
    about 5 ms), and the recommendation route reads Redis in the event loop, so a Redis that
    hangs holds every request, ``/health`` and ``/metrics`` included, for this long. A read
    that timed out is followed by one probe at once; two in a row pause reads (503 at once) for
    ``serving_cache.breaker.FIRST_PAUSE_S``, doubled while probes keep timing out up to
    ``PAUSE_S`` (per node on a Redis Cluster)."""


def config_path() -> Path:
    """The settings file: ``DIAM_CONFIG`` (which must exist: :func:`load_settings` refuses a
    missing one; empty: no file, the defaults and ``DIAM_*`` variables alone), else
    ``diam.toml`` in the working directory (it need not exist)."""
    return Path(os.environ.get("DIAM_CONFIG", "diam.toml"))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (``M`` or ``M | None``), else None."""
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for a in typing.get_args(annotation) if (m := _model_of(a)) is not None]
        return models[0] if len(models) == 1 else None
    return None


class _NestedEnvSource(EnvSettingsSource):
    """The environment, with one rule for fields of models nested in a section.

    pydantic-settings splits ``DIAM_<SECTION>_<REST>`` once (``env_nested_max_split=1``: field
    names hold underscores), so ``DIAM_RETRAIN_GATE_EPS_RECALL`` arrives as the section's
    ``gate_eps_recall``. A name that is not a field of its model but starts with the name of a
    field holding a model, plus ``_``, is that model's (``gate`` / ``eps_recall``), at any
    depth; the section's own field names win, and :func:`env_names` (pinned by a test) makes
    sure no name means two settings. An unknown rest stays in the nested model, refused there
    (``unknown setting retrain.gate.nope``)."""

    def explode_env_vars(self, field_name: str, field: FieldInfo,
                         env_vars: Mapping[str, str | None]) -> dict[str, Any]:
        values = super().explode_env_vars(field_name, field, env_vars)
        model = _model_of(field.annotation)
        if model is not None:
            for key in [k for k in values if k not in model.model_fields]:
                self._place(values, model, key, values.pop(key))
        return values

    def _place(self, values: dict[str, Any], model: type[BaseModel], key: str, val: Any) -> None:
        field = model.model_fields.get(key)
        if field is None:
            subs = [(name, sub) for name, f in model.model_fields.items()
                    if (sub := _model_of(f.annotation)) is not None and key.startswith(name + "_")]
            if subs:
                name, sub = max(subs, key=lambda s: len(s[0]))
                target = values.setdefault(name, {})
                if isinstance(target, dict):
                    self._place(target, sub, key[len(name) + 1:], val)
                    return
        elif isinstance(val, str) and self._field_is_complex(field)[0]:
            val = self.decode_complex_value(key, field, val)  # a list or table: JSON, as above
        values[key] = val


NONE_WORDS = ("none", "null")
"""What a setting that can be none takes for None where its value is text (its ``DIAM_*``
variable, diam.toml), in any case: ``none`` as the settings' docs say None, ``null`` as the
section's JSON says it. Not the empty string: an empty variable is as often a shell's unset
``$VAR`` as a choice, and ``DIAM_DRIFT_GUARD_TRIPS=`` would turn an alert off unnoticed."""


def is_none_word(value: object) -> bool:
    """``value`` is one of :data:`NONE_WORDS` (any case, outer blanks ignored).

    >>> is_none_word("None"), is_none_word(" null "), is_none_word(""), is_none_word(None)
    (True, True, False, False)
    """
    return isinstance(value, str) and value.strip().lower() in NONE_WORDS


def takes_none_word(annotation: Any) -> bool:
    """A field of this type reads :data:`NONE_WORDS` as None: it can be None and none of its
    other types is text (a ``str | None`` keeps the word as its text).

    >>> takes_none_word(int | None), takes_none_word(float), takes_none_word(str | None)
    (True, False, False)
    """
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    args = typing.get_args(annotation)
    return type(None) in args and not any(
        a is str or typing.get_origin(a) is typing.Literal for a in args)


def _none_words_read(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a model's input, as the sources merged it) with every value that is one of
    :data:`NONE_WORDS`, at a field that :func:`takes_none_word`, made None, in nested models
    too. Other fields keep the word; the model refuses it where it is not their text
    (:func:`_explain` says why)."""
    out = dict(values)
    for key, val in values.items():
        field = model.model_fields.get(key)
        if field is None:
            continue  # an unknown setting: refused by the model
        if is_none_word(val) and takes_none_word(field.annotation):
            out[key] = None
        elif isinstance(val, dict) and (sub := _model_of(field.annotation)) is not None:
            out[key] = _none_words_read(sub, val)
    return out


def env_names(model: type[BaseModel], prefix: str = "DIAM_",
              path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Every environment name of ``model``'s settings (fields holding a model too: their JSON
    form) and the path of the setting it sets. Raises ValueError for a name two settings
    would share (a section field ``gate_x`` beside a nested ``gate`` with a field ``x``):
    :class:`_NestedEnvSource` could not tell them apart.

    >>> env_names(Settings)["DIAM_RETRAIN_GATE_EPS_RECALL"]
    ('retrain', 'gate', 'eps_recall')
    """
    out: dict[str, tuple[str, ...]] = {}
    for name, f in model.model_fields.items():
        env, at = f"{prefix}{name.upper()}", (*path, name)
        found = {env: at}
        if (sub := _model_of(f.annotation)) is not None:
            found.update(env_names(sub, env + "_", at))
        for k, v in found.items():
            if k in out:
                raise ValueError(f"{k} would set both {'.'.join(out[k])} and {'.'.join(v)}")
            out[k] = v
    return out


class Settings(BaseSettings):
    """Everything diam-stream reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="DIAM_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
    )

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    """Kafka brokers, security and topics."""

    redis: RedisConfig = Field(default_factory=RedisConfig)
    """Redis connection, security and namespace."""

    flow: FlowConfig = Field(default_factory=FlowConfig)
    """Cadence and limits of the online dataflow."""

    online: OnlineConfig = Field(default_factory=OnlineConfig)  # type: ignore[arg-type]
    """Thresholds of the online update rule and drift guards."""

    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)
    """Snapshot store."""

    drift: DriftConfig = Field(default_factory=DriftConfig)
    """Windows and alert thresholds of the drift monitor."""

    serve: ServeConfig = Field(default_factory=ServeConfig)
    """HTTP API."""

    stack: StackConfig = Field(default_factory=StackConfig)
    """Local stack launcher."""

    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    """The retrain service: schedule, window, training and the promotion gate."""

    data_dir: str = "data"
    """Where prepared datasets are written and read."""

    @model_validator(mode="before")
    @classmethod
    def _read_none_words(cls, data: Any) -> Any:
        return _none_words_read(cls, data) if isinstance(data, dict) else data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings,
                                                     _NestedEnvSource(settings_cls)]
        path = config_path()
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


REMOVED: dict[tuple[str, ...], str] = {
    ("retrain", "dim"): "the model size is online.dim, DIAM_ONLINE_DIM",
}
"""Settings that are gone, each with what took its place. A value for one (its ``DIAM_*``
variable, its key in diam.toml, a key of its section's JSON) is refused as an unknown setting
is, but in these words (:func:`_explain`), so that a deployment that still sets it learns
where its value now belongs; one rule for every removed setting."""


class SettingsInputError(ValueError):
    """The environment or the config file holds a value the settings refuse; the message names
    each setting, where its value came from and what was wrong (``diam`` prints it)."""


def load_settings(**overrides: object) -> Settings:
    """Read settings; keyword overrides win over everything (used by tests and the CLI).

    Raises :class:`SettingsInputError` for a bad value, an unknown setting or an unreadable
    config file.

    >>> try:
    ...     load_settings(flow={"batch_size": "abc", "nope": 1})
    ... except SettingsInputError as exc:
    ...     print(str(exc).replace("; ", "\\n"))
    bad setting flow.batch_size = 'abc' (given): Input should be a valid integer, unable to parse string as an integer
    unknown setting flow.nope (given)
    >>> try:
    ...     load_settings(retrain={"dim": 32})
    ... except SettingsInputError as exc:
    ...     print(exc)
    retrain.dim is gone: the model size is online.dim, DIAM_ONLINE_DIM (given)
    """
    named = os.environ.get("DIAM_CONFIG")
    if named and not Path(named).is_file():  # a typo must not run on the defaults
        raise SettingsInputError(
            f"DIAM_CONFIG={named!r}: no such settings file"
            + (" (a directory)" if Path(named).is_dir() else "")
            + "; unset it to read diam.toml in the working directory, if any, or set it "
            "empty for none")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except tomllib.TOMLDecodeError as exc:
        raise SettingsInputError(f"{config_path()} is not valid TOML: {exc}") from None
    except SettingsError as exc:
        # a section's value in the environment that is not JSON; pydantic names only the section
        found = re.search(r'field "([^"]+)"', str(exc))
        section = found.group(1) if found else "?"
        env = _ENV_PREFIX + section.upper()
        given = sorted(k for k in os.environ if k.upper() == env or k.upper().startswith(env + "_"))
        raise SettingsInputError(
            f"cannot read setting {section} from {', '.join(given) or 'the environment'}: "
            f"{exc.__cause__ or exc}; values that are tables or lists take JSON there") from None
    except ValidationError as exc:
        raise SettingsInputError("; ".join(_explain(e) for e in exc.errors())) from None


_ENV_PREFIX = str(Settings.model_config.get("env_prefix", ""))


def _explain(err: ErrorDetails) -> str:
    """One refused value of a ValidationError, named by setting and by where it came from."""
    loc = [str(part) for part in err["loc"]]
    name = ".".join(loc)
    source = _source_of(loc)
    if err["type"] == "extra_forbidden":
        if (gone := REMOVED.get(tuple(loc))) is not None:
            return f"{name} is gone: {gone} ({source})"
        return f"unknown setting {name} ({source})"
    why = err["msg"]
    if is_none_word(err["input"]):
        why = f"this setting cannot be none ({why})"
    elif isinstance(err["input"], str) and takes_none_word(_annotation_at(loc)):
        why = f"{why}; for none: {' or '.join(NONE_WORDS)}"
    return f"bad setting {name} = {err['input']!r} ({source}): {why}"


def _annotation_at(loc: list[str]) -> Any:
    """The type of the setting at ``loc``, or None where ``loc`` names none."""
    model: type[BaseModel] | None = Settings
    annotation: Any = None
    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        annotation, model = field.annotation, _model_of(field.annotation)
    return annotation


def _source_of(loc: list[str]) -> str:
    """Where the value at ``loc`` came from: an environment variable (``DIAM_<SECTION>_<FIELD>``,
    a nested model's ``DIAM_<SECTION>_<FIELD>_<SUBFIELD>``, or the JSON of the section or the
    nested model), the most specific first, else the config file."""
    for depth in range(len(loc), 0, -1):
        env = _ENV_PREFIX + "_".join(loc[:depth]).upper()
        if len(loc) >= depth and env in os.environ:
            return f"from {env}"
    path = config_path()
    return f"from {path}" if path.is_file() else "given"
