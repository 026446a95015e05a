"""A Kafka broker that does not answer: commands print their one clean error, not librdkafka's
raw ``%3|...|FAIL|...`` line per refused connection on stderr; ``diam -v`` shows those lines
through Python logging (``streams.kafka_log``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from online_model.synth import SynthParams, write_synth

_NOWHERE = "127.0.0.1:1"  # nothing listens: every connection is refused at once


def _diam(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "diam", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_an_unreachable_broker_is_one_clean_line_and_v_shows_the_client_lines(
        stack, namespace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "synth"
    write_synth(SynthParams(users=5, items=20, categories=8, events_per_user=4, seed=1), data)
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": _NOWHERE, "DIAM_REDIS_URL": stack.redis_url}
    # both wait out their 15 s Kafka timeout side by side
    produce = _diam("produce", "--data", str(data), env=env)
    drop = _diam("-v", "drop", namespace, "--yes", env=env)
    p_out, p_err = produce.communicate(timeout=120)
    d_out, d_err = drop.communicate(timeout=120)

    assert produce.returncode == 1, p_err
    assert f"Error: Kafka at {_NOWHERE} is not usable" in p_err
    assert "%3|" not in p_err and "|FAIL|" not in p_err and "Connection refused" not in p_err, p_err
    assert "Traceback" not in p_err

    # drop deletes the keys, then says the replay topics were not deleted; -v adds the client lines
    assert drop.returncode == 0, d_err
    assert f"were not deleted (Kafka at {_NOWHERE}" in d_err
    assert f"(Kafka at {_NOWHERE}: )" not in d_err  # a timeout says so, not an empty reason
    assert "%3|" not in d_err and "|FAIL|" not in d_err, d_err[:2000]
    assert "streams.rdkafka.unreachable" in d_err and "Connection refused" in d_err
