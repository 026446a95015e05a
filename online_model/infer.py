"""DIAM's interest extractor as numpy: what the stream runs to anchor a user on the network.

:class:`DiamHead` computes, for one user's recent items and signals, what ``DIAM.interests``
computes in eval mode: the dual-scale encoder, capsule routing mixed with self-attentive pooling,
the global slot, the full K_u gate and d_u from the fusion layer. It reads the weights from a
checkpoint's ``weights.safetensors`` (no torch on this path, no pickle) and works on one user at
a time (only the history's real positions are computed), so a user's anchors are the same bytes
for the same history whatever else the process is doing: the stream's determinism does not depend on
how users happen to be batched. ``tests/unit/online_model/test_infer.py`` checks it against the
torch model (max abs difference ≤ 1e-4 over random histories, hypothesis).

Shapes: ``L`` = seq_len (50), ``d`` = dim (64), ``K`` = k_max (8), ``C`` = categories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DiamHead", "HeadOutput", "HeadLoadError", "has_extractor"]

_F = np.float32


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


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + _F(eps)) * w + b


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


class _Block:
    """One ``nn.TransformerEncoderLayer`` (norm_first, ReLU, no dropout) with key padding."""

    def __init__(self, t: dict[str, np.ndarray], prefix: str, heads: int) -> None:
        g = lambda k: np.ascontiguousarray(t[prefix + k], dtype=_F)  # noqa: E731
        self.wqkv_t = np.ascontiguousarray(g("self_attn.in_proj_weight").T)  # [d, 3d]
        self.bqkv = g("self_attn.in_proj_bias")
        self.wo_t = np.ascontiguousarray(g("self_attn.out_proj.weight").T)
        self.bo = g("self_attn.out_proj.bias")
        self.w1_t, self.b1 = np.ascontiguousarray(g("linear1.weight").T), g("linear1.bias")
        self.w2_t, self.b2 = np.ascontiguousarray(g("linear2.weight").T), g("linear2.bias")
        self.n1w, self.n1b = g("norm1.weight"), g("norm1.bias")
        self.n2w, self.n2b = g("norm2.weight"), g("norm2.bias")
        self.heads = heads

    def __call__(self, x: np.ndarray, key_ok: np.ndarray) -> np.ndarray:
        """``x`` [T, d], ``key_ok`` [T] bool -> [T, d]."""
        t, d = x.shape
        hd = d // self.heads
        y = _layer_norm(x, self.n1w, self.n1b)
        qkv = y @ self.wqkv_t + self.bqkv  # [T, 3d]
        q = qkv[:, :d].reshape(t, self.heads, hd).transpose(1, 0, 2)  # [H, T, hd]
        k = qkv[:, d:2 * d].reshape(t, self.heads, hd).transpose(1, 0, 2)
        v = qkv[:, 2 * d:].reshape(t, self.heads, hd).transpose(1, 0, 2)
        s = (q @ k.transpose(0, 2, 1)) * _F(1.0 / math.sqrt(hd))  # [H, T, T]
        s = np.where(key_ok[None, None, :], s, _F(-np.inf))
        att = _softmax(s, axis=-1) @ v  # [H, T, hd]
        x = x + (att.transpose(1, 0, 2).reshape(t, d) @ self.wo_t + self.bo)
        y = _layer_norm(x, self.n2w, self.n2b)
        return x + (np.maximum(y @ self.w1_t + self.b1, 0) @ self.w2_t + self.b2)


class DiamHead:
    """DIAM inference for one user at a time, from the checkpoint's tensors.

    ``item_emb`` is the item table without its padding row ([N, d], the stream's rows);
    ``item_cat`` [N] the primary categories (-1 unknown). Build with :meth:`from_checkpoint`.
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
        f = lambda k: np.ascontiguousarray(t[k], dtype=_F)  # noqa: E731
        try:
            self.item_emb = f("item_emb.weight")[1:]  # [N, d]
            self.pos_fine, self.pos_coarse = f("encoder.pos_fine"), f("encoder.pos_coarse")
            self.fine = [_Block(t, f"encoder.fine.layers.{i}.", heads) for i in range(n_layers)]
            self.coarse = [_Block(t, f"encoder.coarse.layers.{i}.", heads)
                           for i in range(n_layers)]
            self.norm_w, self.norm_b = f("encoder.norm.weight"), f("encoder.norm.bias")
            self.caps_t = np.ascontiguousarray(f("extractor.caps.proj.weight").T)
            self.sa_w1_t = np.ascontiguousarray(f("extractor.sa.w1.weight").T)
            self.sa_b1 = f("extractor.sa.w1.bias")
            self.sa_w2_t = np.ascontiguousarray(f("extractor.sa.w2.weight").T)  # [2d, K]
            self.mix = (1.0 / (1.0 + np.exp(-f("extractor.mix").astype(np.float64)))).astype(_F)
            self.out_t, self.out_b = (np.ascontiguousarray(f("extractor.out.weight").T),
                                      f("extractor.out.bias"))
            self.g1_t, self.g1_b = (np.ascontiguousarray(f("extractor.gate.0.weight").T),
                                    f("extractor.gate.0.bias"))
            self.g2_w, self.g2_b = f("extractor.gate.2.weight")[0], f("extractor.gate.2.bias")
            if self.global_slot_on:
                self.m1_t, self.m1_b = (np.ascontiguousarray(f("global_mlp.0.weight").T),
                                        f("global_mlp.0.bias"))
                self.m2_t, self.m2_b = (np.ascontiguousarray(f("global_mlp.2.weight").T),
                                        f("global_mlp.2.bias"))
            fw = t.get("online.fusion_w")
            self.fusion = (None if fw is None else
                           (np.asarray(fw, np.float64).reshape(-1),
                            float(np.asarray(t["online.fusion_b"]).reshape(-1)[0])))
        except KeyError as exc:
            raise HeadLoadError(f"checkpoint tensor {exc.args[0]!r} missing") from None
        self.b_init = _routing_init(self.seq_len, self.k_max, seed=1)
        self.item_cat = np.asarray(item_cat, dtype=np.int64)
        _one_blas_thread()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> DiamHead:
        """Read a checkpoint or snapshot directory (``weights.safetensors``, ``config.json``,
        ``item_categories.npy``) with safetensors' numpy reader."""
        import json

        from safetensors.numpy import load_file

        d = Path(path)
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        cats = np.load(d / "item_categories.npy", allow_pickle=False)
        return cls(load_file(str(d / "weights.safetensors")), cfg, cats)

    def infer(self, rows: np.ndarray, signals: np.ndarray) -> HeadOutput:
        """DIAM's interests for item ``rows`` (0-based, oldest first; the last ``seq_len`` are
        used) and the four ``signals``. An empty history is refused (the model has none)."""
        rows = np.asarray(rows, dtype=np.int64)[-self.seq_len:]
        n = len(rows)
        if n == 0:
            raise ValueError("a user needs at least one known item to be inferred")
        L, d, w = self.seq_len, self.dim, self.window
        # Only the n real positions are computed: with key padding, a real position's output
        # never depends on a padded one, and padded outputs are zeroed by the model anyway.
        # The window is right-aligned as in training, so the real items sit at L-n..L-1.
        x = self.item_emb[rows]  # [n, d]
        mask = np.ones(n, dtype=bool)
        fine = x + self.pos_fine[L - n:]
        for blk in self.fine:
            fine = blk(fine, mask)
        # coarse scale: the windows of w positions that hold any real item (the first one
        # partly), each the mean of its real items
        nw = -(-n // w)  # windows touched
        lead = nw * w - n  # padded positions in the first touched window
        xm = np.concatenate([np.zeros((lead, d), dtype=_F), x]).reshape(nw, w, d)
        cnt = np.full((nw, 1), w, dtype=_F)
        cnt[0, 0] = w - lead
        pooled = xm.sum(1) / cnt
        coarse = pooled + self.pos_coarse[L // w - nw:]
        for blk in self.coarse:
            coarse = blk(coarse, np.ones(nw, dtype=bool))
        h = _layer_norm(fine + np.repeat(coarse, w, axis=0)[lead:], self.norm_w, self.norm_b)
        inv_n = _F(1.0 / n)
        h_seq = h.sum(0) * inv_n
        # category profile of the window (the gate's extra input)
        cats = self.item_cat[rows]
        prof = np.bincount(cats[cats >= 0], minlength=self.n_cat)[: self.n_cat].astype(_F)
        prof = prof / _F(max(1.0, float(prof.sum())))
        # capsule routing (shared map, MIND's fixed random logits), on the contextual states
        u = h @ self.caps_t  # [n, d]; padded behaviours contribute nothing
        logits = self.b_init[L - n:]
        caps = None
        for it in range(self.iters):
            c = _softmax(logits, axis=1)  # [n, K]
            s = c.T @ u  # [K, d]
            n2 = (s * s).sum(-1, keepdims=True)
            caps = n2 / (1 + n2) * s / np.sqrt(n2 + _F(1e-9))
            if it < self.iters - 1:
                logits = logits + u @ caps.T
        # self-attentive pooling: keys h, values x
        a = np.tanh(h @ self.sa_w1_t + self.sa_b1) @ self.sa_w2_t  # [n, K]
        att = _softmax(a.T, axis=1)  # [K, n]
        sa = att @ x  # [K, d]
        g = self.mix[:, None]
        vecs = g * caps + (1 - g) * (sa @ self.out_t + self.out_b)  # [K, d]
        gate_in = np.concatenate([h_seq, prof])
        z = float(np.maximum(gate_in @ self.g1_t + self.g1_b, 0) @ self.g2_w + self.g2_b[0])
        gate_prob = float(np.float32(_sigmoid(z)))
        if self.global_slot_on:
            mean = x.sum(0) * inv_n
            hid = np.maximum(np.concatenate([mean, h_seq]) @ self.m1_t + self.m1_b, 0)
            vecs = vecs.copy()
            vecs[0] = mean + (hid @ self.m2_t + self.m2_b)
        k = min(max(int(math.floor(gate_prob * self.k_max)) + 1, 1), self.k_max)
        dd = 0.5
        if self.fusion is not None:
            fw, fb = self.fusion
            dd = _sigmoid(float(fw @ np.asarray(signals, np.float64)) + fb)
        return HeadOutput(np.ascontiguousarray(vecs, dtype=_F), k, gate_prob, dd,
                          np.ascontiguousarray(h_seq, dtype=_F))

    def global_slot(self, mean: np.ndarray, h_seq: np.ndarray) -> np.ndarray:
        """Slot 0, DIAM's global interest, ``mean + MLP([mean, h_seq])`` (float32 [d]) for a
        window mean and an encoder summary: what :meth:`infer` computes for slot 0, at a
        fraction of its cost when ``h_seq`` is the summary of a recent inference."""
        mean = np.asarray(mean, dtype=_F)
        hid = np.maximum(np.concatenate([mean, h_seq]) @ self.m1_t + self.m1_b, 0)
        return mean + (hid @ self.m2_t + self.m2_b)


def _one_blas_thread() -> None:
    """Limit the process's BLAS to one thread. The head runs a few dozen tiny matrix products
    per user; OpenBLAS threads only add hand-offs, and on a busy machine they cost an order of
    magnitude (bench/results/prequential.md). Process-wide by nature (the BLAS library has one
    setting); the stream and the evaluations that build a head want it."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _routing_init(seq_len: int, k: int, seed: int) -> np.ndarray:
    """The capsule layer's fixed routing logits, ``torch.randn(L, K)`` under
    ``manual_seed(seed)`` as ``CapsuleRouting`` draws them (a buffer not saved in checkpoints).
    torch is needed once here, at load, never per user."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(seq_len, k, generator=g).numpy().astype(_F)
