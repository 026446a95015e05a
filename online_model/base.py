"""What the stream needs from a base model, as numpy: item embeddings, categories, the light
gate that proposes K_u and the fusion layer that gives d_u's prior.

A base comes from a checkpoint or snapshot directory (``weights.safetensors`` with the
``online.*`` head, ``item_ids.npy``; no torch, no pickle) or, without any trained model, from the
events themselves: a truncated SVD of the items' PPMI co-occurrence matrix, deterministic.

>>> import numpy as np
>>> b = BaseView(np.array(["a", "b"]), np.eye(2, dtype=np.float32), k_max=4)
>>> b.index_of("b"), b.index_of("zzz"), b.category_of(0), b.has_gate
(1, -1, -1, False)
>>> b.d_prior(np.zeros(4, dtype=np.float32))
0.5
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from online_model.corpus import diversity_quantiles

__all__ = ["BaseView", "BaseLoadError", "toy_base"]

_GATE_KEYS = ("online.gate_w1", "online.gate_b1", "online.gate_w2", "online.gate_b2")
_FUSION_KEYS = ("online.fusion_w", "online.fusion_b")


class BaseLoadError(ValueError):
    """A checkpoint or snapshot directory cannot serve as a base; the message says which file."""


def _items_fingerprint(item_ids: np.ndarray) -> str:
    h = hashlib.sha256()
    for x in item_ids.tolist():
        h.update(str(x).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class BaseView:
    """A base model seen from the stream. Arrays are read-only float32 / int32.

    ``scale`` is the median norm of the non-zero item embeddings: the online learner's radii and
    step sizes are expressed in this unit so that one configuration fits any base.
    """

    def __init__(
        self,
        item_ids: np.ndarray,
        item_emb: np.ndarray,
        item_categories: np.ndarray | None = None,
        category_names: list[str] | None = None,
        *,
        k_max: int = 8,
        version: str = "base",
        gate: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
        fusion: tuple[np.ndarray, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
        head: Any = None,
        div_quantiles: np.ndarray | None = None,
    ) -> None:
        self.item_ids = np.asarray(item_ids).astype(str)
        emb = np.ascontiguousarray(item_emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(self.item_ids):
            raise BaseLoadError(
                f"item_emb has shape {emb.shape}, expected [{len(self.item_ids)}, d]"
            )
        emb.setflags(write=False)
        self.item_emb = emb
        self.dim = int(emb.shape[1])
        self.k_max = int(k_max)
        self.version = str(version)
        if item_categories is None:
            item_categories = np.full(len(self.item_ids), -1, dtype=np.int32)
        self.item_categories = np.asarray(item_categories, dtype=np.int32)
        self.category_names = list(category_names or [])
        self.n_categories = max(
            len(self.category_names), int(self.item_categories.max(initial=-1)) + 1, 1
        )
        self.gate = None if gate is None else tuple(np.asarray(g, dtype=np.float64) for g in gate)
        self.fusion = (
            None if fusion is None else tuple(np.asarray(f, dtype=np.float64) for f in fusion)
        )
        self.div_quantiles = np.ascontiguousarray(
            diversity_quantiles(np.empty(0)) if div_quantiles is None else div_quantiles,
            dtype=np.float64)
        """d_u's scale (``online.div_quantiles``): the realised category diversity at each
        percentile of the training examples. The d_u step aims at the percentile of what the
        user's last clicks realised (``kernels.diversity_target``); without a table (PPMI/SVD,
        toy bases, checkpoints from before it) the identity: the normalised entropy itself."""
        self.div_quantiles.setflags(write=False)
        self.meta = dict(meta or {})
        self.head = head
        """DIAM's inference head (:class:`online_model.infer.DiamHead`) when the checkpoint has
        the encoder and extractor: the learner then anchors users on the network's interests.
        None for bases without one (PPMI/SVD, toy bases, baselines): k-means anchors."""
        self._index = {x: i for i, x in enumerate(self.item_ids.tolist())}
        norms = np.linalg.norm(emb, axis=1)
        self.item_norms = norms.astype(np.float32)
        nz = norms[norms > 0]
        self.scale = float(np.median(nz)) if nz.size else 1.0
        self.fingerprint = _items_fingerprint(self.item_ids)

    # -- lookups -------------------------------------------------------------------------
    def index_of(self, item_id: str | int) -> int:
        """Row of ``item_id``, -1 when the base does not know it (cold item)."""
        return self._index.get(str(item_id), -1)

    def category_of(self, idx: int) -> int:
        """Primary category of row ``idx``, -1 when unknown."""
        return int(self.item_categories[idx]) if 0 <= idx < len(self.item_categories) else -1

    @property
    def has_gate(self) -> bool:
        return self.gate is not None

    @property
    def has_fusion(self) -> bool:
        return self.fusion is not None

    @property
    def anchor_kind(self) -> str:
        """What produces users' anchors on this base: ``"diam"`` (the network's extractor) or
        ``"kmeans"`` (centroids of the user's recent item embeddings)."""
        return "diam" if self.head is not None else "kmeans"

    # -- the two small heads ---------------------------------------------------------------
    def propose_k(self, mean_emb: np.ndarray, signals: np.ndarray) -> int:
        """K_u from the light gate: ``floor(sigmoid(w2·relu(W1 x + b1) + b2) * k_max) + 1``."""
        if self.gate is None:
            raise BaseLoadError("this base has no light gate (online.gate_* keys)")
        w1, b1, w2, b2 = self.gate
        x = np.concatenate(
            [np.asarray(mean_emb, dtype=np.float64), np.asarray(signals, dtype=np.float64)]
        )
        h = np.maximum(w1 @ x + b1, 0.0)
        z = float((w2 @ h + b2)[0])
        p = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        return min(int(math.floor(p * self.k_max)) + 1, self.k_max)

    def d_prior(self, signals: np.ndarray) -> float:
        """d_u's prior ``sigmoid(fusion_w · signals + fusion_b)``; 0.5 without a fusion layer."""
        if self.fusion is None:
            return 0.5
        w, b = self.fusion
        z = float(w @ np.asarray(signals, dtype=np.float64) + b[0])
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, version: str | None = None) -> BaseView:
        """Load a checkpoint directory (``diam train``) or a snapshot directory.

        The version is, in order: ``version``, the snapshot's directory name when a
        ``manifest.json`` is present, else its label (``checkpoint_config.checkpoint_label``:
        ``<model>-<sha256 of weights.safetensors>[:12]``, which ``diam recommend`` and ``diam
        serve`` match to a snapshot of the same weights).
        Without the gate or fusion keys the base has no gate (the learner then uses its
        configured fallback) and a d_u prior of 0.5.
        """
        from online_model.checkpoint import read_checkpoint
        from online_model.checkpoint_config import (
            DIV_QUANTILES_KEY,
            CheckpointError,
            check_div_quantiles,
            checkpoint_label,
        )
        from online_model.infer import DiamHead, HeadLoadError, has_extractor

        d = Path(path)
        snapshot = (d / "manifest.json").is_file()
        try:
            # a snapshot's files were verified by the store when it became active
            ck = read_checkpoint(d, verify=not snapshot)
            tensors = {**ck.tensors([k for k in ck.shapes if k != "online.item_emb"]),
                       "online.item_emb": ck.item_emb}
        except CheckpointError as exc:
            raise BaseLoadError(str(exc)) from None
        cfg, item_ids, cats = ck.config, ck.item_ids, ck.item_categories
        gate = (
            tuple(tensors[k] for k in _GATE_KEYS) if all(k in tensors for k in _GATE_KEYS) else None
        )
        fusion = (
            tuple(tensors[k] for k in _FUSION_KEYS)
            if all(k in tensors for k in _FUSION_KEYS)
            else None
        )
        divq = None
        if DIV_QUANTILES_KEY in tensors:
            try:
                divq = check_div_quantiles(d, tensors[DIV_QUANTILES_KEY])
            except CheckpointError as exc:
                raise BaseLoadError(str(exc)) from None
        head = None
        if cfg.get("model", "diam") == "diam" and has_extractor(tensors):
            try:
                head = DiamHead.from_read(ck, tensors)
            except HeadLoadError as exc:
                raise BaseLoadError(f"{d / 'weights.safetensors'}: {exc}") from None
        if version is None:
            version = d.resolve().name if snapshot else checkpoint_label(
                str(cfg.get("model", "model")), ck.weights_sha256)
        return cls(
            item_ids,
            tensors["online.item_emb"],
            cats,
            ck.category_names,
            k_max=ck.shape_config["k_max"],
            version=version,
            gate=gate,  # type: ignore[arg-type]
            fusion=fusion,  # type: ignore[arg-type]
            # config: what its training read (data range, cut), which diam evaluate-stream
            # checks against the period it scores
            meta={"source": "checkpoint", "path": str(d), "model": cfg.get("model"),
                  "config": cfg},
            head=head,
            div_quantiles=divq,
        )

    @classmethod
    def from_events(
        cls,
        ds: Any,
        dim: int = 64,
        seed: int = 0,
        *,
        upto: int | None = None,
        window: int = 10,
        k_max: int = 8,
        pop_exponent: float = 1.0,
    ) -> BaseView:
        """A torch-free base from the first ``upto`` events of a prepared dataset.

        Items that co-occur within ``window`` clicks of the same user are counted; the positive
        pointwise mutual information (PPMI) of those counts is factorised by a truncated SVD of
        its positive part, ``U·sqrt(Λ)`` (rows of items unseen in the prefix are zero, so they
        stay cold). Each row is then rescaled to norm ``clicks^pop_exponent`` (relative to the
        median), so dot-product retrieval weighs popularity as a softmax-trained model does
        through its item norms. Of {0, 0.25, 0.5, 0.75, 1} on a 10% user sample of ml-100k, 1
        gave the strongest frozen baseline (Recall@20 0.047 at 0, 0.118 at 0.75, 0.122 at 1)
        and the online arm was equal at 0.75 and 1 (0.166).
        Deterministic: same events, same seed → same bytes. No gate, no fusion.
        """
        from scipy import sparse

        n_items = len(ds.items.ids)
        n = len(ds.user_ids) if upto is None else int(upto)
        items = _event_items(ds)[:n]
        users = np.asarray(ds.user_ids[:n])
        order = np.lexsort((np.arange(n), users))  # stable: by user, then time
        u_sorted, i_sorted = users[order], items[order]
        rows, cols = [], []
        for lag in range(1, window + 1):
            same = u_sorted[lag:] == u_sorted[:-lag]
            rows.append(i_sorted[:-lag][same])
            cols.append(i_sorted[lag:][same])
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        co = sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(n_items, n_items)).tocsr()
        co = (co + co.T).tocsr()
        co.sum_duplicates()
        total = co.sum()
        emb = np.zeros((n_items, dim), dtype=np.float32)
        if total > 0:
            marg = np.asarray(co.sum(axis=1)).ravel()
            coo = co.tocoo()
            pmi = np.log(coo.data * total / (marg[coo.row] * marg[coo.col]))
            keep = pmi > 0
            ppmi = sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=co.shape)
            emb = _truncated_svd_embeddings(ppmi, dim, seed)
            if pop_exponent:
                # unit directions times count^β: dot-product retrieval then weighs popularity as
                # a softmax-trained model does through its item norms; PPMI alone discards it
                clicks = np.bincount(items, minlength=n_items).astype(np.float64)
                norms = np.linalg.norm(emb, axis=1)
                has = norms > 0
                w = np.zeros(n_items)
                w[has] = clicks[has] ** pop_exponent / norms[has]
                emb = (emb * (w / np.median(w[has] * norms[has]))[:, None]).astype(np.float32)
        return cls(
            ds.items.ids,
            emb,
            ds.items.primary,
            list(ds.items.category_names),
            k_max=k_max,
            version=f"events-{getattr(ds, 'name', 'ds')}-{n}-{dim}-{seed}",
            meta={
                "source": "events",
                "events_used": n,
                "window": window,
                "seed": seed,
                "pop_exponent": pop_exponent,
            },
        )

    # -- new items (issue 16) ----------------------------------------------------------------
    def with_items(self, item_ids: Any, item_emb: np.ndarray,
                   item_categories: np.ndarray | None = None) -> BaseView:
        """A new base with ``item_ids`` appended (rows ``N..N+n-1``, embeddings ``item_emb``
        [n, d], e.g. from the content tower) and the same version string: existing rows keep
        their index, so users' state stays valid and nobody is re-anchored. Ids already known
        are skipped. The DIAM head, when present, gets the same rows appended."""

        ids = np.asarray(item_ids).astype(str)
        emb = np.asarray(item_emb, dtype=np.float32).reshape(len(ids), self.dim)
        cats = (np.full(len(ids), -1, dtype=np.int32) if item_categories is None
                else np.asarray(item_categories, dtype=np.int32))
        new = np.array([self.index_of(i) < 0 for i in ids.tolist()], dtype=bool)
        _, first = np.unique(ids, return_index=True)
        new &= np.isin(np.arange(len(ids)), first)
        if not new.any():
            return self
        head = self.head if self.head is None else self.head.with_items(emb[new], cats[new])
        meta = {**self.meta, "content_items": int(self.meta.get("content_items", 0) + new.sum())}
        return BaseView(
            np.concatenate([self.item_ids, ids[new]]), np.concatenate([self.item_emb, emb[new]]),
            np.concatenate([self.item_categories, cats[new]]), self.category_names,
            k_max=self.k_max, version=self.version, gate=self.gate, fusion=self.fusion,  # type: ignore[arg-type]
            meta=meta, head=head, div_quantiles=self.div_quantiles,
        )


