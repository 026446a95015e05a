"""Compiled value and RESP packing (serving_cache.wire) against msgpack and the Python framing
the writer used before, byte for byte, at every msgpack width boundary."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving_cache import wire
from serving_cache.codec import UserVectors, _encode_users_py, encode_user, encode_users
from serving_cache.keys import user_key
from serving_cache.writer import RedisWriter

# vecs with values beyond float16's range round to inf, with numpy's warning (as before)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

SHA = b"0123456789abcdef0123456789abcdef01234567"

UINT_EDGES = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
              2**32, 2**63 - 1]
INT_EDGES = UINT_EDGES + [-1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769,
                          -(2**31) + 1, -(2**31), -(2**31) - 1, -(2**63) + 1, -(2**63)]
MODELS = ["", "m", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "é" * 16, "é" * 31, "模" * 11,
          "v20261128"]
USER_IDS = ["u1", "é", "用户-7", "a" * 200, "x:y", "0"]


def reference_value(uv: Any) -> bytes:
    """The contract: msgpack's packing of the map, in this key order, without the bin type."""
    vecs = np.asarray(uv.vecs, dtype=np.float32).reshape(uv.k, uv.dim).astype("<f2").tobytes()
    seen = np.asarray(uv.seen, dtype="<i4").tobytes()
    return msgpack.packb({"v": 1, "seq": int(uv.seq), "model": uv.model, "a": uv.anchor,
                          "k": int(uv.k), "d": float(uv.d), "dim": int(uv.dim), "vecs": vecs,
                          "ts": int(uv.ts), "n": int(uv.n), "s": seen}, use_bin_type=False)


def reference_calls(sha: bytes, ns: str, chunk: list[tuple[str, Any]], per_call: int) -> bytes:
    """The writer's RESP framing as it was written in Python before the kernels."""
    values = [reference_value(uv) for _, uv in chunk]
    calls = []
    for start in range(0, len(chunk), per_call):
        part = chunk[start : start + per_call]
        n = b"%d" % len(part)
        keys = [b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            3 + 3 * len(part), len(sha), sha, len(n), n)]
        args = []
        for (user_id, uv), val in zip(part, values[start : start + len(part)], strict=True):
            key = user_key(ns, user_id).encode()
            seq = b"%d" % uv.seq
            keys.append(b"$%d\r\n%s\r\n" % (len(key), key))
            args.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(seq), seq, len(val), val))
        calls.append(b"".join(keys) + b"".join(args))
    return b"".join(calls)


class _Conn:
    def __init__(self, per_call: int, n: int) -> None:
        self.sent = b""
        self.replies = [min(per_call, n - s) for s in range(0, n, per_call)]

    def send_packed_command(self, cmds: list[bytes]) -> None:
        self.sent += b"".join(cmds)

    def read_response(self) -> int:
        return self.replies.pop(0)

    def disconnect(self) -> None:
        pass


class _Pool:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def get_connection(self) -> _Conn:
        return self.conn

    def release(self, conn: _Conn) -> None:
        pass


class _Client:
    """Just enough of redis.Redis for RedisWriter._send; records the bytes sent."""

    def __init__(self, per_call: int, n: int) -> None:
        self.connection_pool = _Pool(_Conn(per_call, n))

    def script_load(self, script: str) -> str:
        return SHA.decode()


def _sent(chunk: list[tuple[str, Any]], ns: str, per_call: int) -> bytes:
    client = _Client(per_call, len(chunk))
    w = RedisWriter(client, ns, pipeline_batch=len(chunk), keys_per_call=per_call)  # type: ignore[arg-type]
    assert w._send(chunk) == len(chunk)
    return client.connection_pool.conn.sent


def _vecs(seed: int, k: int, dim: int, special: bool) -> np.ndarray:
    v = np.random.default_rng(seed).normal(scale=100.0, size=(k, dim)).astype(np.float32)
    if special and v.size:
        flat = v.reshape(-1)
        vals = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-8, 70000.0, 65504.0, 6e-5],
                        dtype=np.float32)
        flat[: min(flat.size, vals.size)] = vals[: flat.size]
    return v


