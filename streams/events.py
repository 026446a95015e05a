"""The click event contract (DESIGN.md §3): schema, msgpack/JSON codec and validation.

Validation never raises on bad input: it returns a :class:`Rejection` whose ``reason`` names the
field and what was wrong, so the dataflow can dead-letter the original bytes with it.

>>> ev = ClickEvent(user_id="u1", item_id="i9", ts=880_000_000_000)
>>> decode_event(encode_event(ev)) == ev
True
>>> decode_event(b'{"user_id": "a:b", "item_id": 1, "ts": 880000000000}').reason
"user_id: contains ':' (allowed: letters and digits and _ . @ + - and the equals sign)"
>>> decode_event(b"\\xc1").reason
'undecodable: neither msgpack nor JSON'
>>> decode_event(b"[" * 5000 + b"]" * 5000).reason  # parser recursion: a reason, not a crash
'undecodable: JSON nested too deeply (RecursionError)'
>>> decode_event(b'{"user_id": "a", "item_id": 1, "ts": 880000000000, "dwell_ms": 1%s}'
...              % (b"0" * 40)).reason
'dwell_ms: 10000000... (41 digits) exceeds the limit of 86400000 (a day in ms)'

Every integer of an accepted event is bounded (``ts`` by the years 1..9999, ``dwell_ms`` by a
day, ``context`` values by 64 bits), so whatever is accepted encodes again.

Reasons never contain ``,`` or ``=``: they travel in Kafka headers, and header dumps such as
kcat's ``%h`` print ``k=v,k=v``. :class:`Rejection` replaces both in whatever text a reason
quotes from the payload.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

import msgpack

from serving_cache.reader import USER_ID_ALLOWED, USER_ID_MAX_LEN, USER_ID_RE

__all__ = [
    "ClickEvent",
    "Rejection",
    "decode_event",
    "decode_click",
    "Click",
    "encode_event",
    "validate_user_id",
    "validate_item_id",
    "unprintable",
    "EVENT_KINDS",
    "USER_ID_RE",
]

#: Event kinds the stream learns from; anything else is rejected with a reason.
EVENT_KINDS = frozenset({"click"})

# The user id rule is serving_cache.reader's (its owner: serving_cache may not import streams);
# USER_ID_RE is its compiled form, re-exported for the stream's checks.
_MAX_ITEM_ID_LEN = 128
_MAX_SESSION_LEN = 128
_MAX_CONTEXT_KEYS = 16
_MAX_DWELL_MS = 86_400_000
"""A day: the longest ``dwell_ms`` accepted. A dwell is the time a user stayed on one item in
one session; a longer one is no measurement (a tab left open, a clock bug, a unit mix-up) and
is dead-lettered with its reason like an absurd ``ts``, so that its producer hears of it and no
later use of dwell (a weight, a feature) reads it."""
_CONTEXT_INT = (-(2**63), 2**63 - 1)
"""The integers a ``context`` value may be: the signed 64-bit ones, which msgpack (and any
int64 column downstream) holds; a JSON payload's integers have no bound."""
_TS_EARLIEST_MS = -62_135_596_800_000
_TS_LATEST_MS = 253_402_300_799_999
"""The first and last millisecond of years 1..9999 (UTC): no event time outside them is
accepted, whatever the settings (``FlowConfig.ts_min_ms``) and whether or not the record has a
timestamp to bound it (the dataflow bounds ``ts`` by the record's; a record without one, and
:func:`decode_event` by default, set no upper bound). Python's datetime, which prints event
times (``diam replay``, the drift monitor), ends there, and they are far inside the 64-bit
integers that :func:`encode_event` and the learner's arrays hold."""
_KNOWN_FIELDS = frozenset(
    {"user_id", "item_id", "ts", "event", "session_id", "dwell_ms", "context"}
)

_PACK = msgpack.Packer(use_bin_type=True).pack

# Defaults for the time window: 1990-01-01 .. now + 1 day (see FlowConfig for the settings).
DEFAULT_TS_MIN_MS = 631_152_000_000
DEFAULT_MAX_BYTES = 16_384


@dataclass(frozen=True, slots=True)
class ClickEvent:
    """One valid click. ``item_id`` is kept as a string (ints are converted on decode)."""

    user_id: str
    item_id: str
    ts: int
    event: str = "click"
    session_id: str | None = None
    dwell_ms: int | None = None
    context: dict[str, Any] | None = None


_NEW = object.__new__
_SET = object.__setattr__


