"""Value codec of a user's entry in Redis (DESIGN.md §3): the one owner of its bytes.

A msgpack map ``{v, seq, model, a, k, d, dim, vecs, ts, n, s}`` in that key order, byte for
byte ``msgpack.packb`` of the map with msgpack's default options, so any msgpack reader decodes
it with its defaults: text fields are str, ``vecs`` (K_u×dim float16 little-endian) and ``s``
(the user's last seen item rows, int32 little-endian, rows of the snapshot ``model``'s item
table, oldest first; serving excludes them by default) are bin. ``a`` says what anchored the
vectors (``"diam"``: the DIAM network's interests, ``"kmeans"``: centroids of the user's recent
items, on a base without the network's extractor). ``d`` is a float64; the integers are int64.

The write-if-newer script (:mod:`serving_cache.writer`) reads ``seq`` on the server from the
bytes right after :data:`HEAD` (Redis's embedded cmsgpack refuses bin, so it cannot unpack the
map); the script's prefix is generated from :data:`HEAD`.

>>> import numpy as np
>>> uv = UserVectors(seq=7, model="base-1", k=2, d=0.5, dim=2,
...                  vecs=np.array([[1, 0], [0, 1]], dtype=np.float32), ts=1000, n=3,
...                  anchor="diam", seen=np.array([4, 9], dtype=np.int32))
>>> raw = encode_user(uv)
>>> decode_user(raw) == uv
True
>>> m = msgpack.unpackb(raw)
>>> m["model"], m["a"], np.frombuffer(m["s"], "<i4").tolist()
('base-1', 'diam', [4, 9])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

__all__ = ["UserVectors", "new_vectors", "Encoder", "encode_user", "encode_users", "decode_user",
           "CODEC_VERSION", "CodecError", "HEAD"]

CODEC_VERSION = 1
HEAD = b"\x8b\xa1v" + msgpack.packb(CODEC_VERSION) + b"\xa3seq"
"""The first bytes of every value: the 11-entry map's header, ``"v": 1`` and the key ``"seq"``
(its packed integer follows)."""
D_KEY = b"\xa1d\xcb"  # "d", then a float64, as msgpack packs a Python float
_F4 = np.dtype(np.float32)
_F8BE = np.dtype(">f8")
_F16LE = np.dtype("<f2")
_I4LE = np.dtype("<i4")
_NO_SEEN = np.zeros(0, dtype=np.int32)
_NO_SEEN.setflags(write=False)


class CodecError(ValueError):
    """A value, or a user's fields to encode, do not follow the contract (wrong version, sizes
    that disagree, integers outside int64...)."""


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
    (the stream builds one per pushed user on its own thread). The caller vouches that the
    arguments already have the field types.

    >>> v = np.zeros((1, 2), np.float32)
    >>> new_vectors(1, "m", 1, 0.5, 2, v, 3, 4) == UserVectors(1, "m", 1, 0.5, 2, v, 3, 4)
    True
    """
    uv = _NEW(UserVectors)
    uv.__dict__.update(seq=seq, model=model, k=k, d=d, dim=dim, vecs=vecs, ts=ts, n=n,
                       anchor=anchor, seen=_NO_SEEN if seen is None else seen)
    return uv


