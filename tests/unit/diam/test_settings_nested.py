"""Fields of a model nested in a section take ``DIAM_<SECTION>_<FIELD>_<SUBFIELD>`` as every
other setting takes ``DIAM_<SECTION>_<FIELD>`` (e.g. ``DIAM_RETRAIN_GATE_EPS_RECALL``), beside
the section's or the nested model's JSON; refusals name the variable. No service is needed."""

from __future__ import annotations

import pytest

from diam.settings import Settings, SettingsInputError, env_names, load_settings


def test_a_nested_field_is_set_from_its_own_variable(isolated_env) -> None:
    isolated_env.setenv("DIAM_RETRAIN_GATE_EPS_RECALL", "1")
    isolated_env.setenv("DIAM_RETRAIN_GATE_MIN_EVAL_USERS", "7")
    isolated_env.setenv("DIAM_RETRAIN_EPOCHS", "3")  # the section's own fields as before
    s = load_settings()
    assert (s.retrain.gate.eps_recall, s.retrain.gate.min_eval_users) == (1.0, 7)
    assert s.retrain.gate.eps_entropy == Settings().retrain.gate.eps_entropy  # default kept
    assert s.retrain.epochs == 3


def test_a_nested_variable_merges_with_the_json_forms_and_the_file(isolated_env, tmp_path) -> None:
    toml = tmp_path / "diam.toml"
    toml.write_text("[retrain.gate]\neps_entropy = 0.2\nmin_eval_users = 5\n")
    isolated_env.setenv("DIAM_CONFIG", str(toml))
    isolated_env.setenv("DIAM_RETRAIN", '{"epochs": 4, "gate": {"min_eval_users": 9}}')
    isolated_env.setenv("DIAM_RETRAIN_GATE_EPS_RECALL", "0.5")
    s = load_settings()
    # the environment over the file, field by field: the file's eps_entropy stays
    assert (s.retrain.gate.eps_recall, s.retrain.gate.eps_entropy,
            s.retrain.gate.min_eval_users, s.retrain.epochs) == (0.5, 0.2, 9, 4)


def test_a_bad_or_unknown_nested_variable_is_named(isolated_env) -> None:
    isolated_env.setenv("DIAM_RETRAIN_GATE_EPS_RECALL", "lots")
    with pytest.raises(SettingsInputError) as bad:
        load_settings()
    assert "bad setting retrain.gate.eps_recall = 'lots' (from DIAM_RETRAIN_GATE_EPS_RECALL)" \
        in str(bad.value)
    isolated_env.delenv("DIAM_RETRAIN_GATE_EPS_RECALL")
    isolated_env.setenv("DIAM_RETRAIN_GATE_NOPE", "1")
    with pytest.raises(SettingsInputError) as unknown:
        load_settings()
    assert str(unknown.value) == ("unknown setting retrain.gate.nope (from "
                                  "DIAM_RETRAIN_GATE_NOPE)")


GONE = "retrain.dim is gone: the model size is online.dim, DIAM_ONLINE_DIM"


def test_a_removed_setting_is_refused_saying_what_took_its_place(isolated_env, tmp_path) -> None:
    """retrain.dim was a copy of online.dim (the retrain service trains at DIAM_ONLINE_DIM);
    a deployment that still sets it, in any of the forms a setting takes, is told where the
    size now lives, not that the name is unknown."""
    isolated_env.setenv("DIAM_RETRAIN_DIM", "64")
    with pytest.raises(SettingsInputError) as env:
        load_settings()
    assert str(env.value) == f"{GONE} (from DIAM_RETRAIN_DIM)"
    isolated_env.delenv("DIAM_RETRAIN_DIM")
    isolated_env.setenv("DIAM_RETRAIN", '{"dim": 64}')
    with pytest.raises(SettingsInputError) as section:
        load_settings()
    assert str(section.value) == f"{GONE} (from DIAM_RETRAIN)"
    isolated_env.delenv("DIAM_RETRAIN")
    toml = tmp_path / "diam.toml"
    toml.write_text("[retrain]\ndim = 64\nepochs = 3\n")
    isolated_env.setenv("DIAM_CONFIG", str(toml))
    with pytest.raises(SettingsInputError) as file:
        load_settings()
    assert str(file.value) == f"{GONE} (from {toml})"
    # the rule is the removed setting's own: an unknown one beside it is still unknown
    toml.write_text("[retrain]\ndim = 64\ndimm = 64\n")
    with pytest.raises(SettingsInputError) as both:
        load_settings()
    assert str(both.value) == (f"{GONE} (from {toml}); unknown setting retrain.dimm "
                               f"(from {toml})")
    assert "DIAM_RETRAIN_DIM" not in env_names(Settings)


def test_every_setting_has_one_variable_name_and_no_name_is_two_settings() -> None:
    names = env_names(Settings)
    assert names["DIAM_RETRAIN_GATE_EPS_RECALL"] == ("retrain", "gate", "eps_recall")
    assert names["DIAM_RETRAIN_EPOCHS"] == ("retrain", "epochs")
    assert names["DIAM_KAFKA_BOOTSTRAP"] == ("kafka", "bootstrap")
    # env_names refuses a name two paths would share; the settings hold none
    assert len(set(names.values())) == len(names)


def test_a_name_two_settings_would_share_is_refused() -> None:
    from pydantic import BaseModel

    class Inner(BaseModel):
        x: int = 0

    class Section(BaseModel):
        gate: Inner = Inner()
        gate_x: int = 0

    class Top(BaseModel):
        retrain: Section = Section()

    with pytest.raises(ValueError, match="DIAM_RETRAIN_GATE_X would set both"):
        env_names(Top)