def _new_click(user_id: str, item_id: str, ts: int) -> ClickEvent:
    """A ClickEvent without the frozen dataclass's per-field ``__setattr__`` round trips (a
    quarter of the cost); the fields are exactly those ``ClickEvent(user_id, item_id, ts)`` sets."""
    ev = _NEW(ClickEvent)
    _SET(ev, "user_id", user_id)
    _SET(ev, "item_id", item_id)
    _SET(ev, "ts", ts)
    _SET(ev, "event", "click")
    _SET(ev, "session_id", None)
    _SET(ev, "dwell_ms", None)
    _SET(ev, "context", None)
    return ev


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused. ``reason`` starts with the field name when one is at fault.

    ``,`` and ``=`` are replaced (by ``;`` and ``~``) so that the reason survives a ``k=v,k=v``
    header dump; the reasons written here avoid both, this catches quoted payload text.

    >>> Rejection("payload: unknown field(s) a=1, b").reason
    'payload: unknown field(s) a~1; b'
    """

    reason: str

    def __post_init__(self) -> None:
        if "," in self.reason or "=" in self.reason:
            _SET(self, "reason", self.reason.replace(",", ";").replace("=", "~"))


def encode_event(ev: ClickEvent) -> bytes:
    """Serialise as the msgpack map of the contract, omitting absent optional fields."""
    body: dict[str, Any] = {"user_id": ev.user_id, "item_id": ev.item_id, "ts": ev.ts}
    if ev.event != "click":
        body["event"] = ev.event
    if ev.session_id is not None:
        body["session_id"] = ev.session_id
    if ev.dwell_ms is not None:
        body["dwell_ms"] = ev.dwell_ms
    if ev.context is not None:
        body["context"] = ev.context
    return _PACK(body)


def validate_user_id(user_id: object) -> str | None:
    """The reason ``user_id`` is invalid, or None when it is fine.

    >>> validate_user_id("alice-42") is None
    True
    >>> validate_user_id("*")
    "user_id: contains '*' (allowed: letters and digits and _ . @ + - and the equals sign)"
    """
    if not isinstance(user_id, str):
        return f"user_id: expected a string but got {type(user_id).__name__}"
    if not 1 <= len(user_id) <= USER_ID_MAX_LEN:
        return f"user_id: length {len(user_id)} outside 1..{USER_ID_MAX_LEN}"
    if USER_ID_RE.fullmatch(user_id) is None:
        bad = next(c for c in user_id if USER_ID_RE.fullmatch(c) is None)
        return f"user_id: contains {bad!r} (allowed: {USER_ID_ALLOWED})"
    return None


def unprintable(text: str, spaces: bool = False) -> str | None:
    """The first character of ``text`` that no list may show as it is, or None: the one rule
    of what an item id (:func:`validate_item_id`) and a catalogue title or category
    (``streams.catalog``) may hold, and of what ``diam``'s text output escapes. Refused: what
    ``str.isprintable`` refuses (C0 and C1 control characters and DEL, which drive a terminal;
    line and paragraph separators, which start a new row; format characters such as direction
    overrides, which reorder what follows) and ``" "``; with ``spaces``, whitespace that breaks
    no line (``" "``, a no-break space) is allowed, as titles have it. A value holding such a
    character, shown in a listing, can forge its rows.

    >>> unprintable("Kolya (1996)") is None, unprintable("Kolya (1996)", spaces=True) is None
    (False, True)
    >>> unprintable("Scream\\n    2. Star Wars", spaces=True)
    '\\n'
    >>> unprintable("red\\x1b[31m", spaces=True), unprintable("a\\u2028b", spaces=True)
    ('\\x1b', '\\u2028')
    """
    if text.isprintable() and (spaces or " " not in text):
        return None
    for c in text:
        if c.isprintable():
            if c == " " and not spaces:
                return c
        elif not (spaces and unicodedata.category(c) == "Zs"):
            return c
    return None


def validate_item_id(item_id: str) -> str | None:
    """None if ``item_id`` is a valid item id, else the reason: 1..128 printable characters
    without whitespace (:func:`unprintable`). The one rule for clicks and the catalogue
    (``streams.catalog``): ids reach every client's list, and a control character, a direction
    override or a line break there is never an item anyone published."""
    if not 1 <= len(item_id) <= _MAX_ITEM_ID_LEN:
        return f"item_id: length {len(item_id)} outside 1..{_MAX_ITEM_ID_LEN}"
    if (bad := unprintable(item_id)) is not None:
        return f"item_id: contains {bad!r} (U+{ord(bad):04X}; printable characters without whitespace)"
    return None


_UNPACK = msgpack.unpackb
_JSON_FIRST = frozenset(b"{[ \n\t\r")


def _parse(raw: bytes) -> object | Rejection:
    """The payload as a Python object, or a Rejection; never raises.

    Both parsers can raise more than their documented errors on hostile input: ``json.loads``
    raises RecursionError on deeply nested arrays (a 10 KB payload of brackets killed the
    dataflow, and again on every restart), msgpack several unrelated types. Any exception is
    therefore a reason, and the parser's complaint is kept in it."""
    try:
        return _parse_any(raw)
    except RecursionError:
        return Rejection("undecodable: JSON nested too deeply (RecursionError)")
    except Exception as exc:  # noqa: BLE001 - bad bytes must become a dead letter, not a crash
        return Rejection(f"undecodable: {type(exc).__name__} from the parser")


