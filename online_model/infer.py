"""DIAM's interest extractor, compiled: what the stream runs to anchor a user on the network.

:class:`DiamHead` computes, for one user's recent items and signals, what ``DIAM.interests``
computes in eval mode: the dual-scale encoder, capsule routing mixed with self-attentive pooling,
the global slot, the full K_u gate and d_u from the fusion layer. It reads the weights from a
checkpoint's ``weights.safetensors`` (no torch on this path but for checkpoints written before
the routing logits were stored, :func:`_routing_init`; no pickle) and runs a numba kernel
on one user at a time (only the history's real positions are computed; no interpreter between
the layers, which is what dominates a short history), so a user's anchors are the same bytes
for the same history whatever else the process is doing: the stream's determinism does not depend on
how users happen to be batched. ``tests/unit/online_model/test_infer.py`` checks it against the
torch model (max abs difference ≤ 1e-4 over random histories, hypothesis).

Shapes: ``L`` = seq_len (50), ``d`` = dim (64), ``K`` = k_max (8), ``C`` = categories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit

from online_model.checkpoint_config import ROUTING_INIT_KEY

if TYPE_CHECKING:
    from online_model.checkpoint import CheckpointFiles

__all__ = ["DiamHead", "HeadOutput", "HeadLoadError", "has_extractor"]

_F = np.float32

_KERNEL = njit(cache=True, error_model="numpy", fastmath={"contract"})
"""How every kernel here is compiled (``@_KERNEL``). ``contract`` lets LLVM fuse a product into the sum it
feeds (``o + a * w`` becomes one fused multiply-add, rounded once): about a tenth off the
forward pass (``bench/head_ab.py``). Nothing is reordered (no ``reassoc``); where a sum has
two products (``g * c + (1 - g) * p``) LLVM picks the one it fuses, the same pick for the
same numba and CPU features. So a history gives the same bits on every run, for any batching
of users, and on any machine whose CPU has FMA (numba compiles for the host: x86-64 since
Haswell and Piledriver, but not every Atom, Pentium or Celeron, nor a VM that hides it; every
ARM64); a host without FMA computes other bits (:func:`host_has_fma`; the tests that pin
the bits skip there)."""


_INLINE = njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
"""How the small helpers are compiled: as :data:`_KERNEL`, and inlined by numba itself into
each caller. numba counts a reference up and down (an atomic add each) on every array it hands
to a called function or slices into a view, and its pruning cannot remove a pair across a call;
on a 10-item history those pairs were about a tenth of the forward pass (perf, this session's
``stream.md``). Inlined, the helper's arguments are the caller's own arrays. The arithmetic is
untouched (the same operations with the same flags, so the same bits). ``_linear``,
``_attention`` and ``_block`` stay calls: inlining them into every call site made the forward
pass take minutes to compile for no further gain."""


def host_has_fma() -> bool:
    """Whether numba compiles for a CPU with fused multiply-add (the bits :data:`_KERNEL`
    promises, and the tests pin, are those of FMA hosts)."""
    from numba.core import config as numba_config

    features = getattr(numba_config, "CPU_FEATURES", None)  # NUMBA_CPU_FEATURES, if set
    if features is None:
        import llvmlite.binding as ll

        features = ll.get_host_cpu_features().flatten()
    return "+fma" in features.split(",")


class HeadLoadError(ValueError):
    """A checkpoint lacks what the inference head needs; the message names the tensor."""


@dataclass(frozen=True)
class HeadOutput:
    """One user's DIAM interests: ``vecs`` [K, d] float32 (all K_max slots, the first ``k`` are
    the user's), ``k`` from the full gate, ``gate_prob``, and ``d`` (d_u from the fusion)."""

    vecs: np.ndarray
    k: int
    gate_prob: float
    d: float
    h_seq: np.ndarray | None = None
    """float32 [d]: the encoder's summary of the history, kept by the stream to refresh the
    global slot between re-inferences (:meth:`DiamHead.global_slot`)."""


def has_extractor(keys: Any) -> bool:
    """Whether a state dict's keys hold DIAM's encoder and extractor."""
    keys = set(keys)
    return "extractor.caps.proj.weight" in keys and "encoder.norm.weight" in keys


