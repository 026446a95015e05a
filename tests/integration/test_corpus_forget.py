"""Training from the topic against the real broker judges records as the dataflow does: the
audit's case (a click of u1, u1's tombstone, a keyless click of u2) trains on nobody; a range
ending before a user's tombstone leaves them out (``diam forget``'s markers)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diam.cli import main
from serving_cache.keys import forgotten_key, forgotten_key_by_name
from streams.catalog import Catalog
from streams.events import ClickEvent, encode_event
from streams.forget_markers import read_markers, topic_id
from streams.kafka_io import watermarks
from streams.producer import produce_raw
from streams.replay import parse_bound, resolve_range
from streams.topic_corpus import corpus_from_topic, read_clicks

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


@pytest.mark.partitions(1)
def test_a_range_ending_before_the_tombstone_leaves_the_forgotten_user_out(
        stack, topic, redis_client) -> None:
    """``diam forget`` after the range's end: its marker (the durable copy on the markers'
    topic) drops the user's clicks below the tombstone, also once Redis lost the markers'
    hash; a click after the tombstone counts again."""
    kafka = stack.settings.kafka.model_copy(update={"forgotten_topic": f"{topic}.forgotten"})
    s = stack.settings.model_copy(update={"kafka": kafka})
    u1, u2 = f"c{topic[-8:]}a", f"c{topic[-8:]}b"  # this test's users: forget reaches every namespace
    recs = [(u.encode(), encode_event(ClickEvent(u, f"i{n}", T0 + n)))
            for n, u in enumerate([u1, u2, u1, u2, u1])]
    assert produce_raw(kafka, topic, recs).ok
    tid = topic_id(kafka, topic)
    try:
        r = CliRunner().invoke(main, ["forget", u1, "--topic", topic], obj={"settings": s})
        assert r.exit_code == 0, r.output
        tomb = watermarks(kafka, topic)[0][1] - 1
        assert tomb == 5 and read_markers(kafka, topic, tid) == {u1: tomb}
        assert produce_raw(kafka, topic, [(u1.encode(),
                                           encode_event(ClickEvent(u1, "i9", T0 + 9)))]).ok
        before = resolve_range(kafka, topic, None, parse_bound("0:4"))
        for lost in (False, True):
            if lost:  # Redis lost its data: the durable copy still forgets
                redis_client.delete(forgotten_key(topic, tid), forgotten_key_by_name(topic))
            got = read_clicks(kafka, before)
            assert got.users == [u2, u2], f"{u1} learnt from a range before its tombstone"
            assert (got.records, got.forgets, got.forgotten, got.forgotten_users) == (4, 0, 2, 1)
        whole = read_clicks(kafka, resolve_range(kafka, topic, None, None))
        assert whole.users == [u2, u2, u1] and whole.items[-1] == "i9"  # a new start counts
        assert (whole.forgets, whole.forgotten, whole.forgotten_users) == (1, 3, 1)
        corpus = corpus_from_topic(got, Catalog())
        assert (corpus.info["forgotten"], corpus.info["forgotten_users"]) == (2, 1)
    finally:
        redis_client.delete(forgotten_key(topic, tid), forgotten_key_by_name(topic))