_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"),
                                    -float("nan"), 5e-324, 1.7976931348623157e308]))
_user = st.builds(
    lambda seq, model, k, d, dim, ts, n, seed, special, anchor, seen: UserVectors(
        seq=seq, model=model, k=k, d=d, dim=dim, vecs=_vecs(seed, k, dim, special), ts=ts, n=n,
        anchor=anchor, seen=np.array(seen, dtype=np.int32)),
    seq=st.one_of(st.sampled_from(UINT_EDGES), st.integers(0, 2**63 - 1)),
    model=st.one_of(st.sampled_from(MODELS), st.text(max_size=40)),
    k=st.integers(1, 8),
    d=_float,
    dim=st.sampled_from([1, 3, 64]),
    ts=st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**63), 2**63 - 1)),
    n=st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**63), 2**63 - 1)),
    seed=st.integers(0, 2**16),
    special=st.booleans(),
    anchor=st.sampled_from(["diam", "kmeans"]),
    # 0, 7 (fixraw), 8 (raw16 at 32 bytes) and up to 50 rows, as the stream pushes
    seen=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50),
)
_entries = st.lists(st.tuples(st.one_of(st.sampled_from(USER_IDS), st.text(min_size=1, max_size=20)),
                              _user), min_size=1, max_size=40)


@given(_entries)
def test_values_equal_msgpack_of_the_map(entries: list[tuple[str, UserVectors]]) -> None:
    uvs = [uv for _, uv in entries]
    assert wire.gather(uvs) is not None  # every one of these takes the compiled path
    want = [reference_value(uv) for uv in uvs]
    assert encode_users(uvs) == want
    assert _encode_users_py(uvs) == want


@given(_entries, st.sampled_from([1, 2, 3, 100]))
def test_calls_equal_the_python_framing(entries: list[tuple[str, UserVectors]], per_call: int) -> None:
    assert _sent(entries, "live", per_call) == reference_calls(SHA, "live", entries, per_call)


def test_every_integer_width_boundary() -> None:
    # each field at each boundary, exhaustively, one user per value
    uvs = []
    for x in INT_EDGES:
        base = dict(seq=7, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=1, n=1)
        for field in ("seq", "ts", "n"):
            uvs.append(UserVectors(**{**base, field: x}))  # type: ignore[arg-type]
    chunk = [(f"u{i}", uv) for i, uv in enumerate(uvs)]
    assert wire.gather(uvs) is not None
    assert encode_users(uvs) == [reference_value(uv) for uv in uvs]
    assert _sent(chunk, "ns1", 7) == reference_calls(SHA, "ns1", chunk, 7)


@pytest.mark.parametrize("k, dim", [(0, 4), (1, 15), (1, 16), (1, 127), (1, 128),
                                    (1, 32767), (1, 32768), (2, 16384), (3, 30000)])
def test_vecs_raw_header_boundaries(k: int, dim: int) -> None:
    # 2·k·dim bytes of vecs: fixraw below 32, raw16 (0xda) below 65536, raw32 (0xdb) above;
    # never str8 (0xd9), which msgpack does not use without the bin type
    uv = UserVectors(seq=1, model="m", k=k, d=0.0, dim=dim, vecs=_vecs(k, k, dim, True), ts=0, n=0)
    assert encode_users([uv]) == [reference_value(uv)]


@pytest.mark.parametrize("rows", [0, 7, 8, 50, 16383, 16384])
def test_seen_raw_header_boundaries(rows: int) -> None:
    uv = UserVectors(seq=1, model="m", k=1, d=0.0, dim=2, vecs=np.ones((1, 2), np.float32), ts=0,
                     n=0, anchor="diam", seen=np.arange(rows, dtype=np.int32))
    assert encode_users([uv]) == [reference_value(uv)]


def test_foreign_reader_sees_every_field() -> None:
    uv = UserVectors(seq=3, model="v1", k=1, d=0.25, dim=2, vecs=np.ones((1, 2), np.float32),
                     ts=9, n=4, anchor="diam", seen=np.array([5, 6], np.int32))
    m = msgpack.unpackb(encode_users([uv])[0], raw=True)
    assert m[b"a"] == b"diam" and np.frombuffer(m[b"s"], "<i4").tolist() == [5, 6]


