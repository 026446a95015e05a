"""The four diversity signals of a user, incrementally (O(1) per event) and from a full history.

Both paths compute the same numbers: :class:`SignalState` is fed one click at a time in the
stream, :func:`batch_signals` recomputes from the whole history with closed forms (offline
training features). The unit tests check that they agree on every prefix.

Order of the output, each value in [0, 1] (0.5 means "nothing known yet"):

0. **personality** -- openness (distinct categories seen / categories that could have been seen)
   averaged with extraversion (``1 - sessions / clicks``: long sessions = engaged user);
1. **session_purpose** -- how much the *current* session browses rather than pursues one goal:
   mean of the category switch rate and ``1 - share of the top category``, shrunk towards an
   exponentially weighted mean of past sessions (so the first click of a session is not an
   uninformative 0);
2. **exploration** -- exponentially weighted share of clicks whose category did not occur in the
   previous ``EXPLORE_WINDOW`` clicks ("far from the user's current interests", measured on
   categories so that it needs no vectors);
3. **distribution** -- mean of the normalised entropy of the long-term decayed category counts and
   the Jensen-Shannon divergence (base 2) of the short-term vs long-term decayed distributions.

A session is a run of clicks with the same ``session_id`` or, without ids, with gaps of at most
``SESSION_GAP_MS``. Clicks with a negative (unknown) category are ignored by both paths.

>>> import numpy as np
>>> s = SignalState(n_categories=3)
>>> for c, t in [(0, 0), (0, 1000), (1, 2000), (2, 3_000_000)]:
...     _ = s.update(c, t)
>>> np.allclose(s.values(), batch_signals(np.array([0, 0, 1, 2]), np.array([0, 1000, 2000, 3_000_000]), 3))
True
"""

from __future__ import annotations

import math

import numpy as np

from online_model import kernels as K

__all__ = [
    "SIGNAL_NAMES",
    "SESSION_GAP_MS",
    "EXPLORE_WINDOW",
    "SignalState",
    "batch_signals",
]

SIGNAL_NAMES = ("personality", "session_purpose", "exploration", "distribution")

SESSION_GAP_MS = 30 * 60 * 1000
"""The customary 30-minute inactivity cut used by web analytics to split sessions."""

EXPLORE_WINDOW = 20
"""A click explores when its category is absent from this many previous clicks: about two
sessions of a typical ml-100k rater, long enough that alternating between two tastes is not
counted as exploring."""

EXPLORE_FADING = 0.1
"""River fading factor of the exploration rate: an effective memory of ~10 clicks."""

SESSION_FADING = 0.3
"""River fading factor over closed sessions: the last ~3 sessions dominate the session prior."""

SESSION_PRIOR_WEIGHT = 2.0
"""Pseudo-clicks given to the past-session prior when scoring the current session."""

SHORT_DECAY = 0.8
"""Per-click decay of the short-term category counts (~5-click memory: the current session)."""

LONG_DECAY = 0.98
"""Per-click decay of the long-term category counts (~50-click memory, the model's sequence
length), so recent and long-term tastes can diverge."""

_PRIOR = 0.5
_LN2 = math.log(2.0)

SIGNAL_CONSTS = (float(SESSION_GAP_MS), EXPLORE_FADING, SESSION_FADING, SHORT_DECAY, LONG_DECAY)
"""The constants the compiled update takes, in its argument order."""
assert EXPLORE_WINDOW == K.WINDOW


_distribution = K.distribution
"""The distribution signal from short- and long-term counts (compiled, shared with the
per-event kernel): mean of the normalised long-term entropy and the base-2 Jensen-Shannon
divergence of short vs long."""


_session_score = K._session_score
"""Score of one session: mean of its category switch rate and ``1 - share of its top category``
(compiled, shared with the per-event kernel)."""