class DiamHead:
    """DIAM inference for one user at a time, from the checkpoint's tensors.

    ``item_emb`` is the item table without its padding row ([N, d], the stream's rows);
    ``item_cat`` [N] the primary categories (-1 unknown). Build with :meth:`from_checkpoint`.
    The forward pass is compiled (:func:`_forward`); the weights are packed once, here, into one
    float32 buffer and an offset table in the order the kernel reads them.
    """

    def __init__(self, tensors: dict[str, np.ndarray], config: dict[str, Any],
                 item_cat: np.ndarray) -> None:
        if not has_extractor(tensors):
            raise HeadLoadError("no encoder/extractor tensors: not a DIAM checkpoint")
        t = tensors
        self.dim = int(config.get("dim", 64))
        self.seq_len = int(config.get("seq_len", 50))
        self.window = int(config.get("window", 5))
        self.k_max = int(config.get("k_max", 8))
        self.iters = int(config.get("routing_iters", 3))
        heads = int(config.get("n_heads", 2))
        n_layers = int(config.get("n_layers", 1))
        self.n_cat = int(config.get("n_categories", int(item_cat.max(initial=-1)) + 1))
        self.global_slot_on = bool(config.get("global_interest", False))
        f = lambda k: np.asarray(t[k], dtype=_F)  # noqa: E731
        tr = lambda k: f(k).T  # noqa: E731  (torch stores Linear weights [out, in])
        try:
            self.item_emb = np.ascontiguousarray(f("item_emb.weight")[1:])  # [N, d]
            glob: list[np.ndarray | None] = [None] * _NG
            glob[_POSF], glob[_POSC] = f("encoder.pos_fine"), f("encoder.pos_coarse")
            glob[_NORMW], glob[_NORMB] = f("encoder.norm.weight"), f("encoder.norm.bias")
            glob[_CAPS] = tr("extractor.caps.proj.weight")
            glob[_SAW1], glob[_SAB1] = tr("extractor.sa.w1.weight"), f("extractor.sa.w1.bias")
            glob[_SAW2] = tr("extractor.sa.w2.weight")  # [2d, K]
            glob[_MIX] = (1.0 / (1.0 + np.exp(-f("extractor.mix").astype(np.float64))))
            glob[_OUTW], glob[_OUTB] = tr("extractor.out.weight"), f("extractor.out.bias")
            glob[_G1W], glob[_G1B] = tr("extractor.gate.0.weight"), f("extractor.gate.0.bias")
            glob[_G2W], glob[_G2B] = f("extractor.gate.2.weight")[0], f("extractor.gate.2.bias")
            if self.global_slot_on:
                glob[_M1W], glob[_M1B] = tr("global_mlp.0.weight"), f("global_mlp.0.bias")
                glob[_M2W], glob[_M2B] = tr("global_mlp.2.weight"), f("global_mlp.2.bias")
            glob[_BINIT] = _routing_init(t, self.seq_len, self.k_max)
            # the first routing pass's weights are the softmax of those fixed logits: per
            # position, computed once here by the kernel's own softmax (the same bits)
            glob[_BSOFT] = np.empty_like(glob[_BINIT])
            _routing_soft(glob[_BINIT], glob[_BSOFT])
            blocks: list[np.ndarray | None] = []
            ff = 0
            for scale in ("fine", "coarse"):
                for i in range(n_layers):
                    p = f"encoder.{scale}.layers.{i}."
                    blk: list[np.ndarray | None] = [None] * _NB
                    blk[_WQKV], blk[_BQKV] = (tr(p + "self_attn.in_proj_weight"),
                                              f(p + "self_attn.in_proj_bias"))
                    blk[_WO], blk[_BO] = (tr(p + "self_attn.out_proj.weight"),
                                          f(p + "self_attn.out_proj.bias"))
                    w1 = tr(p + "linear1.weight")
                    ff = w1.shape[1]
                    blk[_W1], blk[_B1] = w1, f(p + "linear1.bias")
                    blk[_W2], blk[_B2] = tr(p + "linear2.weight"), f(p + "linear2.bias")
                    blk[_N1W], blk[_N1B] = f(p + "norm1.weight"), f(p + "norm1.bias")
                    blk[_N2W], blk[_N2B] = f(p + "norm2.weight"), f(p + "norm2.bias")
                    blocks += blk
            fw = t.get("online.fusion_w")
            self.fusion = (None if fw is None else
                           (np.asarray(fw, np.float64).reshape(-1),
                            float(np.asarray(t["online.fusion_b"]).reshape(-1)[0])))
            # the compiled path's form of the fusion layer: without one, NaN weights say "no
            # fusion" (d = 0.5) to :func:`head_outputs`
            self.fusion_w = (np.full(4, np.nan) if self.fusion is None
                             else np.ascontiguousarray(self.fusion[0]))
            self.fusion_b = 0.0 if self.fusion is None else self.fusion[1]
        except KeyError as exc:
            raise HeadLoadError(f"checkpoint tensor {exc.args[0]!r} missing") from None
        parts = [np.zeros(0, _F) if a is None else np.ascontiguousarray(a, _F).reshape(-1)
                 for a in glob + blocks]
        self._off = np.cumsum([0] + [len(p) for p in parts[:-1]]).astype(np.int64)
        self._buf = np.concatenate(parts)
        self._dims = np.array([n_layers, heads, ff, self.k_max, self.n_cat, self.seq_len,
                               self.window, self.iters, int(self.global_slot_on)], np.int64)
        self._emb_flat = self.item_emb.reshape(-1)
        self.item_cat = np.asarray(item_cat, dtype=np.int64)
        _one_blas_thread()

    @classmethod
    def from_read(cls, ck: CheckpointFiles, tensors: dict[str, np.ndarray]) -> DiamHead:
        """The head of a checkpoint read by ``online_model.checkpoint.read_checkpoint`` (its
        config.json checked against the weights), with ``tensors`` of its weights. The shape
        fields are the checked ones, defaults filled in: the compiled head reads its weight
        buffer at offsets computed from them, so a config that contradicts the weights must
        never reach it (``config.get(key, default)`` would)."""
        shape = {k: v for k, v in ck.shape_config.items() if v is not None}
        cats = (ck.item_categories if ck.item_categories is not None
                else np.full(len(ck.item_ids), -1, dtype=np.int32))
        return cls(tensors, {**ck.config, **shape}, cats)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> DiamHead:
        """Read a checkpoint or snapshot directory through the checked reader (every file,
        hashes included; raises ``CheckpointError`` naming the file) and build its head
        (:meth:`from_read`); ``HeadLoadError`` when it has no extractor."""
        from online_model.checkpoint import read_checkpoint

        ck = read_checkpoint(path)
        return cls.from_read(ck, ck.tensors())

    def with_items(self, item_emb: np.ndarray, item_cat: np.ndarray) -> DiamHead:
        """A head over this one's item table with rows appended (``item_emb`` [n, d],
        ``item_cat`` [n]): the weights are shared, the table and its flat view (which the
        compiled global-slot refresh reads) are new, so existing rows keep their index."""
        import copy

        head = copy.copy(self)
        head.item_emb = np.concatenate([self.item_emb, np.asarray(item_emb, _F).reshape(-1, self.dim)])
        head.item_cat = np.concatenate([self.item_cat, np.asarray(item_cat, np.int64).reshape(-1)])
        head._emb_flat = head.item_emb.reshape(-1)
        return head

    def infer(self, rows: np.ndarray, signals: np.ndarray) -> HeadOutput:
        """DIAM's interests for item ``rows`` (0-based, oldest first; the last ``seq_len`` are
        used) and the four ``signals``. An empty history is refused (the model has none).

        Only the history's real positions are computed: with key padding a real position's
        output never depends on a padded one, and the window is right-aligned as in training,
        so the real items sit at positions L-n..L-1."""
        rows = np.ascontiguousarray(np.asarray(rows, dtype=np.int64)[-self.seq_len:])
        if len(rows) == 0:
            raise ValueError("a user needs at least one known item to be inferred")
        vecs, k, gate_prob, dd, h_seq = self.interests(rows, signals)
        return HeadOutput(vecs, k, gate_prob, dd, h_seq)

    def interests(self, rows: np.ndarray, signals: np.ndarray
                  ) -> tuple[np.ndarray, int, float, float, np.ndarray]:
        """:meth:`infer`'s output as a tuple ``(vecs, k, gate_prob, d, h_seq)``, for ``rows``
        already int64, contiguous, non-empty and at most ``seq_len`` long: the stream's
        re-anchoring path, which builds them so (``kernels.ring_window``)."""
        vecs = np.empty((self.k_max, self.dim), _F)
        h_seq = np.empty(self.dim, _F)
        k, gate_prob, dd = head_outputs(rows, self.item_emb, self.item_cat, self._buf, self._off,
                                        self._dims, self.fusion_w, self.fusion_b,
                                        np.asarray(signals, _F), vecs, h_seq)
        return vecs, k, gate_prob, dd, h_seq

    def global_slot(self, mean: np.ndarray, h_seq: np.ndarray) -> np.ndarray:
        """Slot 0, DIAM's global interest, ``mean + MLP([mean, h_seq])`` (float32 [d]) for a
        window mean and an encoder summary: what :meth:`infer` computes for slot 0, at a
        fraction of its cost when ``h_seq`` is the summary of a recent inference."""
        out = np.empty(self.dim, _F)
        _global_slot(self._buf, self._off, np.asarray(mean, dtype=_F), h_seq, out)
        return out

    def refresh_global(self, rows: np.ndarray, h_seq: np.ndarray, a_flat: np.ndarray,
                       v_flat: np.ndarray) -> None:
        """Move slot 0 to the global interest of the window ``rows`` (item rows, any order),
        in place and in one compiled call: :meth:`global_slot` of their mean, then anchor row 0
        of ``a_flat`` becomes that and vector row 0 of ``v_flat`` moves by the same shift (a
        learnt offset rides along). The stream does this on every event between two
        inferences, inside its per-event kernel (``kernels.learn_event_diam``), on the rows
        ``kernels.ring_window`` reads from the user's ring."""
        _refresh_global(np.ascontiguousarray(rows, np.int64), self._emb_flat, h_seq, self._buf,
                        self._off, a_flat, v_flat)


