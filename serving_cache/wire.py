"""Compiled byte assembly of the Redis writer: codec values and RESP-framed EVALSHA calls.

Why: the stream's Redis writer runs on a thread that shares the GIL with the dataflow, so its
Python work per pushed user is taken from the dataflow's throughput. Packing a value from
fragments and framing it in Python cost 7-11 µs of CPU per user (4-6 µs now, see
serving_cache.writer). Here Python gathers each field of a chunk once (one list per field, one
numpy conversion) and numba writes every byte, one call for the values and one for the calls,
with integer and byte arithmetic only (the float16 rounding stays in numpy, ``astype('<f2')``;
d travels as big-endian float64 bytes from numpy), so the bytes are the same on every machine.

The value of a user is byte for byte ``msgpack.packb`` (``use_bin_type=False``) of the map
``{v, seq, model, a, k, d, dim, vecs, ts, n, s}`` in that order (serving_cache.codec). Fields that do
not fit the compiled path (an integer outside int64, vecs whose size is not k·dim, odd types)
make :func:`gather` return None and the caller packs that chunk in Python, as before.

>>> import numpy as np
>>> from serving_cache.codec import UserVectors
>>> uv = UserVectors(seq=7, model="m", k=1, d=0.5, dim=2,
...                  vecs=np.array([[1, 0]], dtype=np.float32), ts=1000, n=3)
>>> buf, off = pack_values(gather([uv]))
>>> import msgpack
>>> bytes(buf[off[0]:off[1]]) == msgpack.packb({"v": 1, "seq": 7, "model": "m",
...     "a": "kmeans", "k": 1, "d": 0.5, "dim": 2, "vecs": np.float16([1, 0]).tobytes(),
...     "ts": 1000, "n": 3, "s": b""}, use_bin_type=False)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from serving_cache import codec

__all__ = ["Fields", "gather", "pack_values", "pack_calls", "key_bytes", "warm_up"]

_F16LE = np.dtype("<f2")
_F8BE = np.dtype(">f8")
_F4 = np.dtype(np.float32)
_I4 = np.dtype("<i4")

# Fragments of the contract's map between the packed scalars (the map header and the float
# key are the codec's own bytes).
_HEAD = np.frombuffer(codec._HEAD, np.uint8)
_D_KEY = np.frombuffer(codec._D_KEY, np.uint8)
_DIM_KEY = np.frombuffer(b"\xa3dim", np.uint8)
_VECS_KEY = np.frombuffer(b"\xa4vecs", np.uint8)
_TS_KEY = np.frombuffer(b"\xa2ts", np.uint8)
_N_KEY = np.frombuffer(b"\xa1n", np.uint8)
_S_KEY = np.frombuffer(b"\xa1s", np.uint8)
_EVALSHA = np.frombuffer(b"$7\r\nEVALSHA\r\n", np.uint8)



class Fields(NamedTuple):
    """A chunk of users as flat arrays: ``seq``, ``k``, ``dim``, ``ts``, ``n`` int64 [N];
    ``d`` uint8 [8N] (big-endian float64 bytes); ``model`` int64 [N] (index into the
    fragments); ``frags`` uint8 (``"model", <packed name>, "k"`` per model, concatenated) with
    ``frag_off`` int64 [M+1]; ``vecs`` uint8 (float16 little-endian bytes of every user's
    k·dim values, in order); ``seen`` uint8 (int32 little-endian bytes of every user's seen
    rows, in order) with ``seen_nb`` int64 [N] bytes per user."""

    seq: np.ndarray
    k: np.ndarray
    dim: np.ndarray
    ts: np.ndarray
    n: np.ndarray
    d: np.ndarray
    model: np.ndarray
    frags: np.ndarray
    frag_off: np.ndarray
    vecs: np.ndarray
    seen: np.ndarray
    seen_nb: np.ndarray


def _ints(values: Sequence[Any]) -> np.ndarray | None:
    # np.array infers int64 only when every value is an integer that fits; anything else
    # (floats, bools, ints beyond int64, objects) goes the Python way, which calls int()
    a = np.array(values)
    if a.dtype == np.int64:
        return a
    if a.dtype.kind in "iu" and np.can_cast(a.dtype, np.int64):
        return a.astype(np.int64)
    return None


def gather(uvs: Sequence[Any]) -> Fields | None:
    """The fields of ``uvs`` (UserVectors) as :class:`Fields`, or None when one does not fit
    the compiled path (the caller then packs in Python). Per user this is a handful of C-level
    list and numpy steps; there is no Python loop body per user."""
    try:
        cols = list(zip(*[(uv.seq, (uv.model, uv.anchor), uv.k, uv.d, uv.dim, uv.vecs, uv.ts,
                           uv.n, uv.seen) for uv in uvs], strict=True))
        seq, models, k, ds, dim, vl, ts, n, sl = cols
        if {s.dtype for s in sl} != {_I4} or any(s.ndim != 1 for s in sl):
            return None
        seen_nb = np.fromiter([4 * s.shape[0] for s in sl], np.int64, len(sl))
        seen = np.frombuffer(b"".join([np.ascontiguousarray(s).tobytes() for s in sl]),
                             np.uint8)
        ints = []
        for col in (seq, k, dim, ts, n):
            a = _ints(col)
            if a is None:
                return None
            ints.append(a)
        seq_a, k_a, dim_a, ts_a, n_a = ints
        sizes = np.fromiter([v.size for v in vl], np.int64, len(vl))
        if (((k_a | dim_a) < 0).any() or (np.maximum(k_a, dim_a) > 2**31).any()
                or not np.array_equal(sizes, k_a * dim_a)):
            # Python raises (reshape), or accepts -1 as reshape does; k·dim must not wrap
            return None
        flat = None
        if {v.dtype for v in vl} == {_F4}:
            try:  # C-contiguous float32 arrays: their bytes joined (0.1 µs a user, not 0.5)
                flat = np.frombuffer(b"".join(vl), np.float32)
            except TypeError:  # one is not C-contiguous
                pass
        if flat is None:
            # float32 first, then float16: the two roundings of a per-user asarray(float32)
            flat = np.concatenate(vl, axis=None, dtype=np.float32)
        d = np.array(ds, dtype=np.float64)
        if d.ndim != 1:
            return None
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    m0 = models[0]
    if models.count(m0) == len(models):  # the common case: one model for the whole chunk
        frags = [codec._model_fragment(*m0)]
        midx = np.zeros(len(models), np.int64)
    else:
        index: dict[Any, int] = {}
        midx = np.fromiter([index.setdefault(m, len(index)) for m in models], np.int64,
                           len(models))
        frags = [codec._model_fragment(*m) for m in index]
    frag_off = np.zeros(len(frags) + 1, np.int64)
    np.cumsum([len(f) for f in frags], out=frag_off[1:])
    return Fields(seq_a, k_a, dim_a, ts_a, n_a, d.astype(_F8BE).view(np.uint8), midx,
                  np.frombuffer(b"".join(frags), np.uint8), frag_off,
                  flat.astype(_F16LE).view(np.uint8), seen, seen_nb)


def key_bytes(ids: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of the user ids, concatenated (uint8), and their offsets (int64 [N+1]); ids
    that are not str are formatted as an f-string would (as keys.user_key does)."""
    try:
        s = "".join(ids)
    except TypeError:
        ids = [f"{u}" for u in ids]
        s = "".join(ids)
    b = s.encode()
    off = np.zeros(len(ids) + 1, np.int64)
    if len(b) == len(s):  # ASCII: one byte per character
        np.cumsum(np.fromiter(map(len, ids), np.int64, len(ids)), out=off[1:])
    else:
        np.cumsum(np.fromiter((len(u.encode()) for u in ids), np.int64, len(ids)), out=off[1:])
    return np.frombuffer(b, np.uint8), off


