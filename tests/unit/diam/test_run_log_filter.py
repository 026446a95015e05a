"""``diam run``'s once-a-minute filter on the snapshot watcher's log lines: repeats of one line
are held back, other lines are not (a second refused snapshot, whose message differs only in
its arguments, was held back for up to a minute: the filter keyed on the unformatted message)."""

from __future__ import annotations

import logging

from diam.commands.run import _EveryMinute


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("snapshotter.store", logging.ERROR, __file__, 1, msg, args, None)


def test_the_same_line_again_is_held_back_for_a_minute() -> None:
    f = _EveryMinute()
    assert f.filter(_record("not loading snapshot: %s", "v1: sha256 differs"))
    assert not f.filter(_record("not loading snapshot: %s", "v1: sha256 differs"))


def test_another_version_in_the_same_message_is_let_through() -> None:
    f = _EveryMinute()
    assert f.filter(_record("not loading snapshot: %s", "v1: sha256 differs"))
    assert f.filter(_record("not loading snapshot: %s", "v2: no manifest.json"))
    assert f.filter(_record("active version now %s (pointer rewritten or another version): "
                            "the %d version(s) refused before may be taken again", "v0", 2))


def test_a_line_comes_through_again_after_the_minute() -> None:
    f = _EveryMinute(every_s=0.0)
    assert f.filter(_record("not loading snapshot: %s", "v1"))
    assert f.filter(_record("not loading snapshot: %s", "v1"))