def toy_base(
    n_items: int = 60,
    dim: int = 8,
    n_categories: int = 4,
    *,
    seed: int = 0,
    k_max: int = 4,
    gate: bool = False,
    version: str = "toy",
) -> BaseView:
    """A small clustered base for tests and examples: item i belongs to category
    ``i % n_categories`` and its embedding is that category's centre plus noise. With ``gate``
    a random light gate and fusion layer are attached (the checkpoint head's shapes)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_categories, dim))
    cats = np.arange(n_items) % n_categories
    emb = (centres[cats] + 0.3 * rng.standard_normal((n_items, dim))).astype(np.float32)
    g = f = None
    if gate:
        h = 16
        g = (
            rng.standard_normal((h, dim + 4)),
            rng.standard_normal(h),
            rng.standard_normal((1, h)),
            rng.standard_normal(1),
        )
        f = (rng.standard_normal(4), rng.standard_normal(1))
    return BaseView(
        np.array([f"i{i}" for i in range(n_items)]),
        emb,
        cats,
        [f"c{c}" for c in range(n_categories)],
        k_max=k_max,
        version=version,
        gate=g,
        fusion=f,
    )


def _event_items(ds: Any) -> np.ndarray:
    if getattr(ds, "item_index", None) is not None:
        return np.asarray(ds.item_index, dtype=np.int64)
    lookup = {x: i for i, x in enumerate(np.asarray(ds.items.ids).astype(str).tolist())}
    return np.asarray([lookup[str(x)] for x in ds.item_ids], dtype=np.int64)


def _truncated_svd_embeddings(m: Any, dim: int, seed: int) -> np.ndarray:
    """``U·sqrt(Λ)`` over the ``dim`` largest positive eigenvalues of a symmetric sparse matrix.

    For a symmetric matrix this is the truncated SVD restricted to its positive part, so dot
    products of the embeddings approximate the PPMI entries. Only rows with any co-occurrence
    enter the decomposition (the rest stay zero). Dense LAPACK (``eigh``, deterministic) up to a
    few thousand active rows; above, a randomized range finder seeded by ``seed``.
    """
    from scipy import linalg

    n = m.shape[0]
    active = np.flatnonzero(np.diff(m.indptr) > 0)
    out = np.zeros((n, dim), dtype=np.float32)
    if active.size == 0:
        return out
    sub = m[active][:, active]
    na = sub.shape[0]
    k = min(dim, na)
    if na <= 6000:
        lam, u = linalg.eigh(sub.toarray(), subset_by_index=[na - k, na - 1], driver="evr")
    else:
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((na, k + 10))
        for _ in range(4):
            q, _ = np.linalg.qr(sub @ q)
        lam, ub = np.linalg.eigh(q.T @ (sub @ q))
        u, lam = (q @ ub)[:, -k:], lam[-k:]
    lam, u = lam[::-1], u[:, ::-1]  # largest first
    pos = lam > 0
    u, lam = u[:, pos], lam[pos]
    # an eigenvector's sign is arbitrary: make each column's largest-magnitude entry positive
    flip = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    flip[flip == 0] = 1.0
    out[active, : u.shape[1]] = (u * flip) * np.sqrt(lam)
    return out
