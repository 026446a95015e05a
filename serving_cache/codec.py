"""Value codec of a user's entry in Redis (DESIGN.md §3).

A msgpack map ``{v, seq, model, a, k, d, dim, vecs, ts, n, s}``; ``vecs`` is K_u×dim float16
little-endian bytes; ``a`` says what anchored the vectors (``"diam"``: the DIAM network's
interests, ``"kmeans"``: centroids of the user's recent items, on a base without the
network's extractor); ``s`` is the user's last seen item rows (int32 little-endian, rows of
the snapshot ``model``'s item table, oldest first), which serving excludes by default. At
K_u=4, dim=64 and 50 seen items the value is about 780 bytes.

The map is packed without msgpack's ``bin`` type (``use_bin_type=False``): byte strings travel
as the older ``raw`` family, because the cmsgpack library embedded in Redis's Lua predates
``bin`` and refuses it ("Bad data format"), and the write-if-newer script must read ``seq``
on the server. Readers therefore unpack with ``raw=True`` and decode the text fields.

>>> import numpy as np
>>> uv = UserVectors(seq=7, model="base-1", k=2, d=0.5, dim=2,
...                  vecs=np.array([[1, 0], [0, 1]], dtype=np.float32), ts=1000, n=3,
...                  anchor="diam", seen=np.array([4, 9], dtype=np.int32))
>>> decode_user(encode_user(uv)) == uv
True
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np

__all__ = ["UserVectors", "new_vectors", "encode_user", "encode_users", "decode_user", "CODEC_VERSION", "CodecError"]

CODEC_VERSION = 1
_F16LE = np.dtype("<f2")
_I4LE = np.dtype("<i4")
_NO_SEEN = np.zeros(0, dtype=np.int32)
_NO_SEEN.setflags(write=False)


class CodecError(ValueError):
    """A stored value does not follow the contract (wrong version, sizes that disagree...)."""


@dataclass(frozen=True, eq=False)
class UserVectors:
    """A user's serving state: K_u interest vectors, diversity preference d_u and provenance.

    ``seq`` is monotone per user (from the Kafka offset) and decides write-if-newer.
    ``vecs`` is float32 [k, dim] in memory; it is stored as float16.
    """

    seq: int
    model: str
    k: int
    d: float
    dim: int
    vecs: np.ndarray
    ts: int
    n: int = 0
    anchor: str = "kmeans"
    """What anchored the vectors: ``"diam"`` (the network) or ``"kmeans"`` (item centroids)."""
    seen: np.ndarray = field(default_factory=lambda: _NO_SEEN)
    """int32 [<= N] rows of the user's last seen items in ``model``'s item table, oldest first."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserVectors):
            return NotImplemented
        return (
            (self.seq, self.model, self.k, self.d, self.dim, self.ts, self.n, self.anchor)
            == (other.seq, other.model, other.k, other.d, other.dim, other.ts, other.n,
                other.anchor)
            and self.vecs.shape == other.vecs.shape
            and bool(np.array_equal(self.vecs, other.vecs))
            and bool(np.array_equal(self.seen, other.seen))
        )


_NEW = object.__new__


def new_vectors(seq: int, model: str, k: int, d: float, dim: int, vecs: np.ndarray, ts: int,
                n: int, anchor: str = "kmeans", seen: np.ndarray | None = None) -> UserVectors:
    """``UserVectors(...)`` without the frozen dataclass's per-field ``__setattr__`` round trips
    (~2.7 µs to ~1 µs; the stream builds one per pushed user on its own thread). The caller
    vouches that the arguments already have the field types.

    >>> v = np.zeros((1, 2), np.float32)
    >>> new_vectors(1, "m", 1, 0.5, 2, v, 3, 4) == UserVectors(1, "m", 1, 0.5, 2, v, 3, 4)
    True
    """
    uv = _NEW(UserVectors)
    uv.__dict__.update(seq=seq, model=model, k=k, d=d, dim=dim, vecs=vecs, ts=ts, n=n,
                       anchor=anchor, seen=_NO_SEEN if seen is None else seen)
    return uv


_LOCAL = threading.local()


def _packer() -> msgpack.Packer:
    # one Packer per thread (packb builds a new one per call: about a third of an encode);
    # a Packer is not thread-safe, and the stream's Redis writers run on their own threads
    p = getattr(_LOCAL, "packer", None)
    if p is None:
        p = _LOCAL.packer = msgpack.Packer(use_bin_type=False)
    return p


def encode_user(uv: UserVectors) -> bytes:
    """Serialise; vectors are rounded to float16."""
    return encode_users([uv])[0]


# Byte strings packed once and reused: the map header with the first key and value
# ({"v": 1, "seq": ..., which the Lua write-if-newer script reads), and per model name and per
# vecs size the fragments between the packed scalars.
_HEAD = b"\x8b\xa1v" + msgpack.packb(CODEC_VERSION) + b"\xa3seq"
_D_KEY = b"\xa1d\xcb"  # "d", then a float64, as msgpack packs a Python float
_PACK_F64 = struct.Struct(">d").pack
_MODEL_FRAG: dict[tuple[str, str], bytes] = {}
_VECS_FRAG: dict[tuple[int, int], bytes] = {}


