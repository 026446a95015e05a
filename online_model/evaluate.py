"""Offline evaluation, ComiRec's protocol with corrected metrics (issue 3, DESIGN.md §4).

Users are split 80/10/10 by a seeded permutation. For a valid or test user the first 80% of the
sequence is the history (the model sees its last ``seq_len`` items, the signals see all of it)
and every later item is ground truth. Each active interest retrieves its top-M items from the
full corpus (items already in the history excluded: ml-100k has no repeats, so they can only
waste slots, for every model alike); the lists are merged into one top-n list by

- ``merge``: ComiRec's merge by best score, de-duplicated (baselines, and DIAM's "plain" view);
- ``model``: the model's own aggregation: DIAM's diversity-aware aggregator with its learned
  d_u (optionally moved by the manual delta), ``merge`` for models without d_u;
- ``controllable``: ComiRec's greedy category-diversity aggregation with weight ``lam``.

Diversity of the top 20: category entropy (nats, primary category), ILD on a model-independent
reference embedding (PPMI-SVD of item co-occurrence among training users, so that models with
different embedding spaces are measured with one ruler) and on categories, and category coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from online_model import metrics as M
from online_model.aggregate import aggregate, controllable, manual_d, merge_by_score
from online_model.corpus import Corpus, windows

__all__ = ["split_users", "EvalSet", "make_eval_set", "Candidates", "retrieve", "score_lists",
           "evaluate", "reference_embedding", "interest_diagnostics", "HISTORY_FRACTION"]

HISTORY_FRACTION = 0.8


def split_users(users: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """User indices split 80/10/10 by a permutation seeded with ``seed``.

    >>> s = split_users(np.array([f"u{i}" for i in range(10)]), 0)
    >>> [len(s[k]) for k in ("train", "valid", "test")]
    [8, 1, 1]
    """
    n = len(users)
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(round(0.8 * n)), int(round(0.9 * n))
    return {"train": np.sort(perm[:a]), "valid": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


@dataclass
class EvalSet:
    """Held-out users: ``cut`` [U] flat position where the history ends, ``truth`` item rows."""

    users: np.ndarray  # [U] user index
    cut: np.ndarray  # [U] flat position of the first ground-truth event
    signals: np.ndarray  # [U, 4] signals of the whole history
    truth: list[np.ndarray]
    history: list[np.ndarray]


def make_eval_set(corpus: Corpus, users: np.ndarray, signals: np.ndarray) -> EvalSet:
    """First 80% of each user's sequence is history, the rest ground truth (users with < 2
    events have nothing to hold out and are skipped). ``signals`` are the per-event prefix
    signals of ``corpus.prefix_signals``."""
    keep, cuts, truth, hist = [], [], [], []
    for u in users:
        a, b = int(corpus.offsets[u]), int(corpus.offsets[u + 1])
        if b - a < 2:
            continue
        h = min(max(1, int(HISTORY_FRACTION * (b - a))), b - a - 1)
        keep.append(u)
        cuts.append(a + h)
        truth.append(corpus.items[a + h:b])
        hist.append(corpus.items[a:a + h])
    cut = np.asarray(cuts, dtype=np.int64)
    return EvalSet(np.asarray(keep, dtype=np.int64), cut, signals[cut], truth, hist)


@dataclass
class Candidates:
    """Per-interest top-M retrieval of every held-out user (inactive interests have -inf)."""

    scores: np.ndarray  # [U, K, M]
    items: np.ndarray  # [U, K, M]
    k: np.ndarray  # [U] active interests
    d_u: np.ndarray | None  # [U]
    item_vecs: np.ndarray  # [N, d] the model's item embeddings


def _interests_by_batch(model, corpus: Corpus, es: EvalSet, device: torch.device | str,
                        batch_size: int):
    """``(slice of es.users, model.interests(...))`` over the held-out users, batch by batch."""
    from online_model.models import Batch

    for start in range(0, len(es.users), batch_size):
        sl = slice(start, start + batch_size)
        seq, length = windows(corpus, es.cut[sl], model.cfg.seq_len)
        batch = Batch(torch.from_numpy(seq), torch.from_numpy(length),
                      torch.from_numpy(es.signals[sl])).to(device)
        yield sl, model.interests(batch)


@torch.no_grad()
def retrieve(model, corpus: Corpus, es: EvalSet, device: torch.device | str = "cpu",
             m: int = 50, batch_size: int = 256) -> Candidates:
    """Full-corpus retrieval per active interest, history items excluded."""
    model.eval()
    table = model.item_table().float()  # [N, d]
    all_s, all_i, ks = [], [], []
    ds: list[np.ndarray] = []
    for sl, out in _interests_by_batch(model, corpus, es, device, batch_size):
        scores = out.vecs.float() @ table.T  # [b, K, N]
        for j, h in enumerate(es.history[sl]):
            scores[j, :, torch.as_tensor(h, device=scores.device)] = float("-inf")
        scores = scores.masked_fill(out.mask[..., None] <= 0.5, float("-inf"))
        top = scores.topk(min(m, scores.shape[-1]), dim=-1)
        all_s.append(top.values.cpu().numpy())
        all_i.append(top.indices.cpu().numpy())
        ks.append(out.k.cpu().numpy())
        if out.d_u is not None:
            ds.append(out.d_u.float().cpu().numpy())
    return Candidates(
        scores=np.concatenate(all_s), items=np.concatenate(all_i).astype(np.int64),
        k=np.concatenate(ks), d_u=np.concatenate(ds) if ds else None,
        item_vecs=table.cpu().numpy())


def lists_for(cands: Candidates, corpus: Corpus, agg: str = "model", n: int = 50,
              delta: float = 0.0, lam: float = 0.0, d: float = 0.0) -> list[np.ndarray]:
    """One ranked list of ``n`` item rows per user.

    ``agg="fixed"`` runs the diversity-aware aggregator at the same ``d`` for every user: the
    re-ranker every model can be given, learned d_u or not (``d = 0`` is the merge by score).
    """
    out = []
    for u in range(len(cands.k)):
        k = int(cands.k[u])
        s, i = cands.scores[u, :k], cands.items[u, :k]
        if agg == "controllable":
            out.append(controllable(s, i, corpus.item_cat, lam, n))
        elif agg == "fixed":
            out.append(aggregate(s, i, cands.item_vecs, d, n, corpus.item_cat))
        elif agg == "model" and cands.d_u is not None:
            d = manual_d(float(cands.d_u[u]), delta)
            out.append(aggregate(s, i, cands.item_vecs, d, n, corpus.item_cat))
        else:
            out.append(merge_by_score(s, i, n))
    return out


def score_lists(lists: list[np.ndarray], es: EvalSet, corpus: Corpus, ref: np.ndarray,
                ns: tuple[int, ...] = (20, 50), per_user: bool = False) -> dict:
    """Mean accuracy and diversity metrics of the ranked lists over users (``per_user``: the
    per-user values ``[U]`` instead of their means, for paired bootstraps)."""
    acc: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        acc.setdefault(k, []).append(v)

    c = corpus.n_categories
    for lst, truth in zip(lists, es.truth, strict=True):
        for n in ns:
            add(f"recall@{n}", M.recall_at(lst, truth, n))
            add(f"ndcg@{n}", M.ndcg_at(lst, truth, n))
            add(f"hr@{n}", M.hit_rate_at(lst, truth, n))
        top = lst[:20]
        cats = corpus.item_cat[top]
        add("entropy@20", M.category_entropy(cats))
        add("ild@20", M.ild_embedding(ref[top]))
        add("ild_cat@20", M.ild_category(cats))
        add("coverage@20", M.category_coverage(cats, c))
    if per_user:
        return {k: np.asarray(v, dtype=float) for k, v in acc.items()}
    return {k: float(np.mean(v)) for k, v in acc.items()}


def reference_embedding(corpus: Corpus, users: np.ndarray, dim: int = 32) -> np.ndarray:
    """Model-independent item vectors [N, dim]: truncated SVD of the PPMI item co-occurrence
    matrix of ``users``' histories (items never seen get zero vectors)."""
    from scipy import sparse
    from scipy.sparse.linalg import svds

    rows = np.concatenate([np.full(corpus.offsets[u + 1] - corpus.offsets[u], i)
                           for i, u in enumerate(users)])
    cols = np.concatenate([corpus.items[corpus.offsets[u]:corpus.offsets[u + 1]] for u in users])
    x = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), corpus.n_items))
    x.data[:] = 1.0
    cooc = (x.T @ x).tocsr()
    marg = np.asarray(cooc.sum(axis=1)).ravel()
    co = cooc.tocoo()
    total = co.data.sum()
    pmi = np.log(co.data * total / (marg[co.row] * marg[co.col]).clip(1e-12))
    keep = (pmi > 0) & (co.row != co.col)
    ppmi = sparse.csr_matrix((pmi[keep], (co.row[keep], co.col[keep])), shape=co.shape)
    k = max(1, min(dim, corpus.n_items - 2))
    u, s, _ = svds(ppmi.astype(np.float64), k=k, random_state=0)
    return (u * np.sqrt(s)).astype(np.float32)