class SignalState:
    """Incremental signal accumulators of one user; O(n_categories) memory, O(1) per click.

    The accumulators live in one float64 buffer (layout in :mod:`online_model.kernels`) that
    the compiled per-event kernel updates in place; the exponentially weighted means follow
    River's ``stats.EWMean`` (a test checks them against River). ``update`` returns this
    click's exploration flag (1.0 when its category is new to the recent window), which feeds
    the exploration signal (d_u's step aims at ``kernels.diversity_target`` instead).
    """

    __slots__ = ("n_categories", "buf", "last_session")

    def __init__(self, n_categories: int) -> None:
        if n_categories < 1:
            raise ValueError("n_categories must be >= 1")
        self.n_categories = int(n_categories)
        self.buf = np.zeros(K.sig_size(self.n_categories))
        self.buf[K.S_HEAD : K.S_HEAD + K.WINDOW] = -1.0  # the ring of recent categories
        # prior pseudo-observations: no extreme value after one click
        self.buf[K.S_EXPLORE] = self.buf[K.S_SESS_EWM] = self.buf[K.S_LAST_EXPLORE] = _PRIOR
        self.last_session: str | None = None

    def fresh_copy(self) -> SignalState:
        """A new state with this one's accumulators (cheaper than ``__init__``: the learner
        keeps an initial state as a template and copies it for every new user)."""
        other = SignalState.__new__(SignalState)
        other.n_categories, other.buf, other.last_session = self.n_categories, self.buf.copy(), self.last_session
        return other

    def _part(self, i: int) -> np.ndarray:
        start = K.S_HEAD + K.WINDOW + i * self.n_categories
        return self.buf[start : start + self.n_categories]

    @property
    def head(self) -> np.void:
        """The buffer's scalar head as a record (:data:`online_model.kernels.SIG_HEAD`): read
        and written by name, the same memory the kernels update."""
        return self.buf[: K.S_HEAD].view(K.SIG_HEAD)[0]

    @property
    def n(self) -> int:
        return int(self.buf[K.S_N])

    @property
    def n_sessions(self) -> int:
        return int(self.buf[K.S_SESSIONS])

    @property
    def distinct(self) -> int:
        return int(self.buf[K.S_DISTINCT])

    @property
    def short(self) -> np.ndarray:
        """Short-term decayed category counts (a view)."""
        return self._part(3)

    @property
    def long(self) -> np.ndarray:
        """Long-term decayed category counts (a view)."""
        return self._part(4)

    @property
    def last_explore(self) -> float:
        return float(self.buf[K.S_LAST_EXPLORE])

    def update(self, category: int, ts_ms: int, session_id: str | None = None) -> float:
        """Feed one click; returns its exploration flag (0.0 or 1.0; 0.5 if not scored)."""
        c = int(category)
        mode = -1 if session_id is None else int(session_id != self.last_session)
        flag = K.signals_update(self.buf, self.n_categories, c, mode, int(ts_ms), *SIGNAL_CONSTS)
        if 0 <= c < self.n_categories:
            self.last_session = session_id
        return float(flag)

    def values(self) -> np.ndarray:
        """float32 [4] in SIGNAL_NAMES order."""
        return np.asarray(
            K.signal_values(self.buf, self.n_categories, SESSION_PRIOR_WEIGHT), dtype=np.float32
        )

    # Compact form (Bytewax snapshots every touched user each epoch): the scalar head as
    # float64, the window and the three count vectors ("seen" included) as int32, the decayed
    # counts as float64, in one byte string. ~0.7 KB at 19 categories.
    def to_bytes(self) -> bytes:
        """The accumulators as one byte string (``from_bytes`` inverts it, given
        ``n_categories`` and ``last_session``, which travel separately)."""
        b, c = self.buf, self.n_categories
        w0 = K.S_HEAD + K.WINDOW
        return b"".join((
            b[: K.S_HEAD].tobytes(),
            b[K.S_HEAD : w0 + 3 * c].astype(np.int32).tobytes(),  # window, win_count, sess, seen
            b[w0 + 3 * c :].tobytes(),  # short, long
        ))

    @classmethod
    def from_bytes(cls, n_categories: int, last_session: str | None, raw: bytes | memoryview) -> SignalState:
        c = int(n_categories)
        w0 = K.S_HEAD + K.WINDOW
        n_i32 = w0 - K.S_HEAD + 3 * c
        n_dec = K.sig_size(c) - (w0 + 3 * c)
        need = 8 * K.S_HEAD + 4 * n_i32 + 8 * n_dec
        if len(raw) != need:
            raise ValueError(f"signal state: {len(raw)} bytes, expected {need} for {c} categories")
        self = cls.__new__(cls)
        self.n_categories, self.last_session = c, last_session
        buf = np.empty(K.sig_size(c))
        o = 8 * K.S_HEAD
        buf[: K.S_HEAD] = np.frombuffer(raw, np.float64, K.S_HEAD, 0)
        buf[K.S_HEAD : w0 + 3 * c] = np.frombuffer(raw, np.int32, n_i32, o)
        o += 4 * n_i32
        buf[w0 + 3 * c :] = np.frombuffer(raw, np.float64, n_dec, o)
        self.buf = buf
        return self

    def __reduce__(self) -> tuple:
        return (_signals_from_bytes, (self.n_categories, self.last_session, self.to_bytes()))