# -- kernels ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _int_len(x):
    """Bytes of msgpack's packing of the integer ``x`` (as Packer.pack of a Python int)."""
    if x >= 0:
        if x < 128:
            return 1
        if x < 256:
            return 2
        if x < 65536:
            return 3
        if x < 4294967296:
            return 5
        return 9
    if x >= -32:
        return 1
    if x >= -128:
        return 2
    if x >= -32768:
        return 3
    if x >= -2147483648:
        return 5
    return 9


@njit(cache=True, nogil=True)
def _put_be(out, p, x, nbytes):
    """``x``'s low ``nbytes`` bytes, big-endian (two's complement for negatives)."""
    for i in range(nbytes):
        out[p + nbytes - 1 - i] = (x >> (8 * i)) & 0xFF
    return p + nbytes


@njit(cache=True, nogil=True)
def _put_int(out, p, x):
    if x >= 0:
        if x < 128:
            out[p] = x
            return p + 1
        if x < 256:
            out[p] = 0xCC
            return _put_be(out, p + 1, x, 1)
        if x < 65536:
            out[p] = 0xCD
            return _put_be(out, p + 1, x, 2)
        if x < 4294967296:
            out[p] = 0xCE
            return _put_be(out, p + 1, x, 4)
        out[p] = 0xCF
        return _put_be(out, p + 1, x, 8)
    if x >= -32:
        out[p] = x & 0xFF  # negative fixint 0xe0..0xff
        return p + 1
    if x >= -128:
        out[p] = 0xD0
        return _put_be(out, p + 1, x, 1)
    if x >= -32768:
        out[p] = 0xD1
        return _put_be(out, p + 1, x, 2)
    if x >= -2147483648:
        out[p] = 0xD2
        return _put_be(out, p + 1, x, 4)
    out[p] = 0xD3
    return _put_be(out, p + 1, x, 8)


