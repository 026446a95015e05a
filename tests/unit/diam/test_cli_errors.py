"""Bad input to ``diam`` ends in one ``Error: ...`` line and exit code 1 (2 for a bad option),
never a traceback: bad settings, bases that cannot be read, a Redis that does not answer; and
help texts that say what each command's options do. No service is needed: Redis is pointed at
a closed port."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from diam.app import NoBaseModel, load_holder
from diam.cli import main
from diam.commands import inspect, model, unreachable_service
from diam.settings import load_settings
from serving_cache.recommend import MAX_DELTA
from tests.unit.diam.conftest import closed_port


@pytest.fixture
def run(isolated_env):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args))

    return invoke


def _clean_error(result, *words: str, code: int = 1) -> str:
    out = result.output
    assert result.exit_code == code, out
    # an exception that escaped click would be the result's exception (a traceback in a shell)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error: " in out, out
    for word in words:
        assert word in out, (word, out)
    return out


# -- settings ---------------------------------------------------------------------------------

def test_a_bad_environment_value_names_the_variable_and_the_setting(run, monkeypatch) -> None:
    monkeypatch.setenv("DIAM_FLOW_BATCH_SIZE", "abc")
    _clean_error(run("snapshot", "list", "--no-redis"),
                 "flow.batch_size", "DIAM_FLOW_BATCH_SIZE", "'abc'", "valid integer")


def test_a_table_setting_that_is_not_json_says_so(run, monkeypatch) -> None:
    monkeypatch.setenv("DIAM_RETRAIN_GATE", "nope")
    _clean_error(run("snapshot", "list", "--no-redis"), "retrain", "DIAM_RETRAIN_GATE", "JSON")


def test_an_unknown_setting_is_named(run, monkeypatch) -> None:
    monkeypatch.setenv("DIAM_FLOW_BOGUS", "1")
    _clean_error(run("snapshot", "list", "--no-redis"), "unknown setting flow.bogus",
                 "DIAM_FLOW_BOGUS")


def test_a_malformed_or_wrong_config_file_is_named(run, tmp_path, monkeypatch) -> None:
    toml = tmp_path / "diam.toml"
    monkeypatch.setenv("DIAM_CONFIG", str(toml))
    toml.write_text("[flow\nbatch_size = 1\n")
    _clean_error(run("snapshot", "list", "--no-redis"), f"{toml} is not valid TOML")
    toml.write_text('[flow]\nbatch_size = "x"\n')
    _clean_error(run("snapshot", "list", "--no-redis"), "flow.batch_size", f"from {toml}")


def test_a_missing_config_file_is_refused_not_read_as_the_defaults(run, tmp_path,
                                                                   monkeypatch) -> None:
    """``DIAM_CONFIG`` names a file: a typo there would run on the 127.0.0.1 defaults."""
    missing = tmp_path / "diam-prod.toml"
    monkeypatch.setenv("DIAM_CONFIG", str(missing))
    _clean_error(run("snapshot", "list", "--no-redis"), f"DIAM_CONFIG='{missing}'",
                 "no such settings file")
    monkeypatch.setenv("DIAM_CONFIG", "")  # empty: no settings file, on purpose
    assert run("snapshot", "list", "--no-redis").exit_code == 0


# -- the base model ---------------------------------------------------------------------------

def test_a_directory_that_is_not_a_checkpoint_is_a_clean_error(run, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _clean_error(run("run", "--bounded", "--checkpoint", str(empty)),
                 "cannot use the base", "weights.safetensors")


def test_a_missing_dataset_for_the_base_is_no_base_model(tmp_path) -> None:
    s = load_settings(snapshot={"dir": str(tmp_path / "snaps")})
    with pytest.raises(NoBaseModel, match="cannot build a base from the dataset"):
        load_holder(s, base_from_data=str(tmp_path / "nope"))
    with pytest.raises(NoBaseModel, match="cannot use the base"):
        load_holder(s, checkpoint=str(tmp_path))


# -- services that do not answer --------------------------------------------------------------

@pytest.mark.parametrize("args", [("inspect", "namespace"), ("inspect", "user", "1")])
def test_redis_down_is_one_line_naming_the_url(run, monkeypatch, args) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    monkeypatch.setenv("DIAM_REDIS_URL", url)
    out = _clean_error(run(*args), f"Redis at {url} is not usable", f"check DIAM_REDIS_URL={url}")
    assert "diam stack up" not in out  # a mistyped address, not a stopped stack


def test_the_stack_hint_only_for_the_stacks_own_address(run, monkeypatch) -> None:
    port = closed_port()
    monkeypatch.setenv("DIAM_STACK_REDIS_PORT", str(port))
    monkeypatch.setenv("DIAM_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    _clean_error(run("inspect", "namespace"), "is the stack up? (`diam stack up`)")


def test_the_unusable_wording_compares_with_the_stacks_addresses() -> None:
    import redis
    from confluent_kafka import KafkaError, KafkaException

    from diam.commands import kafka_unusable, redis_unusable

    down = KafkaException(KafkaError(KafkaError._TRANSPORT))
    s = load_settings()  # the defaults: the local stack's own addresses
    assert "diam stack up" in redis_unusable(s, redis.ConnectionError("refused")).message
    assert "diam stack up" in kafka_unusable(s, down).message
    s = load_settings(redis={"url": "redis://localhost:6390"}, kafka={"bootstrap": "localhost:9192"})
    assert "diam stack up" in redis_unusable(s, redis.ConnectionError("refused")).message
    assert "diam stack up" in kafka_unusable(s, down).message
    s = load_settings(redis={"url": "redis://u:pw@127.0.0.1:6498/0"},
                      kafka={"bootstrap": "127.0.0.1:9198"})
    msg = redis_unusable(s, redis.ConnectionError("refused")).message
    assert "diam stack up" not in msg and "check DIAM_REDIS_URL=redis://u:***@127.0.0.1:6498/0" in msg
    msg = kafka_unusable(s, down).message
    assert "diam stack up" not in msg and "check DIAM_KAFKA_BOOTSTRAP=127.0.0.1:9198" in msg


def test_only_service_errors_are_reworded() -> None:
    import redis
    from confluent_kafka import KafkaError, KafkaException

    s = load_settings()
    kafka = unreachable_service(KafkaException(KafkaError(KafkaError._TRANSPORT)), s)
    assert isinstance(kafka, click.ClickException)
    assert kafka.message.startswith(f"Kafka at {s.kafka.bootstrap} is not usable")
    assert isinstance(unreachable_service(redis.TimeoutError("slow"), s), click.ClickException)
    assert unreachable_service(redis.ResponseError("WRONGTYPE"), s) is None
    assert unreachable_service(ValueError("a bug"), s) is None
    assert unreachable_service(KeyError("a bug"), None) is None
    # a topic read that stalled (streams.kafka_io.read_partition) is the broker's, another
    # TimeoutError is not
    from streams.kafka_io import RangeStalled

    stalled = unreachable_service(RangeStalled("t[0]: no record at offset 3 within 10 s"), s)
    assert isinstance(stalled, click.ClickException) and "no record at offset 3" in stalled.message
    assert unreachable_service(TimeoutError("elsewhere"), s) is None


def test_a_bad_namespace_is_a_usage_error(run) -> None:
    _clean_error(run("inspect", "namespace", "--namespace", "bad:ns"),
                 "Invalid value for --namespace", code=2)
    _clean_error(run("inspect", "user", "1", "--namespace", "bad:ns"),
                 "Invalid value for --namespace", code=2)


# -- help and defaults ------------------------------------------------------------------------

def test_snapshot_list_help_describes_reading_only(run) -> None:
    def help_of(*args: str) -> str:
        return " ".join(run(*args, "--help").output.split())

    text = help_of("snapshot", "list")
    assert "do not set the version in Redis" not in text and "is set" not in text
    assert "do not read the active version from Redis" in text
    assert "whose active version is shown" in text
    assert "do not set the version in Redis" in help_of("snapshot", "publish")


@pytest.mark.parametrize("command", [("train",), ("produce",), ("evaluate-stream",)])
def test_the_default_dataset_is_under_data_dir(run, tmp_path, command) -> None:
    assert "[default: <data_dir>/ml-100k]" in " ".join(run(*command, "--help").output.split())
    _clean_error(run(*command), str(tmp_path / "data" / "ml-100k"))


def test_produce_gives_one_hint_for_a_missing_dataset(run, tmp_path) -> None:
    out = _clean_error(run("produce", "--data", str(tmp_path / "nope")))
    assert out.count("diam data") <= 2 and out.count("(") == 1, out


# -- the diversity shift ----------------------------------------------------------------------

def test_delta_ranges_are_the_recommenders(run) -> None:
    for cmd in (model.evaluate_cmd, inspect.recommend_cmd):
        delta = next(p for p in cmd.params if p.name == "delta")
        assert isinstance(delta.type, click.FloatRange)
        assert (delta.type.min, delta.type.max) == (-MAX_DELTA, MAX_DELTA)
    _clean_error(run("recommend", "1", "--delta", str(MAX_DELTA + 0.1)), "--delta", code=2)


@pytest.mark.parametrize(("flag", "excluded"), [((), True), (("--keep-seen",), False)])
def test_recommend_keep_seen_reaches_the_recommender(run, monkeypatch, flag, excluded) -> None:
    import serving_cache.recommend
    import serving_cache.retrieval
    import snapshotter.store

    seen: dict[str, object] = {}

    class FakeRecommender:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def recommend(self, user_id: str, **kwargs: object) -> None:
            seen.update(kwargs)
            raise ValueError("stop here")

    monkeypatch.setattr(snapshotter.store.SnapshotStore, "active_version", lambda self: "20260101T000000-0000abcd")
    monkeypatch.setattr(snapshotter.store.SnapshotStore, "verify", lambda self, version, check_index=True: {})
    monkeypatch.setattr(serving_cache.retrieval.SnapshotIndex, "load",
                        classmethod(lambda cls, *a, **k: None))
    monkeypatch.setattr(serving_cache.recommend, "Recommender", FakeRecommender)
    _clean_error(run("recommend", "1", *flag), "stop here")
    assert seen["exclude_seen"] is excluded