def evaluate(model, corpus: Corpus, es: EvalSet, device: torch.device | str = "cpu",
             ns: tuple[int, ...] = (20, 50), agg: str = "model", delta: float = 0.0,
             lam: float = 0.0, ref: np.ndarray | None = None,
             cands: Candidates | None = None, d: float = 0.0, per_user: bool = False) -> dict:
    """All metrics of ``model`` on ``es``: accuracy, diversity, K_u distribution, d_u quality;
    ``per_user``: also ``"per_user"``, each accuracy and diversity metric's values per user
    ``[U]`` (in ``es``'s order: what a paired interval between two models resamples)."""
    cands = cands or retrieve(model, corpus, es, device, m=max(ns))
    if ref is None:
        ref = cands.item_vecs  # callers comparing models pass a shared reference embedding
    lists = lists_for(cands, corpus, agg, max(ns), delta, lam, d)
    users: dict = score_lists(lists, es, corpus, ref, ns, per_user=True)
    res: dict = {k: float(np.mean(v)) for k, v in users.items()}
    if per_user:
        res["per_user"] = users
    res["n_users"] = len(es.users)
    ks, counts = np.unique(cands.k, return_counts=True)
    res["k_u_hist"] = {int(k): int(c) for k, c in zip(ks, counts, strict=True)}
    res["k_u_mean"] = float(cands.k.mean())
    if cands.d_u is not None:
        realised = np.array([M.realised_entropy(corpus.item_cat[t[:20]], corpus.n_categories)
                             for t in es.truth])
        res["d_u_mean"] = float(cands.d_u.mean())
        res["d_u_std"] = float(cands.d_u.std())
        res["spearman_d_entropy"] = M.spearman(cands.d_u, realised)
    return res


