"""Redis key and value encoding, pinned byte for byte."""

import dataclasses
import hashlib

import msgpack
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
from serving_cache.codec import encode_users
from serving_cache.keys import (
    FORGOTTEN_ADOPTED_BY,
    added_key,
    base_key,
    every_user_key,
    forgotten_key,
    forgotten_key_by_name,
    generation_key,
    namespace_of_key,
    namespace_pattern,
    namespaces_starting,
    partitions_key,
    user_in_every_namespace,
    user_pattern,
    validate_namespace,
)
from tests.unit.serving_cache.test_codec_kernels import reference_value


def test_keys_are_pinned() -> None:
    assert user_key("live", "u-1").encode() == b"diam:live:u:u-1"
    assert model_active_key("live").encode() == b"diam:live:model:active"
    assert generation_key("live").encode() == b"diam:live:gen"
    assert base_key("live").encode() == b"diam:live:base"
    assert added_key("live").encode() == b"diam:live:added"
    assert partitions_key("live").encode() == b"diam:live:partitions"
    assert user_in_every_namespace("u-1").encode() == b"diam:*:u:u-1"
    assert namespace_of_key(user_key("replay-1", "u-1").encode()) == "replay-1"
    assert user_pattern("shadow_2") == "diam:shadow_2:u:*"
    assert namespace_pattern("shadow_2") == "diam:shadow_2:*"
    assert every_user_key() == "diam:*:u:*"
    assert namespaces_starting("demo-") == "diam:demo-*:*"
    tid = "ea2bss0mSlqGLpiDao5Wgg"
    assert forgotten_key("diam.clicks", tid).encode() == b"diam::forgotten:diam.clicks:" + tid.encode()
    assert forgotten_key("diam.clicks", None) == forgotten_key_by_name("diam.clicks")
    assert forgotten_key_by_name("diam.clicks").encode() == b"diam::forgotten:diam.clicks"
    assert FORGOTTEN_ADOPTED_BY.encode() == b":adopted-by"


def test_the_adopting_topic_id_field_is_no_user_id() -> None:
    """The name-only marker hash holds it beside user ids; an earlier release's script HGETs
    that hash by user id, so no user id may equal it (``streams.events``' rule)."""
    from streams.events import validate_user_id

    assert validate_user_id(FORGOTTEN_ADOPTED_BY) is not None


@pytest.mark.parametrize("tid", ["", "ea2bss0mSlqGLpiDao5W/g", "a:b", "x" * 65])
def test_a_topic_id_that_is_not_kafkas_is_refused(tid: str) -> None:
    """Kafka prints ids in base64url: a ':' would let one topic's key read as another's."""
    with pytest.raises(ValueError, match="not a Kafka topic id"):
        forgotten_key("diam.clicks", tid)


@pytest.mark.parametrize("ns", ["", "a:b", "a*", "x" * 65, "sp ace"])
def test_bad_namespaces_refused(ns: str) -> None:
    with pytest.raises(ValueError):
        validate_namespace(ns)
    with pytest.raises(ValueError):
        namespaces_starting(ns)


def _uv() -> UserVectors:
    vecs = np.array([[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]], dtype=np.float32)
    return UserVectors(seq=1234, model="v20261128", k=2, d=0.625, dim=3, vecs=vecs, ts=880000000000, n=7)


def test_value_encoding_is_pinned() -> None:
    raw = encode_user(_uv())
    expected = (
        b"\x8b\xa1v\x01\xa3seq\xcd\x04\xd2\xa5model\xa9v20261128\xa1a\xa6kmeans\xa1k\x02"
        b"\xa1d\xcb?\xe4\x00\x00\x00\x00\x00\x00"
        b"\xa3dim\x03\xa4vecs\xc4\x0c\x00<\x00\xb8\x004\x00\x00\x00@\x00\xbc\xa2ts\xcf\x00\x00\x00\xcc\xe4\x16\x60\x00"
        b"\xa1n\x07\xa1s\xc4\x00"
    )
    assert raw == expected, raw
    assert hashlib.sha256(raw).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_round_trip_and_size_budget() -> None:
    uv = _uv()
    assert decode_user(encode_user(uv)) == uv
    rng = np.random.default_rng(0)
    big = UserVectors(seq=2**40, model="v1", k=4, d=0.3, dim=64,
                      vecs=rng.normal(size=(4, 64)).astype(np.float32), ts=1, n=10**6,
                      anchor="diam", seen=np.arange(50, dtype=np.int32) * 1000)
    raw = encode_user(big)
    assert len(raw) <= 1024  # DESIGN §3 target at K_u=4, d=64, with 50 seen items
    back = decode_user(raw)
    assert np.allclose(back.vecs, big.vecs, atol=1e-2)


