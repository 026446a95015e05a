"""``diam run`` asks every check that can refuse it before its start line ("online dataflow:
..."), against the real broker: a bounded run of a missing topic, partitions the topic lacks and
a recovery store held by another run are refused, and a refused run never says it started."""

from __future__ import annotations

import os
import uuid

from streams.kafka_io import delete_topics, ensure_topic
from streams.runner import hold_recovery
from tests.integration.test_topic_typos import _cli, _exists, _settings

START = "online dataflow:"


def _refused_without_start(res, code: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert res.exit_code == code, res.output
    assert START not in res.output, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert error, res.output
    for word in words:
        assert word in res.output, (word, res.output)


def test_a_refused_run_prints_no_start_line(stack, namespace, tmp_path) -> None:
    s = _settings(stack, tmp_path)
    missing = f"t.typo{uuid.uuid4().hex[:12]}"
    _refused_without_start(_cli(s, "run", "--bounded", "--topic", missing, "--namespace",
                                namespace, "--no-recovery"),
                           2, f"topic {missing!r} does not exist", "nothing to read", "--topic")
    assert not _exists(s, missing)

    topic = f"t.run{uuid.uuid4().hex[:12]}"
    ensure_topic(s.kafka, topic, partitions=2)
    try:
        _refused_without_start(
            _cli(s, "run", "--bounded", "--topic", topic, "--namespace", namespace,
                 "--partitions", "0,7", "--no-recovery"),
            2, "has partitions [0, 1], not [7]", "--partitions")
        store = tmp_path / "recovery"
        lock = hold_recovery(store)  # another run on this store
        try:
            _refused_without_start(
                _cli(s, "run", "--bounded", "--topic", topic, "--namespace", namespace,
                     "--recovery-dir", str(store)),
                1, str(store))
        finally:
            os.close(lock)
        # the same run, unrefused, says it started (the check above can fail)
        res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", namespace,
                   "--recovery-dir", str(store))
        assert res.exit_code == 0 and START in res.output, res.output
    finally:
        delete_topics(s.kafka, [topic])


def test_a_replay_on_a_stray_snapshot_directory_is_refused_before_it_starts(
        stack, namespace, topic, redis_client, tmp_path) -> None:
    """``--snapshot NAME`` asks the store's rule (``SnapshotStore.require_version``): a
    directory without a manifest is no version, refused in the store's words before the
    replay writes a key or makes its dead-letter topic."""
    s = _settings(stack, tmp_path)
    (tmp_path / "snapshots" / "notes").mkdir()
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--snapshot", "notes",
               "--no-progress")
    assert res.exit_code == 1, res.output
    assert (f"Error: no snapshot notes in {tmp_path / 'snapshots'} (no manifest.json; "
            "versions: ") in res.output, res.output
    assert list(redis_client.scan_iter(match=f"diam:{namespace}:*")) == []
    assert not _exists(s, f"{s.kafka.deadletter_topic}.replay.{namespace}")