def _parse_any(raw: bytes) -> object | Rejection:
    first = raw[0]
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):  # a msgpack map: the common case
        try:
            return _UNPACK(raw)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            # a map header: name msgpack's complaint (a non-string key, bytes after the map,
            # a truncated map) rather than send the producer's owner to the JSON side
            return Rejection(f"undecodable: a msgpack map that does not parse "
                             f"({type(exc).__name__}: {str(exc)[:80]})")
    if first in _JSON_FIRST:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except RecursionError:
        raise
    except Exception:  # msgpack raises several unrelated types on garbage
        pass
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Rejection("undecodable: neither msgpack nor JSON")


Click = tuple[str, str, int, "str | None"]
"""What the dataflow keeps of a valid event: ``(user_id, item_id, ts, session_id)``."""


def decode_event(
    raw: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    ts_min_ms: int = DEFAULT_TS_MIN_MS,
    ts_max_ms: int | None = None,
) -> ClickEvent | Rejection:
    """Decode and validate one payload. ``ts_max_ms`` None means no upper bound (the dataflow
    passes the record's timestamp + allowed skew; replays of old data are unaffected)."""
    got = _checked(raw, max_bytes, ts_min_ms, ts_max_ms)
    if type(got) is tuple:
        return _new_click(got[0], got[1], got[2])
    return got  # type: ignore[return-value]


def decode_click(
    raw: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    ts_min_ms: int = DEFAULT_TS_MIN_MS,
    ts_max_ms: int | None = None,
) -> Click | Rejection:
    """:func:`decode_event` for the dataflow: the same checks and reasons, but a valid event
    comes back as the plain tuple :data:`Click` of the fields the learner uses: building a
    frozen ``ClickEvent`` per event would be a visible share of what the dataflow spends.

    >>> decode_click(encode_event(ClickEvent("u1", "i9", 880_000_000_000, session_id="s")))
    ('u1', 'i9', 880000000000, 's')
    """
    got = _checked(raw, max_bytes, ts_min_ms, ts_max_ms)
    if isinstance(got, ClickEvent):
        return (got.user_id, got.item_id, got.ts, got.session_id)
    return got


def _checked(raw: bytes | None, max_bytes: int, ts_min_ms: int,
             ts_max_ms: int | None) -> Click | ClickEvent | Rejection:
    """The one decode-and-validate path of both entry points: the fast path's :data:`Click`
    tuple for the common event, a full ``ClickEvent`` otherwise, or a Rejection; never raises."""
    try:
        obj = _decode(raw, max_bytes)
        if isinstance(obj, Rejection):
            return obj
        lo = ts_min_ms if ts_min_ms > _TS_EARLIEST_MS else _TS_EARLIEST_MS
        hi = ts_max_ms if ts_max_ms is not None and ts_max_ms < _TS_LATEST_MS else _TS_LATEST_MS
        fast = _fast_fields(obj, lo, hi)
        if fast is not None:
            return fast
        return _validate(obj, ts_min_ms=lo, ts_max_ms=ts_max_ms)
    except Exception as exc:  # noqa: BLE001 - the last line of defence, see _internal
        return _internal(exc)


def _internal(exc: BaseException) -> Rejection:
    """A payload that made validation itself fail (a bug, or input nobody foresaw) is
    rejected with the exception's type, so one record can never stop every user's learning."""
    return Rejection(f"internal: {type(exc).__name__} while validating")


def _decode(raw: bytes | None, max_bytes: int) -> dict[Any, Any] | Rejection:
    if raw is None:
        return Rejection("payload: empty (tombstone or null value)")
    if len(raw) > max_bytes:
        return Rejection(f"payload: {len(raw)} bytes exceeds the limit of {max_bytes}")
    if not raw:
        return Rejection("payload: empty")
    obj = _parse(raw)
    if isinstance(obj, Rejection):
        return obj
    if not isinstance(obj, dict):
        return Rejection(f"payload: expected a map but got {type(obj).__name__}")
    return obj