def test_corrupt_values_raise_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_user(b"\xc1")
    raw = bytearray(encode_user(_uv()))
    with pytest.raises(CodecError):
        decode_user(bytes(raw[:-12]))


def _raw_map(**fields) -> bytes:
    m = {"v": 1, "seq": 1, "model": "v1", "a": "diam", "k": 1, "d": 0.5, "dim": 2,
         "vecs": np.ones(2, "<f2").tobytes(), "ts": 0, "n": 1, "s": b""}
    m.update(fields)
    return msgpack.packb(m)


@pytest.mark.parametrize("bits", [0x7E00, 0x7C00, 0xFC00])  # float16 NaN, +inf, -inf
def test_non_finite_vectors_are_refused(bits: int) -> None:
    vecs = np.array([0x3C00, bits], "<u2").tobytes()  # [1.0, bits]
    assert decode_user(_raw_map(vecs=np.array([0x3C00, 0x3C00], "<u2").tobytes())).k == 1
    with pytest.raises(CodecError, match="vecs holds non-finite"):
        decode_user(_raw_map(vecs=vecs))


@pytest.mark.parametrize("d", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_d_is_refused(d: float) -> None:
    with pytest.raises(CodecError, match="d is not finite"):
        decode_user(_raw_map(d=d))


def test_an_integer_field_that_is_an_infinite_float_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="missing or mistyped"):
        decode_user(_raw_map(k=float("inf")))  # int(inf) raises OverflowError


def test_any_msgpack_reader_decodes_every_field_with_its_defaults() -> None:
    uv = UserVectors(seq=3, model="v1", k=1, d=0.25, dim=2, vecs=np.ones((1, 2), np.float32),
                     ts=9, n=4, anchor="diam", seen=np.array([5, 6], np.int32))
    m = msgpack.unpackb(encode_user(uv))
    assert list(m) == ["v", "seq", "model", "a", "k", "d", "dim", "vecs", "ts", "n", "s"]
    assert (m["v"], m["seq"], m["model"], m["a"], m["k"], m["d"], m["dim"], m["ts"], m["n"]) == (
        1, 3, "v1", "diam", 1, 0.25, 2, 9, 4)
    assert np.frombuffer(m["vecs"], "<f2").tolist() == [1.0, 1.0]
    assert np.frombuffer(m["s"], "<i4").tolist() == [5, 6]


def test_values_written_before_bytes_were_bin_still_decode() -> None:
    # the byte fields travelled as msgpack raw strings (use_bin_type=False) until issue 18
    uv = _uv()
    seen = np.array([7, -1, 2**31 - 1], np.int32)
    old = msgpack.packb({"v": 1, "seq": uv.seq, "model": uv.model, "a": "diam", "k": uv.k,
                         "d": uv.d, "dim": uv.dim, "vecs": uv.vecs.astype("<f2").tobytes(),
                         "ts": uv.ts, "n": uv.n, "s": seen.tobytes()}, use_bin_type=False)
    assert decode_user(old) == dataclasses.replace(uv, anchor="diam", seen=seen)


def test_batch_encoding_equals_msgpack_of_the_map() -> None:
    # every msgpack width of the integers, model names across the fixstr/str8 boundary,
    # empty and long vecs (bin8, bin16), and numpy scalars in the fields
    rng = np.random.default_rng(3)
    uvs = []
    for seq in (0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1):
        for k, dim in ((0, 4), (1, 1), (1, 8), (4, 64), (8, 64), (2, 300)):
            for model in ("m", "x" * 31, "x" * 32, "é" * 40):
                uvs.append(UserVectors(seq=seq, model=model, k=k, d=float(rng.random()), dim=dim,
                                       vecs=rng.normal(size=(k, dim)).astype(np.float32),
                                       ts=-5 if seq == 1 else seq // 3, n=seq // 2))
    uvs.append(UserVectors(seq=np.int64(9), model="m", k=np.int64(2), d=np.float32(0.25), dim=3,
                           vecs=np.ones((2, 3), np.float64), ts=np.int64(4), n=1))
    want = [reference_value(uv) for uv in uvs]
    assert encode_users(uvs) == want
    assert [encode_user(uv) for uv in uvs] == want
    assert encode_users(uvs[:1]) == want[:1] and encode_users([]) == []
    back = decode_user(want[-1])
    assert (back.seq, back.k, back.d, back.dim, back.ts, back.n) == (9, 2, 0.25, 3, 4, 1)
    assert np.array_equal(back.vecs, np.ones((2, 3), np.float32))