@_KERNEL
def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


@_KERNEL
def head_outputs(rows, emb, item_cat, buf, off, dims, fusion_w, fusion_b, signals, vecs, h_seq):
    """The head's whole output for one history, in one compiled call: :func:`_forward` writes
    the interests ``vecs`` [K_max, d] and the encoder summary ``h_seq`` [d]; returns ``(k,
    gate_prob, d)``: K_u from the full gate, the gate's probability (rounded to float32, as
    torch computes it), and d_u from the fusion layer on the four ``signals`` (float32; 0.5
    when ``fusion_w`` is NaN, a checkpoint without the layer). :meth:`DiamHead.interests` and
    the stream's re-anchoring (``kernels.anchor_diam``) both call it, so the rule from the
    network's outputs to K_u and d_u has one owner."""
    z = np.float64(_forward(rows, emb, item_cat, buf, off, dims, vecs, h_seq))
    k_max = dims[3]
    gate_prob = np.float64(np.float32(_sigmoid(z)))
    k = min(max(int(math.floor(gate_prob * k_max)) + 1, 1), k_max)
    dd = 0.5
    if not np.isnan(fusion_w[0]):
        x = np.empty(4)
        for i in range(4):
            x[i] = signals[i]
        # np.dot, as numpy's ``@`` sums it (a plain loop rounds differently)
        dd = _sigmoid(np.dot(fusion_w, x) + fusion_b)
    return k, gate_prob, dd


