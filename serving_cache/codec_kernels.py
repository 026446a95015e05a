"""Compiled byte writer of :mod:`serving_cache.codec`'s encoder (private to it).

Why compiled: the stream's Redis writer runs on a thread that shares the GIL with the dataflow,
so its Python work per pushed user is taken from the dataflow's throughput. The codec gathers
each field of a chunk of users once (one numpy array per field) and :func:`pack_values` writes
every byte of every value in one call, with integer and byte arithmetic only (the float16
rounding stays in numpy; d arrives as big-endian float64 bytes), so the bytes are the same on
every machine. The layout is the codec's contract; the codec's tests hold it to
``msgpack.packb`` of the map.

Kept out of ``codec`` so that readers, which only decode, never import numba.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from serving_cache.codec import D_KEY, HEAD

__all__ = ["Fields", "pack_values"]

# Fragments of the map between the packed scalars (the head and the float key are the codec's).
_HEAD = np.frombuffer(HEAD, np.uint8)
_D_KEY = np.frombuffer(D_KEY, np.uint8)
_DIM_KEY = np.frombuffer(b"\xa3dim", np.uint8)
_VECS_KEY = np.frombuffer(b"\xa4vecs", np.uint8)
_TS_KEY = np.frombuffer(b"\xa2ts", np.uint8)
_N_KEY = np.frombuffer(b"\xa1n", np.uint8)
_S_KEY = np.frombuffer(b"\xa1s", np.uint8)


class Fields(NamedTuple):
    """A chunk of N users as flat arrays: ``seq``, ``k``, ``dim``, ``ts``, ``n`` int64 [N];
    ``d`` uint8 [8N] (big-endian float64 bytes); ``model`` int64 [N] (index into the
    fragments); ``frags`` uint8 (``"model", <packed name>, "a", <packed anchor>, "k"`` per
    model, concatenated) with ``frag_off`` int64 [M+1]; ``vecs`` uint8 (float16 little-endian
    bytes of every user's k·dim values, in order); ``seen`` uint8 (int32 little-endian bytes of
    every user's seen rows, in order) with ``seen_nb`` int64 [N] bytes per user."""

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
def _bin_len(nb):
    """Bytes of msgpack's bin header for ``nb`` bytes: bin8, bin16 or bin32."""
    if nb < 256:
        return 2
    if nb < 65536:
        return 3
    return 5


@njit(cache=True, nogil=True)
def _put_bin(out, p, src, a, nb):
    """``src[a:a+nb]`` as a msgpack bin (0xc4, 0xc5, 0xc6 and the length, big-endian)."""
    if nb < 256:
        out[p] = 0xC4
        p = _put_be(out, p + 1, nb, 1)
    elif nb < 65536:
        out[p] = 0xC5
        p = _put_be(out, p + 1, nb, 2)
    else:
        out[p] = 0xC6
        p = _put_be(out, p + 1, nb, 4)
    return _put(out, p, src, a, a + nb)


@njit(cache=True, nogil=True)
def _put(out, p, src, a, b):
    """``src[a:b]`` into ``out`` at ``p``, copied between two slices (a loop LLVM vectorises;
    indexing ``out`` and ``src`` directly it does not)."""
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
                      + _int_len(dim[i]) + _VECS_KEY.shape[0] + _bin_len(nb) + nb
                      + _TS_KEY.shape[0] + _int_len(ts[i]) + _N_KEY.shape[0] + _int_len(n[i])
                      + _S_KEY.shape[0] + _bin_len(seen_nb[i]) + seen_nb[i])
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
        p = _put_bin(out, p, vecs, v, nb)
        v += nb
        p = _put(out, p, _TS_KEY, 0, _TS_KEY.shape[0])
        p = _put_int(out, p, ts[i])
        p = _put(out, p, _N_KEY, 0, _N_KEY.shape[0])
        p = _put_int(out, p, n[i])
        p = _put(out, p, _S_KEY, 0, _S_KEY.shape[0])
        _put_bin(out, p, seen, s, seen_nb[i])
        s += seen_nb[i]
    return out, off
