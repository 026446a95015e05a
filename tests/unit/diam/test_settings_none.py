"""A setting that can be none is set to none through its own variable, or diam.toml, with the
words ``none`` / ``null`` (``diam.settings.NONE_WORDS``), one rule for every such setting; a
setting that cannot be none refuses the word saying so; a text setting keeps it as text. No
service is needed."""

from __future__ import annotations

import pytest

from diam.settings import (
    NONE_WORDS,
    Settings,
    SettingsInputError,
    env_names,
    load_settings,
    takes_none_word,
)


def _at(s: Settings, path: tuple[str, ...]) -> object:
    value: object = s
    for part in path:
        value = getattr(value, part)
    return value


def _annotation(path: tuple[str, ...]) -> object:
    from diam.settings import _annotation_at

    return _annotation_at(list(path))


NULLABLE = {env: path for env, path in env_names(Settings).items()
            if takes_none_word(_annotation(path))}


def test_the_settings_that_can_be_none_are_found() -> None:
    # the brief's five, and the rest: a new one joins the tests below by itself
    assert {"DIAM_DRIFT_GUARD_TRIPS", "DIAM_FLOW_EVICT_IDLE_S", "DIAM_REDIS_USER_TTL_S",
            "DIAM_SNAPSHOT_LOCK_TIMEOUT_S", "DIAM_RETRAIN_METRICS_PORT",
            "DIAM_ONLINE_K_HYSTERESIS_UP"} <= set(NULLABLE)
    assert NONE_WORDS == ("none", "null")


@pytest.mark.parametrize("word", ["none", "null", "None", "NULL", " null "])
@pytest.mark.parametrize("env", sorted(NULLABLE))
def test_every_setting_that_can_be_none_takes_the_word_in_its_variable(isolated_env, env,
                                                                       word) -> None:
    # was: bad setting drift.guard_trips = 'null' (from DIAM_DRIFT_GUARD_TRIPS): Input should
    # be a valid integer; only DIAM_DRIFT='{"guard_trips": null}' set it to none
    isolated_env.setenv(env, word)
    assert _at(load_settings(), NULLABLE[env]) is None


def test_the_word_in_diam_toml_and_in_a_sections_json(isolated_env, tmp_path) -> None:
    toml = tmp_path / "diam.toml"  # TOML has no null: the word was the only way, and refused
    toml.write_text('[drift]\nguard_trips = "none"\nrollbacks = 3\n'
                    '[snapshot]\nlock_timeout_s = "null"\n')
    isolated_env.setenv("DIAM_CONFIG", str(toml))
    s = load_settings()
    assert (s.drift.guard_trips, s.drift.rollbacks, s.snapshot.lock_timeout_s) == (None, 3, None)
    isolated_env.setenv("DIAM_DRIFT", '{"freezes": null, "k_changes": "none"}')
    s = load_settings()
    assert (s.drift.freezes, s.drift.k_changes, s.drift.guard_trips) == (None, None, None)
    isolated_env.setenv("DIAM_DRIFT_GUARD_TRIPS", "7")  # the variable over the file, as before
    assert load_settings().drift.guard_trips == 7


@pytest.mark.parametrize(("env", "word", "said"), [
    ("DIAM_FLOW_BATCH_SIZE", "none", "bad setting flow.batch_size = 'none' "
                                     "(from DIAM_FLOW_BATCH_SIZE): this setting cannot be none"),
    ("DIAM_ONLINE_GUARDS", "null", "bad setting online.guards = 'null' "
                                   "(from DIAM_ONLINE_GUARDS): this setting cannot be none"),
    ("DIAM_ONLINE_DRIFT_POLICY", "None", "online.drift_policy = 'None' (from "
                                         "DIAM_ONLINE_DRIFT_POLICY): this setting cannot be none"),
    ("DIAM_RETRAIN_GATE_EPS_RECALL", "none", "(from DIAM_RETRAIN_GATE_EPS_RECALL): this setting "
                                             "cannot be none"),
])
def test_a_setting_that_cannot_be_none_refuses_the_word_saying_so(isolated_env, env, word,
                                                                  said) -> None:
    isolated_env.setenv(env, word)
    with pytest.raises(SettingsInputError) as refused:
        load_settings()
    assert said in str(refused.value)


def test_the_file_is_named_when_it_holds_the_word_for_a_setting_that_cannot_be_none(
        isolated_env, tmp_path) -> None:
    toml = tmp_path / "diam.toml"
    toml.write_text('[flow]\nbatch_size = "none"\n')
    isolated_env.setenv("DIAM_CONFIG", str(toml))
    with pytest.raises(SettingsInputError) as refused:
        load_settings()
    assert f"flow.batch_size = 'none' (from {toml}): this setting cannot be none" \
        in str(refused.value)


@pytest.mark.parametrize("value", ["", "off", "0"])
def test_a_bad_value_of_a_setting_that_can_be_none_says_how_to_write_none(isolated_env,
                                                                           value) -> None:
    # the empty string stays refused: an unset $VAR must not turn an alert off unnoticed
    isolated_env.setenv("DIAM_DRIFT_GUARD_TRIPS", value)
    with pytest.raises(SettingsInputError) as refused:
        load_settings()
    assert str(refused.value).startswith(
        f"bad setting drift.guard_trips = {value!r} (from DIAM_DRIFT_GUARD_TRIPS): ")
    assert str(refused.value).endswith("; for none: none or null")


def test_a_text_setting_keeps_the_word_and_is_none_by_being_left_out(isolated_env) -> None:
    # every text setting that can be none is none by default, so leaving it out sets none
    texts = [path for path in env_names(Settings).values()
             if (a := _annotation(path)) is not None and not takes_none_word(a)
             and type(None) in getattr(a, "__args__", ())]
    defaults = load_settings()
    assert texts and all(_at(defaults, path) is None for path in texts), texts
    isolated_env.setenv("DIAM_REDIS_PASSWORD", "none")  # could be the password
    isolated_env.setenv("DIAM_KAFKA_GROUP_ID", "null")
    s = load_settings()
    assert (s.redis.password, s.kafka.group_id) == ("none", "null")