@njit(cache=True, nogil=True)
def _raw_len(nb):
    """Bytes of the header msgpack puts before ``nb`` raw bytes without the bin type: fixraw,
    raw16 (0xda), raw32 (0xdb); never str8, which old readers (Redis's cmsgpack) refuse."""
    if nb < 32:
        return 1
    if nb < 65536:
        return 3
    return 5


@njit(cache=True, nogil=True)
def _put(out, p, src, a, b):
    """``src[a:b]`` into ``out`` at ``p``. Copied between two slices: LLVM vectorises that
    loop (25 ns per 512 bytes), not one indexing ``out`` and ``src`` directly (600 ns)."""
    n = b - a
    dst = out[p:p + n]
    s = src[a:b]
    for j in range(n):
        dst[j] = s[j]
    return p + n


@njit(cache=True, nogil=True)
def pack_values(f):
    """Every user's value, concatenated (uint8), and the offsets (int64 [N+1])."""
    seq, k, dim, ts, n, d, model, frags, frag_off, vecs, seen, seen_nb = f
    cnt = seq.shape[0]
    off = np.zeros(cnt + 1, np.int64)
    for i in range(cnt):
        nb = 2 * k[i] * dim[i]
        m = model[i]
        off[i + 1] = (off[i] + _HEAD.shape[0] + _int_len(seq[i]) + frag_off[m + 1] - frag_off[m]
                      + _int_len(k[i]) + _D_KEY.shape[0] + 8 + _DIM_KEY.shape[0]
                      + _int_len(dim[i]) + _VECS_KEY.shape[0] + _raw_len(nb) + nb
                      + _TS_KEY.shape[0] + _int_len(ts[i]) + _N_KEY.shape[0] + _int_len(n[i])
                      + _S_KEY.shape[0] + _raw_len(seen_nb[i]) + seen_nb[i])
    out = np.empty(off[cnt], np.uint8)
    v = 0
    s = 0
    for i in range(cnt):
        p = _put(out, off[i], _HEAD, 0, _HEAD.shape[0])
        p = _put_int(out, p, seq[i])
        p = _put(out, p, frags, frag_off[model[i]], frag_off[model[i] + 1])
        p = _put_int(out, p, k[i])
        p = _put(out, p, _D_KEY, 0, _D_KEY.shape[0])
        p = _put(out, p, d, 8 * i, 8 * i + 8)
        p = _put(out, p, _DIM_KEY, 0, _DIM_KEY.shape[0])
        p = _put_int(out, p, dim[i])
        p = _put(out, p, _VECS_KEY, 0, _VECS_KEY.shape[0])
        nb = 2 * k[i] * dim[i]
        if nb < 32:
            out[p] = 0xA0 | nb
            p += 1
        elif nb < 65536:
            out[p] = 0xDA
            p = _put_be(out, p + 1, nb, 2)
        else:
            out[p] = 0xDB
            p = _put_be(out, p + 1, nb, 4)
        p = _put(out, p, vecs, v, v + nb)
        v += nb
        p = _put(out, p, _TS_KEY, 0, _TS_KEY.shape[0])
        p = _put_int(out, p, ts[i])
        p = _put(out, p, _N_KEY, 0, _N_KEY.shape[0])
        p = _put_int(out, p, n[i])
        p = _put(out, p, _S_KEY, 0, _S_KEY.shape[0])
        p = _put_raw_head(out, p, seen_nb[i])
        _put(out, p, seen, s, s + seen_nb[i])
        s += seen_nb[i]
    return out, off


@njit(cache=True, nogil=True)
def _put_raw_head(out, p, nb):
    """The raw-family header of ``nb`` bytes (see :func:`_raw_len`)."""
    if nb < 32:
        out[p] = 0xA0 | nb
        return p + 1
    if nb < 65536:
        out[p] = 0xDA
        return _put_be(out, p + 1, nb, 2)
    out[p] = 0xDB
    return _put_be(out, p + 1, nb, 4)


