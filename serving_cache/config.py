"""Configuration of the Redis side: connection, security, namespace."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote_plus, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving_cache.keys import validate_namespace

URL_SCHEMES = ("redis", "rediss", "unix")
"""The URL schemes redis-py's ``from_url`` takes."""


class RedisSettingsError(ValueError):
    """The Redis settings cannot make a client (:meth:`RedisConfig.problem`, or a server that
    is not what ``cluster`` says): the message names the setting to fix. No wait mends it."""


class RedisConfig(BaseModel):
    """How to reach Redis and which key namespace to use."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    url: str = "redis://127.0.0.1:6390/0"
    """Redis URL. The local stack listens on 6390 so it never collides with a system Redis on
    6379. Use ``rediss://`` for TLS."""

    namespace: str = "live"
    """Key namespace: keys are ``diam:{namespace}:...``. ``live`` is what serving reads; replays
    write to a namespace of their own."""

    username: str | None = None
    """Redis ACL user (Redis 6+). Passed straight to the client; None uses the URL's. Given
    here and in the URL too (``redis://user@...``), the client is refused
    (:meth:`RedisConfig.problem`): one place owns it."""

    password: str | None = None
    """Password for the ACL user or ``requirepass``; None uses the URL's. A URL that carries a
    password (``redis://user:secret@...``) with this set too is refused, never silently one of
    the two (:meth:`RedisConfig.problem`): give it in one place."""

    ssl_ca_certs: str | None = None
    """CA bundle for TLS (``rediss://``)."""

    ssl_certfile: str | None = None
    """Client certificate for mutual TLS."""

    ssl_keyfile: str | None = None
    """Client key for mutual TLS."""

    socket_timeout_s: float = Field(default=5.0, gt=0)
    """Socket timeout. Five seconds: long enough for a pipelined batch of thousands of writes on
    a loaded laptop, short enough that an outage is noticed and retried. Finite and above 0,
    refused otherwise when the settings load (inf waits on a hung Redis for ever; 0 makes the
    socket non-blocking, every read failing at once)."""

    pipeline_batch: int = Field(default=500, ge=1)
    """Writes per pipeline round trip."""

    keys_per_call: int = Field(default=100, ge=1)
    """User keys per write-if-newer script call (``serving_cache.writer``). 100: one reply per
    hundred writes instead of one each cuts the writer's and Redis's CPU per user, while one
    call holds Redis only briefly, so reads from serving barely wait. On Redis
    Cluster (``cluster``) a call holds the keys of one hash slot only, at most this many."""

    cluster: bool = False
    """Redis Cluster: connect with redis-py's ``RedisCluster`` (the URL names any node). The
    writer groups each batch by hash slot, so every write-if-newer call touches one slot."""

    user_ttl_s: int | None = Field(default=None, ge=1)
    """Expiry of user keys in seconds, refreshed on every push (the dataflow's write-if-newer
    script sets it); None (the default): user keys never expire. A user idle for longer drops
    out of Redis and is served as a cold user until their next event."""

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str) -> str:
        if urlsplit(url).scheme not in URL_SCHEMES:
            raise ValueError(f"{url!r} is not a Redis URL: it must start with "
                             f"{', '.join(f'{x}://' for x in URL_SCHEMES)}")
        return url

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, ns: str) -> str:
        return validate_namespace(ns)

    def problem(self) -> str | None:
        """Why a client of these settings is refused, in words naming the settings, else None:
        the username or the password given both in the URL and in its own setting (which would
        win is redis-py's detail, so neither does), or a ``db`` other than 0 on a Redis Cluster
        (which has db 0 only). :func:`serving_cache.connection.redis_client` raises it.

        >>> RedisConfig(url="redis://u:secret@h:6379/0", password="other").problem()
        'DIAM_REDIS_URL carries a password and DIAM_REDIS_PASSWORD is set too: give it in one place (remove it from the URL, or unset DIAM_REDIS_PASSWORD)'
        >>> RedisConfig(url="redis://h:7000/2", cluster=True).problem()
        'DIAM_REDIS_URL names db 2, and a Redis Cluster (DIAM_REDIS_CLUSTER=true) has db 0 only: end the URL in /0'
        >>> RedisConfig(url="redis://u:secret@h:6379/3").problem() is None
        True

        The URL's query string counts (redis-py takes ``?password=`` and ``?username=`` too):

        >>> RedisConfig(url="redis://h:6379/0?password=right", password="wrong").problem()
        'DIAM_REDIS_URL carries a password and DIAM_REDIS_PASSWORD is set too: give it in one place (remove it from the URL, or unset DIAM_REDIS_PASSWORD)'
        >>> RedisConfig(url="redis://:a@h:6379/0?password=b").problem()
        'DIAM_REDIS_URL carries a password twice (before the host and in ?password=): give it once'
        """
        parts = urlsplit(self.url)
        query = parse_qs(parts.query)  # blank values dropped, as redis-py's parse_url drops them
        for name, before_host in (("username", parts.username), ("password", parts.password)):
            in_query = query.get(name, [""])[-1]
            if before_host and in_query:
                return (f"DIAM_REDIS_URL carries a {name} twice (before the host and in "
                        f"?{name}=): give it once")
            in_url = before_host or in_query
            if in_url and getattr(self, name) is not None:
                var = f"DIAM_REDIS_{name.upper()}"
                return (f"DIAM_REDIS_URL carries a {name} and {var} is set too: give it in one "
                        f"place (remove it from the URL, or unset {var})")
        if self.cluster:
            path = parts.path.strip("/") if parts.scheme != "unix" else ""  # unix: a socket's
            db = path or parse_qs(parts.query).get("db", ["0"])[0]
            if db not in ("", "0"):
                return (f"DIAM_REDIS_URL names db {db}, and a Redis Cluster "
                        "(DIAM_REDIS_CLUSTER=true) has db 0 only: end the URL in /0")
        return None

    def client_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``redis.Redis.from_url`` (security options pass through)."""
        kw: dict[str, object] = {"socket_timeout": self.socket_timeout_s}
        for name in ("username", "password", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                kw[name] = value
        return kw


def without_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (error messages end up in logs): the one
    rule for printing a Redis URL (the commands' messages, :func:`url_host`).

    >>> without_password("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    >>> without_password("redis://127.0.0.1:6390/0")
    'redis://127.0.0.1:6390/0'
    >>> without_password("redis://127.0.0.1:6692/0?db=0&password=s3cret&username=u")
    'redis://127.0.0.1:6692/0?db=0&password=***&username=u'
    """
    parts = urlsplit(url)
    if parts.query:  # redis-py takes ?password= too
        fields = [f.split("=", 1) for f in parts.query.split("&")]
        query = "&".join(
            f"{f[0]}=***" if len(f) == 2 and unquote_plus(f[0]) == "password" else "=".join(f)
            for f in fields)
        parts = parts._replace(query=query)
    if parts.password is None:
        return url if parts.query == urlsplit(url).query else urlunsplit(parts)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def url_host(url: str) -> str:
    """:func:`without_password`'s ``url`` from its host on, as the sink's and preflight's
    messages print it (a URL without credentials whole).

    >>> url_host("redis://user:secret@host:6379/0")
    'host:6379/0'
    >>> url_host("redis://127.0.0.1:6390/0?password=s3cret")
    'redis://127.0.0.1:6390/0?password=***'
    """
    return without_password(url).split("@")[-1]