def _signals_from_bytes(n_categories: int, last_session: str | None, raw: bytes) -> SignalState:
    return SignalState.from_bytes(n_categories, last_session, raw)


def _ew_closed_form(x: np.ndarray, fading: float) -> float:
    """River's EWMean after updating with x[0], x[1], ...: x[0] seeds the mean."""
    n = len(x)
    w = fading * (1.0 - fading) ** np.arange(n - 1, -1, -1, dtype=np.float64)
    w[0] = (1.0 - fading) ** (n - 1)
    return float((w * x).sum())


def batch_signals(categories: np.ndarray, ts_ms: np.ndarray, n_categories: int) -> np.ndarray:
    """The four signals from a user's whole history, float32 [4] in [0, 1].

    ``categories`` int [E] (primary category per click, negative = unknown, skipped) and
    ``ts_ms`` int [E] in time order. Equals :class:`SignalState` fed the same clicks without
    session ids. Feed the full history: the decays forget slowly, a truncated history gives
    slightly different numbers.
    """
    cats = np.asarray(categories, dtype=np.int64)
    ts = np.asarray(ts_ms, dtype=np.int64)
    if cats.shape != ts.shape:
        raise ValueError("categories and ts_ms must have the same length")
    keep = (cats >= 0) & (cats < n_categories)
    cats, ts = cats[keep], ts[keep]
    n = len(cats)
    if n == 0:
        return np.full(4, _PRIOR, dtype=np.float32)

    # sessions: cut where the gap exceeds SESSION_GAP_MS
    starts = np.flatnonzero(np.r_[True, np.diff(ts) > SESSION_GAP_MS])
    n_sessions = len(starts)
    openness = len(np.unique(cats)) / min(n_categories, n + 1)
    personality = 0.5 * openness + 0.5 * (1.0 - n_sessions / n)

    sess = np.cumsum(np.r_[True, np.diff(ts) > SESSION_GAP_MS]) - 1  # session index per click
    lengths = np.bincount(sess, minlength=n_sessions)
    inner = np.flatnonzero(sess[1:] == sess[:-1])  # consecutive pairs inside one session
    sw = np.bincount(
        sess[1:][inner], weights=cats[1:][inner] != cats[:-1][inner], minlength=n_sessions
    )
    per = np.zeros((n_sessions, n_categories), dtype=np.int64)
    np.add.at(per, (sess, cats), 1)
    tops = per.max(axis=1)
    scores = [
        _session_score(int(m), int(k), int(t)) for m, k, t in zip(lengths, sw, tops, strict=True)
    ]
    prev = _ew_closed_form(np.array([_PRIOR, *scores[:-1]]), SESSION_FADING)
    length = n - starts[-1]
    w = SESSION_PRIOR_WEIGHT
    purpose = (length * scores[-1] + w * prev) / (length + w)

    # exploration flag of click t>0: distance to the previous click of the same category
    idx = np.arange(n)
    order = np.lexsort((idx, cats))
    prev_same = np.full(n, -1, dtype=np.int64)
    same = cats[order][1:] == cats[order][:-1]
    prev_same[order[1:][same]] = order[:-1][same]
    flags = ((prev_same < 0) | (idx - prev_same > EXPLORE_WINDOW)).astype(np.float64)[1:]
    exploration = _ew_closed_form(np.r_[_PRIOR, flags], EXPLORE_FADING)

    age = np.arange(n - 1, -1, -1, dtype=np.float64)
    short = np.bincount(cats, weights=SHORT_DECAY**age, minlength=n_categories)
    long = np.bincount(cats, weights=LONG_DECAY**age, minlength=n_categories)
    dist = _distribution(short, long, n_categories)

    out = np.asarray([personality, purpose, exploration, dist], dtype=np.float32)
    return np.clip(out, 0.0, 1.0)