# ---------------------------------------------------------------------------------------------
# The compiled forward pass. All weights live in one float32 buffer addressed by an offset table
# (two arguments to unbox instead of forty); every product is written as row updates
# (``out[i, :] += a * W[k, :]``, one fused multiply-add each: ``_KERNEL``), which vectorise
# without reordering any sum, so a history gives the same bits on any machine with FMA that
# numba compiles for, and for any batching of users.

# offsets table: globals first, then the fine layers, then the coarse layers (_NB tensors each)
(_POSF, _POSC, _NORMW, _NORMB, _CAPS, _SAW1, _SAB1, _SAW2, _MIX, _OUTW, _OUTB, _G1W, _G1B, _G2W,
 _G2B, _M1W, _M1B, _M2W, _M2B, _BINIT, _BSOFT, _NG) = range(22)
(_WQKV, _BQKV, _WO, _BO, _W1, _B1, _W2, _B2, _N1W, _N1B, _N2W, _N2B, _NB) = range(13)


_LOG2E = np.float32(1.44269504088896341)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)


@_INLINE
def _exp_(x, scratch):
    """``x[:] = exp(x[:])`` in float32, as Cephes' expf computes it (reduction by ln 2, a
    degree-5 polynomial, the power of two assembled from its bits; relative error below 1e-7).
    libm's expf and tanhf are called one element at a time; this is arithmetic only, so the
    loops vectorise. ``scratch``: int32, at least as long as ``x``."""
    n = x.shape[0]
    for i in range(n):
        v = min(max(x[i], np.float32(-87.0)), np.float32(88.0))
        fx = np.floor(v * _LOG2E + np.float32(0.5))
        r = v - fx * _LN2_HI - fx * _LN2_LO
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        x[i] = p * (r * r) + r + np.float32(1.0)
        scratch[i] = (np.int32(fx) + np.int32(127)) << np.int32(23)
    two = scratch[:n].view(np.float32)
    for i in range(n):
        x[i] *= two[i]


@_INLINE
def _tanh_(x, e, scratch):
    """``x[:] = tanh(x[:])`` as ``sign(x) (1 - exp(-2|x|)) / (1 + exp(-2|x|))`` (absolute error
    below 1e-7), vectorised through :func:`_exp_`. ``e``: float32 scratch as long as ``x``."""
    n = x.shape[0]
    for i in range(n):
        e[i] = np.float32(-2.0) * abs(x[i])
    _exp_(e[:n], scratch)
    for i in range(n):
        t = (np.float32(1.0) - e[i]) / (np.float32(1.0) + e[i])
        x[i] = t if x[i] >= 0 else -t


@_INLINE
def _t(buf, off, i, r, c):
    o = off[i]
    return buf[o:o + r * c].reshape((r, c))


@_INLINE
def _v(buf, off, i, r):
    o = off[i]
    return buf[o:o + r]


@_KERNEL
def _linear(x, w, b, out):
    """out = x @ w + b for x [n, k], w [k, m] (the transposed torch weight), b [m], as row
    updates, four rows and four terms at a time: each output element becomes
    ``fma(x3, w3, fma(x2, w2, fma(x1, w1, fma(x0, w0, o))))``, the very roundings of one fused
    term at a time in ascending order (no sum is reordered, so the bits are those of the
    one-row, one-term loop),
    while each row of ``out`` is loaded and stored once per four terms instead of once per
    term and each row of ``w`` once per four rows: the stores were the bound. Two rows left
    over share one pass over ``w`` too (a 10-item history is 4 + 4 + 2 rows). It is also faster
    than the single-threaded sgemm that ran from 16 rows on before, at every history length up
    to 50, so no product here calls BLAS (``bench/head_ab.py``, ``bench/results/stream.md``)."""
    for i in range(out.shape[0]):
        o = out[i]
        for j in range(b.shape[0]):
            o[j] = b[j]
    _linear_acc(x, w, out)


