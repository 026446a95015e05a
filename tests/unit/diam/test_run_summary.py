"""``diam run``'s summary line: written and read back by the one pair of functions the
benchmarks and tests call (``diam.commands.run``)."""

from __future__ import annotations

import string

import pytest

from diam.commands.run import _FIELDS, SUMMARY, parse_summary, summary_line, summary_lines
from streams.online import FlowStats

COUNTS = dict(records=12_345, valid=12_338, forgets=2, rejected=5, unknown_items=7,
              forgotten_clicks=3, users=100,
              resumed=6, in_state=90,
              learn_calls=800, pushes=700, stale_pushes=4, resumed_repushes=8, forgotten_pushes=1, lost_repushes=20, drift_events=3, evictions=10, restarts=2)


def test_every_count_comes_back_from_the_line() -> None:
    line = summary_line("done", {**COUNTS, "ended": 10}, seconds=3.21, cpu_s=2.5)
    got = parse_summary("online dataflow: ...\nsome log line\n" + line + "\n")
    assert {k: got[k] for k in COUNTS} == COUNTS
    assert (got["seconds"], got["cpu_s"]) == (3.2, 2.5)
    assert got["per_s"] == round(12_345 / 3.21)  # thousands separators read back
    assert line.startswith("done: 12345 records (12338 valid, 2 forgets, 5 dead-lettered, 7 on "
                           "items the base does not know, 3 skipped as forgotten), 100 user states (6 resumed, 90 held)")


def test_the_dataflows_own_counts_fill_it() -> None:
    stats = FlowStats()
    c = stats.counts()
    c.records, c.rejected, c.users, c.ended, c.evictions, c.restarts = 9, 1, 4, 3, 2, 1
    c.forgets, c.resumed = 2, 1
    got = parse_summary(summary_line("stopped", stats.as_dict(), 1.0, 1.0))
    assert (got["valid"], got["users"], got["in_state"], got["evictions"], got["restarts"]) == (6, 4, 1, 2, 1)
    assert (got["forgets"], got["resumed"]) == (2, 1)  # a tombstone is not a valid click


def test_a_line_from_before_a_field_existed_gives_the_others() -> None:
    # bench/stream_ab.py times older revisions, whose line said "N users" and had no drop counts
    old = ("done: 300 records (300 valid, 0 dead-lettered), 12 users, 40 learn calls, 30 pushes to "
           "Redis, 0 drift events in 2.0 s (150 records/s; 1.9 CPU s, 158 records per CPU second)")
    got = parse_summary(old)
    assert (got["valid"], got["rejected"], got["learn_calls"], got["cpu_s"]) == (300, 0, 40, 1.9)
    assert (got["pushes"], got["drift_events"], got["seconds"]) == (30, 0, 2.0)
    assert "users" not in got and "evictions" not in got
    # the no-learning floor's own line, before it printed this one
    floor = "done: 400000 records, 43436 pushes to Redis in 5.3 s (75,000 records/s; 5.0 CPU s)"
    assert {k: parse_summary(floor)[k] for k in ("pushes", "per_s", "cpu_s")} == {
        "pushes": 43436, "per_s": 75000, "cpu_s": 5.0}


def test_every_field_of_the_format_has_a_reader_and_edge_values_come_back() -> None:
    names = {f for _, f, _, _ in string.Formatter().parse(SUMMARY) if f} - {"end"}
    assert {n for n, _ in _FIELDS} == names
    zero = dict.fromkeys(COUNTS, 0)
    got = parse_summary(summary_line("done", zero, seconds=0.0, cpu_s=0.0))
    assert {k: got[k] for k in COUNTS} == zero and (got["seconds"], got["cpu_s"]) == (0.0, 0.0)
    big = {k: 10**12 + i for i, k in enumerate(COUNTS)}  # distinct: no two fields swapped
    got = parse_summary(summary_line("stopped", big, seconds=1e9, cpu_s=0.04))
    assert {k: got[k] for k in COUNTS} == big and got["cpu_s"] == 0.0
    assert parse_summary(summary_line("done", {**COUNTS, "in_state": -1}, 1.0, 1.0))["in_state"] == -1


def test_output_without_a_summary_line_is_refused() -> None:
    with pytest.raises(ValueError, match="no 'diam run' summary line"):
        parse_summary("online dataflow: t -> redis\nTraceback ...")


def test_summary_lines_finds_each_runs_line_and_only_those() -> None:
    a = summary_line("done", COUNTS, 1.0, 1.0)
    b = summary_line("stopped", COUNTS, 2.0, 1.0)
    text = "\n".join(["online dataflow: ...", a, "  done: indented is not one", "donee: no", b, ""])
    assert summary_lines(text) == [a, b]
    assert summary_lines("nothing here\n") == []
    with pytest.raises(ValueError, match="expected one of"):
        summary_line("finished", COUNTS, 1.0, 1.0)


def test_stale_pushes_of_a_resumed_run_are_said_as_expected_not_warned() -> None:
    from diam.commands.run import stale_warning

    fresh = stale_warning(5, "ns")
    assert fresh.startswith("warning: 5 pushes were not written") and "another run's" in fresh
    resumed = stale_warning(5, "ns", resumed=3)
    assert not resumed.startswith("warning") and "resumed 3 users" in resumed
