"""``diam diff --exit-code`` (exit 1 when a user differs or is on one side only, as ``git diff
--exit-code``) and the one-sided user ids its text names (no services: the comparison is
replaced, as in test_diff_cli)."""

from __future__ import annotations

import pytest

import serving_cache.diff
from serving_cache.diff import DiffSummary, NamespaceDiff, UserDiff


def _result(same: bool, only_a: list[str], only_b: list[str]) -> NamespaceDiff:
    users = [UserDiff("u1", 2, 2, 1.0, 1.0, 0.3, 0.3, 5, 5, True, False, "v1", "v1"),
             UserDiff("u2", 3, 2, 0.2, 0.1, 0.3, 0.2, 7, 7, same, False, "v1", "v1")]
    summary = DiffSummary(users_a=2 + len(only_a), users_b=2 + len(only_b), both=2,
                          only_a=len(only_a), only_b=len(only_b), identical=1 + same,
                          k_agree_rate=0.5, mean_matched_cos=0.6, min_matched_cos=0.1,
                          mean_abs_dd=0.05, undecodable=0)
    return NamespaceDiff("ra", "rb", users, only_a, only_b, summary)


@pytest.fixture
def diff_of(offline_cli, monkeypatch):
    def run(result: NamespaceDiff, *args: str):
        monkeypatch.setattr(serving_cache.diff, "diff_namespaces", lambda _c, _a, _b: result)
        return offline_cli("diff", "ra", "rb", *args)

    return run


@pytest.mark.parametrize("as_json", [(), ("--json",)])
@pytest.mark.parametrize("same, only_a, only_b, code", [
    (True, [], [], 0), (False, [], [], 1), (True, ["x1"], [], 1), (True, [], ["y1"], 1)])
def test_exit_code_says_whether_the_namespaces_differ(diff_of, as_json, same, only_a, only_b,
                                                      code) -> None:
    """Before: no --exit-code (a usage error); diff exited 0 whatever it found."""
    res = diff_of(_result(same, only_a, only_b), "--exit-code", *as_json)
    assert res.exit_code == code, res.output
    assert "Error" not in res.output
    res = diff_of(_result(same, only_a, only_b), *as_json)  # without the flag: always 0
    assert res.exit_code == 0, res.output


def test_a_namespace_that_does_not_exist_differs_from_one_with_users(diff_of) -> None:
    empty = DiffSummary(users_a=0, users_b=2, both=0, only_a=0, only_b=2, identical=0,
                        k_agree_rate=float("nan"), mean_matched_cos=float("nan"),
                        min_matched_cos=float("nan"), mean_abs_dd=float("nan"), undecodable=0)
    res = diff_of(NamespaceDiff("ra", "rb", [], [], ["y1", "y2"], empty), "--exit-code")
    assert res.exit_code == 1, res.output
    assert "only in rb: y1, y2\n" in res.stdout, res.stdout


def test_the_text_names_up_to_five_one_sided_users(diff_of) -> None:
    """Before: only the counts ('only in ra 7')."""
    only_a = [f"x{i}" for i in range(7)]
    res = diff_of(_result(True, only_a, ["y1"]))
    assert res.exit_code == 0, res.output
    assert "  only in ra: x0, x1, x2, x3, x4 (and 2 more)\n" in res.stdout, res.stdout
    assert "  only in rb: y1\n" in res.stdout, res.stdout