def _model_fragment(model: str, anchor: str) -> bytes:
    """``"model", <packed name>, "a", <packed anchor kind>, "k"``: the bytes between the packed
    seq and the packed k, cached per model name and anchor kind (both the Python and the
    compiled encoders use them)."""
    frag = _MODEL_FRAG.get((model, anchor))
    if frag is None:
        if len(_MODEL_FRAG) >= 64:  # model names change rarely; never grow without bound
            _MODEL_FRAG.clear()
        pack = _packer().pack
        frag = _MODEL_FRAG[(model, anchor)] = (b"\xa5model" + pack(model) + b"\xa1a"
                                               + pack(anchor) + b"\xa1k")
    return frag


def encode_users(uvs: Sequence[UserVectors]) -> list[bytes]:
    """:func:`encode_user` of each, in order; the bytes are identical.

    The values are the bytes of ``msgpack.packb`` (``use_bin_type=False``) of the contract's
    map in this key order. The stream's Redis writer encodes a batch of pushed users at a time,
    on a thread that shares the GIL with the dataflow, so the bytes are written by a compiled
    kernel (:mod:`serving_cache.wire`) from the chunk's fields gathered once, with every
    user's vectors rounded to float16 in one numpy call: 1.9-3.5 µs of CPU per user in batches
    of 500 users (K_u = 4, d = 64; about 0.9 µs of it is numpy's float16 rounding), from
    3.6-6.7 µs assembling fragments in Python (nine interleaved repeats on a shared 2-core
    machine). Fields the kernel does not take (integers beyond int64, vecs whose size is not
    k·dim, odd types) are packed in Python by :func:`_encode_users_py`, as before.
    """
    if not uvs:
        return []
    # numba is imported on the first encode, not with the package: readers never encode
    from serving_cache import wire

    f = wire.gather(uvs)
    if f is None:
        return _encode_users_py(uvs)
    buf, off = wire.pack_values(f)
    raw = buf.tobytes()
    o = off.tolist()
    return [raw[o[i]:o[i + 1]] for i in range(len(uvs))]


def _encode_users_py(uvs: Sequence[UserVectors]) -> list[bytes]:
    """The Python assembly from fragments, for chunks the kernel does not take (and the
    reference the kernel is tested against)."""
    if not uvs:
        return []
    pack = _packer().pack
    mats = []
    for uv in uvs:
        v = uv.vecs
        if type(v) is not np.ndarray or v.dtype != np.float32 or v.shape != (uv.k, uv.dim):
            v = np.asarray(v, dtype=np.float32).reshape(uv.k, uv.dim)
        mats.append(v.reshape(-1))
    blob = np.concatenate(mats).astype(_F16LE).tobytes()
    out = []
    o = 0
    for uv, m in zip(uvs, mats, strict=True):
        nb = 2 * m.shape[0]
        frag_m = _model_fragment(uv.model, uv.anchor)
        seen = np.ascontiguousarray(uv.seen, dtype=_I4LE).tobytes()
        dim = int(uv.dim)
        frag_v = _VECS_FRAG.get((dim, nb))
        if frag_v is None:
            if len(_VECS_FRAG) >= 256:
                _VECS_FRAG.clear()
            raw = pack(bytes(nb))  # the raw-string header for nb bytes, then the bytes
            frag_v = _VECS_FRAG[(dim, nb)] = b"\xa3dim" + pack(dim) + b"\xa4vecs" + raw[: len(raw) - nb]
        out.append(b"".join((_HEAD, pack(int(uv.seq)), frag_m, pack(int(uv.k)), _D_KEY,
                             _PACK_F64(float(uv.d)), frag_v, blob[o:o + nb], b"\xa2ts",
                             pack(int(uv.ts)), b"\xa1n", pack(int(uv.n)), b"\xa1s",
                             pack(seen))))
        o += nb
    return out


def decode_user(raw: bytes) -> UserVectors:
    """Parse a stored value; vectors come back as float32 (exactly the stored float16 values)."""
    try:
        packed = msgpack.unpackb(raw, raw=True)
    except Exception as exc:
        raise CodecError(f"not a msgpack map: {exc}") from exc
    if not isinstance(packed, dict):
        raise CodecError(f"expected a msgpack map, got {type(packed).__name__}")
    m = {k.decode() if isinstance(k, bytes) else k: v for k, v in packed.items()}
    if m.get("v") != CODEC_VERSION:
        raise CodecError(f"unsupported value version {m.get('v')!r}")
    k, dim, blob = int(m["k"]), int(m["dim"]), m["vecs"]
    if len(blob) != k * dim * 2:
        raise CodecError(f"vecs holds {len(blob)} bytes, expected k*dim*2 = {k * dim * 2}")
    vecs = np.frombuffer(blob, dtype=_F16LE).astype(np.float32).reshape(k, dim)
    seen_raw = m.get("s", b"")
    if len(seen_raw) % 4:
        raise CodecError(f"s holds {len(seen_raw)} bytes, not a whole number of int32 rows")
    anchor = m.get("a", b"kmeans")  # values written before the field existed were k-means
    return UserVectors(
        seq=int(m["seq"]),
        model=m["model"].decode() if isinstance(m["model"], bytes) else str(m["model"]),
        k=k,
        d=float(m["d"]),
        dim=dim,
        vecs=vecs,
        ts=int(m["ts"]),
        n=int(m.get("n", 0)),
        anchor=anchor.decode() if isinstance(anchor, bytes) else str(anchor),
        seen=np.frombuffer(seen_raw, dtype=_I4LE).astype(np.int32),
    )