@_INLINE
def _linear_acc(x, w, out):
    """out += x @ w, as :func:`_linear` sums it (each element's terms fused in ascending
    order onto its value in ``out``)."""
    n, k = x.shape
    m = w.shape[1]
    k4 = k - k % 4
    i = 0
    while i + 3 < n:
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        for kk in range(0, k4, 4):
            a00, a01, a02, a03 = x[i, kk], x[i, kk + 1], x[i, kk + 2], x[i, kk + 3]
            a10, a11, a12, a13 = x[i + 1, kk], x[i + 1, kk + 1], x[i + 1, kk + 2], x[i + 1, kk + 3]
            a20, a21, a22, a23 = x[i + 2, kk], x[i + 2, kk + 1], x[i + 2, kk + 2], x[i + 2, kk + 3]
            a30, a31, a32, a33 = x[i + 3, kk], x[i + 3, kk + 1], x[i + 3, kk + 2], x[i + 3, kk + 3]
            w0, w1, w2, w3 = w[kk], w[kk + 1], w[kk + 2], w[kk + 3]
            for j in range(m):
                u0, u1, u2, u3 = w0[j], w1[j], w2[j], w3[j]
                o0[j] = o0[j] + a00 * u0 + a01 * u1 + a02 * u2 + a03 * u3
                o1[j] = o1[j] + a10 * u0 + a11 * u1 + a12 * u2 + a13 * u3
                o2[j] = o2[j] + a20 * u0 + a21 * u1 + a22 * u2 + a23 * u3
                o3[j] = o3[j] + a30 * u0 + a31 * u1 + a32 * u2 + a33 * u3
        for kk in range(k4, k):
            a0, a1, a2, a3 = x[i, kk], x[i + 1, kk], x[i + 2, kk], x[i + 3, kk]
            wr = w[kk]
            for j in range(m):
                wj = wr[j]
                o0[j] += a0 * wj
                o1[j] += a1 * wj
                o2[j] += a2 * wj
                o3[j] += a3 * wj
        i += 4
    if i + 1 < n:  # two rows left: one pass over ``w`` for both, as above
        o0, o1 = out[i], out[i + 1]
        for kk in range(0, k4, 4):
            a00, a01, a02, a03 = x[i, kk], x[i, kk + 1], x[i, kk + 2], x[i, kk + 3]
            a10, a11, a12, a13 = x[i + 1, kk], x[i + 1, kk + 1], x[i + 1, kk + 2], x[i + 1, kk + 3]
            w0, w1, w2, w3 = w[kk], w[kk + 1], w[kk + 2], w[kk + 3]
            for j in range(m):
                u0, u1, u2, u3 = w0[j], w1[j], w2[j], w3[j]
                o0[j] = o0[j] + a00 * u0 + a01 * u1 + a02 * u2 + a03 * u3
                o1[j] = o1[j] + a10 * u0 + a11 * u1 + a12 * u2 + a13 * u3
        for kk in range(k4, k):
            a0, a1 = x[i, kk], x[i + 1, kk]
            wr = w[kk]
            for j in range(m):
                wj = wr[j]
                o0[j] += a0 * wj
                o1[j] += a1 * wj
        i += 2
    while i < n:
        o0 = out[i]
        for kk in range(0, k4, 4):
            a0, a1, a2, a3 = x[i, kk], x[i, kk + 1], x[i, kk + 2], x[i, kk + 3]
            w0, w1, w2, w3 = w[kk], w[kk + 1], w[kk + 2], w[kk + 3]
            for j in range(m):
                o0[j] = o0[j] + a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j]
        for kk in range(k4, k):
            a = x[i, kk]
            wr = w[kk]
            for j in range(m):
                o0[j] += a * wr[j]
        i += 1


@_INLINE
def _layer_norm(x, w, b, out):
    """``nn.LayerNorm`` (eps 1e-5) over each row of ``x`` [n, d]. Each row's mean and variance
    are float32 sums over ``j`` ascending, as one row at a time sums them; four rows are summed
    side by side, so four independent chains of additions run at once where one chain would
    wait on each addition's latency. The same bits either way."""
    n, d = x.shape
    inv = np.float32(1.0 / d)
    eps = np.float32(1e-5)
    i = 0
    while i + 3 < n:
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for j in range(d):
            s0 += x[i, j]
            s1 += x[i + 1, j]
            s2 += x[i + 2, j]
            s3 += x[i + 3, j]
        mu0, mu1, mu2, mu3 = s0 * inv, s1 * inv, s2 * inv, s3 * inv
        v0 = v1 = v2 = v3 = np.float32(0.0)
        for j in range(d):
            c0 = x[i, j] - mu0
            c1 = x[i + 1, j] - mu1
            c2 = x[i + 2, j] - mu2
            c3 = x[i + 3, j] - mu3
            v0 += c0 * c0
            v1 += c1 * c1
            v2 += c2 * c2
            v3 += c3 * c3
        _norm_row(x, i, mu0, v0, inv, eps, w, b, out)
        _norm_row(x, i + 1, mu1, v1, inv, eps, w, b, out)
        _norm_row(x, i + 2, mu2, v2, inv, eps, w, b, out)
        _norm_row(x, i + 3, mu3, v3, inv, eps, w, b, out)
        i += 4
    while i < n:
        s = np.float32(0.0)
        for j in range(d):
            s += x[i, j]
        mu = s * inv
        v = np.float32(0.0)
        for j in range(d):
            c = x[i, j] - mu
            v += c * c
        _norm_row(x, i, mu, v, inv, eps, w, b, out)
        i += 1


