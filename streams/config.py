"""Configuration of the Kafka side: brokers, security pass-through, topics, dataflow cadence."""

from __future__ import annotations

import logging
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from streams.kafka_log import client_logger

ClientConfig = dict[str, str | int | float | bool | logging.Logger]
"""librdkafka properties as confluent-kafka takes them (``logger``: a :class:`logging.Logger`)."""

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` is not a legal Kafka topic name, or None when it is. Kafka's rule: 1 to 249
    of the characters a-z A-Z 0-9 . _ -, and not "." or "..". The one owner of the rule: the
    topics of :class:`KafkaConfig` (``DIAM_KAFKA_*_TOPIC``, diam.toml) and the commands' topic
    options (``diam.commands.topic_name``) are checked with it before any client is made, as
    the broker's refusal reads as a broker that "is not usable", not as a typo.

    >>> topic_name_problem("diam.clicks") is None
    True
    >>> topic_name_problem("bad topic")
    "'bad topic' is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, not '.' or '..')"
    >>> topic_name_problem("..") is not None, topic_name_problem("x" * 250) is not None
    (True, True)
    """
    if _TOPIC_NAME.fullmatch(name) and name not in (".", ".."):
        return None
    shown = name if len(name) <= 60 else name[:60] + "..."
    return f"{shown!r} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, not '.' or '..')"


class KafkaConfig(BaseModel):
    """How to reach Kafka and which topics to use."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bootstrap: str = "127.0.0.1:9192"
    """Bootstrap servers. The local stack's broker listens on 9192 (not 9092) so it never
    collides with another broker on the machine."""

    clicks_topic: str = "diam.clicks"
    """Input topic of click events, keyed by user id."""

    deadletter_topic: str = "diam.deadletter"
    """Where every rejected event goes, with its original bytes and the reason."""

    drift_topic: str = "diam.drift"
    """Drift events of the online learner (K_u changes, guard trips, rollbacks, freezes)."""

    alerts_topic: str = "diam.alerts"
    """Alerts raised by the drift monitor."""

    items_topic: str = "diam.items"
    """The item catalogue, compacted, keyed by item id (``streams.catalog``: categories, title,
    first-seen time)."""

    models_topic: str = "diam.models"
    """Every decision of the retrain service (candidate vs active metrics, published or
    refused, why, how long), one JSON record per retrain keyed by the candidate's name."""

    forgotten_topic: str = "diam.forgotten"
    """The durable copy of ``diam forget``'s markers (``streams.forget_markers``): compacted,
    one partition, one JSON record per clicks topic, topic id and user (the tombstone's
    offset), the newest kept forever. Redis holds the copy the writers check; this one restores
    it after Redis lost its data. Created compacted by the first ``diam forget``; an existing
    topic that is not compacted alone is refused (retention would delete markers)."""

    partitions: int = Field(default=4, ge=1)
    """Partitions when the tooling creates a topic. Four lets two processes of two workers
    each own a share."""

    group_id: str = "diam-online"
    """Consumer group id for tooling that commits offsets (the dataflow itself keeps offsets in
    its recovery store, as Bytewax does)."""

    security_protocol: str | None = None
    """``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``; passed to librdkafka."""

    sasl_mechanism: str | None = None
    """``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` ...; passed to librdkafka."""

    sasl_username: str | None = None
    """SASL user."""

    sasl_password: str | None = None
    """SASL password."""

    ssl_ca_location: str | None = None
    """CA bundle for SSL."""

    fetch_wait_max_ms: int = Field(default=20, ge=0)
    """The dataflow's consumer: longest wait for ``fetch_min_bytes`` before a fetch is answered
    (librdkafka ``fetch.wait.max.ms``). It bounds what the wait adds to freshness at low rates."""

    fetch_min_bytes: int = Field(default=65_536, ge=1)
    """The dataflow's consumer: bytes a fetch waits for (librdkafka ``fetch.min.bytes``). With
    librdkafka's default of one byte, a tailing consumer asks again as soon as one record has
    arrived, and the broker's CPU goes to tiny fetches on a machine that also runs the
    dataflow; with 64 KiB a tailing run fetches about every ``fetch_wait_max_ms``. Bulk reads
    are unchanged: their fetches are full."""

    stuck_client_s: float = Field(default=30.0, ge=0)
    """The dataflow's Kafka clients: a partition the consumer has read nothing from for this
    long, while a fresh client sees records beyond its next offset, or a producer (a sink) that
    has delivered nothing for this long while a fresh client finds every partition of its topic
    led, is stuck; the client is rebuilt (the consumer at its next offsets, the producer with its
    undelivered records produced again) and a warning logged (0: never). librdkafka can leave a
    partition leaderless for good after a broker restart (a metadata update naming leader -1 is
    skipped, confluentinc/librdkafka#5430), and the fault matrix's ``broker_restart`` once saw a
    tailing run read nothing more after the restart (``bench/results/faults_stuck_client.md``).
    A broker outage is not this: librdkafka's own retries wait it out."""

    extra: dict[str, str] = Field(default_factory=dict)
    """Any further librdkafka properties, passed through unchanged (e.g.
    ``{"ssl.endpoint.identification.algorithm": "none"}``); they override the fields above."""

    @field_validator("clicks_topic", "deadletter_topic", "drift_topic", "alerts_topic",
                     "items_topic", "models_topic", "forgotten_topic")
    @classmethod
    def _legal_topic(cls, name: str) -> str:
        """A topic set in the environment or diam.toml is refused as a setting (``diam``
        prints the variable and this rule), not later as a broker error."""
        problem = topic_name_problem(name)
        if problem is not None:  # the rule's words alone, without pydantic's "Value error, "
            raise PydanticCustomError("topic_name", "{problem}", {"problem": problem})
        return name

    def client_config(self) -> ClientConfig:
        """librdkafka properties common to producers, consumers and admin clients; every client
        is built from them. Its ``logger`` takes librdkafka's log lines off stderr: a refused
        connection is a DEBUG line, anything else keeps its level (:mod:`streams.kafka_log`)."""
        conf: ClientConfig = {"bootstrap.servers": self.bootstrap, "logger": client_logger()}
        mapping = {
            "security_protocol": "security.protocol",
            "sasl_mechanism": "sasl.mechanism",
            "sasl_username": "sasl.username",
            "sasl_password": "sasl.password",
            "ssl_ca_location": "ssl.ca.location",
        }
        for field, key in mapping.items():
            value = getattr(self, field)
            if value is not None:
                conf[key] = value
        conf.update(self.extra)
        return conf

    def consumer_config(self) -> ClientConfig:
        """librdkafka properties of the dataflow's consumer: :meth:`client_config` with the
        fetch settings (``extra`` still wins)."""
        return {"fetch.wait.max.ms": self.fetch_wait_max_ms, "fetch.min.bytes": self.fetch_min_bytes,
                **self.client_config()}


class FlowConfig(BaseModel):
    """Cadence and limits of the online dataflow."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_event_bytes: int = Field(default=16_384, ge=64)
    """Largest accepted event payload. A click is ~100 bytes; 16 KiB leaves room for a rich
    ``context`` map while refusing blobs that would bloat per-user state."""

    deadletter_max_bytes: int = Field(default=524_288, ge=1_024, le=900_000)
    """Most bytes of a rejected record's value that its dead letter keeps (its key: at most
    ``streams.online.DEADLETTER_KEY_BYTES``). The broker accepts records up to about 1 MiB and a producer sends at most 1,000,000
    bytes by default, so a record near the broker's limit, dead-lettered whole, could never be
    produced: the dataflow would fail on it after every restart. A cut dead letter says so in
    its headers (``diam.truncated``, the original sizes)."""

    seen_items: int = Field(default=50, ge=0)
    """How many of the user's last seen items are pushed with the vectors (``s`` in the Redis
    value), which serving excludes by default; at most the learner's ``recent_len`` (the
    state keeps no more). 50 int32 rows are 200 bytes: a K_u = 4, d = 64 value stays under
    1 KB."""

    push_every_events: int = Field(default=8, ge=1)
    """Push a user's vectors to Redis after this many events since the last push (p)."""

    push_every_ms: int = Field(default=200, ge=0)
    """... or when this much wall time has passed since the last push (t). 200 ms keeps the
    freshness p99 well under the 500 ms goal while coalescing bursts."""

    batch_size: int = Field(default=20_000, ge=1)
    """Most Kafka messages per poll batch handed to the dataflow (a cap: a caught-up consumer
    hands over what has arrived).

    Bytewax's per-user step costs per user *and batch* (a key lookup, a ``notify_at`` call, one
    output item per push, the user's snapshot bookkeeping), and pushes coalesce per batch, so a
    user with several clicks in one batch pays those once. That matters when the dataflow
    reads a backlog (a replay, a catch-up after a restart); a large cap means more records in
    flight then, and batches fill only when the dataflow is behind."""

    epoch_interval_s: float = Field(default=10.0, gt=0)
    """Bytewax epoch length; recovery snapshots are taken at epoch ends, one per user touched
    in the epoch, on the dataflow's thread, and every event arriving meanwhile waits: that
    pause (our packing of each state, then Bytewax's SQLite insert and clean-up) is what the
    freshness tail is made of (``bench/results/stream.md``). A longer epoch makes the pause
    rarer; a crash replays at most one epoch of events (same vectors, deterministically).
    10 s is Bytewax's own default."""

    evict_idle_s: float | None = Field(default=None, ge=0.001)
    """A user idle this many seconds starts over from the base, like a new one, and is
    dropped from the dataflow's state (memory and recovery store); None (the default) keeps
    every user. Idleness is read on the event clock of the user's partition (the largest Kafka
    record timestamp up to a record, of the records the dataflow accepts: a dead-lettered one
    moves nothing; ``RawRecord.clock_ms``), not the wall clock, so a replay
    of the topic learns what the live run learnt: a click that comes this long after the
    user's previous one on that clock starts over, whether or not the user had been dropped.
    The user's vectors stay in Redis (see ``RedisConfig.user_ttl_s`` to expire them too). A
    user is dropped once the worker has seen their partition's clock pass this far; until
    then an idle user is looked at again after ever longer waits (each look costs the user a
    recovery snapshot at the epoch's end), up to 8 times this setting, so users of a partition
    that stops receiving records stay until it moves again. Milliseconds are the clock's
    unit, hence the floor of 0.001."""

    click_first_min_clicks: int = Field(default=2, ge=0)
    """An item first seen in clicks (unknown to the base and to the catalogue) becomes a new
    item, with the content tower's embedding of an item without metadata, at its this-many-th
    click on the clicks topic: in the dataflow's base (its hot-reload hook) and in the API's
    index (``diam serve``'s click follower), by one rule (``streams.new_items.ClickFirst``).
    A floor of 2 keeps one stray id from a misbehaving client out of the table; 0 turns the
    rule off (in the dataflow and in the API)."""

    click_first_max_pending: int = Field(default=100_000, ge=1)
    """How many unknown item ids the click-first rule counts at most while they wait for their
    ``click_first_min_clicks``-th click; past it the id first counted longest ago is forgotten
    (its count starts over). Processes that know the same items (the same base and catalogue)
    and read the topic in the same order drop the same ids and find the same items; past the
    bound a process on another base can differ. It bounds the memory that ids clicked fewer
    than ``click_first_min_clicks`` times can take (a producer of random ids); the items the
    rule makes new are kept, as they enter the base."""

    click_first_catch_up_s: float = Field(default=30.0, ge=0)
    """At start, how long the dataflow waits for its click tail to read the clicks topic's
    history before the first event, so that a restarted (or resumed) run processes its first
    events with the click-first items the run before it had; past it, the run starts and the
    rest arrive with later reload checks."""

    reload_check_s: float = Field(default=2.0, gt=0)
    """How often a running dataflow checks for a newly published base version (one Redis GET).
    Two seconds makes a publish visible quickly at negligible cost."""

    ts_min_ms: int = 631_152_000_000
    """Earliest accepted event time (1990-01-01). MovieLens-100K starts in 1997."""

    ts_max_future_ms: int = 86_400_000
    """How far an event's own time may be ahead of its Kafka record's timestamp: one day of
    clock skew between the producer's clock and the event's. The record timestamp, not the
    wall clock, so that a replay accepts and rejects exactly what the live run did."""

    sink_queue_batches: int = Field(default=32, ge=1)
    """Output batches of user vectors queued per Redis sink partition while a write is in
    flight; a full queue blocks the dataflow (backpressure) instead of growing memory during a
    Redis outage. Batches queued meanwhile are merged into one write."""

    redis_backoff_max_s: float = Field(default=1.0, gt=0)
    """Longest wait between retries of a failed Redis write (the wait doubles from 50 ms up to
    this); nothing is dropped while Redis is down. One second notices a restarted Redis
    quickly without busy-looping on a dead one."""


