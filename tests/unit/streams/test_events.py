"""The click event contract: every kind of bad input is rejected with a precise reason."""

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import ClickEvent, Rejection, decode_click, decode_event, encode_event

TS = 880_000_000_000


def mp(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_round_trip_msgpack_and_json() -> None:
    ev = ClickEvent("u1", "42", TS, session_id="s", dwell_ms=10, context={"device": "ios", "hour": 3})
    assert decode_event(encode_event(ev)) == ev
    js = json.dumps({"user_id": "u1", "item_id": 42, "ts": TS}).encode()
    assert decode_event(js) == ClickEvent("u1", "42", TS)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "payload: empty (tombstone or null value)"),
        (b"", "payload: empty"),
        (b"\xc1\xff\x00", "undecodable: neither msgpack nor JSON"),
        # msgpack maps that do not parse name msgpack's complaint, not JSON
        (mp({1: "x", "user_id": "u"}),
         "undecodable: a msgpack map that does not parse (ValueError: int is not allowed for "
         "map key when strict_map_key~True)"),
        (mp({"user_id": "u1", "item_id": 1, "ts": TS}) + b"xx",
         "undecodable: a msgpack map that does not parse (ExtraData: unpack(b) received extra "
         "data.)"),
        (mp({"user_id": "u1", "item_id": 1, "ts": TS})[:-3],
         "undecodable: a msgpack map that does not parse (ValueError: Unpack failed: incomplete "
         "input)"),
        (b"x" * 20_000, "payload: 20000 bytes exceeds the limit of 16384"),
        (mp([1, 2]), "payload: expected a map but got list"),
        (mp({"item_id": 1, "ts": TS}), "user_id: missing"),
        (mp({"user_id": "u", "ts": TS}), "item_id: missing"),
        (mp({"user_id": "u", "item_id": 1}), "ts: missing"),
        (mp({"user_id": 5, "item_id": 1, "ts": TS}), "user_id: expected a string but got int"),
        (mp({"user_id": "", "item_id": 1, "ts": TS}), "user_id: length 0 outside 1..128"),
        (mp({"user_id": "u" * 129, "item_id": 1, "ts": TS}), "user_id: length 129 outside 1..128"),
        (mp({"user_id": "a:b", "item_id": 1, "ts": TS}),
         "user_id: contains ':' (allowed: letters and digits and _ . @ + - and the equals sign)"),
        (mp({"user_id": "a*", "item_id": 1, "ts": TS}),
         "user_id: contains '*' (allowed: letters and digits and _ . @ + - and the equals sign)"),
        (mp({"user_id": "u", "item_id": 1.5, "ts": TS}), "item_id: expected a string or integer but got float"),
        (mp({"user_id": "u", "item_id": True, "ts": TS}), "item_id: expected a string or integer but got bool"),
        (mp({"user_id": "u", "item_id": "", "ts": TS}), "item_id: length 0 outside 1..128"),
        (mp({"user_id": "u", "item_id": "a\x00", "ts": TS}),
         "item_id: contains '\\x00' (U+0000; printable characters without whitespace)"),
        (mp({"user_id": "u", "item_id": "a\nb", "ts": TS}),
         "item_id: contains '\\n' (U+000A; printable characters without whitespace)"),
        (mp({"user_id": "u", "item_id": "\u202eevil", "ts": TS}),
         "item_id: contains '\\u202e' (U+202E; printable characters without whitespace)"),
        (mp({"user_id": "u", "item_id": "a b", "ts": TS}),
         "item_id: contains ' ' (U+0020; printable characters without whitespace)"),
        (mp({"user_id": "u", "item_id": 1, "ts": "now"}), "ts: expected integer epoch milliseconds but got str"),
        (mp({"user_id": "u", "item_id": 1, "ts": 5}),
         "ts: 5 is before the earliest accepted time 631152000000 (epoch ms)"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "event": "view"}), "event: 'view' is not one of ['click']"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "dwell_ms": -1}), "dwell_ms: expected a non-negative integer"),
        # was: accepted, and encode_event then raised OverflowError on the event
        (json.dumps({"user_id": "u", "item_id": 1, "ts": TS, "dwell_ms": 10**40}).encode(),
         "dwell_ms: 10000000... (41 digits) exceeds the limit of 86400000 (a day in ms)"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "dwell_ms": 86_400_001}),
         "dwell_ms: 86400001 exceeds the limit of 86400000 (a day in ms)"),
        (json.dumps({"user_id": "u", "item_id": 1, "ts": 10**40}).encode(),
         "ts: 10000000... (41 digits) is after the latest accepted time 253402300799999 (epoch "
         "ms: the end of year 9999)"),
        (mp({"user_id": "u", "item_id": 1, "ts": 253_402_300_800_000}),
         "ts: 253402300800000 is after the latest accepted time 253402300799999 (epoch ms: the "
         "end of year 9999)"),
        (json.dumps({"user_id": "u", "item_id": 1, "ts": TS, "context": {"n": -(10**40)}}).encode(),
         "context.n: integer -1000000... (41 digits) outside the signed 64-bit range"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "context": {"n": 2**63}}),
         "context.n: integer 9223372036854775808 outside the signed 64-bit range"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "context": [1]}), "context: expected a map but got list"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "context": {"a": [1]}}), "context.a: expected a scalar but got list"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "colour": 1}), "payload: unknown field(s) colour"),
    ],
)
def test_rejections_name_the_field(payload: bytes | None, reason: str) -> None:
    got = decode_event(payload)
    assert isinstance(got, Rejection)
    assert got.reason == reason
    assert decode_click(payload) == got  # the dataflow's decoder rejects with the same reason


