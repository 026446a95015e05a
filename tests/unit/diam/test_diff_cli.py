"""``diam diff``'s note on users written over different base models (no services: the
comparison is replaced)."""

from __future__ import annotations

import json

import pytest

import serving_cache.diff
from serving_cache.diff import DiffSummary, NamespaceDiff, UserDiff


def _result(model_b: str) -> NamespaceDiff:
    users = [UserDiff("u1", 2, 2, 0.1, 0.05, 0.3, 0.4, 5, 5, False, False, "v1", model_b),
             UserDiff("u2", 3, 2, 0.2, 0.10, 0.3, 0.2, 7, 7, False, False, "v1", "v1")]
    summary = DiffSummary(users_a=2, users_b=2, both=2, only_a=0, only_b=0, identical=0,
                          k_agree_rate=0.5, mean_matched_cos=0.15, min_matched_cos=0.05,
                          mean_abs_dd=0.1, undecodable=0)
    return NamespaceDiff("ra", "rb", users, [], [], summary)


@pytest.fixture
def diff_of(offline_cli, monkeypatch):
    def run(model_b: str, *args: str):
        monkeypatch.setattr(serving_cache.diff, "diff_namespaces",
                            lambda _client, _a, _b: _result(model_b))
        return offline_cli("diff", "ra", "rb", *args)

    return run


def test_users_written_over_different_bases_get_a_note_that_the_cosines_mean_nothing(diff_of):
    res = diff_of("events-ml-100k-943-32-0")
    assert res.exit_code == 0, res.output
    assert ("note: 1 of 2 users in both were written on different base models ('v1' vs "
            "'events-ml-100k-943-32-0'): their matched cosines compare different embedding "
            "spaces") in res.stderr
    assert "note:" not in res.stdout
    res = diff_of("events-ml-100k-943-32-0", "--json")
    body = json.loads(res.stdout)
    assert body["different_bases"] == 1 and body["bases_note"].startswith("1 of 2 users")
    assert (body["bases_a"], body["bases_b"]) == (["v1"], ["events-ml-100k-943-32-0", "v1"])


def test_one_base_on_both_sides_gets_no_note(diff_of):
    res = diff_of("v1")
    assert res.exit_code == 0, res.output
    assert "note:" not in res.stderr
    body = json.loads(diff_of("v1", "--json").stdout)
    assert body["different_bases"] == 0 and body["bases_note"] is None


def test_a_checkpoint_and_its_snapshot_are_one_base(diff_of, offline_cli, tmp_path, monkeypatch):
    """A user written by `diam run --checkpoint` (label diam-<sha12>) and by a dataflow on the
    snapshot published from that checkpoint (its version) is on one model under two names:
    no note, even though the vectors differ. A version of other weights is still noted."""
    from online_model.checkpoint import read_checkpoint
    from online_model.checkpoint_config import checkpoint_label
    from snapshotter.testing import write_checkpoint

    monkeypatch.setenv("DIAM_ONLINE_DIM", "4")
    snaps = tmp_path / "snaps"
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(snaps))
    ck = write_checkpoint(tmp_path / "ck", n_items=30, dim=4, seed=1)
    ck2 = write_checkpoint(tmp_path / "ck2", n_items=30, dim=4, seed=2)
    versions = []
    for c in (ck, ck2):
        r = offline_cli("snapshot", "publish", str(c), "--no-redis")
        assert r.exit_code == 0, r.output
        versions.append(r.stdout.split("active: ")[1].split()[0])
    label = checkpoint_label("diam", read_checkpoint(ck).weights_sha256)

    def bases(a: str, b: str) -> dict:
        users = [UserDiff("u1", 2, 2, 0.1, 0.05, 0.3, 0.4, 5, 6, False, False, a, b)]
        summary = DiffSummary(users_a=1, users_b=1, both=1, only_a=0, only_b=0, identical=0,
                              k_agree_rate=1.0, mean_matched_cos=0.1, min_matched_cos=0.05,
                              mean_abs_dd=0.1, undecodable=0)
        monkeypatch.setattr(serving_cache.diff, "diff_namespaces",
                            lambda _c, _a, _b: NamespaceDiff("ra", "rb", users, [], [], summary))
        res = offline_cli("diff", "ra", "rb", "--json")
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    assert bases(label, versions[0])["bases_note"] is None
    assert bases(versions[0], label)["different_bases"] == 0
    assert bases(label, versions[1])["different_bases"] == 1
    assert bases("events-ml-100k-943-32-0", versions[0])["different_bases"] == 1
