"""The user id rule has one owner (``serving_cache.reader``): the event contract, the dataflow's
tombstone check, the reader and the API's path parameter agree on every id."""

from __future__ import annotations

import re

import pytest

from serving_cache import api
from serving_cache.reader import (
    USER_ID_ALLOWED,
    USER_ID_CHARS,
    USER_ID_MAX_LEN,
    USER_ID_PATTERN,
    valid_user_id,
)
from streams.events import validate_user_id
from streams.online import forget_target

IDS = [chr(c) for c in range(0x20, 0x7F)] + [
    "", "u" * USER_ID_MAX_LEN, "u" * (USER_ID_MAX_LEN + 1), "u1\n", "é", "ü1", "a b", "u-42@x.y+z=",
]


@pytest.mark.parametrize("uid", IDS)
def test_every_check_of_a_user_id_gives_the_same_answer(uid: str) -> None:
    ok = valid_user_id(uid)
    assert (validate_user_id(uid) is None) == ok
    assert (forget_target(uid.encode()) is not None) == ok
    assert (re.fullmatch(USER_ID_PATTERN, uid) is not None) == ok


def test_the_alphabet_is_the_one_described() -> None:
    assert {c for c in map(chr, range(0x20, 0x7F)) if valid_user_id(c)} == (
        set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@+=-"))
    # the words name each separator, and keep out what a Kafka header dump splits on
    for c in re.sub(r".-.", "", USER_ID_CHARS[:-1]) + USER_ID_CHARS[-1]:
        assert c in USER_ID_ALLOWED or (c == "=" and "equals sign" in USER_ID_ALLOWED)
    assert "," not in USER_ID_ALLOWED and "=" not in USER_ID_ALLOWED
    assert validate_user_id("a:b") == f"user_id: contains ':' (allowed: {USER_ID_ALLOWED})"


def test_the_api_describes_the_rule_it_enforces() -> None:
    # the rule first; then how the ids '.' and '..' are asked (their own words)
    assert api.UserId.description.startswith("User id: 1..128 of [A-Za-z0-9_.@+=-]. ")
    assert "%2E" in api.UserId.description