def test_printable_item_ids_pass_both_decoders() -> None:
    """Markup is printable: what a client does with it is the client's escaping (the UI uses
    textContent); only ids no one could have published are refused."""
    for it in ("<script>x</script>", "é-42", "a.b/c", "9" * 128):
        ev = mp({"user_id": "u", "item_id": it, "ts": TS})
        assert decode_event(ev) == ClickEvent("u", it, TS)
        assert decode_click(ev) == ("u", it, TS, None)


def test_future_bound() -> None:
    got = decode_event(mp({"user_id": "u", "item_id": 1, "ts": TS + 10}), ts_max_ms=TS)
    assert isinstance(got, Rejection) and got.reason.startswith("ts: ")


LATEST = 253_402_300_799_999  # the last ms of year 9999


@pytest.mark.parametrize("decode", [decode_event, decode_click])
def test_integer_fields_are_accepted_up_to_their_limits(decode) -> None:
    edge = {"user_id": "u", "item_id": 1, "ts": LATEST, "dwell_ms": 86_400_000,
            "context": {"lo": -(2**63), "hi": 2**63 - 1}}
    for raw in (mp(edge), json.dumps(edge).encode(), mp({"user_id": "u", "item_id": 1, "ts": LATEST})):
        got = decode(raw)
        assert not isinstance(got, Rejection), got
    ev = decode_event(mp(edge))
    assert decode_event(encode_event(ev)) == ev


@pytest.mark.parametrize("decode", [decode_event, decode_click])
def test_the_years_bound_ts_whatever_the_settings_and_the_record(decode) -> None:
    # a record timestamp far ahead (or none, ts_max_ms None) and a settings floor far behind
    # still leave ts within years 1..9999
    after = mp({"user_id": "u", "item_id": 1, "ts": LATEST + 1})
    for ts_max in (None, LATEST, 2**62):
        got = decode(after, ts_max_ms=ts_max)
        assert isinstance(got, Rejection) and "after the latest accepted time" in got.reason
    before = mp({"user_id": "u", "item_id": 1, "ts": -(2**63)})
    got = decode(before, ts_min_ms=-(2**64))
    assert got == Rejection("ts: -9223372036854775808 is before the earliest accepted time "
                            "-62135596800000 (epoch ms)")
    # the skew's own reason where the record bounds ts below the end of year 9999
    got = decode(after, ts_max_ms=LATEST - 5)
    assert isinstance(got, Rejection) and "beyond the allowed skew (max 253402300799994)" in got.reason


_ANY_INT = st.one_of(st.integers(), st.integers(-(10**50), 10**50))


@settings(max_examples=300)
@given(ts=st.one_of(st.integers(TS - 5, TS + 5), _ANY_INT), dwell=st.one_of(st.none(), _ANY_INT),
       extra=st.dictionaries(st.sampled_from(["a", "b"]), _ANY_INT, max_size=2),
       fmt=st.sampled_from(["msgpack", "json"]))
def test_every_accepted_event_encodes_again(ts: int, dwell: int | None, extra: dict,
                                            fmt: str) -> None:
    # was: {"dwell_ms": 10**40} (JSON) was accepted and encode_event raised OverflowError
    obj = {"user_id": "u", "item_id": 1, "ts": ts, "dwell_ms": dwell, "context": extra}
    if dwell is None:
        del obj["dwell_ms"]
    try:
        raw = mp(obj) if fmt == "msgpack" else json.dumps(obj).encode()
    except OverflowError:  # beyond msgpack's 64 bits: JSON only
        return
    ev = decode_event(raw)
    if isinstance(ev, ClickEvent):
        assert decode_event(encode_event(ev)) == ev


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(decode_event(raw), (ClickEvent, Rejection))


@given(st.text(min_size=1, max_size=128))
def test_accepted_user_ids_cannot_escape_namespace(uid: str) -> None:
    got = decode_event(mp({"user_id": uid, "item_id": 1, "ts": TS}))
    if isinstance(got, ClickEvent):
        assert not set(got.user_id) & set(":*?[]{} \t\n\\")