class DriftConfig(BaseModel):
    """Windows and alert thresholds of the drift monitor."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    window_ms: int = Field(default=60_000, gt=0)
    """Tumbling window length in event time. One minute: long enough that a user's legitimate
    K_u change (hysteresis needs several proposals, each every few events) rarely meets its own
    reversal inside one window, short enough that an alert is minutes fresh."""

    lateness_ms: int = Field(default=5_000, ge=0)
    """How far behind the newest event time an event may arrive and still count in its window.
    Drift events of one user come in offset order; this only absorbs skew between partitions."""

    user_changes: int = Field(default=4, ge=1)
    """K_u changes of one user in one window that raise ``k_churn``. Hysteresis lets a user change
    at most once per (h · m) events, so four in a minute means a bot-like burst or a broken gate."""

    flip_reversals: int = Field(default=2, ge=1)
    """Reversals (A→B then B→A) of one user in one window that raise ``k_flip_flop``. Two, i.e.
    A→B→A→B: a single reversal happens to healthy users now and then (see the tests' bound); two
    in a minute is oscillation."""

    d_swing: float = Field(default=0.4, gt=0)
    """max − min of one user's d_u within a window that raises ``d_swing``. d_u moves by small
    bounded steps pulled back to its prior; 0.4 of its (0, 1) range in a minute is not that."""

    guard_trips: int | None = Field(default=100, ge=1)
    """Guard trips per window (all users) that raise ``guard_trips``; None disables. Sized for a
    fleet of thousands of users where trips are rare; tune to the fleet."""

    rollbacks: int | None = Field(default=20, ge=1)
    """Rollbacks per window that raise ``rollbacks``; None disables."""

    freezes: int | None = Field(default=20, ge=1)
    """Freezes (rate-limited users) per window that raise ``freezes``; None disables."""

    k_changes: int | None = None
    """Absolute K_u changes per window (all users) that raise ``k_change_rate``; None (default)
    leaves the global rate to the drift detector, which adapts to the fleet's level."""

    ph_delta: float = Field(default=0.5, ge=0)
    """Page-Hinkley allowance per window, in standard deviations of the variance-stabilised count
    (2·sqrt(x + 3/8) has unit variance for Poisson counts). 0.5 targets a shift of about 1 σ."""

    ph_threshold: float = Field(default=8.0, gt=0)
    """Page-Hinkley threshold in the same units. With delta 0.5, 8 gave 2 false alarms in
    15,000 simulated stable windows (one per ~5 days of one-minute windows) and caught a
    doubling of the rate in 2–3 windows."""

    ph_min_windows: int = Field(default=10, ge=1)
    """Windows seen before the detector may fire (its mean needs a baseline)."""

    top_n: int = Field(default=5, ge=1)
    """Users listed in an alert."""