def interest_diagnostics(model, corpus: Corpus, es: EvalSet, cands: Candidates,
                         device: torch.device | str = "cpu", n: int = 20,
                         batch_size: int = 256) -> dict[str, float]:
    """Do a user's interests differ? Collapse check of a multi-interest model on ``es``.

    Over users with at least two active interests: ``cos`` the mean pairwise cosine of their
    interest vectors, ``overlap`` the mean pairwise Jaccard overlap of their per-interest
    top-``n`` lists (from ``cands``), and ``users`` how many users count. Interests that all
    collapsed onto one vector give cos 1 and overlap near 1; ComiRec-style specialised
    interests give low values of both.
    """
    model.eval()
    cos_u, ovl_u = [], []
    with torch.no_grad():
        for sl, out in _interests_by_batch(model, corpus, es, device, batch_size):
            v = torch.nn.functional.normalize(out.vecs.float(), dim=-1)
            cos = (v @ v.transpose(1, 2)).cpu().numpy()
            for j, k in enumerate(out.k.cpu().numpy()):
                k = int(k)
                if k < 2:
                    continue
                iu = np.triu_indices(k, 1)
                cos_u.append(float(cos[j][iu].mean()))
                lists = [set(cands.items[sl.start + j, i, :n].tolist()) for i in range(k)]
                ovl_u.append(float(np.mean([len(lists[a] & lists[b]) / len(lists[a] | lists[b])
                                            for a, b in zip(*iu, strict=True)])))
    if not cos_u:
        return {"cos": float("nan"), "overlap": float("nan"), "users": 0}
    return {"cos": float(np.mean(cos_u)), "overlap": float(np.mean(ovl_u)), "users": len(cos_u)}