_FIELD = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                   st.text(max_size=140), st.binary(max_size=8), st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
_MAPS = st.fixed_dictionaries(
    {
        "user_id": st.one_of(st.from_regex(r"[A-Za-z0-9_.@+=-]{1,12}", fullmatch=True), _FIELD),
        "item_id": st.one_of(st.integers(0, 10**6), st.text(min_size=1, max_size=6), _FIELD),
        "ts": st.one_of(st.integers(TS - 5, TS + 5), _FIELD),
    },
    optional={
        "event": st.one_of(st.just("click"), _FIELD),
        "session_id": st.one_of(st.text(min_size=1, max_size=6), _FIELD),
        "dwell_ms": st.one_of(st.integers(0, 10**5), _FIELD),
        "context": st.one_of(st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), _FIELD),
        "other": _FIELD,
    },
)

@settings(max_examples=400)  # ~4% of the drawn maps are valid events
@given(_MAPS, st.sampled_from(["msgpack", "json"]), st.one_of(st.none(), st.integers(0, 2 * TS)))
def test_the_dataflow_decoder_agrees_with_decode_event(obj: dict, fmt: str, ts_max: int | None) -> None:
    # decode_click (the dataflow's) returns the fields of exactly the events decode_event
    # accepts, and the same rejection otherwise; valid maps are common enough here because
    # the keys are drawn from the contract's
    try:
        raw = mp(obj) if fmt == "msgpack" else json.dumps(obj).encode()
    except (TypeError, ValueError, OverflowError):  # not representable in that format
        return
    want = decode_event(raw, ts_max_ms=ts_max)
    got = decode_click(raw, ts_max_ms=ts_max)
    if isinstance(want, ClickEvent):
        assert got == (want.user_id, want.item_id, want.ts, want.session_id)
    else:
        assert got == want


def test_the_dataflow_decoder_on_common_events() -> None:
    ev = ClickEvent("u1", "42", TS, session_id="s", dwell_ms=10, context={"device": "ios"})
    assert decode_click(encode_event(ev)) == ("u1", "42", TS, "s")
    assert decode_click(mp({"user_id": "u1", "item_id": 42, "ts": TS})) == ("u1", "42", TS, None)
    assert decode_click(mp({"user_id": "u1", "item_id": 42, "ts": TS}), ts_max_ms=TS - 1) == \
        decode_event(mp({"user_id": "u1", "item_id": 42, "ts": TS}), ts_max_ms=TS - 1)


# -- poison pills: no payload may make decoding raise -----------------------------------------

_NESTED = [
    b"[" * 5000 + b"]" * 5000,  # the 10 KB pill: json.loads raises RecursionError
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"\x91" * 8000 + b"\xc0",  # msgpack: 8000 nested one-element arrays
    b"\x81\xa1a" * 4000 + b"\xc0",  # msgpack: nested maps
    b'{"user_id": "u", "item_id": 1, "ts": ' + b"9" * 5000 + b"}",  # int over Python's digit limit
    b'{"user_id": "u", "item_id": 1, "ts": 1e999}',  # float infinity
    b'{"user_id": "u", "item_id": 1, "ts": NaN}',
    "\ufeff{}".encode("utf-16"),  # another encoding
    b'{"user_id": "\\ud800", "item_id": 1, "ts": 880000000000}',  # lone surrogate
    mp({"user_id": "u", "item_id": 1, "ts": TS, "event": [[[[[[1]]]]]] * 300}),
    mp({b"user_id": "u", "item_id": 1, "ts": TS}),  # a bytes key
]


@pytest.mark.parametrize("payload", _NESTED)
def test_poison_pills_are_rejections_with_clean_reasons(payload: bytes) -> None:
    for decode in (decode_event, decode_click):
        got = decode(payload)
        assert isinstance(got, Rejection), got
        assert "," not in got.reason and "=" not in got.reason


def test_deep_json_names_the_recursion() -> None:
    got = decode_click(b"[" * 5000 + b"]" * 5000)
    assert isinstance(got, Rejection)
    assert got.reason == "undecodable: JSON nested too deeply (RecursionError)"


def _json_values(depth_leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        depth_leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=40,
    )


_LEAVES = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=20))
_FIELDS = st.sampled_from(["user_id", "item_id", "ts", "event", "session_id", "dwell_ms", "context",
                           "other"])


@settings(max_examples=300, deadline=None)
@given(obj=st.dictionaries(_FIELDS, _json_values(_LEAVES), max_size=7),
       depth=st.integers(0, 3000), as_json=st.booleans())
def test_decoding_never_raises_on_adversarial_maps(obj: dict, depth: int, as_json: bool) -> None:
    """Nested and adversarial JSON and msgpack, wrapped in up to 3000 levels of arrays: every
    outcome is an event or a Rejection whose reason survives a k=v,k=v header dump."""
    raw = json.dumps(obj).encode() if as_json else mp(obj)
    if depth:
        raw = (b"[" * depth + raw + b"]" * depth) if as_json else (b"\x91" * depth + raw)
    for decode in (decode_event, decode_click):
        got = decode(raw)
        if isinstance(got, Rejection):
            assert "," not in got.reason and "=" not in got.reason


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(min_size=1, max_size=300))
def test_decoding_never_raises_on_random_bytes(raw: bytes) -> None:
    for decode in (decode_event, decode_click):
        got = decode(raw)
        assert isinstance(got, (Rejection, ClickEvent, tuple))
