"""The codec's compiled encoder against msgpack's packing of the contract's map (default
options), byte for byte, at every msgpack width boundary, and against Redis's own reading of
``seq`` in tests/integration/test_redis_value.py."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving_cache.codec import CodecError, Encoder, UserVectors, encode_user, encode_users

# vecs with values beyond float16's range round to inf, with numpy's warning (as before)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

UINT_EDGES = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
              2**32, 2**63 - 1]
INT_EDGES = UINT_EDGES + [-1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769,
                          -(2**31) + 1, -(2**31), -(2**31) - 1, -(2**63) + 1, -(2**63)]
MODELS = ["", "m", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "é" * 16, "é" * 31, "模" * 11,
          "v20261128"]


def reference_value(uv: Any) -> bytes:
    """The contract: msgpack's packing of the map, in this key order, default options."""
    vecs = np.asarray(uv.vecs, dtype=np.float32).reshape(uv.k, uv.dim).astype("<f2").tobytes()
    seen = np.asarray(uv.seen, dtype="<i4").tobytes()
    return msgpack.packb({"v": 1, "seq": int(uv.seq), "model": uv.model, "a": uv.anchor,
                          "k": int(uv.k), "d": float(uv.d), "dim": int(uv.dim), "vecs": vecs,
                          "ts": int(uv.ts), "n": int(uv.n), "s": seen})


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
    # up to 50 rows, as the stream pushes (bin8 up to 63 rows)
    seen=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50),
)
_users = st.lists(_user, min_size=1, max_size=40)


@given(_users)
def test_values_equal_msgpack_of_the_map(uvs: list[UserVectors]) -> None:
    assert Encoder()._gather(uvs) is not None  # every one of these takes the direct path
    assert encode_users(uvs) == [reference_value(uv) for uv in uvs]


def test_every_integer_width_boundary() -> None:
    # each field at each boundary, exhaustively, one user per value
    uvs = []
    for x in INT_EDGES:
        base = dict(seq=7, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=1, n=1)
        for field in ("seq", "ts", "n"):
            uvs.append(UserVectors(**{**base, field: x}))  # type: ignore[arg-type]
    assert Encoder()._gather(uvs) is not None
    assert encode_users(uvs) == [reference_value(uv) for uv in uvs]


@pytest.mark.parametrize("k, dim", [(0, 4), (1, 127), (1, 128), (1, 129), (1, 32767),
                                    (1, 32768), (2, 16384), (3, 30000)])
def test_vecs_bin_header_boundaries(k: int, dim: int) -> None:
    # 2·k·dim bytes of vecs: bin8 (0xc4) below 256, bin16 (0xc5) below 65536, bin32 (0xc6)
    uv = UserVectors(seq=1, model="m", k=k, d=0.0, dim=dim, vecs=_vecs(k, k, dim, True), ts=0, n=0)
    assert encode_users([uv]) == [reference_value(uv)]


@pytest.mark.parametrize("rows", [0, 7, 8, 63, 64, 16383, 16384])
def test_seen_bin_header_boundaries(rows: int) -> None:
    uv = UserVectors(seq=1, model="m", k=1, d=0.0, dim=2, vecs=np.ones((1, 2), np.float32), ts=0,
                     n=0, anchor="diam", seen=np.arange(rows, dtype=np.int32))
    assert encode_users([uv]) == [reference_value(uv)]


@pytest.mark.parametrize("length", [0, 31, 32, 255, 256, 65535, 65536])
def test_model_name_boundaries(length: int) -> None:
    uvs = [UserVectors(seq=1, model=c * length, k=1, d=1.0, dim=1,
                       vecs=np.ones((1, 1), np.float32), ts=0, n=0) for c in ("a", "é")]
    assert encode_users(uvs) == [reference_value(uv) for uv in uvs]


def test_other_field_types_are_converted_to_the_contracts() -> None:
    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    odd = [
        UserVectors(seq=np.int32(5), model="m", k=np.int64(2), d=np.float32(0.1), dim=3,
                    vecs=v.astype(np.float64) / 3, ts=np.uint8(4), n=1),
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v.reshape(-1), ts=0, n=0),
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=np.asfortranarray(v), ts=0, n=0),
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v.astype(">f4"), ts=0, n=0),
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v.tolist(), ts=0, n=0),  # type: ignore[arg-type]
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v[:, ::-1], ts=0, n=0),
        UserVectors(seq=True, model="m", k=2, d=1, dim=3, vecs=v.astype(np.int64), ts=0, n=0),  # type: ignore[arg-type]
        UserVectors(seq=3.0, model="m", k=2, d=0.5, dim=3, vecs=v, ts=0, n=0),  # type: ignore[arg-type]
        UserVectors(seq=3, model="m", k=2, d=0.5, dim=3, vecs=v, ts=0, n=0,
                    seen=np.array([1, 2], np.int64)),
    ]
    for uv in odd:
        want = reference_value(uv)
        assert encode_users([uv]) == [want]
        assert encode_user(uv) == want
        assert encode_users([uv, odd[2]]) == [want, reference_value(odd[2])]


def test_fields_outside_the_contract_raise() -> None:
    v = np.ones((2, 3), np.float32)
    bad = [
        UserVectors(seq=2**64 - 1, model="m", k=2, d=0.5, dim=3, vecs=v, ts=0, n=0),  # > int64
        UserVectors(seq=1, model="m", k=2, d=0.5, dim=3, vecs=np.ones((2, 2), np.float32), ts=0, n=0),
        UserVectors(seq=1, model="m", k=2**62, d=0.5, dim=4, vecs=np.ones((0, 4), np.float32),
                    ts=0, n=0),  # k·dim wraps to 0 in int64
        UserVectors(seq=1, model="m", k=-1, d=0.5, dim=6, vecs=np.ones(6, np.float32), ts=0, n=0),
    ]
    for uv in bad:
        with pytest.raises(CodecError):
            encode_users([uv])


def test_mixed_models_in_one_chunk() -> None:
    uvs = [UserVectors(seq=i, model=MODELS[i % len(MODELS)], k=1, d=0.5, dim=3,
                       vecs=_vecs(i, 1, 3, False), ts=i, n=i) for i in range(50)]
    assert encode_users(uvs) == [reference_value(uv) for uv in uvs]


def test_an_encoder_keeps_few_model_fragments() -> None:
    enc = Encoder()
    uvs = [UserVectors(seq=i, model=f"m{i}", k=1, d=0.5, dim=1, vecs=np.ones((1, 1), np.float32),
                       ts=0) for i in range(200)]
    assert enc.encode(uvs) == [reference_value(uv) for uv in uvs]
    assert len(enc._frags) <= 64
