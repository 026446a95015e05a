"""``diam produce`` against the real broker: a compacted topic is refused with nothing written
(a click keyed by user 259 would replace catalogue item 259 at compaction), and SIGTERM stops
it as Ctrl-C does (what was queued is delivered and counted, exit 1), not silently."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

from click.testing import CliRunner

from diam.cli import main
from online_model.synth import SynthParams, write_synth
from streams.kafka_io import UnknownTopic, delete_topics, ensure_topic, watermarks


def _held(kafka, topic: str) -> int:  # type: ignore[no-untyped-def]
    try:
        return sum(hi - lo for lo, hi in watermarks(kafka, topic, timeout=10).values())
    except UnknownTopic:
        return 0


def test_produce_refuses_a_compacted_topic_and_writes_nothing(stack, tmp_path) -> None:
    kafka = stack.settings.kafka
    compacted = f"f2.{uuid.uuid4().hex[:16]}"
    ensure_topic(kafka, compacted, partitions=1, config={"cleanup.policy": "compact"})
    data = tmp_path / "d"
    write_synth(SynthParams(users=5, items=20, categories=4, events_per_user=4, seed=1,
                            max_interests=2), data)
    try:
        r = CliRunner().invoke(main, ["produce", "--data", str(data), "--topic", compacted,
                                      "--limit", "5", "--no-progress"],
                               obj={"settings": stack.settings})
        assert r.exit_code == 2 and "--topic" in r.output, r.output
        assert f"{compacted} is compacted (cleanup.policy=compact)" in r.output, r.output
        assert "nothing was written" in r.output and "Traceback" not in r.output
        assert _held(kafka, compacted) == 0
    finally:
        delete_topics(kafka, [compacted])


def test_sigterm_delivers_and_counts_what_was_queued(stack, tmp_path) -> None:
    kafka = stack.settings.kafka
    topic = f"f2.{uuid.uuid4().hex[:16]}"
    data = tmp_path / "d"
    write_synth(SynthParams(users=20, items=50, categories=4, events_per_user=20, seed=2,
                            max_interests=2), data)
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_CONFIG": "",
           "DIAM_REDIS_URL": stack.redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diam", "produce", "--data", str(data), "--topic", topic,
         "--rate", "50", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _held(kafka, topic) < 20 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (proc.returncode, out, err)
        sent = re.search(r"^([\d,]+) events sent to " + re.escape(topic) + r" .*; failed: 0$",
                         out, re.M)
        assert sent is not None, (out, err)
        assert "interrupted: the events queued so far were delivered" in err, err
        assert "Traceback" not in err, err
        assert int(sent.group(1).replace(",", "")) == _held(kafka, topic) >= 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        delete_topics(kafka, [topic])
