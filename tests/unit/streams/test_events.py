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
        (b"x" * 20_000, "payload: 20000 bytes exceeds the limit of 16384"),
        (mp([1, 2]), "payload: expected a map, got list"),
        (mp({"item_id": 1, "ts": TS}), "user_id: missing"),
        (mp({"user_id": "u", "ts": TS}), "item_id: missing"),
        (mp({"user_id": "u", "item_id": 1}), "ts: missing"),
        (mp({"user_id": 5, "item_id": 1, "ts": TS}), "user_id: expected a string, got int"),
        (mp({"user_id": "", "item_id": 1, "ts": TS}), "user_id: length 0 outside 1..128"),
        (mp({"user_id": "u" * 129, "item_id": 1, "ts": TS}), "user_id: length 129 outside 1..128"),
        (mp({"user_id": "a:b", "item_id": 1, "ts": TS}),
         "user_id: contains ':' (allowed: letters, digits and _ . @ + = -)"),
        (mp({"user_id": "a*", "item_id": 1, "ts": TS}),
         "user_id: contains '*' (allowed: letters, digits and _ . @ + = -)"),
        (mp({"user_id": "u", "item_id": 1.5, "ts": TS}), "item_id: expected a string or integer, got float"),
        (mp({"user_id": "u", "item_id": True, "ts": TS}), "item_id: expected a string or integer, got bool"),
        (mp({"user_id": "u", "item_id": 1, "ts": "now"}), "ts: expected integer epoch milliseconds, got str"),
        (mp({"user_id": "u", "item_id": 1, "ts": 5}),
         "ts: 5 is before the earliest accepted time 631152000000 (epoch ms)"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "event": "view"}), "event: 'view' is not one of ['click']"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "dwell_ms": -1}), "dwell_ms: expected a non-negative integer"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "context": [1]}), "context: expected a map, got list"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "context": {"a": [1]}}), "context.a: expected a scalar, got list"),
        (mp({"user_id": "u", "item_id": 1, "ts": TS, "colour": 1}), "payload: unknown field(s) colour"),
    ],
)
def test_rejections_name_the_field(payload: bytes | None, reason: str) -> None:
    got = decode_event(payload)
    assert isinstance(got, Rejection)
    assert got.reason == reason
    assert decode_click(payload) == got  # the dataflow's decoder rejects with the same reason


def test_future_bound() -> None:
    got = decode_event(mp({"user_id": "u", "item_id": 1, "ts": TS + 10}), ts_max_ms=TS)
    assert isinstance(got, Rejection) and got.reason.startswith("ts: ")


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