@_INLINE
def _norm_row(x, i, mu, v, inv, eps, w, b, out):
    """Row ``i`` of ``out``: row ``i`` of ``x`` normalised by its mean and variance sum.
    (Rows are addressed by index, not passed as views: each view of a row costs an atomic
    reference count up and down, a tenth of the forward pass when every row loop made them.)"""
    r = np.float32(1.0) / np.sqrt(v * inv + eps)
    for j in range(x.shape[1]):
        out[i, j] = (x[i, j] - mu) * r * w[j] + b[j]


@_KERNEL
def _attention(qkv, heads, att):
    """Scaled dot-product attention of each head over every position (all real), from the
    packed ``qkv`` [n, 3d] into ``att`` [n, d]. Per head, the scores are ``q @ k.T`` and the
    output ``softmax @ v``, both through :func:`_linear`: each score sums its ``hd`` terms
    and each output element its ``n`` terms in ascending order, as one query and one term at
    a time sum them, but four rows and four terms at a time (a 10-item history's scores were
    short loops of ten, bound by each addition's latency)."""
    n = qkv.shape[0]
    d = att.shape[1]
    hd = d // heads
    scale = np.float32(1.0 / np.sqrt(hd))
    q = np.empty((n, hd), np.float32)
    kt = np.empty((hd, n), np.float32)
    v = np.empty((n, hd), np.float32)
    p = np.empty((n, n), np.float32)
    o = np.empty((n, hd), np.float32)
    zn = np.zeros(n, np.float32)
    zh = np.zeros(hd, np.float32)
    scratch = np.empty(n * n, np.int32)
    for h in range(heads):
        q0, k0, v0 = h * hd, d + h * hd, 2 * d + h * hd
        for j in range(n):
            for c in range(hd):
                q[j, c] = qkv[j, q0 + c]
                kt[c, j] = qkv[j, k0 + c]
                v[j, c] = qkv[j, v0 + c]
        _linear(q, kt, zn, p)
        for i in range(n):
            mx = p[i, 0] * scale
            for j in range(n):
                p[i, j] *= scale
                if p[i, j] > mx:
                    mx = p[i, j]
            for j in range(n):
                p[i, j] -= mx
        _exp_(p.reshape(-1), scratch)
        for i in range(n):
            tot = np.float32(0.0)
            for j in range(n):
                tot += p[i, j]
            for j in range(n):
                p[i, j] = p[i, j] / tot
        _linear(p, v, zh, o)
        for i in range(n):
            for c in range(hd):
                att[i, q0 + c] = o[i, c]


@_KERNEL
def _block(x, buf, off, base, heads, ff):
    """One ``nn.TransformerEncoderLayer`` (norm_first, ReLU, eval) over positions that are all
    real: ``x`` [n, d] -> [n, d]."""
    n, d = x.shape
    y = np.empty((n, d), np.float32)
    _layer_norm(x, _v(buf, off, base + _N1W, d), _v(buf, off, base + _N1B, d), y)
    qkv = np.empty((n, 3 * d), np.float32)
    _linear(y, _t(buf, off, base + _WQKV, d, 3 * d), _v(buf, off, base + _BQKV, 3 * d), qkv)
    att = np.empty((n, d), np.float32)
    _attention(qkv, heads, att)
    o = np.empty((n, d), np.float32)
    _linear(att, _t(buf, off, base + _WO, d, d), _v(buf, off, base + _BO, d), o)
    x2 = x + o
    _layer_norm(x2, _v(buf, off, base + _N2W, d), _v(buf, off, base + _N2B, d), y)
    hid = np.empty((n, ff), np.float32)
    _linear(y, _t(buf, off, base + _W1, d, ff), _v(buf, off, base + _B1, ff), hid)
    for i in range(n):
        for j in range(ff):
            if hid[i, j] < 0:
                hid[i, j] = 0
    _linear(hid, _t(buf, off, base + _W2, ff, d), _v(buf, off, base + _B2, d), o)
    return x2 + o


@_INLINE
def _global_slot(buf, off, mean, h_seq, out):
    """out = mean + MLP([mean, h_seq]): slot 0, DIAM's global interest."""
    d = mean.shape[0]
    z = np.empty((1, 2 * d), np.float32)
    for j in range(d):
        z[0, j] = mean[j]
        z[0, d + j] = h_seq[j]
    hid = np.empty((1, d), np.float32)
    _linear(z, _t(buf, off, _M1W, 2 * d, d), _v(buf, off, _M1B, d), hid)
    for j in range(d):
        if hid[0, j] < 0:
            hid[0, j] = 0
    g = np.empty((1, d), np.float32)
    _linear(hid, _t(buf, off, _M2W, d, d), _v(buf, off, _M2B, d), g)
    for j in range(d):
        out[j] = mean[j] + g[0, j]


@_KERNEL
def _refresh_global(rows, emb_flat, h_seq, buf, off, a_flat, v_flat):
    d = h_seq.shape[0]
    m = rows.shape[0]
    acc = np.zeros(d)  # float64, as the window mean is accumulated elsewhere in the learner
    for i in range(m):
        base = rows[i] * d
        for j in range(d):
            acc[j] += emb_flat[base + j]
    mean = np.empty(d, np.float32)
    for j in range(d):
        mean[j] = acc[j] / max(m, 1)
    g = np.empty(d, np.float32)
    _global_slot(buf, off, mean, h_seq, g)
    for j in range(d):  # the offset is kept as such, so a vector at its anchor stays on it
        v_flat[j] = g[j] + (v_flat[j] - a_flat[j])
        a_flat[j] = g[j]


