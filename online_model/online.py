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
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

from online_model import kernels as K
from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.guards import cap_drift, clip_norm
from online_model.kernels import OUTCOMES
from online_model.routing import (
    NegativeTable,
    merge_closest,
    split_worst,
    stable_hash64,
)
from online_model.signals import SESSION_PRIOR_WEIGHT, SIGNAL_CONSTS, SignalState

__all__ = ["DriftEvent", "UserState", "OnlineLearner", "DriftKind", "KnownBases", "learner_params"]

DriftKind = Literal["k_change", "guard_trip", "rollback", "freeze", "reanchor"]


class KnownBases:
    """The last few bases a learner (and the learners that replace it on a hot reload) served:
    a re-anchoring maps a user's recent item rows from the table they were recorded under
    (``UserState.items_fp``) to the new one by item id when the tables differ.

    One table per version, the newest: new items grow a version's table under the same version
    (``BaseView.with_items``, rows appended), which re-anchors nobody, so a user stays recorded
    under the table they were re-anchored on while they click rows that the growths appended.
    A table that extends the version's known one (its first rows are that table's, in order)
    takes its place, and every fingerprint of the line still resolves to it: the newest table
    holds all the rows such a user can have. Another table of a known version (a rollback
    rebuilds the version's table, the new items maybe in another order) takes its place too;
    of the line only the tables that are its first rows stay (resolving to it, which is how the
    learner reads such a user's rows on that version), the others resolve to nothing.
    ``keep`` versions, the least recently added dropped first; strong references, but only a
    few: bases are large. The fingerprints of a line are as many as its growths, each of which
    appended at least one row. A learner that replaces another takes it over
    (:meth:`OnlineLearner.succeed`), so it lives as long as the process's line of learners.

    >>> from online_model.base import toy_base
    >>> v1 = toy_base(n_items=8, dim=4)
    >>> g1 = v1.with_items(["new"], np.ones((1, 4), dtype=np.float32))
    >>> g2 = g1.with_items(["newer"], np.ones((1, 4), dtype=np.float32))
    >>> kb = KnownBases(keep=1)
    >>> for b in (v1, g1, g2):
    ...     kb.add(b)
    >>> kb.get(v1.fingerprint) is kb.get(g1.fingerprint) is g2
    True
    >>> kb.add(toy_base(n_items=6, dim=4, version="v2")); kb.get(v1.fingerprint) is None
    True
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        # version -> (its newest table, {fingerprint: rows} of that table and the older tables
        # of the line, each a prefix of it); entries are replaced, never mutated (workers read)
        self._by_version: OrderedDict[str, tuple[BaseView, dict[str, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, base: BaseView) -> None:
        fp, n = base.fingerprint, len(base.item_ids)
        with self._lock:
            known = self._by_version.get(base.version)
            tables = {fp: n}
            if known is not None:  # the line's tables that are prefixes of this one stay in it
                head, line = known
                same = _common_rows(head.item_ids, base.item_ids)
                tables = {**{f: m for f, m in line.items() if m <= same}, **tables}
            self._by_version[base.version] = (base, tables)
            self._by_version.move_to_end(base.version)
            while len(self._by_version) > self.keep:
                self._by_version.popitem(last=False)

    def get(self, fingerprint: str, version: str | None = None) -> BaseView | None:
        """The newest known table of the line whose table ``fingerprint`` names (that version's
        first, when given: the version a user was recorded under), or None."""
        with self._lock:
            known = self._by_version.get(version) if version is not None else None
            if known is not None and fingerprint in known[1]:
                return known[0]
            for head, line in reversed(self._by_version.values()):
                if fingerprint in line:
                    return head
        return None


def _common_rows(a: np.ndarray, b: np.ndarray) -> int:
    """How many first rows the item tables ``a`` and ``b`` share, in order."""
    k = min(len(a), len(b))
    eq = a[:k] == b[:k]
    return k if bool(eq.all()) else int(np.argmin(eq))


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


def _field(name: str, kind: type, doc: str) -> property:
    """An attribute of :class:`UserState` kept in its record (where the kernel reads and writes
    it), read as ``kind``, the plain Python type callers expect (checked against the field's
    type here, once)."""

    # ``.item()`` hands back the Python scalar of the field's type at once (a third of the
    # time of converting the numpy scalar that ``[0]`` makes); every field's numpy type gives
    # ``kind`` that way (int64 -> int, float64 -> float, bool_ -> bool)
    field = cast(Mapping[str, tuple[np.dtype, int]], K.USER.fields)[name]
    if field[0].type(0).item().__class__ is not kind:
        raise TypeError(f"the record's field {name!r} does not hold a {kind.__name__}")

    def get(self: UserState) -> Any:
        return self.rec[name].item()

    def put(self: UserState, value: Any) -> None:
        self.rec[name] = value

    return property(get, put, doc=doc)


def _flat_backed(slot: str, flat: str, doc: str) -> property:
    """A C-contiguous array attribute of :class:`UserState` stored in ``slot``, with a flat view
    of the same memory kept in ``flat`` (set together, so the kernel's in-place updates through
    the flat view are the array's)."""

    def get(self: UserState) -> np.ndarray:
        return getattr(self, slot)

    def put(self: UserState, value: np.ndarray) -> None:
        if not value.flags.c_contiguous:
            value = value.copy()  # a flat view must share the array's memory
        setattr(self, slot, value)
        setattr(self, flat, value.reshape(-1))

    return property(get, put, doc=doc)


class UserState:
    """One user's online state: small (~2 KB pickled) and picklable, as Bytewax snapshots it.

    ``rec`` is the user's record (a one-element array of :data:`online_model.kernels.USER`):
    every scalar the kernel reads and writes, by name (d_u's logit and prior, the token
    bucket, the ring's bookkeeping, the counters, K_u's pending proposal, the guard flags),
    also readable here as attributes (``state.seq``, ``state.d_logit``, ...). Beside it:
    ``V``/``A``, float32 [k, dim] C-contiguous interest vectors and their anchors (the kernel
    updates them in place through flat views); ``ring``, the int32 rows of the last
    ≤ recent_len known items (``recent`` gives them in time order); ``signals``, the signal
    accumulators; ``hseq``, the encoder's summary at the last inference. Before anchoring a
    user has k=1 and the mean of its items as its only vector.
    """

    __slots__ = ("user_id", "version", "items_fp", "rec", "_V", "_A", "Vf", "Af", "ring",
                 "signals", "hseq")

    def __init__(
        self,
        user_id: str,
        dim: int,
        n_categories: int,
        version: str,
        items_fp: str,
        recent_len: int,
        burst: float,
    ) -> None:
        self.user_id = user_id
        self.version = version
        self.items_fp = items_fp
        self.rec = K.new_user(_uhash(user_id), burst)
        self.V = np.zeros((1, dim), dtype=np.float32)
        self.A = np.zeros((1, dim), dtype=np.float32)
        self.signals = SignalState(n_categories)
        self.ring = np.zeros(recent_len, dtype=np.int32)
        self.hseq = np.zeros(dim, dtype=np.float32)  # the encoder's summary at the last inference

    # V and A with flat views of the same memory kept next to them (Vf, Af): the kernel takes
    # flat arrays, and reshaping both on every event would create new view objects per event.
    Vf: np.ndarray
    Af: np.ndarray
    V = _flat_backed("_V", "Vf", "float32 [k, dim] interest vectors; ``Vf`` is their flat view.")
    A = _flat_backed("_A", "Af", "float32 [k, dim] anchors; ``Af`` is their flat view.")

    # the record's fields, by name
    uhash = _field("uhash", int, "Stable hash of the user id (int64): seeds the negatives.")
    d_logit = _field("d_logit", float, "d_u's logit (the kernel updates it in place).")
    d_prior = _field("d_prior", float, "d_u's prior logit, from the fusion layer on the signals.")
    n_events = _field("n_events", int, "Clicks applied (duplicates not counted).")
    seq = _field("seq", int, "The last applied offset.")
    last_ts = _field("last_ts", int, "Event time (ms) of the last applied click.")
    n_recent = _field("n_recent", int, "Known items in the recent-item ring.")
    n_learned = _field("n_learned", int, "Gradient steps taken.")
    since_anchor = _field("since_anchor", int, "DIAM base: events since the network last ran.")
    k_proposal = _field("k_proposal", int, "The last proposed K_u (hysteresis).")
    k_streak = _field("k_streak", int, "Consecutive equal proposals that differ from K_u.")
    anchored = _field("anchored", bool, "Has anchors (else one mean vector, or nothing).")
    frozen = _field("frozen", bool, "The rate limit froze the user at its last click.")
    capped = _field("capped", bool, "The drift cap bound at the user's last step.")
    frozen_until_ms = _field("frozen_until_ms", float, "Event time the freeze ends (-1: none).")

    def clone_for(self, user_id: str) -> UserState:
        """A copy of this state for another user (arrays copied). The learner builds new users
        from a template this way, cheaper than ``__init__``, whose array set-up dominates."""
        other = UserState.__new__(UserState)
        other.user_id, other.version, other.items_fp = user_id, self.version, self.items_fp
        other.rec = self.rec.copy()
        other.rec["uhash"] = _uhash(user_id)
        other.V, other.A, other.ring = self.V.copy(), self.A.copy(), self.ring.copy()
        other.hseq = self.hseq.copy()
        other.signals = self.signals.fresh_copy()
        return other

    def applied(self, offset: int) -> bool:
        """Whether ``offset`` was applied already (at-least-once input)."""
        return self.n_events > 0 and offset <= self.seq

    @property
    def k(self) -> int:
        return int(self.V.shape[0])

    @property
    def d(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.d_logit))

    @property
    def recent(self) -> np.ndarray:
        """int32 rows of the last ≤ recent_len known items, oldest first (a copy)."""
        return self.last_items(len(self.ring))

    @recent.setter
    def recent(self, rows: np.ndarray) -> None:
        cap = len(self.ring)
        rows = np.asarray(rows, dtype=np.int32)[-cap:]
        self.ring[:] = 0
        self.ring[: len(rows)] = rows
        self.rec["n_recent"] = len(rows)
        self.rec["ring_pos"] = len(rows) % cap

    def last_items(self, window: int) -> np.ndarray:
        """int32 rows of the last ``min(n_recent, window)`` known items, oldest first (a copy):
        ``recent[-window:]``, from the oldest one's slot (:func:`online_model.kernels.ring_slot`,
        the owner of the ring's order) in at most two slices (the stream's every push lists
        them; a compiled call per item, ``ring_window``, costs more here)."""
        rec = self.rec
        n = rec["n_recent"].item()
        ring = self.ring
        m = min(n, window)
        if m <= 0:
            return ring[:0].copy()
        cap = len(ring)
        start = K.ring_slot(cap, n, rec["ring_pos"].item(), m, 0)
        if start + m <= cap:
            return ring[start:start + m].copy()
        return np.concatenate((ring[start:], ring[:start + m - cap]))  # across the wrap

    def vectors(self) -> np.ndarray:
        """float32 [k, dim], a copy."""
        return self.V.copy()

    def anchors(self) -> np.ndarray:
        return self.A.copy()

    def drift(self) -> float:
        """RMS distance of the vectors from their anchors (absolute units)."""
        delta = self.V - self.A
        return math.sqrt(float(np.einsum("kd,kd->", delta, delta)) / self.k)

    # Compact form: Bytewax snapshots every touched user each epoch, on the dataflow's thread,
    # so the snapshot is one flat tuple of a few plain values and one byte string: the record's
    # bytes, then every array (no ndarray or nested-object pickling).
    _FORMAT = "user-2"

    def pack(self) -> tuple:
        """The whole state as a flat tuple of str/int/bytes (``unpack`` inverts it)."""
        sig = self.signals
        k, dim = self.V.shape
        return (self._FORMAT, self.user_id, self.version, self.items_fp, sig.last_session,
                sig.n_categories, k, dim, len(self.ring),
                # the arrays' own memory (C-contiguous) joined once, not copied out first
                b"".join((self.rec.data, self.V.data, self.A.data, self.ring.data,
                          self.hseq.data, sig.to_bytes())))

    @classmethod
    def unpack(cls, packed: tuple) -> UserState:
        if not (type(packed) is tuple and len(packed) == 10 and packed[0] == cls._FORMAT):
            raise ValueError(f"not a packed user state of format {cls._FORMAT!r} (an older "
                             "snapshot format?)")
        _, user_id, version, items_fp, last_session, n_cat, k, dim, n_ring, raw = packed
        self = cls.__new__(cls)
        self.user_id, self.version, self.items_fp = user_id, version, items_fp
        o = K.USER.itemsize
        self.rec = np.frombuffer(raw, K.USER, 1, 0).copy()
        nv = k * dim
        self.V = np.frombuffer(raw, np.float32, nv, o).reshape(k, dim).copy()
        o += 4 * nv
        self.A = np.frombuffer(raw, np.float32, nv, o).reshape(k, dim).copy()
        o += 4 * nv
        self.ring = np.frombuffer(raw, np.int32, n_ring, o).copy()
        o += 4 * n_ring
        self.hseq = np.frombuffer(raw, np.float32, dim, o).copy()
        o += 4 * dim
        self.signals = SignalState.from_bytes(n_cat, last_session, memoryview(raw)[o:])
        return self

    def __reduce__(self) -> tuple:
        return (_unpack_user_state, (self.pack(),))


