"""``redis_unusable``'s hint fits the failure: "is the stack up?" only where the stack's own
server did not answer; a refused login names the credentials; a server that answered and
refused (OOM, READONLY) gets no hint, its own words say it."""

from __future__ import annotations

import redis

from diam.commands import redis_unusable
from diam.settings import load_settings


def _said(exc: BaseException) -> str:
    s = load_settings(redis={"url": "redis://127.0.0.1:6390/0"}, stack={"redis_port": 6390})
    return redis_unusable(s, exc).message


def test_an_unreachable_stack_server_asks_whether_the_stack_is_up() -> None:
    assert "is the stack up?" in _said(redis.ConnectionError("Error 111 connecting"))
    assert "is the stack up?" in _said(redis.TimeoutError("Timeout reading from socket"))


def test_a_refused_login_names_the_credentials_not_the_stack() -> None:
    said = _said(redis.AuthenticationError("WRONGPASS invalid username-password pair"))
    assert "stack up" not in said and "check the credentials" in said, said
    assert "DIAM_REDIS_PASSWORD" in said, said


def test_a_refusal_of_a_server_that_answered_has_no_stack_hint() -> None:
    for exc in (redis.exceptions.OutOfMemoryError("OOM command not allowed"),
                redis.exceptions.ReadOnlyError("READONLY You can't write against a replica")):
        said = _said(exc)
        assert "stack up" not in said and str(exc) in said, said
        assert redis_unusable(None, exc).message.endswith(f"({exc})")