@_INLINE
def _route_row(logits, r, c):
    """One position's routing weights into ``c`` [K]: the softmax of row ``r`` of ``logits``
    [L, K] (float32), the routing loop's and :func:`_routing_soft`'s one rule."""
    k_max = logits.shape[1]
    mx = logits[r, 0]
    for k in range(k_max):
        if logits[r, k] > mx:
            mx = logits[r, k]
    tot = np.float32(0.0)
    for k in range(k_max):
        c[k] = np.exp(logits[r, k] - mx)
        tot += c[k]
    for k in range(k_max):
        c[k] = c[k] / tot


@_KERNEL
def _routing_soft(binit, out):
    """``out[p] = softmax(binit[p])`` for every position: the first routing pass's weights,
    which depend on the position only."""
    c = np.empty(binit.shape[1], np.float32)
    for p in range(binit.shape[0]):
        _route_row(binit, p, c)
        for k in range(binit.shape[1]):
            out[p, k] = c[k]


@_KERNEL
def _forward(rows, emb, item_cat, buf, off, dims, vecs, h_seq):
    """DIAM's interests for one history ``rows`` (0-based, oldest first, 1..L of them): writes
    ``vecs`` [K, d] and ``h_seq`` [d], returns the gate's logit."""
    n_layers, heads, ff, k_max, n_cat, seq_len, w, iters, glob = (
        dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7], dims[8])
    n = rows.shape[0]
    d = emb.shape[1]
    x = np.empty((n, d), np.float32)
    for i in range(n):
        r = rows[i]
        for j in range(d):
            x[i, j] = emb[r, j]
    pf = _t(buf, off, _POSF, seq_len, d)
    fine = np.empty((n, d), np.float32)
    for i in range(n):
        for j in range(d):
            fine[i, j] = x[i, j] + pf[seq_len - n + i, j]
    for layer in range(n_layers):
        fine = _block(fine, buf, off, _NG + layer * _NB, heads, ff)
    # coarse scale: the windows of w positions that hold a real item, each their mean
    nw = (n + w - 1) // w
    lead = nw * w - n
    pc = _t(buf, off, _POSC, seq_len // w, d)
    coarse = np.zeros((nw, d), np.float32)
    for i in range(n):
        wi = (i + lead) // w
        for j in range(d):
            coarse[wi, j] += x[i, j]
    for wi in range(nw):
        cnt = np.float32(w - lead if wi == 0 else w)
        for j in range(d):
            coarse[wi, j] = coarse[wi, j] / cnt + pc[seq_len // w - nw + wi, j]
    for layer in range(n_layers):
        coarse = _block(coarse, buf, off, _NG + (n_layers + layer) * _NB, heads, ff)
    for i in range(n):
        wi = (i + lead) // w
        for j in range(d):
            fine[i, j] += coarse[wi, j]
    hh = np.empty((n, d), np.float32)
    _layer_norm(fine, _v(buf, off, _NORMW, d), _v(buf, off, _NORMB, d), hh)
    inv_n = np.float32(1.0 / n)
    h_seq[:] = 0
    for i in range(n):
        for j in range(d):
            h_seq[j] += hh[i, j]
    for j in range(d):
        h_seq[j] *= inv_n
    # capsule routing over the contextual states (MIND's fixed random logits)
    u = np.empty((n, d), np.float32)
    _linear(hh, _t(buf, off, _CAPS, d, d), np.zeros(d, np.float32), u)
    binit = _t(buf, off, _BINIT, seq_len, k_max)
    logits = np.empty((n, k_max), np.float32)
    for i in range(n):
        for k in range(k_max):
            logits[i, k] = binit[seq_len - n + i, k]
    caps = np.zeros((k_max, d), np.float32)
    caps_t = np.empty((d, k_max), np.float32)
    c = np.empty(k_max, np.float32)
    n2s = np.empty(k_max, np.float32)
    bsoft = _t(buf, off, _BSOFT, seq_len, k_max)
    at = np.empty((k_max, n), np.float32)  # the routing weights, one row per capsule
    zd = np.zeros(d, np.float32)
    sc = np.empty((k_max, d), np.float32)
    for it in range(iters):
        for i in range(n):
            if it == 0:  # softmax of the fixed logits: precomputed per position
                for k in range(k_max):
                    at[k, i] = bsoft[seq_len - n + i, k]
            else:
                _route_row(logits, i, c)
                for k in range(k_max):
                    at[k, i] = c[k]
        # each capsule sums its positions in ascending order, four capsules at a time
        _linear(at, u, zd, sc)
        # each capsule's squared norm summed over j ascending, the K sums side by side
        for k in range(k_max):
            n2s[k] = 0
        for j in range(d):
            for k in range(k_max):
                n2s[k] += sc[k, j] * sc[k, j]
        for k in range(k_max):
            n2 = n2s[k]
            f = n2 / (1 + n2) / np.sqrt(n2 + np.float32(1e-9))
            for j in range(d):
                caps[k, j] = f * sc[k, j]
        if it < iters - 1:
            # the agreement u_i . caps_k onto each logit, summed over j ascending
            for k in range(k_max):
                for j in range(d):
                    caps_t[j, k] = caps[k, j]
            _linear_acc(u, caps_t, logits)
    # self-attentive pooling: keys hh, values x
    sh = 2 * d
    hid = np.empty((n, sh), np.float32)
    _linear(hh, _t(buf, off, _SAW1, d, sh), _v(buf, off, _SAB1, sh), hid)
    _tanh_(hid.reshape(-1), np.empty(n * sh, np.float32), np.empty(n * sh, np.int32))
    a_ = np.empty((n, k_max), np.float32)
    _linear(hid, _t(buf, off, _SAW2, sh, k_max), np.zeros(k_max, np.float32), a_)
    pt = np.empty((k_max, n), np.float32)  # each slot's attention over the positions
    e = np.empty(n, np.float32)
    for k in range(k_max):
        mx = a_[0, k]
        for i in range(n):
            if a_[i, k] > mx:
                mx = a_[i, k]
        tot = np.float32(0.0)
        for i in range(n):
            e[i] = np.exp(a_[i, k] - mx)
            tot += e[i]
        for i in range(n):
            pt[k, i] = e[i] / tot
    sa = np.empty((k_max, d), np.float32)
    _linear(pt, x, zd, sa)
    proj = np.empty((k_max, d), np.float32)
    _linear(sa, _t(buf, off, _OUTW, d, d), _v(buf, off, _OUTB, d), proj)
    mix = _v(buf, off, _MIX, k_max)
    for k in range(k_max):
        g = mix[k]
        for j in range(d):
            vecs[k, j] = g * caps[k, j] + (1 - g) * proj[k, j]
    # the K_u gate on [h_seq, category profile]
    gi = np.zeros((1, d + n_cat), np.float32)
    for j in range(d):
        gi[0, j] = h_seq[j]
    tot_c = 0
    for i in range(n):
        ci = item_cat[rows[i]]
        if ci >= 0 and ci < n_cat:
            gi[0, d + ci] += 1
            tot_c += 1
    if tot_c > 1:
        for j in range(n_cat):
            gi[0, d + j] /= np.float32(tot_c)
    gh = np.empty((1, d), np.float32)
    _linear(gi, _t(buf, off, _G1W, d + n_cat, d), _v(buf, off, _G1B, d), gh)
    g2 = _v(buf, off, _G2W, d)
    z = _v(buf, off, _G2B, 1)[0]
    for j in range(d):
        if gh[0, j] > 0:
            z += gh[0, j] * g2[j]
    if glob:
        mean = np.zeros(d, np.float32)
        for i in range(n):
            for j in range(d):
                mean[j] += x[i, j]
        for j in range(d):
            mean[j] *= inv_n
        _global_slot(buf, off, mean, h_seq, vecs[0])
    return z


def _one_blas_thread() -> None:
    """Limit the process's BLAS to one thread. The head's own products are compiled row
    updates, but its fusion dot product (``np.dot``) and the learner's small numpy products
    call BLAS; OpenBLAS threads only add hand-offs there, and on a busy machine they cost an
    order of magnitude (bench/results/prequential.md). Process-wide by nature (the BLAS library has one
    setting); the stream and the evaluations that build a head want it."""
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba's np.dot calls: load it first)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _routing_init(tensors: dict[str, np.ndarray], seq_len: int, k: int) -> np.ndarray:
    """The capsule layer's fixed routing logits, float32 [L, K]: the checkpoint's
    ``online.routing_init`` (``ROUTING_INIT_KEY``, written since it was added), refused with a
    :class:`HeadLoadError` unless float32 [seq_len, k_max] and finite; for a checkpoint written
    before, drawn again as ``CapsuleRouting`` draws them (:func:`_draw_routing_init`)."""
    stored = tensors.get(ROUTING_INIT_KEY)
    if stored is None:
        return _draw_routing_init(seq_len, k, seed=1)  # the extractor's CapsuleRouting seed
    a = np.asarray(stored)
    if a.dtype != _F or a.shape != (seq_len, k):
        raise HeadLoadError(f"checkpoint tensor {ROUTING_INIT_KEY!r} is {a.dtype} "
                            f"{list(a.shape)}, expected float32 [{seq_len}, {k}] "
                            "(seq_len, k_max)")
    if not np.isfinite(a).all():
        raise HeadLoadError(f"checkpoint tensor {ROUTING_INIT_KEY!r} holds NaN or inf")
    return np.ascontiguousarray(a)


def _draw_routing_init(seq_len: int, k: int, seed: int) -> np.ndarray:
    """``torch.randn(L, K)`` under ``manual_seed(seed)``, as ``CapsuleRouting`` draws its
    routing logits: only for checkpoints without them stored, as torch imports in about a
    second, more than the rest of the head's load."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(seq_len, k, generator=g).numpy().astype(_F)
