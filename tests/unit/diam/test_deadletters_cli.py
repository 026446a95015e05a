"""``diam deadletters``'s summary line, over records read by a stubbed reader (no broker)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import streams.kafka_io
from diam.cli import main


def _rec(offset: int, copies: int) -> dict[str, object]:
    return {"reason": "value: not msgpack", "topic": "fix3.clicks", "partition": 0,
            "offset": offset, "key": b"u1", "value": b"junk", "truncated": None,
            "copies": copies, "ts_ms": 1000 + offset, "namespace": "fix3"}


@pytest.mark.parametrize("copies, says", [(2, "1 repeated copy"), (3, "2 repeated copies")])
def test_repeats_are_not_blamed_on_resumed_runs_alone(monkeypatch, copies, says):
    """Two bounded runs into one namespace, neither resumed, dead-letter a bad record twice:
    the line must be true of them as of a resumed run's repeats."""
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setattr(streams.kafka_io, "read_deadletters",
                        lambda cfg, name, namespace=None: [_rec(5, copies), _rec(6, 1)])
    r = CliRunner().invoke(main, ["deadletters"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    line = r.output.splitlines()[0]
    assert line.startswith("2 dead-lettered record(s)") and says in line, line
    assert ", from a resumed or repeated run, not shown)" in line and "from resumed runs" not in line