class Encoder:
    """Encodes chunks of :class:`UserVectors`; one per writing thread (it holds a msgpack Packer,
    which is not thread-safe, and the packed model fragments of the names it has seen).

    A chunk's fields are gathered once into flat arrays (every user's vectors rounded to float16
    in one numpy call) and a compiled kernel (:mod:`serving_cache.codec_kernels`) writes every
    byte. Fields of other types (numpy scalars, float64 or non-contiguous vectors, lists) are
    first converted as the contract says; integers outside int64 and vectors whose size is not
    k·dim raise :class:`CodecError`.
    """

    def __init__(self) -> None:
        self._pack = msgpack.Packer().pack
        self._frags: dict[tuple[str, str], bytes] = {}

    def encode(self, uvs: Sequence[UserVectors]) -> list[bytes]:
        """The value of each user, in order."""
        if not uvs:
            return []
        # numba is imported on the first encode, not with the package: readers never encode
        from serving_cache.codec_kernels import pack_values

        f = self._gather(uvs)
        if f is None:
            try:
                f = self._gather([_normalised(uv) for uv in uvs])
            except (TypeError, ValueError, OverflowError) as exc:
                raise CodecError(f"a user's fields do not fit the contract: {exc}") from exc
            if f is None:
                raise CodecError("a user's fields do not fit the contract: seq, k, dim, ts and n "
                                 "must be int64 (k and dim non-negative, k·dim < 2**31)")
        buf, off = pack_values(f)
        raw = buf.tobytes()
        o = off.tolist()
        return [raw[o[i]:o[i + 1]] for i in range(len(uvs))]

    def warm_up(self) -> None:
        """Compile (or load from numba's on-disk cache) the kernel, so that the first push does
        not wait for it."""
        self.encode([new_vectors(1, "m", 1, 0.5, 2, np.zeros((1, 2), np.float32), 2, 3)])

    def _fragment(self, model: str, anchor: str) -> bytes:
        """``"model", <packed name>, "a", <packed anchor kind>, "k"``: the bytes between the
        packed seq and the packed k."""
        frag = self._frags.get((model, anchor))
        if frag is None:
            if len(self._frags) >= 64:  # model names change rarely; never grow without bound
                self._frags.clear()
            frag = self._frags[(model, anchor)] = (b"\xa5model" + self._pack(model) + b"\xa1a"
                                                   + self._pack(anchor) + b"\xa1k")
        return frag

    def _gather(self, uvs: Sequence[UserVectors]) -> Any:
        """The chunk as :class:`serving_cache.codec_kernels.Fields`, or None when a field is not
        already of the contract's type. Per user a handful of C-level list and numpy steps."""
        from serving_cache.codec_kernels import Fields

        try:
            seq, models, k, ds, dim, vl, ts, n, sl = zip(*[
                (uv.seq, (uv.model, uv.anchor), uv.k, uv.d, uv.dim, uv.vecs, uv.ts, uv.n, uv.seen)
                for uv in uvs], strict=True)
            if ({s.dtype for s in sl} != {_I4LE} or {v.dtype for v in vl} != {_F4}
                    or any(s.ndim != 1 for s in sl)):
                return None
            seen_nb = np.fromiter([4 * s.shape[0] for s in sl], np.int64, len(sl))
            seen = np.frombuffer(b"".join(sl), np.uint8)  # TypeError unless C-contiguous
            flat = np.frombuffer(b"".join(vl), np.float32)
            ints = []
            for col in (seq, k, dim, ts, n):
                a = _int64(col)
                if a is None:
                    return None
                ints.append(a)
            seq_a, k_a, dim_a, ts_a, n_a = ints
            sizes = np.fromiter([v.size for v in vl], np.int64, len(vl))
            if (((k_a | dim_a) < 0).any() or (np.maximum(k_a, dim_a) > 2**31).any()
                    or not np.array_equal(sizes, k_a * dim_a)):
                return None  # k·dim must not wrap, and must be the size of vecs
            d = np.array(ds, dtype=np.float64)
            if d.ndim != 1:
                return None
        except (TypeError, ValueError, AttributeError, OverflowError):
            return None
        m0 = models[0]
        if models.count(m0) == len(models):  # the common case: one model for the whole chunk
            frags = [self._fragment(*m0)]
            midx = np.zeros(len(models), np.int64)
        else:
            index: dict[Any, int] = {}
            midx = np.fromiter([index.setdefault(m, len(index)) for m in models], np.int64,
                               len(models))
            frags = [self._fragment(*m) for m in index]
        frag_off = np.zeros(len(frags) + 1, np.int64)
        np.cumsum([len(f) for f in frags], out=frag_off[1:])
        return Fields(seq_a, k_a, dim_a, ts_a, n_a, d.astype(_F8BE).view(np.uint8), midx,
                      np.frombuffer(b"".join(frags), np.uint8), frag_off,
                      flat.astype(_F16LE).view(np.uint8), seen, seen_nb)


