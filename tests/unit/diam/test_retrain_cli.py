"""``diam retrain --once`` ends a failed retrain in one ``Error:`` line; a broker or Redis that
does not answer is worded as every other command words it, naming the address. No service is
needed: the retrain is replaced by one that raises."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diam.cli import main


@pytest.fixture
def failing_retrain(isolated_env):
    """``invoke(exc)``: ``diam retrain --once`` whose one retrain raises ``exc``."""
    import diam.retrain

    class Failing:
        def __init__(self, *a, **kw) -> None:
            self.metrics = None

        def run_once(self):
            raise self.exc

    isolated_env.setattr(diam.retrain, "Retrainer", Failing)
    isolated_env.setenv("DIAM_KAFKA_BOOTSTRAP", "127.0.0.1:9198")
    isolated_env.setenv("DIAM_REDIS_URL", "redis://127.0.0.1:6498/0")

    def invoke(exc: BaseException):
        Failing.exc = exc
        return CliRunner().invoke(main, ["retrain", "--once"])

    return invoke


def test_an_unreachable_broker_is_named(failing_retrain) -> None:
    from confluent_kafka import KafkaError, KafkaException

    r = failing_retrain(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "Error: Kafka at 127.0.0.1:9198 is not usable" in r.output, r.output
    assert "DIAM_KAFKA_BOOTSTRAP" in r.output and "Traceback" not in r.output


def test_an_unreachable_redis_is_named(failing_retrain) -> None:
    import redis

    r = failing_retrain(redis.ConnectionError("Error 111 connecting. Connection refused."))
    assert r.exit_code == 1, r.output
    assert "Error: Redis at redis://127.0.0.1:6498/0 is not usable" in r.output, r.output


def test_any_other_failure_stays_a_retrain_failure(failing_retrain) -> None:
    r = failing_retrain(OSError("disk full"))
    assert r.exit_code == 1, r.output
    assert "Error: retrain failed: OSError: disk full" in r.output, r.output


def test_a_publish_redis_did_not_take_ends_once_with_the_command_that_finishes_it(
        failing_retrain, isolated_env) -> None:
    import diam.retrain
    from diam.retrain import Decision

    d = Decision("c1", True, "no active snapshot; published V1 on disk, but it is not "
                 "announced in Redis (refused)", None, version="V1", seconds={"total": 1.0})
    isolated_env.setattr(diam.retrain.Retrainer, "run_once", lambda self: d)
    r = CliRunner().invoke(main, ["retrain", "--once"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "not announced in Redis" in r.output and "diam snapshot rollback V1" in r.output
    d.announced = True
    r = CliRunner().invoke(main, ["retrain", "--once"])
    assert r.exit_code == 0 and r.output.startswith("published V1: "), r.output
