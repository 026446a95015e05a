"""Compare two namespaces user by user: K_u, matched interests, d_u (``diam diff``).

Interest vectors have no fixed order (a split or a merge renumbers them), so interests are paired
by the Hungarian algorithm on cosine similarity (``scipy.optimize.linear_sum_assignment``,
maximising the total cosine); ``min(K_a, K_b)`` pairs are matched and the rest are unmatched.

>>> import numpy as np
>>> a = np.array([[1, 0], [0, 1]], dtype=np.float32)
>>> match_interests(a, a[::-1])
[(0, 1, 1.0), (1, 0, 1.0)]
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import redis
from scipy.optimize import linear_sum_assignment

from serving_cache.base_record import BaseRecord, BaseRecordError, read_base
from serving_cache.codec import CodecError, UserVectors, decode_user
from serving_cache.connection import get_values
from serving_cache.keys import user_id_of_key, user_pattern

__all__ = ["DiffSummary", "NamespaceDiff", "UserDiff", "diff_namespaces", "match_interests",
           "scan_namespace"]


def match_interests(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cos)`` of rows of ``a`` [K_a, d] and ``b`` [K_b, d] maximising the summed
    cosine; ``min(K_a, K_b)`` pairs, ordered by ``i``. A zero vector has cosine 0 with anything."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    an = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    bn = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    cos = an @ bn.T  # [K_a, K_b]
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return [(int(i), int(j), float(np.clip(cos[i, j], -1.0, 1.0))) for i, j in zip(rows, cols, strict=True)]


@dataclass(frozen=True)
class UserDiff:
    """One user present in both namespaces."""

    user_id: str
    k_a: int
    k_b: int
    mean_cos: float
    """Mean cosine of the matched interest pairs."""
    min_cos: float
    d_a: float
    d_b: float
    seq_a: int
    seq_b: int
    identical: bool
    """The stored values are equal byte for byte."""
    relabelled: bool = False
    """Not identical, but the same state under another ``model`` label (vectors, K_u, d_u,
    seq and seen items equal): e.g. the same weights run as a checkpoint and as a snapshot."""
    model_a: str = ""
    model_b: str = ""

    @property
    def dk(self) -> int:
        return self.k_b - self.k_a

    @property
    def dd(self) -> float:
        return self.d_b - self.d_a


@dataclass(frozen=True)
class DiffSummary:
    """Aggregates over the users of both namespaces."""

    users_a: int
    users_b: int
    both: int
    only_a: int
    only_b: int
    identical: int
    k_agree_rate: float
    mean_matched_cos: float
    min_matched_cos: float
    mean_abs_dd: float
    undecodable: int
    relabelled: int = 0
    """Users whose values differ only in their ``model`` label (:attr:`UserDiff.relabelled`)."""


@dataclass(frozen=True)
class NamespaceDiff:
    ns_a: str
    ns_b: str
    users: list[UserDiff]
    only_a: list[str]
    only_b: list[str]
    summary: DiffSummary
    base_a: BaseRecord | None = None
    """The base ``ns_a``'s values were learnt on (``serving_cache.base_record``); None when
    it records none (or its record cannot be read: :attr:`base_problems`)."""
    base_b: BaseRecord | None = None
    base_problems: list[str] = field(default_factory=list)
    """Base records that could not be read, one line each naming the namespace and why."""

    def write_csv(self, path: str | Path) -> None:
        """One row per user of either namespace; empty cells where a side is missing."""
        cols = ["user_id", "in_a", "in_b", "k_a", "k_b", "dk", "mean_cos", "min_cos", "d_a", "d_b",
                "dd", "seq_a", "seq_b", "identical"]
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for u in self.users:
                w.writerow([u.user_id, 1, 1, u.k_a, u.k_b, u.dk, f"{u.mean_cos:.6f}", f"{u.min_cos:.6f}",
                            f"{u.d_a:.6f}", f"{u.d_b:.6f}", f"{u.dd:.6f}", u.seq_a, u.seq_b,
                            int(u.identical)])
            for uid, side in [(x, "a") for x in self.only_a] + [(x, "b") for x in self.only_b]:
                w.writerow([uid, int(side == "a"), int(side == "b")] + [""] * (len(cols) - 3))


def scan_namespace(client: redis.Redis, ns: str, batch: int = 1000) -> Iterator[tuple[str, bytes]]:
    """``(user_id, raw value)`` of every user key of ``ns`` (SCAN + MGET, never KEYS; one MGET
    per hash slot on a Redis Cluster: :func:`serving_cache.connection.get_values`)."""
    pattern = user_pattern(ns)
    keys: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=batch):
        keys.append(key if isinstance(key, bytes) else str(key).encode())
        if len(keys) >= batch:
            yield from _fetch(client, keys)
            keys = []
    if keys:
        yield from _fetch(client, keys)


def _fetch(client: redis.Redis, keys: list[bytes]) -> Iterator[tuple[str, bytes]]:
    for key, raw in zip(keys, get_values(client, keys), strict=True):
        if raw is not None:  # deleted between SCAN and MGET
            yield user_id_of_key(key), raw if isinstance(raw, bytes) else str(raw).encode()


def _compare(uid: str, ra: bytes, rb: bytes, a: UserVectors, b: UserVectors) -> UserDiff:
    pairs = match_interests(a.vecs, b.vecs)
    coss = [c for _, _, c in pairs] or [0.0]
    same = ra == rb
    return UserDiff(uid, a.k, b.k, float(np.mean(coss)), float(min(coss)), a.d, b.d, a.seq, b.seq,
                    same, not same and a.model != b.model and replace(b, model=a.model) == a,
                    a.model, b.model)


def diff_namespaces(client: redis.Redis, ns_a: str, ns_b: str) -> NamespaceDiff:
    """Compare every user of ``ns_a`` with the same user of ``ns_b``."""
    raw_a = dict(scan_namespace(client, ns_a))
    raw_b = dict(scan_namespace(client, ns_b))
    users: list[UserDiff] = []
    bad = 0
    for uid in sorted(raw_a.keys() & raw_b.keys()):
        try:
            a, b = decode_user(raw_a[uid]), decode_user(raw_b[uid])
        except CodecError:
            bad += 1
            continue
        users.append(_compare(uid, raw_a[uid], raw_b[uid], a, b))
    only_a = sorted(raw_a.keys() - raw_b.keys())
    only_b = sorted(raw_b.keys() - raw_a.keys())
    coss = [u.mean_cos for u in users]
    summary = DiffSummary(
        users_a=len(raw_a), users_b=len(raw_b), both=len(users), only_a=len(only_a),
        only_b=len(only_b), identical=sum(u.identical for u in users),
        k_agree_rate=float(np.mean([u.k_a == u.k_b for u in users])) if users else float("nan"),
        mean_matched_cos=float(np.mean(coss)) if users else float("nan"),
        min_matched_cos=float(min(u.min_cos for u in users)) if users else float("nan"),
        mean_abs_dd=float(np.mean([abs(u.dd) for u in users])) if users else float("nan"),
        undecodable=bad, relabelled=sum(u.relabelled for u in users),
    )
    bases: list[BaseRecord | None] = []
    problems: list[str] = []
    for ns in (ns_a, ns_b):
        try:
            bases.append(read_base(client, ns))
        except BaseRecordError as exc:  # said, not fatal: the users still compare
            bases.append(None)
            problems.append(f"the base record of {ns!r} cannot be read: {exc}")
    return NamespaceDiff(ns_a, ns_b, users, only_a, only_b, summary, bases[0], bases[1], problems)


def summary_dict(d: NamespaceDiff) -> dict[str, object]:
    """The summary as a plain dict (JSON output)."""
    return {"ns_a": d.ns_a, "ns_b": d.ns_b, **asdict(d.summary)}
