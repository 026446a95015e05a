"""The decode step skips a click below its user's forget marker (``diam forget``, read at the
run's start), for the raw records and for verdicts the source judged already (eviction on):
nothing is pushed or drifts from those clicks, the user's later clicks give what they gave
after the tombstone, and every other user is bit for bit as without the marker."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from serving_cache.codec import decode_user, encode_user
from streams.config import FlowConfig
from streams.events import encode_event
from streams.kafka_io import RawRecord
from streams.online import FlowSinks, FlowStats, LearnerHolder, build_flow, source_judge
from tests.flowkit import click_stream, tiny_learner

CFG = FlowConfig(push_every_events=3, push_every_ms=60_000, epoch_interval_s=0.05)
FORGOTTEN, AT = "user0", 60  # the tombstone's offset: the marker diam forget records


def _topic() -> list[RawRecord]:
    """120 clicks of five users, with user0's tombstone at offset 60."""
    events = click_stream(n_users=5, n_events=120)
    recs = [RawRecord("t", 0, o if o < AT else o + 1, ev.user_id.encode(), encode_event(ev), ev.ts)
            for o, ev in enumerate(events)]
    tomb = RawRecord("t", 0, AT, FORGOTTEN.encode(), None, recs[AT - 1].ts_ms)
    return recs[:AT] + [tomb] + recs[AT:]


def _run(recs: list[RawRecord], markers: dict[str, int] | None, judged: bool,
         stats: FlowStats | None = None):  # type: ignore[no-untyped-def]
    vecs: list = []  # type: ignore[type-arg]
    dead: list = []  # type: ignore[type-arg]
    drift: list = []  # type: ignore[type-arg]
    stats = stats if stats is not None else FlowStats()
    # judged: the verdicts a source given source_judge emits, counted into the flow's stats
    items: list = source_judge(CFG, stats)(recs, -1)[0] if judged else recs  # type: ignore[type-arg]
    learner = tiny_learner()
    flow = build_flow(TestingSource(items, batch_size=7),
                      FlowSinks(TestingSink(vecs), TestingSink(dead), TestingSink(drift)), CFG,
                      LearnerHolder(learner, learner.base.version), stats=stats, markers=markers,
                      judged=judged)
    run_main(flow, epoch_interval=timedelta(seconds=0.05))
    return _per_user(vecs, drift), dead


def _per_user(vecs: list, drift: list) -> dict[str, list]:  # type: ignore[type-arg]
    """Each user's pushes (encoded, as Redis holds them) and drift records, in order."""
    out: dict[str, list] = {}  # type: ignore[type-arg]
    for u, uv in vecs:
        out.setdefault(u, []).append(None if uv is None else encode_user(uv))
    for u, r in drift:
        out.setdefault(u, []).append(r.value)
    return out


def _at(value: bytes | None) -> int | None:
    """The offset a push (its seq) or a drift record was learnt at; None for a delete."""
    if value is None:
        return None
    return int(json.loads(value)["offset"]) if value.startswith(b"{") else decode_user(value).seq


@pytest.mark.parametrize("judged", [False, True], ids=["records", "judged-by-source"])
def test_clicks_below_the_marker_are_not_learnt(judged: bool) -> None:
    recs = _topic()
    below = [r for r in recs if r.key == FORGOTTEN.encode() and r.value is not None
             and r.offset < AT]
    stats = FlowStats()
    got, dead = _run(recs, {FORGOTTEN: AT, "nobody": 10**9}, judged, stats)
    old, old_dead = _run(recs, None, judged)  # the same topic, no marker known
    # the other users bit for bit as without the marker
    assert {u: v for u, v in got.items() if u != FORGOTTEN} == \
        {u: v for u, v in old.items() if u != FORGOTTEN}
    assert dead == old_dead == []
    # without the marker the forgotten clicks were learnt and pushed (what a replay did)
    assert len(below) > 5 and any(x is not None and x < AT for x in map(_at, old[FORGOTTEN]))
    # with it: nothing learnt from them; the later clicks learnt as a new user's, the same
    # values as after the tombstone without the marker
    mine = got[FORGOTTEN]
    assert mine == [v for v in old[FORGOTTEN] if (x := _at(v)) is None or x > AT]
    assert any(v is not None for v in mine)
    t = stats.total()
    assert (t.forgotten_clicks, t.records, t.valid) == (len(below), len(recs), len(recs) - 1)


def test_no_markers_is_the_flow_as_it_was() -> None:
    recs = _topic()
    stats = FlowStats()
    assert _run(recs, {}, False, stats) == _run(recs, None, False)
    assert stats.total().forgotten_clicks == 0