def _int64(values: Sequence[Any]) -> np.ndarray | None:
    # np.array infers int64 only when every value is an integer that fits; anything else
    # (floats, bools, ints beyond int64, objects) is converted by _normalised first
    a = np.array(values)
    if a.dtype == np.int64:
        return a
    if a.dtype.kind in "iu" and np.can_cast(a.dtype, np.int64):
        return a.astype(np.int64)
    return None


def _normalised(uv: UserVectors) -> UserVectors:
    """``uv`` with every field of the contract's type: Python ints, a float, C-contiguous
    float32 [k, dim] vectors (float32 first, then float16 when packed) and int32 seen rows."""
    k, dim = int(uv.k), int(uv.dim)
    vecs = np.ascontiguousarray(np.asarray(uv.vecs, dtype=np.float32).reshape(k, dim))
    seen = np.ascontiguousarray(np.asarray(uv.seen).reshape(-1), dtype=_I4LE)
    return new_vectors(int(uv.seq), uv.model, k, float(uv.d), dim, vecs, int(uv.ts), int(uv.n),
                       uv.anchor, seen)


def encode_users(uvs: Sequence[UserVectors]) -> list[bytes]:
    """The value of each user, in order (:meth:`Encoder.encode` with a fresh encoder)."""
    return Encoder().encode(uvs)


def encode_user(uv: UserVectors) -> bytes:
    """The value of one user; vectors are rounded to float16."""
    return Encoder().encode([uv])[0]


def _bytes(x: Any) -> bytes:
    # values written before byte fields were bin carried them as raw strings: unpacked with
    # surrogateescape, they encode back to the same bytes
    return x if isinstance(x, bytes) else str(x).encode("utf-8", "surrogateescape")


def decode_user(raw: bytes) -> UserVectors:
    """Parse a stored value; vectors come back as float32 (exactly the stored float16 values).

    Raises :class:`CodecError` for a value off the contract, non-finite vectors or ``d``
    included (the encoder never writes them)."""
    try:
        m = msgpack.unpackb(raw, unicode_errors="surrogateescape")
    except Exception as exc:
        raise CodecError(f"not a msgpack map: {exc}") from exc
    if not isinstance(m, dict):
        raise CodecError(f"expected a msgpack map, got {type(m).__name__}")
    if m.get("v") != CODEC_VERSION:
        raise CodecError(f"unsupported value version {m.get('v')!r}")
    try:
        k, dim, blob, seen = int(m["k"]), int(m["dim"]), _bytes(m["vecs"]), _bytes(m.get("s", b""))
        if len(blob) != k * dim * 2:
            raise CodecError(f"vecs holds {len(blob)} bytes, expected k*dim*2 = {k * dim * 2}")
        if len(seen) % 4:
            raise CodecError(f"s holds {len(seen)} bytes, not a whole number of int32 rows")
        d = float(m["d"])
        vecs = np.frombuffer(blob, dtype=_F16LE).astype(np.float32).reshape(k, dim)
        # The encoder never writes NaN or inf; a value holding them comes from a foreign or
        # corrupted writer, and served as it is it gives an empty list with no reason (search
        # scores of NaN) and poisons every mean over the namespace. Refused here, so it takes
        # the undecodable path everywhere. One vectorised pass: about 1 us at K=4, dim=64.
        if not np.isfinite(vecs).all():
            raise CodecError("vecs holds non-finite values (NaN or inf)")
        if not math.isfinite(d):
            raise CodecError(f"d is not finite ({d})")
        return UserVectors(
            seq=int(m["seq"]), model=str(m["model"]), k=k, d=d, dim=dim, vecs=vecs,
            ts=int(m["ts"]), n=int(m.get("n", 0)),
            anchor=str(m.get("a", "kmeans")),  # values written before the field were k-means
            seen=np.frombuffer(seen, dtype=_I4LE).astype(np.int32),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"a field is missing or mistyped: {exc!r}") from exc