@njit(cache=True, nogil=True)
def _dec_len(x):
    """Characters of ``b"%d" % x``. A negative ``x`` is first divided by -10 (floor), which
    leaves a non-negative rest without negating ``x`` (int64's minimum has no negation)."""
    c = 1
    if x < 0:
        c = 2  # the sign and the last digit
        x = x // -10
        if x == 0:
            return c
        c += 1
    while x >= 10:
        x //= 10
        c += 1
    return c


@njit(cache=True, nogil=True)
def _put_dec(out, p, x):
    last = -1
    if x < 0:
        out[p] = 45  # '-'
        p += 1
        last = -(x % -10)
        x = x // -10
        if x == 0:
            out[p] = 48 + last
            return p + 1
    c = _dec_len(x)
    for i in range(c - 1, -1, -1):
        out[p + i] = 48 + x % 10
        x //= 10
    p += c
    if last >= 0:
        out[p] = 48 + last
        p += 1
    return p


@njit(cache=True, nogil=True)
def _put_bulk_head(out, p, length):
    """``$<length>\\r\\n``"""
    out[p] = 36
    p = _put_dec(out, p + 1, length)
    out[p] = 13
    out[p + 1] = 10
    return p + 2


@njit(cache=True, nogil=True)
def _crlf(out, p):
    out[p] = 13
    out[p + 1] = 10
    return p + 2


@njit(cache=True, nogil=True)
def pack_calls(sha, prefix, ids, id_off, seq, vals, val_off, per_call):
    """The RESP bytes of ``EVALSHA sha n key_1..key_n seq_1 value_1 .. seq_n value_n`` for
    every ``per_call`` users, concatenated: keys are ``prefix + ids[id_off[i]:id_off[i+1]]``,
    ``seq`` int64 [N] is sent in decimal, values are ``vals[val_off[i]:val_off[i+1]]``."""
    cnt = seq.shape[0]
    size = 0
    for s in range(0, cnt, per_call):
        m = min(per_call, cnt - s)
        size += (1 + _dec_len(3 + 3 * m) + 2 + _EVALSHA.shape[0]
                 + 1 + _dec_len(sha.shape[0]) + 2 + sha.shape[0] + 2
                 + 1 + _dec_len(_dec_len(m)) + 2 + _dec_len(m) + 2)
    for i in range(cnt):
        kl = prefix.shape[0] + id_off[i + 1] - id_off[i]
        sl = _dec_len(seq[i])
        vl = val_off[i + 1] - val_off[i]
        size += (1 + _dec_len(kl) + 4 + kl + 1 + _dec_len(sl) + 4 + sl
                 + 1 + _dec_len(vl) + 4 + vl)
    out = np.empty(size, np.uint8)
    p = 0
    for s in range(0, cnt, per_call):
        m = min(per_call, cnt - s)
        out[p] = 42  # '*'
        p = _crlf(out, _put_dec(out, p + 1, 3 + 3 * m))
        p = _put(out, p, _EVALSHA, 0, _EVALSHA.shape[0])
        p = _put_bulk_head(out, p, sha.shape[0])
        p = _crlf(out, _put(out, p, sha, 0, sha.shape[0]))
        p = _put_bulk_head(out, p, _dec_len(m))
        p = _crlf(out, _put_dec(out, p, m))
        for i in range(s, s + m):
            p = _put_bulk_head(out, p, prefix.shape[0] + id_off[i + 1] - id_off[i])
            p = _put(out, p, prefix, 0, prefix.shape[0])
            p = _crlf(out, _put(out, p, ids, id_off[i], id_off[i + 1]))
        for i in range(s, s + m):
            p = _put_bulk_head(out, p, _dec_len(seq[i]))
            p = _crlf(out, _put_dec(out, p, seq[i]))
            p = _put_bulk_head(out, p, val_off[i + 1] - val_off[i])
            p = _crlf(out, _put(out, p, vals, val_off[i], val_off[i + 1]))
    return out


_WARM = False


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) both kernels with the writer's types, so
    that the first push is not delayed by compilation. Safe to call more than once."""
    global _WARM
    if _WARM:
        return
    from serving_cache.codec import UserVectors

    uv = UserVectors(seq=1, model="m", k=1, d=0.5, dim=2, vecs=np.zeros((1, 2), np.float32),
                     ts=2, n=3)
    f = gather([uv])
    assert f is not None
    vals, off = pack_values(f)
    ids, id_off = key_bytes(["u"])
    pack_calls(np.frombuffer(b"0" * 40, np.uint8), np.frombuffer(b"p:", np.uint8), ids, id_off,
               f.seq, vals, off, 100)
    _WARM = True