@pytest.mark.parametrize("length", [0, 31, 32, 255, 256, 65535, 65536])
def test_model_name_boundaries(length: int) -> None:
    uvs = [UserVectors(seq=1, model=c * length, k=1, d=1.0, dim=1,
                       vecs=np.ones((1, 1), np.float32), ts=0, n=0) for c in ("a", "é")]
    assert encode_users(uvs) == [reference_value(uv) for uv in uvs]


def test_odd_inputs_fall_back_to_python_with_the_same_bytes() -> None:
    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    odd = [
        UserVectors(seq=2**64 - 1, model="m", k=2, d=0.5, dim=3, vecs=v, ts=0, n=0),  # > int64
        UserVectors(seq=np.int32(5), model="m", k=np.int64(2), d=np.float32(0.1), dim=3,
                    vecs=v.astype(np.float64) / 3, ts=np.uint8(4), n=1),
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v.reshape(-1), ts=0, n=0),
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=np.asfortranarray(v), ts=0, n=0),
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v.astype(">f4"), ts=0, n=0),
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v.tolist(), ts=0, n=0),  # type: ignore[arg-type]
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v[:, ::-1], ts=0, n=0),
        UserVectors(seq=True, model="m", k=2, d=1, dim=3, vecs=v.astype(np.int64), ts=0, n=0),  # type: ignore[arg-type]
        UserVectors(seq=3.0, model="m", k=2, d=0.5, dim=3, vecs=v, ts=0, n=0),  # type: ignore[arg-type]
        UserVectors(seq=3, model=b"raw", k=2, d=0.5, dim=3, vecs=v, ts=0, n=0),  # type: ignore[arg-type]
    ]
    for uv in odd:
        want = reference_value(uv)
        assert encode_users([uv]) == [want]
        assert encode_user(uv) == want
        assert encode_users([uv, odd[2]]) == [want, reference_value(odd[2])]
        chunk = [("é1", uv), (7, odd[2])]  # a user id that is not str is formatted as user_key does
        assert _sent(chunk, "live", 1) == reference_calls(SHA, "live", chunk, 1)  # type: ignore[arg-type]


def test_sizes_that_disagree_still_raise() -> None:
    bad = UserVectors(seq=1, model="m", k=2, d=0.5, dim=3, vecs=np.ones((2, 2), np.float32), ts=0, n=0)
    with pytest.raises(ValueError):
        encode_users([bad])
    wraps = UserVectors(seq=1, model="m", k=2**62, d=0.5, dim=4, vecs=np.ones((0, 4), np.float32),
                        ts=0, n=0)  # k·dim wraps to 0 in int64
    with pytest.raises(ValueError):
        encode_users([wraps])


def test_mixed_models_in_one_chunk() -> None:
    uvs = [UserVectors(seq=i, model=MODELS[i % len(MODELS)], k=1, d=0.5, dim=3,
                       vecs=_vecs(i, 1, 3, False), ts=i, n=i) for i in range(50)]
    assert encode_users(uvs) == [reference_value(uv) for uv in uvs]


def test_decimal_rendering_of_seq() -> None:
    # RESP sends seq in decimal; the kernel renders every width, int64's minimum included
    seqs = np.array([0, 9, 10, -1, -9, -10, -11, 2**63 - 1, -(2**63), -(2**63) + 1, 1234567890],
                    np.int64)
    ids, id_off = wire.key_bytes([f"u{i}" for i in range(len(seqs))])
    vals = np.zeros(0, np.uint8)
    out = wire.pack_calls(np.frombuffer(SHA, np.uint8), np.frombuffer(b"p:", np.uint8), ids, id_off,
                          seqs, vals, np.zeros(len(seqs) + 1, np.int64), 4).tobytes()
    for s in seqs:
        assert b"$%d\r\n%d\r\n$0\r\n\r\n" % (len(b"%d" % s), s) in out