def _fast_fields(obj: dict[Any, Any], ts_lo: int, ts_hi: int) -> Click | None:
    # Fast path for the common event {user_id, item_id, ts}: the same checks as _validate,
    # written so that a valid click costs a couple of microseconds (the stream's budget per
    # event is tens of microseconds in all). None: anything unusual, for the precise checks.
    # ts_lo..ts_hi: the accepted times, the settings' within the years 1..9999.
    if len(obj) == 3:
        u, it, ts = obj.get("user_id"), obj.get("item_id"), obj.get("ts")
        if (type(u) is str and type(ts) is int and ts_lo <= ts <= ts_hi
                and USER_ID_RE.fullmatch(u) is not None):
            if type(it) is int:
                it = str(it)
            if type(it) is str and 0 < len(it) <= _MAX_ITEM_ID_LEN and it.isprintable() \
                    and " " not in it:
                return (u, it, ts, None)
    return None


def _shown(n: int) -> str:
    """An integer as a reason quotes it: whole up to 20 characters (every 64-bit one), else its
    first digits and how many there are (a JSON integer may have thousands, and reasons travel
    in Kafka headers).

    >>> _shown(-(2**63)), _shown(10**40)
    ('-9223372036854775808', '10000000... (41 digits)')
    """
    s = str(n)
    return s if len(s) <= 20 else f"{s[:8]}... ({len(s.lstrip('-'))} digits)"


def _validate(obj: dict[Any, Any], *, ts_min_ms: int, ts_max_ms: int | None) -> ClickEvent | Rejection:
    """The precise checks and their reasons. ``ts_min_ms``: the earliest accepted time, already
    within years 1..9999 (:func:`_checked`); ``ts_max_ms``: the caller's upper bound, or None."""
    if not _KNOWN_FIELDS.issuperset(obj):
        unknown = sorted(str(k) for k in obj if k not in _KNOWN_FIELDS)
        return Rejection(f"payload: unknown field(s) {' '.join(unknown)}")
    for name in ("user_id", "item_id", "ts"):
        if name not in obj:
            return Rejection(f"{name}: missing")

    user_id = obj["user_id"]
    why = validate_user_id(user_id)
    if why:
        return Rejection(why)

    item = obj["item_id"]
    if isinstance(item, bool) or not isinstance(item, (str, int)):
        return Rejection(f"item_id: expected a string or integer but got {type(item).__name__}")
    item_id = str(item)
    why = validate_item_id(item_id)
    if why:
        return Rejection(why)

    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int):
        return Rejection(f"ts: expected integer epoch milliseconds but got {type(ts).__name__}")
    if ts < ts_min_ms:
        return Rejection(f"ts: {_shown(ts)} is before the earliest accepted time {ts_min_ms} "
                         "(epoch ms)")
    if ts_max_ms is not None and ts_max_ms < _TS_LATEST_MS and ts > ts_max_ms:
        return Rejection(f"ts: {_shown(ts)} is in the future beyond the allowed skew (max "
                         f"{ts_max_ms})")
    if ts > _TS_LATEST_MS:
        return Rejection(f"ts: {_shown(ts)} is after the latest accepted time {_TS_LATEST_MS} "
                         "(epoch ms: the end of year 9999)")

    kind = obj.get("event", "click")
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        return Rejection(f"event: {kind!r} is not one of {sorted(EVENT_KINDS)}")

    session = obj.get("session_id")
    if session is not None and (
        not isinstance(session, str) or not 1 <= len(session) <= _MAX_SESSION_LEN
    ):
        return Rejection(f"session_id: expected a string of 1..{_MAX_SESSION_LEN} chars")

    dwell = obj.get("dwell_ms")
    if dwell is not None:
        if isinstance(dwell, bool) or not isinstance(dwell, int) or dwell < 0:
            return Rejection("dwell_ms: expected a non-negative integer")
        if dwell > _MAX_DWELL_MS:
            return Rejection(f"dwell_ms: {_shown(dwell)} exceeds the limit of {_MAX_DWELL_MS} "
                             "(a day in ms)")

    context = obj.get("context")
    if context is not None:
        if not isinstance(context, dict):
            return Rejection(f"context: expected a map but got {type(context).__name__}")
        if len(context) > _MAX_CONTEXT_KEYS:
            return Rejection(f"context: {len(context)} keys exceeds {_MAX_CONTEXT_KEYS}")
        for key, value in context.items():
            if not isinstance(key, str):
                return Rejection("context: keys must be strings")
            if not isinstance(value, (str, int, float, bool)) or value is None:
                return Rejection(f"context.{key}: expected a scalar but got {type(value).__name__}")
            if type(value) is int and not _CONTEXT_INT[0] <= value <= _CONTEXT_INT[1]:
                return Rejection(f"context.{key}: integer {_shown(value)} outside the signed "
                                 "64-bit range")

    return ClickEvent(
        user_id=user_id,
        item_id=item_id,
        ts=ts,
        event=kind,
        session_id=session,
        dwell_ms=dwell,
        context=dict(context) if context is not None else None,
    )
