"""``diam run``'s start on the active snapshot (``diam.app.load_holder``): the snapshot is
verified and must fit the stream's settings, else one error names it (no services: hot reload
off; the reload side is tests/integration/test_hot_reload.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diam.app import NoBaseModel, load_holder
from diam.settings import load_settings
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.store import POINTER
from snapshotter.testing import write_checkpoint


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    return store


def _settings(tmp_path, dim):
    return load_settings(snapshot={"dir": str(tmp_path / "snaps")}, online={"dim": dim})


def test_the_active_snapshot_is_verified_at_start(tmp_path, env):
    v = publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8, seed=1), env).version
    assert load_holder(_settings(tmp_path, 8), hot_reload=False).version == v
    # same-shape weights of another checkpoint: loadable, but not that version's
    other = write_checkpoint(tmp_path / "other", n_items=40, dim=8, seed=2)
    (env.path(v) / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    with pytest.raises(NoBaseModel, match=rf"snapshot {v}: weights.safetensors: sha256 .* refusing"):
        load_holder(_settings(tmp_path, 8), hot_reload=False)
    with pytest.raises(NoBaseModel, match="weights.safetensors: sha256"):  # --snapshot V as well
        load_holder(_settings(tmp_path, 8), snapshot=v, hot_reload=False)


def test_a_snapshot_of_another_dim_is_one_error_naming_the_setting(tmp_path, env):
    v = publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8, seed=1), env).version
    want = (f"snapshot {v} has d=8, DIAM_ONLINE_DIM is 16 (set DIAM_ONLINE_DIM=8 or publish a "
            "d=16 model)")
    with pytest.raises(NoBaseModel) as err:
        load_holder(_settings(tmp_path, 16), hot_reload=False)
    assert err.value.message == want
    with pytest.raises(NoBaseModel, match="has d=8, DIAM_ONLINE_DIM is 16"):
        load_holder(_settings(tmp_path, 16), snapshot=v, hot_reload=False)
    ck = write_checkpoint(tmp_path / "ck16", n_items=40, dim=4)
    with pytest.raises(NoBaseModel, match=r"checkpoint .*ck16 has d=4, DIAM_ONLINE_DIM is 16"):
        load_holder(_settings(tmp_path, 16), checkpoint=str(ck), hot_reload=False)


def test_a_snapshot_the_base_loader_refuses_names_the_version(tmp_path, env):
    v = publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8, seed=1), env).version
    # every hash matches (verify passes) but the loader refuses the file
    (env.path(v) / "config.json").write_text('{"dim": 8}')
    import json

    from snapshotter.store import MANIFEST, sha256_file
    man = json.loads((env.path(v) / MANIFEST).read_text())
    f = env.path(v) / "config.json"
    man["files"]["config.json"] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    (env.path(v) / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(NoBaseModel, match=rf"^snapshot {v}: .*config\.json"):
        load_holder(_settings(tmp_path, 8), hot_reload=False)


@pytest.mark.parametrize("content, says", [(b"\xff\xfe", "undecodable"),
                                           (b"20990101T000000-deadbeef\n",
                                            "names 20990101T000000-deadbeef, not a version in")])
def test_a_damaged_pointer_at_start_names_the_file(tmp_path, env, content, says):
    publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8), env)
    (env.root / POINTER).write_bytes(content)
    with pytest.raises(NoBaseModel, match=says) as err:
        load_holder(_settings(tmp_path, 8), hot_reload=False)
    assert str(env.root / POINTER) in err.value.message


def test_an_empty_pointer_at_start_says_so(tmp_path, env):
    publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8), env)
    (env.root / POINTER).write_text("")
    with pytest.raises(NoBaseModel, match=r"no base model \(no active snapshot \(.*ACTIVE is empty\)"):
        load_holder(_settings(tmp_path, 8), hot_reload=False)


def test_diam_run_prints_one_error_line(tmp_path, env, monkeypatch):
    from diam.cli import main

    v = publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8), env).version
    monkeypatch.setenv("DIAM_ONLINE_DIM", "64")
    r = CliRunner().invoke(main, ["run", "--bounded", "--topic", "unused", "--namespace", "unit"])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1] == (
        f"Error: snapshot {v} has d=8, DIAM_ONLINE_DIM is 64 (set DIAM_ONLINE_DIM=8 or publish "
        "a d=64 model)"), r.output
