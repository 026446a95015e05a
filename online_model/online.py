"""The online learner: per-user state and the guarded update applied to every click (DESIGN §5).

The same :meth:`OnlineLearner.apply` runs in the Bytewax dataflow and in the prequential
evaluation. It is deterministic: the only randomness (sampled-softmax negatives) is a hash of
(user, offset), and time is the event's timestamp, so the same events give the same vectors bit
for bit, under any worker count and after any resume.

>>> import numpy as np
>>> from online_model.base import BaseView
>>> from online_model.config import OnlineConfig
>>> emb = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
>>> base = BaseView(np.array([str(i) for i in range(20)]), emb, np.arange(20) % 4, k_max=4)
>>> learner = OnlineLearner(base, OnlineConfig(dim=8, k_max=4))
>>> st = learner.new_state("u1")
>>> for off, item in enumerate(["1", "2", "3", "5", "1", "7"]):
...     _ = learner.apply(st, item, ts_ms=1_000 * off, offset=off)
>>> st.vectors().shape[1], 1 <= st.k <= 4, 0 < st.d < 1, st.n_events, st.seq
(8, True, True, 6, 5)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.guards import TokenBucket, cap_drift, cap_step, clip_norm, feasible, push_apart
from online_model.routing import (
    NegativeTable,
    centroids,
    event_key,
    merge_closest,
    route,
    softmax_direction,
    split_worst,
    stable_hash64,
)
from online_model.signals import SignalState

__all__ = ["DriftEvent", "UserState", "OnlineLearner", "DriftKind"]

DriftKind = Literal["k_change", "guard_trip", "rollback", "freeze", "reanchor"]

# the last bases seen in this process, by item fingerprint: lets a re-anchoring map a user's
# recent item rows from the old base to the new one when their item tables differ. Strong
# references (a hot reload drops the old learner at once), but only a few: bases are large.
_BASES: OrderedDict[str, BaseView] = OrderedDict()
_BASES_KEPT = 3


@dataclass(frozen=True)
class DriftEvent:
    """Something a drift monitor should know about one user at one offset."""

    kind: DriftKind
    user_id: str
    ts_ms: int
    offset: int
    detail: dict[str, float | int | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "user_id": self.user_id,
            "ts_ms": int(self.ts_ms),
            "offset": int(self.offset),
            "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftEvent:
        return cls(
            d["kind"],
            str(d["user_id"]),
            int(d["ts_ms"]),
            int(d["offset"]),
            dict(d.get("detail", {})),
        )


class UserState:
    """One user's online state: small (a few KB pickled) and picklable, as Bytewax snapshots it.

    ``V``/``A`` are float32 [k, dim] interest vectors and their anchors; ``recent`` the int32
    rows of the last ≤ recent_len known items in time order; ``seq`` the last applied offset.
    Before anchoring a user has k=1 and the mean of its items as its only vector.
    """

    __slots__ = (
        "user_id",
        "uhash",
        "version",
        "items_fp",
        "V",
        "A",
        "anchored",
        "d_logit",
        "d_prior",
        "signals",
        "recent",
        "n_events",
        "seq",
        "last_ts",
        "k_proposal",
        "k_streak",
        "bucket",
        "frozen",
        "capped",
        "n_learned",
    )

    def __init__(
        self,
        user_id: str,
        dim: int,
        n_categories: int,
        version: str,
        items_fp: str,
        bucket: list[float],
    ) -> None:
        self.user_id = user_id
        self.uhash = stable_hash64(user_id)
        self.version = version
        self.items_fp = items_fp
        self.V = np.zeros((1, dim), dtype=np.float32)
        self.A = np.zeros((1, dim), dtype=np.float32)
        self.anchored = False
        self.d_logit = 0.0
        self.d_prior = 0.0
        self.signals = SignalState(n_categories)
        self.recent = np.zeros(0, dtype=np.int32)
        self.n_events = 0
        self.n_learned = 0
        self.seq = -1
        self.last_ts = 0
        self.k_proposal = 1
        self.k_streak = 0
        self.bucket = bucket
        self.frozen = False
        self.capped = False

    @property
    def k(self) -> int:
        return int(self.V.shape[0])

    @property
    def d(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.d_logit))

    def vectors(self) -> np.ndarray:
        """float32 [k, dim], a copy."""
        return self.V.copy()

    def anchors(self) -> np.ndarray:
        return self.A.copy()

    def drift(self) -> float:
        """RMS distance of the vectors from their anchors (absolute units)."""
        delta = self.V - self.A
        return math.sqrt(float(np.einsum("kd,kd->", delta, delta)) / self.k)

    # Compact pickling: Bytewax snapshots every touched user each epoch, so vectors, anchors
    # and recent items travel as raw bytes rather than as three pickled ndarrays (~130 B each).
    _PLAIN = (
        "user_id",
        "uhash",
        "version",
        "items_fp",
        "anchored",
        "d_logit",
        "d_prior",
        "signals",
        "n_events",
        "n_learned",
        "seq",
        "last_ts",
        "k_proposal",
        "k_streak",
        "bucket",
        "frozen",
        "capped",
    )

    def __getstate__(self) -> tuple:
        plain = tuple(getattr(self, s) for s in self._PLAIN)
        return plain, self.V.shape, self.V.tobytes(), self.A.tobytes(), self.recent.tobytes()

    def __setstate__(self, st: tuple) -> None:
        plain, shape, v, a, recent = st
        for key, value in zip(self._PLAIN, plain, strict=True):
            setattr(self, key, value)
        self.V = np.frombuffer(v, dtype=np.float32).reshape(shape).copy()
        self.A = np.frombuffer(a, dtype=np.float32).reshape(shape).copy()
        self.recent = np.frombuffer(recent, dtype=np.int32).copy()


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1.0 - p))


class OnlineLearner:
    """Applies clicks to user states against one base model. Holds no per-user data."""

    def __init__(self, base: BaseView, cfg: OnlineConfig) -> None:
        if base.dim != cfg.dim:
            raise ValueError(f"base dimension {base.dim} differs from the configured dim {cfg.dim}")
        self.cfg = cfg
        self.bucket = TokenBucket(cfg.rate_burst, cfg.rate_per_s, cfg.freeze_ms)
        self._set_base(base)

    def _set_base(self, base: BaseView) -> None:
        self.base = base
        _BASES[base.fingerprint] = base
        _BASES.move_to_end(base.fingerprint)
        while len(_BASES) > _BASES_KEPT:
            _BASES.popitem(last=False)
        self.k_max = min(self.cfg.k_max, base.k_max)
        s = base.scale
        self._rho, self._max_norm = self.cfg.trust_radius * s, self.cfg.max_norm * s
        self._clip, self._step_cap = self.cfg.grad_clip * s, self.cfg.step_cap * s
        self._drift_cap = self.cfg.drift_cap * s
        self._inv_temp = 1.0 / (self.cfg.temperature * s * s)
        # negatives come from the items the base can embed
        self._negatives = NegativeTable(np.flatnonzero(base.item_norms > 0))
        self._ortho = self.cfg.ortho_threshold + self.cfg.ortho_margin

    # -- public API ----------------------------------------------------------------------------
    def new_state(self, user_id: str) -> UserState:
        return UserState(
            user_id,
            self.base.dim,
            self.base.n_categories,
            self.base.version,
            self.base.fingerprint,
            self.bucket.initial(),
        )

    def apply(
        self,
        state: UserState,
        item_id: str | int,
        ts_ms: int,
        offset: int,
        session_id: str | None = None,
    ) -> list[DriftEvent]:
        """Learn from one click; mutates ``state`` and returns its drift events.

        An offset at or below ``state.seq`` was applied already (at-least-once input) and is
        ignored. Cold items (unknown to the base) update the counters and timing only.
        """
        if state.n_events and offset <= state.seq:
            return []
        out: list[DriftEvent] = []
        if state.version != self.base.version:
            out.extend(self.reanchor(state))
        state.n_events += 1
        state.seq = int(offset)
        state.last_ts = int(ts_ms)
        cfg, base = self.cfg, self.base
        if cfg.guards:
            ok, froze = self.bucket.admit(state.bucket, int(ts_ms))
            state.frozen = not ok
            if froze:
                out.append(
                    self._event(
                        state, "freeze", rate_per_s=cfg.rate_per_s, until_ms=int(state.bucket[2])
                    )
                )
            if not ok:
                return out  # a burst: nothing about this user is learnt until the freeze ends
        idx = base.index_of(item_id)
        explore = state.signals.update(base.category_of(idx), int(ts_ms), session_id)
        if idx < 0 or base.item_norms[idx] == 0.0:
            return out  # cold item: no embedding to learn from
        self._remember(state, idx)
        if not state.anchored:
            if len(state.recent) >= cfg.anchor_min_items:
                self._anchor(state)
            else:
                state.V = state.A = self._mean_vector(state)
            return out
        if not cfg.learn:
            return out
        state.n_learned += 1
        self._step(state, idx, offset, out)
        self._step_d(state, explore)
        if cfg.guards:
            V, rms = cap_drift(state.V, state.A, self._drift_cap)
            capped = V is not state.V
            if capped and cfg.drift_policy == "rollback":
                state.V = state.A.copy()
                out.append(self._event(state, "rollback", drift=rms / base.scale))
            elif capped:
                state.V = V
                if not state.capped:  # report reaching the cap, not every event spent at it
                    out.append(
                        self._event(state, "guard_trip", guard="drift_cap", drift=rms / base.scale)
                    )
            state.capped = capped
        if state.n_learned % cfg.regate_every == 0:
            k_before = state.k
            self._regate(state, out)
            if cfg.guards and state.k != k_before:
                # A split or merge moves vectors and anchors together, but the result can sit
                # farther from its anchors than the cap allows; the cap must hold after every
                # event, so clamp again (found by the hypothesis constraint test).
                state.V, _ = cap_drift(state.V, state.A, self._drift_cap)
        return out

    def reanchor(self, state: UserState, base: BaseView | None = None) -> list[DriftEvent]:
        """Re-anchor ``state`` on ``base`` (default: this learner's base; a different base
        replaces it for all later calls): anchors become the centroids of the user's recent
        items under the base, vectors restart at the anchors. Recent item rows are mapped by
        item id when the item table changed; if the old table is unknown they are dropped."""
        if base is not None and base is not self.base:
            self._set_base(base)
        base = self.base
        old_version = state.version
        if state.items_fp != base.fingerprint:
            old = _BASES.get(state.items_fp)
            if old is None:
                state.recent = np.zeros(0, dtype=np.int32)
            else:
                rows = np.array(
                    [base.index_of(x) for x in old.item_ids[state.recent]], dtype=np.int64
                )
                rows = rows[rows >= 0]
                state.recent = rows[base.item_norms[rows] > 0].astype(np.int32)
            if state.signals.n_categories != base.n_categories:
                state.signals = SignalState(base.n_categories)
            state.items_fp = base.fingerprint
        state.version = base.version
        state.anchored = False
        if len(state.recent) >= self.cfg.anchor_min_items:
            self._anchor(state)
        elif len(state.recent):
            state.V = state.A = self._mean_vector(state)
        else:
            state.V = state.A = np.zeros((1, base.dim), dtype=np.float32)
        return [
            self._event(state, "reanchor", old_version=old_version, version=base.version, k=state.k)
        ]

    # -- steps ---------------------------------------------------------------------------------
    def _event(self, state: UserState, kind: DriftKind, **detail: float | int | str) -> DriftEvent:
        # Every drift event carries the user's current d_u, so the drift monitor can follow
        # d_u swings without a separate stream.
        detail.setdefault("d", round(float(state.d), 4))
        return DriftEvent(kind, state.user_id, state.last_ts, state.seq, detail)

    def _mean_vector(self, state: UserState) -> np.ndarray:
        """A not-yet-anchored user's single vector: the mean of its items, norm-bounded."""
        mean = self.base.item_emb[state.recent].mean(axis=0, keepdims=True)
        return clip_norm(mean, self._max_norm).astype(np.float32)

    def _remember(self, state: UserState, idx: int) -> None:
        r = state.recent
        if len(r) < self.cfg.recent_len:
            state.recent = np.append(r, np.int32(idx))
        else:
            r[:-1] = r[1:]  # in place: no allocation on the hot path
            r[-1] = idx

    def _propose_k(self, state: UserState, sig: np.ndarray) -> int:
        base, cfg = self.base, self.cfg
        if base.has_gate:
            k = base.propose_k(base.item_emb[state.recent].mean(axis=0), sig)
        elif cfg.no_gate_policy == "categories":
            long = state.signals.long
            p = long[long > 0] / long.sum() if long.sum() > 0 else np.ones(1)
            k = int(math.floor(math.exp(float(-(p * np.log(p)).sum())) + 0.5))
        else:
            k = cfg.k_fixed
        distinct = len(np.unique(state.recent))
        return max(1, min(k, self.k_max, distinct))

    def _anchor(self, state: UserState) -> None:
        base = self.base
        sig = state.signals.values()
        k = self._propose_k(state, sig)
        items = base.item_emb[np.unique(state.recent)]  # unique: repeats would skew seeding
        A = clip_norm(centroids(items, k), self._max_norm).astype(np.float32)
        state.A, state.V = A, A.copy()
        state.anchored, state.capped = True, False
        state.k_proposal, state.k_streak = A.shape[0], 0
        state.d_prior = self._prior_logit(sig)
        state.d_logit = state.d_prior

    def _prior_logit(self, sig: np.ndarray) -> float:
        b = self.cfg.d_logit_bound
        return min(max(_logit(self.base.d_prior(sig)), -b), b)

    def _step(self, state: UserState, idx: int, offset: int, out: list[DriftEvent]) -> None:
        base, cfg = self.base, self.cfg
        V = state.V
        rows = self._negatives.draw(event_key(state.uhash, offset), cfg.n_negatives + 1)
        cand = base.item_emb[rows]  # [S+1, d], one gather (a copy)
        cand[0] = base.item_emb[idx]  # the positive first; a negative equal to it is a rare tie
        norms = np.sqrt((V * V).sum(axis=1))  # [K], shared by routing and the push-apart
        k = route(V, cand[0], norms)
        old = V[k].copy()
        g = softmax_direction(old, cand, self._inv_temp)
        gn = math.sqrt(float(g @ g))
        if gn > self._clip:
            g *= self._clip / gn
        v = old + cfg.lr * g
        if V.shape[0] > 1:
            v = push_apart(v, V, k, self._ortho, norms)
        v = feasible(v, state.A[k], self._rho, self._max_norm)
        if cfg.guards:
            v, bit = cap_step(v, old, self._step_cap)
            if bit:
                out.append(self._event(state, "guard_trip", guard="step_cap", interest=k))
        V[k] = v

    def _step_d(self, state: UserState, explore: float) -> None:
        if explore == 0.5:  # unscored click (first one, or unknown category)
            return
        cfg = self.cfg
        l0 = state.d_logit
        p = 1.0 / (1.0 + math.exp(-l0))
        dl = -cfg.d_lr * ((p - explore) + cfg.d_prior_pull * (l0 - state.d_prior))
        if cfg.guards:
            dl = min(max(dl, -cfg.d_step_cap), cfg.d_step_cap)
        lo = max(state.d_prior - cfg.d_max_offset, -cfg.d_logit_bound)
        hi = min(state.d_prior + cfg.d_max_offset, cfg.d_logit_bound)
        state.d_logit = min(max(l0 + dl, lo), hi)

    def _regate(self, state: UserState, out: list[DriftEvent]) -> None:
        sig = state.signals.values()
        state.d_prior = self._prior_logit(sig)
        p = self._propose_k(state, sig)
        h = self.cfg.k_hysteresis if self.cfg.guards else 1
        if p == state.k:
            state.k_proposal, state.k_streak = p, 0
            return
        state.k_streak = state.k_streak + 1 if p == state.k_proposal else 1
        state.k_proposal = p
        if state.k_streak < h:
            return
        old = state.k
        items = self.base.item_emb[state.recent]
        while state.k < p:
            v = clip_norm(split_worst(state.V, items), self._max_norm).astype(np.float32)
            state.V = np.vstack((state.V, v[None, :]))
            state.A = np.vstack((state.A, v[None, :]))  # a new interest is its own anchor
        while state.k > p:
            i, j = merge_closest(state.V)
            state.V[i] = 0.5 * (state.V[i] + state.V[j])
            state.A[i] = 0.5 * (state.A[i] + state.A[j])
            state.V = np.delete(state.V, j, axis=0)
            state.A = np.delete(state.A, j, axis=0)
        state.k_streak = 0
        out.append(self._event(state, "k_change", k_from=old, k_to=state.k))
