"""Training from the topic against the real broker judges records as the dataflow does: the
audit's case (a click of u1, u1's tombstone, a keyless click of u2) trains on nobody."""

from __future__ import annotations

from streams.events import ClickEvent, encode_event
from streams.producer import produce_raw
from streams.replay import resolve_range
from streams.topic_corpus import read_clicks

T0 = 880_000_000_000


def test_read_clicks_forgets_a_tombstoned_user_and_refuses_a_keyless_click(stack, topic) -> None:
    kafka = stack.settings.kafka
    recs = [(b"u1", encode_event(ClickEvent("u1", "i1", T0))),
            (b"u1", None),
            (None, encode_event(ClickEvent("u2", "i2", T0 + 1))),
            (b"u3", encode_event(ClickEvent("u3", "i3", T0 + 2)))]
    assert produce_raw(kafka, topic, recs).ok
    got = read_clicks(kafka, resolve_range(kafka, topic, None, None))
    assert got.users == ["u3"]
    assert (got.records, got.rejected, got.forgets, got.forgotten) == (4, 1, 1, 1)
    assert len(got.reasons) == 1 and ": key: missing (" in got.reasons[0]
