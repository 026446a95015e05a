"""``diam diff --exit-code`` over real Redis: 0 for two namespaces of the same values, 1 when a
user differs or is on one side only (a namespace that does not exist included); the text names
the one-sided users."""

from __future__ import annotations

from click.testing import CliRunner

from diam.cli import main
from serving_cache import RedisWriter
from tests.integration.test_inspect_diff_json import _user


def _diff(stack, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["diff", *args], obj={"settings": stack.settings})


def test_exit_code_over_real_namespaces(stack, namespace, redis_client) -> None:
    """Before: no --exit-code; every diff exited 0."""
    a, b, c = f"{namespace}-a", f"{namespace}-b", f"{namespace}-c"
    try:
        RedisWriter(redis_client, a).write_batch([("u1", _user()), ("u2", _user())])
        RedisWriter(redis_client, b).write_batch([("u1", _user()), ("u2", _user())])
        RedisWriter(redis_client, c).write_batch([("u1", _user()), ("u2", _user(3)),
                                                  ("u9", _user())])
        res = _diff(stack, a, b, "--exit-code")
        assert res.exit_code == 0, res.output
        res = _diff(stack, a, c, "--exit-code")
        assert res.exit_code == 1, res.output
        assert "  only in " + c + ": u9\n" in res.stdout, res.stdout
        res = _diff(stack, a, f"{namespace}-nothing-here", "--exit-code", "--json")
        assert res.exit_code == 1, res.output
        assert _diff(stack, a, c).exit_code == 0  # without the flag, as before
    finally:
        for ns in (a, b, c):
            keys = list(redis_client.scan_iter(match=f"diam:{ns}:*"))
            if keys:
                redis_client.delete(*keys)
