"""One owner of the Redis credentials: a username or password in ``DIAM_REDIS_URL`` and in
``DIAM_REDIS_USERNAME`` / ``DIAM_REDIS_PASSWORD`` too is refused, naming both (redis-py let the
URL's win, so a wrong ``DIAM_REDIS_PASSWORD`` went unseen while the URL's was right); a
refused login's error says to check the credentials, not whether the stack is up."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diam.cli import main
from serving_cache import RedisConfig
from tests.integration.test_security import acl_redis as acl_redis  # noqa: F401

ARGS = ["inspect", "namespace", "--namespace", "redisfixb-pw"]


def _invoke(stack, redis: RedisConfig):  # type: ignore[no-untyped-def]
    s = stack.settings.model_copy(update={"redis": redis})
    return CliRunner().invoke(main, ARGS, obj={"settings": s})


def _error(r) -> str:  # type: ignore[no-untyped-def]
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    return errors[0]


@pytest.mark.parametrize("in_url, setting", [("s3cret", "wrong"), ("wrong", "s3cret")])
def test_a_password_in_the_url_and_in_its_setting_is_refused(stack, acl_redis, in_url: str,
                                                            setting: str) -> None:
    cfg = RedisConfig(url=f"redis://diam:{in_url}@127.0.0.1:{acl_redis}/0", password=setting)
    error = _error(_invoke(stack, cfg))
    assert "DIAM_REDIS_URL carries a password and DIAM_REDIS_PASSWORD is set too" in error, error
    assert "s3cret" not in error and "wrong" not in error, error  # no password printed


def test_a_username_in_the_url_and_in_its_setting_is_refused(stack, acl_redis) -> None:
    cfg = RedisConfig(url=f"redis://diam:s3cret@127.0.0.1:{acl_redis}/0", username="diam")
    assert "DIAM_REDIS_USERNAME is set too" in _error(_invoke(stack, cfg))


def test_one_place_each_still_connects(stack, acl_redis) -> None:
    for cfg in (RedisConfig(url=f"redis://diam:s3cret@127.0.0.1:{acl_redis}/0"),
                RedisConfig(url=f"redis://127.0.0.1:{acl_redis}/0", username="diam",
                            password="s3cret"),
                RedisConfig(url=f"redis://diam@127.0.0.1:{acl_redis}/0", password="s3cret")):
        r = _invoke(stack, cfg)
        assert r.exit_code == 0, (cfg.url, r.output, r.exception)


def test_a_refused_login_at_the_stack_says_check_the_credentials(stack) -> None:
    # the shared stack's own URL: a refused connection there says "is the stack up?"; a refused
    # login must not, the server is up
    error = _error(_invoke(stack, RedisConfig(url=stack.redis_url, username="nobody",
                                              password="wrong")))
    assert "check the credentials" in error and "DIAM_REDIS_PASSWORD" in error, error
    assert "stack up" not in error, error


@pytest.mark.parametrize("in_url, setting", [("s3cret", "wrong"), ("wrong", "s3cret")])
def test_a_password_in_the_urls_query_and_in_its_setting_is_refused(stack, acl_redis,
                                                                   in_url: str,
                                                                   setting: str) -> None:
    # redis-py takes ?password= as it takes one before the host (old code: the URL's won)
    cfg = RedisConfig(url=f"redis://127.0.0.1:{acl_redis}/0?username=diam&password={in_url}",
                      password=setting)
    error = _error(_invoke(stack, cfg))
    assert "DIAM_REDIS_URL carries a password and DIAM_REDIS_PASSWORD is set too" in error, error
    assert "s3cret" not in error and "wrong" not in error, error
    cfg = RedisConfig(url=f"redis://127.0.0.1:{acl_redis}/0?username=diam&password=s3cret",
                      username="diam")
    assert "DIAM_REDIS_USERNAME is set too" in _error(_invoke(stack, cfg))


def test_a_password_in_the_urls_query_alone_connects_and_is_never_printed(stack,
                                                                         acl_redis) -> None:
    ok = RedisConfig(url=f"redis://127.0.0.1:{acl_redis}/0?username=diam&password=s3cret")
    r = _invoke(stack, ok)
    assert r.exit_code == 0, (r.output, r.exception)
    refused = RedisConfig(url=f"redis://127.0.0.1:{acl_redis}/0?username=diam&password=wr0ng")
    error = _error(_invoke(stack, refused))
    assert "check the credentials" in error, error
    assert "wr0ng" not in error and "password=***" in error, error  # old code: in clear