def _unpack_user_state(packed: tuple) -> UserState:
    return UserState.unpack(packed)


def _uhash(user_id: str) -> int:
    """The user's stable 64-bit hash as int64 (two's complement), the kernel's type."""
    h = stable_hash64(user_id)
    return h - (1 << 64) if h >= 1 << 63 else h


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1.0 - p))


def learner_params(cfg: OnlineConfig, base: BaseView) -> np.ndarray:
    """The learner's constants as the kernel reads them (a one-element
    :data:`online_model.kernels.PARAMS` array): ``cfg`` with its lengths in the base's units.
    The one place where the configuration becomes the kernel's parameters."""
    s = base.scale
    par = np.zeros(1, K.PARAMS)
    p = par[0]
    p["lr"], p["clip"] = cfg.lr, cfg.grad_clip * s
    p["inv_temp"] = 1.0 / (cfg.temperature * s * s)
    p["ortho"] = cfg.ortho_threshold + cfg.ortho_margin
    p["rho"] = cfg.trust_radius * s
    # On a DIAM base the anchors are the network's interests, whose norms are its own (the
    # global slot is a mean plus a correction): the trust region around them bounds the
    # vectors, and a norm bound in item units would only cut the network's output.
    p["max_norm"] = np.inf if base.head is not None else cfg.max_norm * s
    p["step_cap"], p["drift_cap"] = cfg.step_cap * s, cfg.drift_cap * s
    p["d_lr"], p["d_pull"], p["d_step_cap"] = cfg.d_lr, cfg.d_prior_pull, cfg.d_step_cap
    p["d_max_offset"], p["d_bound"] = cfg.d_max_offset, cfg.d_logit_bound
    p["burst"], p["per_s"], p["freeze_ms"] = cfg.rate_burst, cfg.rate_per_s, cfg.freeze_ms
    (p["session_gap_ms"], p["explore_fading"], p["session_fading"], p["short_decay"],
     p["long_decay"]) = SIGNAL_CONSTS
    p["dim"], p["n_neg"] = base.dim, cfg.n_negatives
    p["regate_every"], p["reanchor_every"] = cfg.regate_every, cfg.reanchor_every
    p["guards"], p["learn"] = cfg.guards, cfg.learn
    p["rollback"] = cfg.drift_policy == "rollback"
    head = base.head
    p["network"] = head is not None
    # the network's window: its last seq_len items, or infer_items when that is shorter
    seq_len = head.seq_len if head is not None else 0
    p["window"] = min(seq_len, cfg.infer_items) if cfg.infer_items else seq_len
    p["k_max"] = min(cfg.k_max, base.k_max)
    p["k_hysteresis"], p["k_hysteresis_up"] = cfg.k_hysteresis_pair()
    p["k_settle"], p["k_margin"] = cfg.k_settle_items, cfg.k_gate_margin
    p["residual"] = cfg.reanchor_residual
    p["keep"] = cfg.reanchor_keep
    p["reanchor_cos"] = cfg.reanchor_cos
    p["reanchor_explore"] = cfg.reanchor_explore
    p["reanchor_gap"] = cfg.reanchor_gap
    p["refresh"] = cfg.refresh_global and head is not None and head.global_slot_on
    p["prior_weight"] = SESSION_PRIOR_WEIGHT
    return par


