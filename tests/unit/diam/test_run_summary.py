"""``diam run``'s summary line: written and read back by the one pair of functions the
benchmarks and tests call (``diam.commands.run``)."""

from __future__ import annotations

import pytest

from diam.commands.run import parse_summary, summary_line
from streams.online import FlowStats

COUNTS = dict(records=12_345, valid=12_340, rejected=5, users=100, in_state=90, learn_calls=800,
              pushes=700, drift_events=3, evictions=10, restarts=2)


def test_every_count_comes_back_from_the_line() -> None:
    line = summary_line("done", {**COUNTS, "ended": 10}, seconds=3.21, cpu_s=2.5)
    got = parse_summary("online dataflow: ...\nsome log line\n" + line + "\n")
    assert {k: got[k] for k in COUNTS} == COUNTS
    assert (got["seconds"], got["cpu_s"]) == (3.2, 2.5)
    assert got["per_s"] == round(12_345 / 3.21)  # thousands separators read back
    assert line.startswith("done: 12345 records (12340 valid, 5 dead-lettered), 100 user states (90 held)")


def test_the_dataflows_own_counts_fill_it() -> None:
    stats = FlowStats()
    c = stats.counts()
    c.records, c.rejected, c.users, c.ended, c.evictions, c.restarts = 9, 1, 4, 3, 2, 1
    got = parse_summary(summary_line("stopped", stats.as_dict(), 1.0, 1.0))
    assert (got["valid"], got["users"], got["in_state"], got["evictions"], got["restarts"]) == (8, 4, 1, 2, 1)


def test_a_line_from_before_a_field_existed_gives_the_others() -> None:
    # bench/stream_ab.py times older revisions, whose line said "N users" and had no drop counts
    old = ("done: 300 records (300 valid, 0 dead-lettered), 12 users, 40 learn calls, 30 pushes to "
           "Redis, 0 drift events in 2.0 s (150 records/s; 1.9 CPU s, 158 records per CPU second)")
    got = parse_summary(old)
    assert (got["valid"], got["rejected"], got["learn_calls"], got["cpu_s"]) == (300, 0, 40, 1.9)
    assert "users" not in got and "evictions" not in got


def test_output_without_a_summary_line_is_refused() -> None:
    with pytest.raises(ValueError, match="no 'diam run' summary line"):
        parse_summary("online dataflow: t -> redis\nTraceback ...")
