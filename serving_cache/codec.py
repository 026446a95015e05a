"""Value codec of a user's entry in Redis (DESIGN.md §3).

A msgpack map ``{v, seq, model, k, d, dim, vecs, ts, n}``; ``vecs`` is K_u×dim float16
little-endian bytes. At K_u=4, dim=64 the value is about 560 bytes.

The map is packed without msgpack's ``bin`` type (``use_bin_type=False``): byte strings travel
as the older ``raw`` family, because the cmsgpack library embedded in Redis's Lua predates
``bin`` and refuses it ("Bad data format"), and the write-if-newer script must read ``seq``
on the server. Readers therefore unpack with ``raw=True`` and decode the text fields.

>>> import numpy as np
>>> uv = UserVectors(seq=7, model="base-1", k=2, d=0.5, dim=2,
...                  vecs=np.array([[1, 0], [0, 1]], dtype=np.float32), ts=1000, n=3)
>>> decode_user(encode_user(uv)) == uv
True
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import msgpack
import numpy as np

__all__ = ["UserVectors", "new_vectors", "encode_user", "decode_user", "CODEC_VERSION", "CodecError"]

CODEC_VERSION = 1
_F16LE = np.dtype("<f2")


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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserVectors):
            return NotImplemented
        return (
            (self.seq, self.model, self.k, self.d, self.dim, self.ts, self.n)
            == (other.seq, other.model, other.k, other.d, other.dim, other.ts, other.n)
            and self.vecs.shape == other.vecs.shape
            and bool(np.array_equal(self.vecs, other.vecs))
        )


_NEW = object.__new__


def new_vectors(seq: int, model: str, k: int, d: float, dim: int, vecs: np.ndarray, ts: int,
                n: int) -> UserVectors:
    """``UserVectors(...)`` without the frozen dataclass's per-field ``__setattr__`` round trips
    (~2.7 µs to ~1 µs; the stream builds one per pushed user on its own thread). The caller
    vouches that the arguments already have the field types.

    >>> v = np.zeros((1, 2), np.float32)
    >>> new_vectors(1, "m", 1, 0.5, 2, v, 3, 4) == UserVectors(1, "m", 1, 0.5, 2, v, 3, 4)
    True
    """
    uv = _NEW(UserVectors)
    uv.__dict__.update(seq=seq, model=model, k=k, d=d, dim=dim, vecs=vecs, ts=ts, n=n)
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
    vecs = uv.vecs
    if type(vecs) is not np.ndarray or vecs.dtype != np.float32 or vecs.shape != (uv.k, uv.dim):
        vecs = np.asarray(vecs, dtype=np.float32).reshape(uv.k, uv.dim)
    return _packer().pack(
        {
            "v": CODEC_VERSION,
            "seq": int(uv.seq),
            "model": uv.model,
            "k": int(uv.k),
            "d": float(uv.d),
            "dim": int(uv.dim),
            "vecs": vecs.astype(_F16LE).tobytes(),
            "ts": int(uv.ts),
            "n": int(uv.n),
        }
    )


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
    return UserVectors(
        seq=int(m["seq"]),
        model=m["model"].decode() if isinstance(m["model"], bytes) else str(m["model"]),
        k=k,
        d=float(m["d"]),
        dim=dim,
        vecs=vecs,
        ts=int(m["ts"]),
        n=int(m.get("n", 0)),
    )