class OnlineLearner:
    """Applies clicks to user states against one base model. Holds no per-user data.

    ``bases`` remembers the bases this learner and its predecessors served (see
    :class:`KnownBases`); a learner that replaces another on a hot reload takes the old one's.
    """

    def __init__(self, base: BaseView, cfg: OnlineConfig, bases: KnownBases | None = None) -> None:
        if base.dim != cfg.dim:
            raise ValueError(f"base dimension {base.dim} differs from the configured dim {cfg.dim}")
        self.cfg = cfg
        self.bases = KnownBases() if bases is None else bases
        self.inferences = 0
        """How many times this learner ran the network (a count for cost reports), exact with
        several worker threads sharing the learner too: they add to it under ``_count_lock``."""
        self._count_lock = threading.Lock()
        self.release_gil = False
        """Whether the network's compiled calls release the GIL: set when worker threads share
        this learner (``streams.runner.run_online`` with ``workers > 1``), so that their
        learning runs on several cores at once; off with one worker, where a release only lets
        another Python thread in. The arithmetic is the same either way."""
        self._set_base(base)

    def _set_base(self, base: BaseView) -> None:
        self.base = base
        self.bases.add(base)
        cfg = self.cfg
        self._max_norm = cfg.max_norm * base.scale
        self._drift_cap = cfg.drift_cap * base.scale
        # negatives come from the items the base can embed
        self._table = NegativeTable(np.flatnonzero(base.item_norms > 0)).table
        # what the compiled kernel reads, prepared once per base
        self._template: UserState | None = None  # new users are copies of it (new_state)
        self._version = base.version
        self._index = base._index
        self._emb_flat = base.item_emb.reshape(-1)
        self._dim, self._norms, self._cats = base.dim, base.item_norms, base.item_categories
        self._divq = base.div_quantiles
        self._par = learner_params(cfg, base)
        self.k_max = int(self._par[0]["k_max"])
        self._head = base.head  # the network, anchoring in the per-event kernel; None: k-means
        # where the anchoring kernel writes a changed K_u's arrays: one per thread (Bytewax
        # workers of one process share the learner)
        self._local = threading.local()

    def succeed(self, previous: OnlineLearner) -> None:
        """Take over ``previous``'s known bases (a hot reload replaces it by this learner), so
        that a user recorded under an older base keeps its recent items by id."""
        previous.bases.add(self.base)
        self.bases = previous.bases

    def warm_up(self) -> None:
        """Compile (or load from cache) the kernels now, not on the first event: on a DIAM
        base, clicks on throw-away users run the fused kernels' network path too (one click,
        and a batch of two)."""
        K.warm_up()
        known = np.flatnonzero(self.base.item_norms > 0)
        if self._head is not None and len(known):
            before, shared = self.inferences, self.release_gil  # not a user's inferences
            item = str(self.base.item_ids[known[0]])
            for self.release_gil in (False, True):  # both twins (workers may share it later)
                self.apply(self.new_state("warm-up"), item, 0, 0)
                self.apply_many(self.new_state("warm-up"),
                                [(item, 0, 0, None), (item, 1, 1, None)])
            self.inferences, self.release_gil = before, shared

    # -- public API ----------------------------------------------------------------------------
    def new_state(self, user_id: str) -> UserState:
        t = self._template
        if t is None or t.version != self.base.version or t.items_fp != self.base.fingerprint:
            t = self._template = UserState(
                "", self.base.dim, self.base.n_categories, self.base.version, self.base.fingerprint,
                self.cfg.recent_len, float(self.cfg.rate_burst),
            )
        return t.clone_for(user_id)

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
        The arithmetic is one compiled call: :func:`online_model.kernels.learn_event_diam` on a
        DIAM base (the step, then the network's anchoring or slot 0's refresh), else
        :func:`online_model.kernels.learn_event`; this method turns its
        :class:`~online_model.kernels.Outcome` into drift events, takes a changed K_u's
        arrays, and (without the network) anchors new users and re-gates K_u.
        """
        out: list[DriftEvent] = []
        if session_id is not None and type(session_id) is not str:
            # (the stream's validation refuses it first; a direct caller learns why here)
            raise TypeError(f"session_id: expected a string or None, got {type(session_id).__name__}")
        if state.version != self._version:  # a new base: re-anchor first (not for a duplicate)
            if state.applied(offset):
                return out
            out.extend(self.reanchor(state))
        idx = self._index.get(item_id, -1) if type(item_id) is str else self.base.index_of(item_id)
        sig = state.signals
        mode = -1 if session_id is None else int(session_id != sig.last_session)
        hd = self._head
        if hd is not None:  # the network's work for this click runs in the same call
            step = K.learn_event_diam_nogil if self.release_gil else K.learn_event_diam
            bits, k, rms, ran, d_logit = step(
                state.rec, state.Vf, state.Af, state.ring, sig.buf, sig.n_categories,
                self._emb_flat, self._norms, self._cats, self._divq, self._table, self._par,
                idx, mode, int(ts_ms), int(offset),
                state.hseq, hd._emb_flat, hd.item_cat, hd._buf, hd._off, hd._dims,
                hd.fusion_w, hd.fusion_b, self._scratch(),
            )
        else:
            bits, k, rms = K.learn_event(
                state.rec, state.Vf, state.Af, state.ring, sig.buf, sig.n_categories,
                self._emb_flat, self._norms, self._cats, self._divq, self._table, self._par,
                idx, mode, int(ts_ms), int(offset),
            )
            ran, d_logit = -2, None
        o = OUTCOMES[bits]
        if o.duplicate:
            return out
        if (not o.frozen and session_id is not None and 0 <= idx
                and 0 <= self._cats[idx] < sig.n_categories):
            sig.last_session = session_id
        return self._after_kernel(state, o, k, rms, ran, d_logit, out)

    def apply_many(self, state: UserState,
                   clicks: list[tuple[str, int, int, str | None]],
                   ) -> list[Sequence[DriftEvent] | Exception]:
        """:meth:`apply` on one user's clicks ``(item_id, ts_ms, offset, session_id)`` in
        order, with the same result bit for bit: on a DIAM base the clicks go to the compiled
        kernel together (:func:`online_model.kernels.learn_events_diam`), which hands back
        only the clicks that need this method (a drift event, a first anchoring, a new K_u),
        so a batch of a user's clicks costs one call, not one per click. Returns, per click,
        its drift events, or the exception that failed it (the click is lost to learning,
        its offset applied, as with :meth:`apply`; the others go on)."""
        hd = self._head
        results: list[Sequence[DriftEvent] | Exception] = []
        m = len(clicks)
        i = 0
        if hd is None or m < 2:
            return [self._apply_or_error(state, click) for click in clicks]
        # a user recorded under another base is re-anchored by apply, on its first click
        while i < m and state.version != self._version:
            results.append(self._apply_or_error(state, clicks[i]))
            i += 1
        if i == m:
            return results
        sig = state.signals
        try:
            ev, codes, names = self._coded(clicks[i:])
            last = -2 if sig.last_session is None else codes.get(sig.last_session, -2)
        except Exception:  # noqa: BLE001 - a click the stream's validation would refuse
            # (from a direct caller): apply says, click by click, which one and why
            return results + [self._apply_or_error(state, click) for click in clicks[i:]]
        prog = np.array([0, last, 0], np.int64)
        learn = K.learn_events_diam_nogil if self.release_gil else K.learn_events_diam
        none: tuple[DriftEvent, ...] = ()
        j = 0  # rows of ev applied
        n = len(ev)
        while j < n:
            prog[0] = prog[2] = 0  # not a previous call's, should this one fail before its loop
            try:
                done, bits, k, rms, ran, d_logit, runs, last = learn(
                    state.rec, state.Vf, state.Af, state.ring, sig.buf, sig.n_categories,
                    self._emb_flat, self._norms, self._cats, self._divq, self._table, self._par,
                    ev[j:], last, state.hseq, hd._emb_flat, hd.item_cat, hd._buf, hd._off,
                    hd._dims, hd.fusion_w, hd.fusion_b, self._scratch(), prog,
                )
            except Exception as exc:  # noqa: BLE001 - the click being applied failed
                failed, last = j + int(prog[0]), int(prog[1])
                self._ran(int(prog[2]))  # the runs of the clicks before it
                results.extend([none] * (failed - j))
                results.append(exc)
                j = failed + 1
                continue
            self._ran(runs)
            results.extend([none] * (done - 1))
            j += done
            if ran == -2 and bits == 0:  # every click applied, none handed back
                results.append(none)
                continue
            try:
                results.append(self._after_kernel(state, OUTCOMES[bits], k, rms, ran, d_logit,
                                                  []))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        if last >= 0:
            sig.last_session = names[last]
        return results

    def _ran(self, runs: int) -> None:
        """Count ``runs`` runs of the network. Under a lock: worker threads sharing the
        learner add at once (a read-modify-write of the attribute is not atomic by contract).
        Most calls ran none and take no lock."""
        if not runs:
            return
        with self._count_lock:
            self.inferences += runs

    def _apply_or_error(self, state: UserState, click: tuple[str, int, int, str | None],
                        ) -> Sequence[DriftEvent] | Exception:
        """:meth:`apply` on one click, or the exception that failed it (handed to the caller)."""
        try:
            return self.apply(state, *click)
        except Exception as exc:  # noqa: BLE001 - handed to the caller, per click
            return exc

    def unknown_items(self, clicks: Sequence[tuple[Any, ...]]) -> int:
        """How many of ``clicks`` (``(item_id, ...)``, as :meth:`apply_many` takes them) are on
        items the base does not know: they update the signals only (the stream counts them).
        An id the base knows without an embedding (a zero row) is cold to the kernel too, and
        not counted here: that is the base's own gap, not an id that does not match."""
        index = self._index  # str ids to rows (every row in it is >= 0)
        n = 0
        for c in clicks:  # a plain loop: the stream counts every batch's clicks here
            x = c[0]
            if x not in index and (type(x) is str or self.base.index_of(x) < 0):
                n += 1
        return n

    def _coded(self, clicks: list[tuple[str, int, int, str | None]],
               ) -> tuple[np.ndarray, dict[str, int], list[str]]:
        """The rows :func:`online_model.kernels.learn_events_diam` reads (item row, session
        code, event time, offset) and the session codes: one per distinct session id, in
        order of first appearance (-1: no session)."""
        index = self._index
        codes: dict[str, int] = {}
        names: list[str] = []
        rows = []
        for item_id, ts_ms, offset, session_id in clicks:
            if session_id is None:
                code = -1
            else:
                code = codes.get(session_id, -1)
                if code < 0:
                    code = codes[session_id] = len(names)
                    names.append(session_id)
            rows.append((index.get(item_id, -1) if type(item_id) is str
                         else self.base.index_of(item_id), code, ts_ms, offset))
        return np.array(rows, dtype=np.int64), codes, names

    def _after_kernel(self, state: UserState, o: Any, k: int, rms: float, ran: int,
                      d_logit: float | None, out: list[DriftEvent]) -> list[DriftEvent]:
        """What :meth:`apply` does after the kernel for a click that was not a duplicate (and
        whose session is done), and :meth:`apply_many` for a click the kernel handed back:
        the freeze, anchoring, guard and drift-cap events, K_u."""
        if o.frozen:
            if o.froze_now:
                out.append(self._event(state, "freeze", rate_per_s=self.cfg.rate_per_s,
                                       until_ms=int(state.frozen_until_ms)))
            return out  # a burst: nothing about this user is learnt until the freeze ends
        hd = self._head
        if o.cold:
            return out  # cold item: no embedding to learn from
        if o.unanchored:
            if hd is not None:  # anchored on the network by the kernel
                self._took_anchors(state, ran, True, None)
            elif state.n_recent >= self.cfg.anchor_min_items:
                self._anchor(state, out)
            else:
                state.V = state.A = self._mean_vector(state)
            return out
        if o.step_capped or o.drift_capped or o.cap_reached:
            # the step's events carry d_u as the step left it (the kernel may have re-anchored
            # since, which moves d_u's prior)
            at: dict[str, float] = {} if d_logit is None else {
                "d": round(1.0 / (1.0 + math.exp(-d_logit)), 4)}
            if o.step_capped:
                out.append(self._event(state, "guard_trip", guard="step_cap", interest=int(k),
                                       **at))
            if o.drift_capped and self.cfg.drift_policy == "rollback":
                out.append(self._event(state, "rollback", drift=rms / self.base.scale, **at))
            elif o.cap_reached:  # report reaching the cap, not every event at it
                out.append(self._event(state, "guard_trip", guard="drift_cap",
                                       drift=rms / self.base.scale, **at))
        # K_u: on a DIAM base from the full gate at each re-anchoring (with hysteresis), else
        # from the light gate every regate_every steps
        if o.reanchor:  # re-anchored on the network by the kernel (only a DIAM base asks)
            self._took_anchors(state, ran, False, out)
        elif o.regate:  # (a DIAM base's refresh_global was done by the kernel too)
            k_before = state.k
            self._regate(state, out)
            if self.cfg.guards and state.k != k_before:
                # A split or merge moves vectors and anchors together, but the result can sit
                # farther from its anchors than the cap allows; the cap must hold after every
                # event, so clamp again (found by the hypothesis constraint test).
                state.V, _ = cap_drift(state.V, state.A, self._drift_cap)
        return out

    def reanchor(self, state: UserState, base: BaseView | None = None) -> list[DriftEvent]:
        """Re-anchor ``state`` on ``base`` (default: this learner's base; a different base
        replaces it for all later calls): anchors become the centroids of the user's recent
        items under the base, vectors restart at the anchors. Recent item rows are mapped by
        item id when the item table changed (through the newest known table of the line the user
        was recorded under, :class:`KnownBases`); if that table is unknown they are dropped."""
        if base is not None and base is not self.base:
            self._set_base(base)
        base = self.base
        old_version = state.version
        if state.items_fp != base.fingerprint:
            old = self.bases.get(state.items_fp, state.version)
            if old is None:
                state.recent = np.zeros(0, dtype=np.int32)
            else:
                recent = state.recent
                recent = recent[recent < len(old.item_ids)]  # (not a row of it: not its item)
                rows = np.array(
                    [base.index_of(x) for x in old.item_ids[recent]], dtype=np.int64
                )
                rows = rows[rows >= 0]
                state.recent = rows[base.item_norms[rows] > 0].astype(np.int32)
            if state.signals.n_categories != base.n_categories:
                state.signals = SignalState(base.n_categories)
            state.items_fp = base.fingerprint
        state.version = base.version
        state.anchored = False
        if state.n_recent and (base.head is not None
                               or state.n_recent >= self.cfg.anchor_min_items):
            self._anchor(state)
        elif state.n_recent:
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
        return K.mean_row(state.ring, state.n_recent, self._emb_flat, self._dim, self._max_norm)

    def _propose_k(self, state: UserState, sig: np.ndarray) -> int:
        base, cfg = self.base, self.cfg
        n = state.n_recent
        if base.has_gate:
            k = base.propose_k(K.ring_mean(state.ring, n, self._emb_flat, base.dim), sig)
        elif cfg.no_gate_policy == "categories":
            eff = K.effective_categories(state.signals.buf, state.signals.n_categories)
            k = int(math.floor(eff + 0.5))
        else:
            k = cfg.k_fixed
        distinct = K.ring_distinct(state.ring, n)
        return max(1, min(k, self.k_max, distinct))

    def _anchor(self, state: UserState, out: list[DriftEvent] | None = None) -> None:
        """Anchor ``state`` on the base: DIAM's interests of the recent items when the base
        has the network's head (K_u from its full gate, d_u's prior from its fusion layer),
        else centroids of the recent items. A first anchoring (or one after a new snapshot)
        starts the vectors at the anchors; a periodic re-anchoring restarts them there too, or
        keeps (``reanchor_residual``) a share ``reanchor_keep`` of the learnt offsets, and
        changes K_u only after ``k_hysteresis`` equal proposals (on the network, a gate within
        ``k_gate_margin`` of the current K_u's bucket proposing it)."""
        if self.base.head is not None:
            self._anchor_diam(state, out)
            return
        sig = state.signals.values()
        k = self._propose_k(state, sig)
        # centroids of the distinct recent items (repeats would skew the seeding), norm-bounded
        A = K.anchors_from_ring(state.ring, state.n_recent, self._emb_flat, self._dim, k,
                                self._max_norm, 5)
        state.A, state.V = A, A.copy()
        K.anchored(state.rec, A.shape[0], self._prior_logit(sig))

    def _scratch(self) -> np.ndarray:
        """This thread's buffer for :func:`online_model.kernels.anchor_diam`'s changed arrays."""
        buf = getattr(self._local, "out", None)
        if buf is None:
            buf = self._local.out = np.empty(2 * self.k_max * self._dim, np.float32)
        return buf

    def _anchor_diam(self, state: UserState, out: list[DriftEvent] | None) -> None:
        """Anchor ``state`` on the network (:func:`online_model.kernels.anchor_diam`, the
        kernel the per-event path runs too): outside a click, after a new base."""
        if state.n_recent == 0:
            raise ValueError("a user needs at least one known item to be inferred")
        hd = self._head
        assert hd is not None
        first = not state.anchored
        sig = state.signals
        ran = K.anchor_diam(state.rec, state.ring, sig.buf, sig.n_categories, state.Vf,
                            state.Af, state.hseq, hd._emb_flat, hd.item_cat, hd._buf, hd._off,
                            hd._dims, hd.fusion_w, hd.fusion_b, self._par, self._scratch())
        self._took_anchors(state, ran, first, out)

    def _took_anchors(self, state: UserState, ran: int, first: bool,
                      out: list[DriftEvent] | None) -> None:
        """After the anchoring kernel: a first anchoring's K_u anchors (``ran`` of them) are in
        the scratch buffer and the vectors start at them; a periodic one changed the arrays in
        place (``ran`` -1) or, with a new K_u, left them in the buffer (a ``k_change`` event).
        The anchors and vectors are float32 [K_u, d] as before: the learnt offsets (with
        ``reanchor_residual``, their share ``reanchor_keep``) ride on the network's new
        output, a new interest starts at its anchor, a dropped one takes its offset with it;
        K_u changes after ``k_hysteresis`` equal proposals, a gate within ``k_gate_margin`` of
        the current K_u's bucket proposing it (guards, once ``k_settle_items`` are known)."""
        self._ran(1)
        d = self._dim
        buf = self._scratch()
        if first:
            state.A = buf[:ran * d].reshape(ran, d).copy()
            state.V = state.A.copy()
        elif ran >= 0:
            old_k, o = state.k, self.k_max * d
            state.A = buf[:ran * d].reshape(ran, d).copy()
            state.V = buf[o:o + ran * d].reshape(ran, d).copy()
            if out is not None:
                out.append(self._event(state, "k_change", k_from=old_k, k_to=ran))

    def _prior_logit(self, sig: np.ndarray) -> float:
        b = self.cfg.d_logit_bound
        return min(max(_logit(self.base.d_prior(sig)), -b), b)

    def _regate(self, state: UserState, out: list[DriftEvent]) -> None:
        sig = state.signals.values()
        state.d_prior = self._prior_logit(sig)
        p = self._propose_k(state, sig)
        h, h_up = self.cfg.k_hysteresis_pair()
        old = state.k
        if K.propose_k(state.rec, old, p, h, h_up) == old:
            return
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
        out.append(self._event(state, "k_change", k_from=old, k_to=state.k))
