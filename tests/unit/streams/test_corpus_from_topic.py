"""The training corpus read from the clicks topic (``streams.topic_corpus``) judges records by
the dataflow's own rule: it refuses what the dataflow dead-letters, with the same reason, and a
user's tombstone (``diam forget``) forgets the clicks of theirs before it, as the dataflow
forgets the user's state."""

from __future__ import annotations

from datetime import timedelta

from bytewax.testing import TestingSink, TestingSource, run_main

from streams.config import FlowConfig
from streams.events import ClickEvent, encode_event
from streams.kafka_io import RawRecord
from streams.online import FlowSinks, LearnerHolder, build_flow
from streams.replay import ReplayRange
from streams.topic_corpus import TopicClicks, clicks_of
from tests.flowkit import T0, tiny_learner

CFG = FlowConfig(push_every_events=1_000, push_every_ms=60_000, epoch_interval_s=0.05)


def _click(user: str, item: str = "i1", ts: int = T0) -> bytes:
    return encode_event(ClickEvent(user_id=user, item_id=item, ts=ts))


def _records(*kv: tuple[bytes | None, bytes | None]) -> list[RawRecord]:
    """Records of partition 0 at offsets 0, 1, ..., stamped T0."""
    return [RawRecord("t", 0, off, key, value, T0) for off, (key, value) in enumerate(kv)]


def _corpus(recs: list[RawRecord]) -> TopicClicks:
    return clicks_of(recs, ReplayRange("t", {0: 0}, {0: len(recs)}), CFG)


def _reasons(clicks: TopicClicks) -> dict[int, str]:
    """Offset -> reason of each rejected record (``t[0]@<offset>: <reason>``)."""
    out = {}
    for line in clicks.reasons:
        where, why = line.split(": ", 1)
        out[int(where.rsplit("@", 1)[1])] = why
    return out


def test_a_keyless_click_is_refused_with_the_dataflows_reason() -> None:
    got = _corpus(_records((b"u1", _click("u1")), (None, _click("u2"))))
    assert (got.users, got.records, got.rejected) == (["u1"], 2, 1)
    assert _reasons(got)[1].startswith("key: missing (events must be keyed by user_id")


def test_a_click_keyed_by_another_user_is_refused() -> None:
    got = _corpus(_records((b"u2", _click("u3")), (b"u3", _click("u3"))))
    assert (got.users, got.rejected) == (["u3"], 1)
    assert _reasons(got)[0].startswith("key: record key b'u2' differs from user_id 'u3'")


def test_a_tombstone_forgets_that_users_earlier_clicks_only() -> None:
    got = _corpus(_records(
        (b"u1", _click("u1", "i1", T0)),
        (b"u2", _click("u2", "i2", T0 + 1)),
        (b"u1", _click("u1", "i3", T0 + 2)),
        (b"u1", None),                         # diam forget u1
        (b"u1", _click("u1", "i4", T0 + 3)),  # after it: a new start, trained on
        (b"u2", _click("u2", "i5", T0 + 4)),
    ))
    assert list(zip(got.users, got.items, got.ts, strict=True)) == [
        ("u2", "i2", T0 + 1), ("u1", "i4", T0 + 3), ("u2", "i5", T0 + 4)]
    assert (got.records, got.rejected, got.reasons) == (6, 0, [])
    assert (got.forgets, got.forgotten) == (1, 2)


def test_the_audits_case_keeps_nobody() -> None:
    # a click from u1, a tombstone for u1, a keyless click from u2: u1 forgotten, u2 refused
    got = _corpus(_records((b"u1", _click("u1")), (b"u1", None), (None, _click("u2"))))
    assert (len(got), got.rejected, got.forgets) == (0, 1, 1)
    assert list(_reasons(got)) == [2]


def test_a_tombstone_without_a_valid_user_key_is_refused_as_a_forget() -> None:
    got = _corpus(_records((None, None), (b"a:b", None), (b"ghost", None)))
    reasons = _reasons(got)
    assert (got.rejected, got.forgets) == (2, 1)
    assert reasons == {0: "payload: empty (tombstone or null value)",
                       1: "forget: the tombstone's key b'a:b' is not a valid user id (user_id: "
                          "contains ':' (allowed: letters and digits and _ . @ + - and the "
                          "equals sign))"}


def _dataflow(recs: list[RawRecord]) -> tuple[dict[str, int], dict[int, str]]:
    """What the dataflow learns from ``recs`` (user -> events in their last pushed state, 0 for
    a forgotten one) and dead-letters (offset -> reason)."""
    vecs: list = []
    dead: list = []
    learner = tiny_learner()
    flow = build_flow(TestingSource(recs, batch_size=4),
                      FlowSinks(TestingSink(vecs), TestingSink(dead), TestingSink([])),
                      CFG, LearnerHolder(learner, learner.base.version))
    run_main(flow, epoch_interval=timedelta(seconds=0.05))
    learnt = {u: 0 if uv is None else uv.n for u, uv in vecs}
    reasons = {}
    for _, out in dead:
        h = {k: v.decode() for k, v in out.headers}
        reasons[int(h["diam.offset"])] = h["diam.reason"]
    return learnt, reasons


def test_the_dataflow_and_the_corpus_give_the_same_verdicts() -> None:
    recs = _records(
        (b"u1", _click("u1", "i1", T0)),
        (b"u2", _click("u2", "i2", T0 + 1)),
        (b"u1", None),                           # forget u1
        (b"u1", _click("u1", "i3", T0 + 2)),
        (None, _click("u3", "i4", T0 + 3)),      # no key
        (b"u2", _click("u3", "i5", T0 + 4)),     # another user's key
        (b"a:b", None),                          # a tombstone with no valid user key
        (None, None),
        (b"ghost", None),                        # a user never seen
        (b"u2", b"\xc1"),                        # undecodable
        (b"u2", b""),                            # empty
        (b"u2", _click("u2", "i6", 1)),          # before the earliest accepted time
        (b"u2", _click("u2", "i7", T0 + 10 * 86_400_000)),  # beyond the allowed skew
        (b"u2", b'{"user_id": "u2", "item_id": "i8", "ts": 880000000005, "x": 1}'),
        (b"u4", _click("u4", "i9", T0 + 5)),
        (b"u4", None),                           # forget u4, nothing after
        (b"u2", _click("u2", "i10", T0 + 6)),
    )
    learnt, dead = _dataflow(recs)
    got = _corpus(recs)
    assert _reasons(got) == dead and got.rejected == len(dead) == 9
    per_user: dict[str, int] = {}
    for u in got.users:
        per_user[u] = per_user.get(u, 0) + 1
    # the corpus trains on the clicks the dataflow's users hold at the end; forgotten users
    # (ghost, u4) have no clicks left in it
    assert per_user == {u: n for u, n in learnt.items() if n} == {"u1": 1, "u2": 2}
    assert {u for u, n in learnt.items() if n == 0} == {"ghost", "u4"}
    assert got.forgets == 3 and got.forgotten == 2
