"""``--json`` of ``diam inspect namespace`` and ``diam diff`` over real Redis: means over no
users are null (valid JSON), not NaN; and ``diam diff`` says when a namespace holds no users,
as ``diam inspect`` and ``diam recommend`` do."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from diam.cli import main
from serving_cache import RedisWriter, UserVectors


def _strict(text: str) -> dict[str, object]:
    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    out = json.loads(text, parse_constant=refuse)
    assert isinstance(out, dict)
    return out


def _user(k: int = 2) -> UserVectors:
    vecs = np.random.default_rng(0).normal(size=(k, 8)).astype(np.float32)
    return UserVectors(seq=1, model="m", k=k, d=0.5, dim=8, vecs=vecs, ts=1, n=3)


def test_inspect_namespace_json_of_an_empty_namespace_has_null_means(stack, namespace) -> None:
    res = CliRunner().invoke(
        main, ["inspect", "namespace", "--namespace", namespace, "--json"],
        obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    body = _strict(res.stdout)
    assert body["users"] == 0 and body["d_mean"] is None and body["bytes_mean"] is None


def test_diff_json_against_an_empty_namespace_has_null_means(stack, namespace, redis_client) -> None:
    RedisWriter(redis_client, namespace).write_batch([("u1", _user())])
    res = CliRunner().invoke(
        main, ["diff", namespace, "fix1.nothing-here", "--json"], obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    body = _strict(res.stdout)
    assert body["both"] == 0
    assert body["k_agree_rate"] is None and body["mean_matched_cos"] is None


def test_diff_text_notes_a_namespace_that_holds_no_users(stack, namespace, redis_client) -> None:
    RedisWriter(redis_client, namespace).write_batch([("u1", _user())])
    res = CliRunner().invoke(
        main, ["diff", namespace, "fix1.nothing-here"], obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    assert "note: namespace 'fix1.nothing-here' holds no users" in res.stderr
    assert "a typo?" in res.stderr
    assert f"namespace {namespace!r} holds no users" not in res.stderr


def test_inspect_namespace_json_shows_the_base_record_typed(stack, namespace, redis_client) -> None:
    from serving_cache.base_record import BaseRecord, write_base

    RedisWriter(redis_client, namespace).write_batch([("u1", _user())])
    write_base(redis_client, namespace, BaseRecord.of("v1", ["i0", "i1", "new-1"], added=1))
    res = CliRunner().invoke(
        main, ["inspect", "namespace", "--namespace", namespace, "--json"],
        obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    assert _strict(res.stdout)["base"] == {"version": "v1", "items": 3, "added": 1,
                                           "added_sha": "ab4c73e30598", "grown": 0}
