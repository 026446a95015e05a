"""Redis key and value encoding, pinned byte for byte."""

import hashlib

import numpy as np
import pytest

from serving_cache import (
    CodecError,
    UserVectors,
    decode_user,
    encode_user,
    model_active_key,
    user_key,
)
from serving_cache.keys import user_pattern, validate_namespace


def test_keys_are_pinned() -> None:
    assert user_key("live", "u-1").encode() == b"diam:live:u:u-1"
    assert model_active_key("live").encode() == b"diam:live:model:active"
    assert user_pattern("shadow_2") == "diam:shadow_2:u:*"


@pytest.mark.parametrize("ns", ["", "a:b", "a*", "x" * 65, "sp ace"])
def test_bad_namespaces_refused(ns: str) -> None:
    with pytest.raises(ValueError):
        validate_namespace(ns)


def _uv() -> UserVectors:
    vecs = np.array([[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]], dtype=np.float32)
    return UserVectors(seq=1234, model="v20261128", k=2, d=0.625, dim=3, vecs=vecs, ts=880000000000, n=7)


def test_value_encoding_is_pinned() -> None:
    raw = encode_user(_uv())
    expected = (
        b"\x89\xa1v\x01\xa3seq\xcd\x04\xd2\xa5model\xa9v20261128\xa1k\x02\xa1d\xcb?\xe4\x00\x00\x00\x00\x00\x00"
        b"\xa3dim\x03\xa4vecs\xac\x00<\x00\xb8\x004\x00\x00\x00@\x00\xbc\xa2ts\xcf\x00\x00\x00\xcc\xe4\x16\x60\x00"
        b"\xa1n\x07"
    )
    assert raw == expected, raw
    assert hashlib.sha256(raw).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_round_trip_and_size_budget() -> None:
    uv = _uv()
    assert decode_user(encode_user(uv)) == uv
    rng = np.random.default_rng(0)
    big = UserVectors(seq=2**40, model="v1", k=4, d=0.3, dim=64,
                      vecs=rng.normal(size=(4, 64)).astype(np.float32), ts=1, n=10**6)
    raw = encode_user(big)
    assert len(raw) <= 1024  # DESIGN §3 target at K_u=4, d=64
    back = decode_user(raw)
    assert np.allclose(back.vecs, big.vecs, atol=1e-2)


def test_corrupt_values_raise_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_user(b"\xc1")
    raw = bytearray(encode_user(_uv()))
    with pytest.raises(CodecError):
        decode_user(bytes(raw[:-12]))
