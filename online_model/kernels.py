"""Compiled per-event kernels of the online learner (numba, no fastmath: IEEE results, hence bit
for bit the same on every run of the same machine type; numpy's error model: a division by
zero gives inf/nan as in numpy instead of raising).

Why: the update touches a K×d block (K ≤ 8, d = 64) and ~17 candidate items per click. As a
chain of numpy calls its cost is almost all call overhead on tiny arrays; fused into loops it
is a small share of the stream's per-event budget (``bench/results/stream.md``).

This module is the single implementation of the update's arithmetic. ``online_model.guards``,
``online_model.routing`` and ``online_model.signals`` keep their documented numpy-facing
functions and call these; :class:`online_model.online.OnlineLearner` calls
:func:`learn_event` once per click.

What a kernel reads and writes has names:

- :data:`USER`, one record per user (a numpy structured dtype that numba reads field by field):
  d_u's logit and prior, the rate limit's token bucket, the recent-item ring's bookkeeping, the
  event counters, K_u's pending proposal and the guard flags. Its bytes are the fixed-size part
  of the user's snapshot (:meth:`online_model.online.UserState.pack`);
- :data:`PARAMS`, the learner's constants, one record per learner built from its
  ``OnlineConfig`` and base (:func:`online_model.online.learner_params`);
- :class:`Outcome`, what one click did (the caller's next steps), returned by
  :func:`learn_event` as bits and decoded by :func:`outcome` into a named tuple.

Both records travel as one-element arrays (numba reads ``user[0]`` as a reference into the
array, so the kernel's writes are the state's). The other per-user data are flat arrays, so that
a call unboxes 1-D arrays only (2-D arguments cost numba more per call): the interest vectors
``V`` and anchors ``A`` (float32 ``[K·d]``), the recent-item ring (int32), and the signal
accumulators ``sig`` (float64 ``[sig_size(C)]``: ``S_*`` scalars, then the category window
ring, its per-category counts, the session's counts, "seen" flags, the short- and long-term
decayed counts, each ``C`` long).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from online_model.corpus import DIV_MIN_ITEMS, DIV_WINDOW
from online_model.infer import _refresh_global, head_outputs

__all__ = [
    "USER",
    "PARAMS",
    "Outcome",
    "OUTCOMES",
    "outcome",
    "new_user",
    "learn_event",
    "learn_event_diam",
    "learn_events_diam",
    "anchor_diam",
    "anchored",
    "reanchored",
    "propose_k",
    "gate_proposal",
    "ring_slot",
    "ring_window",
    "diversity_target",
    "reanchor_vectors",
    "signals_update",
    "signal_values",
    "distribution",
    "effective_categories",
    "ring_distinct",
    "ring_mean",
    "clip_rows",
    "anchors_from_ring",
    "mean_row",
    "sig_size",
    "admit",
    "route",
    "softmax_step",
    "push_apart",
    "feasible",
    "cap_step",
    "cap_drift",
    "centroids",
    "warm_up",
]

# -- signal accumulator layout -------------------------------------------------------------
# One float64 buffer per user: this named head, then the window of recent categories and five
# per-category vectors (window counts, session counts, seen, short and long decayed counts).
SIG_HEAD = np.dtype(
    [
        ("n", np.float64),  # clicks seen
        ("sessions", np.float64),  # sessions started
        ("distinct", np.float64),  # categories ever seen
        ("win_pos", np.float64),  # where the window's next category goes
        ("sess_len", np.float64),  # clicks in the current session
        ("sess_switches", np.float64),  # category switches in it
        ("sess_top", np.float64),  # its most frequent category's count
        ("last_cat", np.float64),  # the last click's category
        ("last_ts", np.float64),  # the last click's event time (ms)
        ("explore", np.float64),  # exploration: EW mean of "category new to the window"
        ("sess_ewm", np.float64),  # EW mean of finished sessions' purpose scores
        ("last_explore", np.float64),  # the last click's exploration flag
        ("reserved", np.float64, (4,)),
    ]
)
"""The signal buffer's scalar head by name: the one definition of its layout. The compiled
kernels address it by the ``S_*`` offsets derived from it; Python reads it by name through
:attr:`online_model.signals.SignalState.head`."""
_SIG_FIELDS: Any = SIG_HEAD.fields  # a structured dtype has them (numpy's stubs say "or None")
(S_N, S_SESSIONS, S_DISTINCT, S_WIN_POS, S_SESS_LEN, S_SESS_SWITCHES, S_SESS_TOP, S_LAST_CAT,
 S_LAST_TS, S_EXPLORE, S_SESS_EWM, S_LAST_EXPLORE) = (
    int(_SIG_FIELDS[name][1]) // 8 for name in list(_SIG_FIELDS)[:12])
S_HEAD = SIG_HEAD.itemsize // 8
WINDOW = 20  # = signals.EXPLORE_WINDOW (checked there)


def sig_size(n_categories: int) -> int:
    return S_HEAD + WINDOW + 5 * n_categories


# -- the per-user record ----------------------------------------------------------------------
USER = np.dtype(
    [
        ("d_logit", np.float64),  # d_u's logit: the d step moves it
        ("d_prior", np.float64),  # its prior, from the fusion layer on the signals
        ("tokens", np.float64),  # rate limit: tokens left in the bucket
        ("refill_ms", np.float64),  # event time of the bucket's last refill, -1 = never
        ("frozen_until_ms", np.float64),  # event time the freeze ends, -1 = not frozen
        ("uhash", np.int64),  # stable hash of the user id: seeds the negatives with the offset
        ("n_events", np.int64),  # clicks applied (duplicates not counted)
        ("seq", np.int64),  # the last applied offset
        ("last_ts", np.int64),  # its event time (ms)
        ("n_recent", np.int64),  # known items in the recent-item ring
        ("ring_pos", np.int64),  # where the ring's next item goes
        ("n_learned", np.int64),  # gradient steps taken
        ("since_anchor", np.int64),  # DIAM base: events since the network last ran
        ("k_proposal", np.int64),  # the last proposed K_u (hysteresis)
        ("k_streak", np.int64),  # consecutive equal proposals different from K_u
        ("anchored", np.bool_),  # has anchors (else one mean vector, or nothing)
        ("frozen", np.bool_),  # the rate limit froze the user at its last click
        ("capped", np.bool_),  # the drift cap bound at the user's last step
    ],
)
"""One user's scalars; ``V``, ``A``, the ring and the signals are arrays beside it. Packed (no
padding bytes, whose content a copy does not keep), the 8-byte fields first so that each
still sits on its natural alignment."""


def new_user(uhash: int, burst: float) -> np.ndarray:
    """A fresh user record (a one-element array): a full token bucket, nothing seen yet."""
    user = np.zeros(1, USER)
    user["uhash"] = uhash
    user["tokens"], user["refill_ms"], user["frozen_until_ms"] = burst, -1.0, -1.0
    user["k_proposal"] = 1
    return user


# -- the learner's constants -------------------------------------------------------------------
PARAMS = np.dtype(
    [
        ("lr", np.float64),  # step size on the routed interest
        ("clip", np.float64),  # gradient norm clip
        ("inv_temp", np.float64),  # 1 / softmax temperature (base units)
        ("ortho", np.float64),  # cosine above which two interests are pushed apart
        ("rho", np.float64),  # trust radius around the anchor
        ("max_norm", np.float64),  # norm bound on an interest (inf: none)
        ("step_cap", np.float64),  # largest change of one interest per click (guards)
        ("drift_cap", np.float64),  # largest RMS drift from the anchors (guards)
        ("d_lr", np.float64),  # step on d_u's logit
        ("d_pull", np.float64),  # pull of the logit back to its prior
        ("d_step_cap", np.float64),  # largest change of the logit per click (guards)
        ("d_max_offset", np.float64),  # the logit stays this close to its prior
        ("d_bound", np.float64),  # absolute bound of the logit
        ("burst", np.float64),  # token bucket size (guards)
        ("per_s", np.float64),  # token refill per second of event time
        ("freeze_ms", np.float64),  # how long a user whose bucket ran dry stays frozen
        ("session_gap_ms", np.float64),  # signals: a longer gap starts a session
        ("explore_fading", np.float64),  # signals: fading of the exploration rate
        ("session_fading", np.float64),  # signals: fading over closed sessions
        ("short_decay", np.float64),  # signals: per-click decay of the short-term counts
        ("long_decay", np.float64),  # signals: per-click decay of the long-term counts
        ("dim", np.int64),  # embedding size
        ("n_neg", np.int64),  # negatives of the sampled softmax
        ("regate_every", np.int64),  # base without the network: re-propose K_u every m steps
        ("reanchor_every", np.int64),  # DIAM base: re-run the network every m events (0: never)
        ("guards", np.bool_),  # step cap, drift cap, rate limit
        ("learn", np.bool_),  # take gradient steps (False: frozen anchors)
        ("rollback", np.bool_),  # a drift-cap trip resets to the anchors instead of clamping
        ("network", np.bool_),  # the base has DIAM's network (anchors, the global slot)
        # DIAM base: what the re-anchoring on the network reads (anchor_diam)
        ("window", np.int64),  # the network reads the user's last `window` items
        ("k_max", np.int64),  # the learner's largest K_u
        ("k_hysteresis", np.int64),  # equal proposals before K_u falls (guards, settled)
        ("k_hysteresis_up", np.int64),  # ... before it grows
        ("k_settle", np.int64),  # known items before K_u's hysteresis and margin apply
        ("k_margin", np.float64),  # the gate must leave K_u's bucket by this much (settled)
        ("residual", np.bool_),  # learnt offsets ride on the network's new output
        ("keep", np.float32),  # ... this share of the interest vectors' offsets
        ("refresh", np.bool_),  # slot 0 follows the window's mean between inferences
        ("prior_weight", np.float64),  # signals: the session prior's weight
        ("reanchor_cos", np.float64),  # DIAM base: re-run now when the routed cosine is below
        ("reanchor_explore", np.bool_),  # ... and on a click of a category the last 20 lack
        ("reanchor_gap", np.int64),  # ... but only this many events after its last run
    ],
)
"""The learner's constants, read by :func:`learn_event`; lengths already in base units."""


# -- the outcome of a click --------------------------------------------------------------------
class Outcome(NamedTuple):
    """What :func:`learn_event` did with one click, and what the caller does next."""

    duplicate: bool  # the offset was applied already: nothing changed
    frozen: bool  # not learnt: the rate limit holds the user frozen
    froze_now: bool  # this click froze the user
    cold: bool  # unknown item, or one without an embedding: signals and counters only
    unanchored: bool  # a known item, but the user has no anchors yet: the caller anchors
    learnt: bool  # a gradient step was taken
    step_capped: bool  # the per-step cap bound (guards)
    drift_capped: bool  # the drift cap bound: vectors clamped, or rolled back (``rollback``)
    cap_reached: bool  # the drift cap bound and did not at the user's previous step
    reanchor: bool  # DIAM base: time to re-run the network on the user's items
    refresh_global: bool  # DIAM base: refresh the global interest (slot 0)
    regate: bool  # base without the network: time to re-propose K_u


def _bit(name: str) -> int:
    return 1 << Outcome._fields.index(name)


# the kernel's constants (numba freezes module globals at compile time)
_DUPLICATE, _FROZEN, _FROZE_NOW, _COLD = (_bit(n) for n in Outcome._fields[:4])
_UNANCHORED, _LEARNT, _STEP_CAPPED, _DRIFT_CAPPED = (_bit(n) for n in Outcome._fields[4:8])
_CAP_REACHED, _REANCHOR, _REFRESH_GLOBAL, _REGATE = (_bit(n) for n in Outcome._fields[8:])

OUTCOMES = tuple(
    Outcome(*(bool(bits >> i & 1) for i in range(len(Outcome._fields))))
    for bits in range(1 << len(Outcome._fields))
)
"""Every :class:`Outcome` by its bits: ``OUTCOMES[bits]`` names :func:`learn_event`'s result
without allocating (the learner's per-event path indexes it directly)."""


def outcome(bits: int) -> Outcome:
    """The named form of :func:`learn_event`'s bits."""
    return OUTCOMES[bits]


_EPS = 1e-12


@njit(cache=True, error_model="numpy")
def _dot(a, b) -> float:
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


# -- token bucket -------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def admit(user, ts_ms, burst, per_s, freeze_ms):
    """Token bucket on event time over the user record's ``tokens``, ``refill_ms`` and
    ``frozen_until_ms`` (-1: never refilled, not frozen). Returns ``(learn from this event,
    froze now)``."""
    u = user[0]
    tokens, last, until = u.tokens, u.refill_ms, u.frozen_until_ms
    t = np.float64(ts_ms)
    if until >= 0.0:
        if t < until:
            return False, False
        tokens, last, until = burst, t, -1.0  # thawed: a fresh bucket
    if last >= 0.0 and t > last:
        tokens = min(burst, tokens + (t - last) / 1000.0 * per_s)
    last = max(last, t)
    if tokens >= 1.0:
        u.tokens, u.refill_ms, u.frozen_until_ms = tokens - 1.0, last, until
        return True, False
    u.tokens, u.refill_ms, u.frozen_until_ms = tokens, last, t + freeze_ms
    return False, True


# -- anchoring and K_u's hysteresis --------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def anchored(user, k, prior):
    """A first anchoring (or the first on a new base): K_u = ``k`` with no pending proposal,
    d_u's logit at its ``prior``, no drift-cap trip, the count since anchoring restarted."""
    u = user[0]
    u.anchored = True
    u.capped = False
    u.since_anchor = 0
    u.k_proposal = k
    u.k_streak = 0
    u.d_prior = prior
    u.d_logit = prior


@njit(cache=True, error_model="numpy")
def reanchored(user, prior, keep_offset, bound):
    """A periodic re-anchoring on the network: d_u's prior becomes ``prior``; the logit keeps
    its learnt offset from the prior (``keep_offset``, within ±``bound``) or restarts at it."""
    u = user[0]
    u.since_anchor = 0
    if keep_offset:
        u.d_logit = min(max(prior + (u.d_logit - u.d_prior), -bound), bound)
    else:
        u.d_logit = prior
    u.d_prior = prior


@njit(cache=True, error_model="numpy")
def propose_k(user, k, p, h, h_up):
    """K_u's hysteresis: the user at K_u = ``k`` gets the proposal ``p``; returns the K_u to
    take: ``p`` once consecutive proposals equal it ``h`` times (``h_up`` times when ``p``
    is above ``k``), else ``k``."""
    u = user[0]
    if p == k:
        u.k_proposal = p
        u.k_streak = 0
        return k
    u.k_streak = u.k_streak + 1 if p == u.k_proposal else 1
    u.k_proposal = p
    if u.k_streak >= (h_up if p > k else h):
        u.k_streak = 0
        return p
    return k


@njit(cache=True, error_model="numpy")
def gate_proposal(gate_prob, k_head, k_net, k_old, margin):
    """The K_u a user at ``k_old`` is proposed by the gate: ``k_net`` (from K = floor(g ·
    k_head) + 1, ``infer.head_outputs``), unless g · k_head lies within ``margin`` (in units
    of one K) of ``k_old``'s bucket [k_old − 1, k_old), where it proposes ``k_old``: a gate
    that hovers at a bucket's edge does not start a hysteresis streak (a Schmitt trigger)."""
    if margin > 0.0:
        x = gate_prob * k_head
        if k_old - 1 - margin <= x < k_old + margin:
            return k_old
    return k_net


@njit(cache=True, error_model="numpy")
def ring_slot(cap, n, pos, m, i):
    """The ring slot of the ``i``-th of the last ``m`` items (oldest first) of a ring of
    ``cap`` slots holding ``n`` items, whose next item goes to ``pos``: the one place that
    knows the ring's order."""
    j = (pos - m if n >= cap else n - m) + i  # a full ring wraps at pos
    return j + cap if j < 0 else j


@njit(cache=True, error_model="numpy")
def ring_window(ring, n, pos, window):
    """The last ``min(n, window)`` items of the recent-item ring, oldest first, as int64 rows
    (what the network and slot 0's refresh read, and ``UserState.recent``); ``pos`` is where
    the ring's next item goes (:func:`ring_slot`)."""
    cap = ring.shape[0]
    m = min(n, window)
    out = np.empty(m, np.int64)
    for i in range(m):
        out[i] = ring[ring_slot(cap, n, pos, m, i)]
    return out


@njit(cache=True, error_model="numpy")
def diversity_target(ring, n, pos, item_cats, n_cat, div_q):
    """d_u's step target: the percentile, on the base's scale ``div_q`` (the training examples'
    realised diversity at each percentile, non-decreasing), of the category diversity the
    user's last ``DIV_WINDOW`` known clicks realised; -1 with fewer than ``DIV_MIN_ITEMS``.

    The diversity is ``metrics.realised_entropy`` (entropy of the primary categories,
    unknown ones left out, over log(min(count, n_cat))), the quantity whose training
    percentile the fusion layer's prior predicts (``corpus.future_entropy``, on the next
    items there); the percentile is the mid-rank of ``train.quantile_target`` among the
    table's points, so the step pulls d_u toward what the user's clicks show on its own scale.
    """
    m = min(n, DIV_WINDOW)
    if m < DIV_MIN_ITEMS:
        return -1.0
    # ring_window's rows, read in place: no copy on the per-event path
    cap = ring.shape[0]
    counts = np.zeros(n_cat, np.int64)
    known = 0
    for i in range(m):
        c = item_cats[ring[ring_slot(cap, n, pos, m, i)]]
        if 0 <= c < n_cat:
            counts[c] += 1
            known += 1
    top = min(known, n_cat)
    r = 0.0
    if top >= 2:
        for c in range(n_cat):
            if counts[c] > 0:
                q = counts[c] / known
                r -= q * math.log(q)
        r /= math.log(top)
    lo = np.searchsorted(div_q, r, "left")
    hi = np.searchsorted(div_q, r, "right")
    return (lo + hi) / (2.0 * div_q.shape[0])


@njit(cache=True, error_model="numpy")
def reanchor_vectors(user, vecs, p, h, h_up, Vf, Af, k_old, residual, keep, prior, bound):
    """A periodic re-anchoring on the network's output ``vecs`` [K_max, d]: K_u from the
    proposal ``p`` with hysteresis ``h`` down and ``h_up`` up (:func:`propose_k`), anchors
    the first K_u rows of ``vecs``, vectors the same plus, with ``residual``, the share
    ``keep`` (float32) of the learnt offsets ``V - A`` of the interests kept (``Vf``/``Af``:
    the old flat [k_old * d] arrays); then :func:`reanchored`. Returns the new anchors and
    vectors ([K_u, d] each)."""
    k = propose_k(user, k_old, p, h, h_up)
    d = vecs.shape[1]
    A = vecs[:k].copy()
    V = A.copy()
    if residual and keep > 0:
        m = min(k, k_old)
        for i in range(m):
            for j in range(d):  # keep 1 multiplies exactly: the bits of the whole offset
                V[i, j] += keep * (Vf[i * d + j] - Af[i * d + j])
    reanchored(user, prior, residual, bound)
    return A, V


# -- signals ---------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _session_score(length, switches, top):
    switch_rate = switches / (length - 1) if length > 1 else 0.0
    return 0.5 * switch_rate + 0.5 * (1.0 - top / length)


@njit(cache=True, error_model="numpy")
def signals_update(sig, n_cat, c, sess_mode, ts_ms, gap_ms, explore_fading, session_fading,
                   short_decay, long_decay):
    """One click of category ``c`` into the accumulators; returns its exploration flag (0 or 1,
    0.5 when not scored). ``sess_mode``: -1 = no session id (a gap > ``gap_ms`` starts a
    session), 0 = same id as the previous click, 1 = a different id. The EW means follow River's
    ``stats.EWMean``: ``m ← f·x + (1 − f)·m``."""
    if c < 0 or c >= n_cat:
        sig[S_LAST_EXPLORE] = 0.5
        return 0.5
    w0 = S_HEAD
    cnt0 = w0 + WINDOW
    sess0 = cnt0 + n_cat
    seen0 = sess0 + n_cat
    short0 = seen0 + n_cat
    long0 = short0 + n_cat
    n = sig[S_N]
    t = np.float64(ts_ms)
    if n == 0.0:
        new_session = True
    elif sess_mode >= 0:
        new_session = sess_mode == 1
    else:
        new_session = t - sig[S_LAST_TS] > gap_ms
    if new_session:
        if n > 0.0:
            score = _session_score(sig[S_SESS_LEN], sig[S_SESS_SWITCHES], sig[S_SESS_TOP])
            sig[S_SESS_EWM] = session_fading * score + (1.0 - session_fading) * sig[S_SESS_EWM]
            for j in range(n_cat):
                sig[sess0 + j] = 0.0
        sig[S_SESSIONS] += 1.0
        sig[S_SESS_LEN] = 0.0
        sig[S_SESS_SWITCHES] = 0.0
        sig[S_SESS_TOP] = 0.0
    elif c != sig[S_LAST_CAT]:
        sig[S_SESS_SWITCHES] += 1.0
    sig[S_SESS_LEN] += 1.0
    sig[sess0 + c] += 1.0
    sig[S_SESS_TOP] = max(sig[S_SESS_TOP], sig[sess0 + c])

    flag = 0.5
    if n > 0.0:
        flag = 0.0 if sig[cnt0 + c] > 0.0 else 1.0
        sig[S_EXPLORE] = explore_fading * flag + (1.0 - explore_fading) * sig[S_EXPLORE]
    pos = int(sig[S_WIN_POS])
    old = int(sig[w0 + pos])
    if old >= 0:
        sig[cnt0 + old] -= 1.0
    sig[w0 + pos] = c
    sig[cnt0 + c] += 1.0
    sig[S_WIN_POS] = (pos + 1) % WINDOW

    if sig[seen0 + c] == 0.0:
        sig[seen0 + c] = 1.0
        sig[S_DISTINCT] += 1.0
    for j in range(n_cat):
        sig[short0 + j] *= short_decay
        sig[long0 + j] *= long_decay
    sig[short0 + c] += 1.0
    sig[long0 + c] += 1.0
    sig[S_N] = n + 1.0
    sig[S_LAST_CAT] = c
    sig[S_LAST_TS] = t
    sig[S_LAST_EXPLORE] = flag
    return flag


@njit(cache=True, error_model="numpy")
def distribution(short, long, n_cat):
    """The distribution signal: mean of the normalised entropy of the long-term counts and the
    Jensen-Shannon divergence (base 2) of the short- vs long-term distributions, in [0, 1]."""
    ss, sl = 0.0, 0.0
    for j in range(n_cat):
        ss += short[j]
        sl += long[j]
    h_l = h_s = h_m = 0.0
    for j in range(n_cat):
        ps, pl = short[j] / ss, long[j] / sl
        if ps > 0.0:
            h_s -= ps * math.log(ps)
        if pl > 0.0:
            h_l -= pl * math.log(pl)
        pm = 0.5 * (ps + pl)
        if pm > 0.0:
            h_m -= pm * math.log(pm)
    h = h_l / math.log(n_cat) if n_cat > 1 else 0.0
    js = h_m - 0.5 * h_s - 0.5 * h_l
    return min(max(0.5 * h + 0.5 * js / math.log(2.0), 0.0), 1.0)


@njit(cache=True, error_model="numpy")
def signal_values(sig, n_cat, prior_weight):
    """The four signals (personality, session purpose, exploration, distribution) from the
    accumulators, each clipped to [0, 1]; 0.5 each before the first click."""
    n = sig[S_N]
    if n == 0.0:
        return 0.5, 0.5, 0.5, 0.5
    openness = sig[S_DISTINCT] / min(n_cat, n + 1.0)
    extraversion = 1.0 - sig[S_SESSIONS] / n
    length = sig[S_SESS_LEN]
    cur = _session_score(length, sig[S_SESS_SWITCHES], sig[S_SESS_TOP])
    purpose = (length * cur + prior_weight * sig[S_SESS_EWM]) / (length + prior_weight)
    short0 = S_HEAD + WINDOW + 3 * n_cat
    dist = distribution(sig[short0:short0 + n_cat], sig[short0 + n_cat:short0 + 2 * n_cat],
                        n_cat)
    a = min(max(0.5 * openness + 0.5 * extraversion, 0.0), 1.0)
    b = min(max(purpose, 0.0), 1.0)
    c = min(max(sig[S_EXPLORE], 0.0), 1.0)
    return a, b, c, min(max(dist, 0.0), 1.0)


@njit(cache=True, error_model="numpy")
def effective_categories(sig, n_cat):
    """``exp(entropy)`` of the long-term decayed category counts (1.0 before any click)."""
    long0 = S_HEAD + WINDOW + 4 * n_cat
    tot = 0.0
    for j in range(n_cat):
        tot += sig[long0 + j]
    if tot <= 0.0:
        return 1.0
    h = 0.0
    for j in range(n_cat):
        p = sig[long0 + j] / tot
        if p > 0.0:
            h -= p * math.log(p)
    return math.exp(h)


@njit(cache=True, error_model="numpy")
def ring_distinct(ring, n):
    """Number of distinct rows among the first ``n`` entries of the recent-item ring."""
    d = 0
    for i in range(n):
        new = True
        for j in range(i):
            if ring[j] == ring[i]:
                new = False
                break
        if new:
            d += 1
    return d


@njit(cache=True, error_model="numpy")
def ring_mean(ring, n, emb_flat, dim):
    """Mean embedding (float64 [dim]) of the first ``n`` rows of the recent-item ring."""
    out = np.zeros(dim)
    for r in range(n):
        base = ring[r] * dim
        for i in range(dim):
            out[i] += emb_flat[base + i]
    for i in range(dim):
        out[i] /= max(n, 1)
    return out


# -- geometry ----------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def route(V, e, norms):
    """``argmax_k cos(V[k], e)`` (the first on ties); fills ``norms`` with the rows' norms."""
    best, kk = -np.inf, 0
    for k in range(V.shape[0]):
        nk = math.sqrt(_dot(V[k], V[k]))
        norms[k] = nk
        c = _dot(V[k], e) / (nk + _EPS)
        if c > best:
            best, kk = c, k
    return kk


@njit(cache=True, error_model="numpy")
def softmax_step(v, emb, pos, negs, inv_temp, clip):
    """Minus the sampled-softmax gradient at ``v`` (float64 [d]) as an embedding-space
    direction, ``e_pos − Σ_j p_j e_j`` over the positive row ``pos`` and the rows ``negs``,
    then clipped to norm ``clip``."""
    d = v.shape[0]
    m = negs.shape[0] + 1
    z = np.empty(m)
    z[0] = _dot(emb[pos], v)
    zmax = z[0]
    for j in range(1, m):
        z[j] = _dot(emb[negs[j - 1]], v)
        zmax = max(zmax, z[j])
    tot = 0.0
    for j in range(m):
        z[j] = math.exp((z[j] - zmax) * inv_temp)
        tot += z[j]
    g = np.empty(d)
    e = emb[pos]
    p0 = z[0] / tot
    for i in range(d):
        g[i] = e[i] - p0 * e[i]
    for j in range(1, m):
        pj = z[j] / tot
        r = emb[negs[j - 1]]
        for i in range(d):
            g[i] -= pj * r[i]
    gn = math.sqrt(_dot(g, g))
    if gn > clip:
        f = clip / gn
        for i in range(d):
            g[i] *= f
    return g


@njit(cache=True, error_model="numpy")
def push_apart(v, V, skip, threshold, norms):
    """Reduce ``v``'s component along every row of ``V`` (except ``skip``) whose cosine with
    ``v`` exceeds ``threshold``, down to exactly ``threshold``, keeping its orthogonal part.
    One pass in row order over the rows that overlapped at the start. ``v`` float64, in place."""
    nv = math.sqrt(_dot(v, v))
    if nv == 0.0:
        return
    k = V.shape[0]
    over = np.zeros(k, dtype=np.bool_)
    anyover = False
    for j in range(k):
        if j != skip and _dot(V[j], v) / (norms[j] * nv + 1e-30) > threshold:
            over[j] = True
            anyover = True
    if not anyover:
        return
    d = v.shape[0]
    uh = np.empty(d)
    for j in range(k):
        if not over[j] or norms[j] == 0.0:
            continue  # (a zero row has no direction to push away from)
        for i in range(d):
            uh[i] = V[j, i] / norms[j]
        along = _dot(v, uh)
        nv = math.sqrt(_dot(v, v))
        if along <= threshold * nv:
            continue  # an earlier push already separated them
        pn2 = 0.0
        for i in range(d):
            x = v[i] - along * uh[i]
            pn2 += x * x
        pn = math.sqrt(pn2)
        if pn < 1e-9 * nv:
            continue  # parallel: nothing to push along; the trust region handles it
        f = threshold * pn / math.sqrt(1.0 - threshold * threshold)
        for i in range(d):
            v[i] = v[i] - along * uh[i] + uh[i] * f


@njit(cache=True, error_model="numpy")
def feasible(v, a, rho, max_norm):
    """Pull ``v`` (float64, in place) straight back toward its anchor ``a`` onto the largest
    ``a + t(v − a)``, t ≤ 1, inside ``‖· − a‖ ≤ rho`` and ``‖·‖ ≤ max_norm``."""
    d = v.shape[0]
    dd, vv = 0.0, 0.0
    for i in range(d):
        x = v[i] - a[i]
        dd += x * x
        vv += v[i] * v[i]
    if (dd <= rho * rho and vv <= max_norm * max_norm) or dd == 0.0:
        return
    t = min(1.0, rho / math.sqrt(dd))
    ww, ad, aa = 0.0, 0.0, 0.0
    for i in range(d):
        ai = np.float64(a[i])
        x = v[i] - ai
        w = ai + t * x
        ww += w * w
        ad += ai * x
        aa += ai * ai
    if ww > max_norm * max_norm:
        disc = ad * ad - dd * (aa - max_norm * max_norm)
        t = min(t, max(0.0, (-ad + math.sqrt(max(disc, 0.0))) / dd))
    for i in range(d):
        ai = np.float64(a[i])
        v[i] = ai + t * (v[i] - ai)


@njit(cache=True, error_model="numpy")
def cap_step(v, old, cap):
    """Limit ``‖v − old‖`` to ``cap`` (``v`` float64, in place); True when the cap bit."""
    d = v.shape[0]
    n2 = 0.0
    for i in range(d):
        x = v[i] - old[i]
        n2 += x * x
    n = math.sqrt(n2)
    if n <= cap:
        return False
    f = cap / n
    for i in range(d):
        oi = np.float64(old[i])
        v[i] = oi + (v[i] - oi) * f
    return True


@njit(cache=True, error_model="numpy")
def rms_drift(V, A):
    """RMS over rows of ``‖V[k] − A[k]‖``."""
    k, d = V.shape
    s = 0.0
    for r in range(k):
        for i in range(d):
            x = np.float64(V[r, i]) - A[r, i]
            s += x * x
    return math.sqrt(s / max(k, 1))


@njit(cache=True, error_model="numpy")
def cap_drift(V, A, cap):
    """Scale every row's drift ``V[k] − A[k]`` so that the RMS drift over rows is at most
    ``cap`` (``V`` in place). Returns the RMS drift before capping."""
    k, d = V.shape
    rms = rms_drift(V, A)
    if rms > cap:
        f = cap / rms
        for r in range(k):
            for i in range(d):
                a = np.float64(A[r, i])
                V[r, i] = a + (V[r, i] - a) * f
    return rms


@njit(cache=True, error_model="numpy")
def _cosines(X, Y):
    """``[n, m]`` cosines of rows, each norm plus 1e-12 (the seed's convention)."""
    n, m = X.shape[0], Y.shape[0]
    nx = np.empty(n)
    ny = np.empty(m)
    for i in range(n):
        nx[i] = math.sqrt(_dot(X[i], X[i])) + _EPS
    for j in range(m):
        ny[j] = math.sqrt(_dot(Y[j], Y[j])) + _EPS
    out = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            out[i, j] = _dot(X[i], Y[j]) / (nx[i] * ny[j])
    return out


@njit(cache=True, error_model="numpy")
def centroids(items, k, iters):
    """Deterministic spherical k-means of ``items`` [n, d] into ``min(k, n)`` centroids (float64).

    Seeds: the item closest in direction to the mean, then farthest-first (lowest max-cosine
    to the seeds, ties to the earliest row); then ``iters`` rounds of assign-and-average.
    """
    n, d = items.shape
    k = max(1, min(k, n))
    mean = np.zeros((1, d))
    for r in range(n):
        for i in range(d):
            mean[0, i] += items[r, i]
    for i in range(d):
        mean[0, i] /= n
    to_mean = _cosines(items, mean)
    s0 = 0
    for r in range(1, n):
        if to_mean[r, 0] > to_mean[s0, 0]:
            s0 = r
    seeds = np.empty(k, dtype=np.int64)
    seeds[0] = s0
    # Only the cosines to the seeds are needed: n·k of them, not the n×n matrix (which was
    # nearly all of a re-anchoring's cost). Each cosine is computed exactly as _cosines
    # computes it, so the seeds are the same.
    best = _cosines(items, items[s0:s0 + 1])[:, 0].copy()
    for s in range(1, k):
        for q in range(s):
            best[seeds[q]] = np.inf
        nxt = 0
        for r in range(1, n):
            if best[r] < best[nxt]:
                nxt = r
        seeds[s] = nxt
        to_seed = _cosines(items, items[nxt:nxt + 1])
        for r in range(n):
            best[r] = max(best[r], to_seed[r, 0])
    cents = np.empty((k, d))
    for s in range(k):
        for i in range(d):
            cents[s, i] = items[seeds[s], i]
    assign = np.empty(n, dtype=np.int64)
    for _ in range(iters):
        cos = _cosines(items, cents)
        for r in range(n):
            b = 0
            for j in range(1, k):
                if cos[r, j] > cos[r, b]:
                    b = j
            assign[r] = b
        for j in range(k):
            cnt = 0
            acc = np.zeros(d)
            for r in range(n):
                if assign[r] == j:
                    cnt += 1
                    for i in range(d):
                        acc[i] += items[r, i]
            if cnt:
                for i in range(d):
                    cents[j, i] = acc[i] / cnt
    return cents


@njit(cache=True, error_model="numpy")
def clip_rows(X, max_norm):
    """Scale each row of ``X`` (in place) down to norm ``max_norm·(1 − 1e-6)`` if longer: a
    hair inside, so float32 rounding cannot leave it outside (as ``guards.clip_norm``)."""
    m = max_norm * (1.0 - 1e-6)
    for r in range(X.shape[0]):
        nn = math.sqrt(_dot(X[r], X[r]))
        if nn > m:
            f = m / max(nn, 1e-30)
            for i in range(X.shape[1]):
                X[r, i] = X[r, i] * f


@njit(cache=True, error_model="numpy")
def anchors_from_ring(ring, n, emb_flat, dim, k, max_norm, iters):
    """Anchors of a user: :func:`centroids` of the distinct recent items (sorted rows; repeats
    would skew the seeding), norm-bounded, float32 ``[min(k, distinct), dim]``."""
    rows = np.unique(ring[:n])
    items = np.empty((rows.shape[0], dim), dtype=np.float32)
    for r in range(rows.shape[0]):
        b = rows[r] * dim
        for i in range(dim):
            items[r, i] = emb_flat[b + i]
    cents = centroids(items, k, iters).astype(np.float32)
    clip_rows(cents, max_norm)
    return cents


@njit(cache=True, error_model="numpy")
def mean_row(ring, n, emb_flat, dim, max_norm):
    """A not-yet-anchored user's single vector: the mean of its recent items, norm-bounded,
    float32 ``[1, dim]``."""
    out = ring_mean(ring, n, emb_flat, dim).astype(np.float32).reshape((1, dim))
    clip_rows(out, max_norm)
    return out


# -- the whole event ---------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _event_start(uhash, offset, n_table, n_draw):
    """SplitMix64 of (user, offset) modulo the table windows: the event's negatives start.

    ``uhash`` and ``offset`` arrive as int64 (two's complement); the arithmetic is mod 2^64."""
    x = np.uint64(uhash) ^ (np.uint64(offset) * np.uint64(0xD1B54A32D192ED03))
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return np.int64(x % np.uint64(n_table - n_draw))


@njit(cache=True, error_model="numpy")
def _network_due(u, p, surprised):
    """DIAM base, after a click on a known item: count it, then say whether the network
    re-runs on the user's items (every ``reanchor_every`` events, or at once for a
    ``surprised`` click, one its routed interest explains poorly, at least ``reanchor_gap``
    events after its last run) or only the global interest is refreshed."""
    u.since_anchor += 1
    if p.reanchor_every > 0 and ((surprised and u.since_anchor >= p.reanchor_gap)
                                 or u.since_anchor >= p.reanchor_every):
        return _REANCHOR
    return _REFRESH_GLOBAL


@njit(cache=True, error_model="numpy")
def learn_event(user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms, item_cats, div_q, table,
                par, idx, sess_mode, ts_ms, offset):
    """Apply one click (item row ``idx``, -1 if unknown) to one user: duplicates, the rate
    limit, the counters, signals, the recent-item ring, and (for an anchored user) the guarded
    gradient step on the routed interest, the d_u step and the drift cap. Returns ``(bits,
    routed interest or -1, RMS drift before capping)``; :func:`outcome` names the bits. The
    caller emits drift events from them, anchors new users, re-runs the network or re-gates
    K_u when the bits say so.

    ``user`` and ``par`` are one-element arrays of :data:`USER` and :data:`PARAMS`; ``sess_mode``
    is -1 without a session id, 0 for the same id as the previous click, 1 for another;
    ``div_q`` is the base's d_u scale (:func:`diversity_target`).
    """
    u = user[0]
    p = par[0]
    if u.n_events > 0 and offset <= u.seq:
        return _DUPLICATE, -1, 0.0  # at-least-once input: applied already
    u.n_events += 1
    u.seq = offset
    u.last_ts = ts_ms
    bits = 0
    if p.guards:
        ok, froze = admit(user, ts_ms, p.burst, p.per_s, p.freeze_ms)
        if froze:
            bits |= _FROZE_NOW
        if not ok:
            u.frozen = True
            return bits | _FROZEN, -1, 0.0
    u.frozen = False
    n_items = item_norms.shape[0]
    c = -1
    if 0 <= idx < n_items:
        c = item_cats[idx]
    explore = signals_update(sig, n_cat, c, sess_mode, ts_ms, p.session_gap_ms,
                             p.explore_fading, p.session_fading, p.short_decay, p.long_decay)
    if idx < 0 or idx >= n_items or item_norms[idx] == 0.0:
        return bits | _COLD, -1, 0.0
    # the recent-item ring
    cap_n = ring.shape[0]
    pos = u.ring_pos
    ring[pos] = idx
    u.ring_pos = (pos + 1) % cap_n
    if u.n_recent < cap_n:
        u.n_recent += 1
    if not u.anchored:
        return bits | _UNANCHORED, -1, 0.0
    network_due = p.network and p.reanchor_every > 0
    if not p.learn and not network_due:  # frozen anchors
        return bits, -1, 0.0
    dim = p.dim
    emb = emb_flat.reshape((n_items, dim))
    K = Vf.shape[0] // dim
    V = Vf.reshape((K, dim))
    # route; how well the routed interest explains the click, before any step, is the
    # re-anchoring trigger (the network alone, without steps, re-runs under the same rule)
    norms = np.empty(K)
    k = route(V, emb[idx], norms)
    surprised = network_due and (
        _dot(V[k], emb[idx]) < p.reanchor_cos * (norms[k] + _EPS) * item_norms[idx]
        or (p.reanchor_explore and explore == 1.0))
    if not p.learn:  # the network alone
        return bits | _network_due(u, p, surprised), -1, 0.0
    A = Af.reshape((K, dim))
    guards = p.guards
    # one sampled-softmax step on the routed interest
    n_neg = p.n_neg
    start = _event_start(u.uhash, offset, table.shape[0], n_neg + 1)
    g = softmax_step(V[k].astype(np.float64), emb, idx, table[start + 1:start + 1 + n_neg],
                     p.inv_temp, p.clip)
    old = V[k]
    v = np.empty(dim)
    lr = p.lr
    for i in range(dim):
        v[i] = old[i] + lr * g[i]
    if K > 1:
        push_apart(v, V, k, p.ortho, norms)
    feasible(v, A[k], p.rho, p.max_norm)
    bits |= _LEARNT
    u.n_learned += 1
    if guards and cap_step(v, old, p.step_cap):
        bits |= _STEP_CAPPED
    for i in range(dim):
        V[k, i] = v[i]
    # d_u: one step on its logit toward the percentile of the diversity the user's last clicks
    # realised (the scale of its prior), pulled back to the prior and bounded around it
    target = diversity_target(ring, u.n_recent, u.ring_pos, item_cats, n_cat, div_q)
    if target >= 0.0:
        l0 = u.d_logit
        prior = u.d_prior
        pr = 1.0 / (1.0 + math.exp(-l0))
        dl = -p.d_lr * ((pr - target) + p.d_pull * (l0 - prior))
        if guards:
            dl = min(max(dl, -p.d_step_cap), p.d_step_cap)
        lo = max(prior - p.d_max_offset, -p.d_bound)
        hi = min(prior + p.d_max_offset, p.d_bound)
        u.d_logit = min(max(l0 + dl, lo), hi)
    rms = 0.0
    if guards:
        if p.rollback:
            rms = rms_drift(V, A)
            if rms > p.drift_cap:
                V[:, :] = A
        else:
            rms = cap_drift(V, A, p.drift_cap)
        capped = rms > p.drift_cap
        if capped:
            bits |= _DRIFT_CAPPED
            if not u.capped:
                bits |= _CAP_REACHED
        u.capped = capped
    if p.network:
        bits |= _network_due(u, p, surprised)
    elif u.n_learned % p.regate_every == 0:
        bits |= _REGATE
    return bits, k, rms


# -- DIAM base: the network in the per-event path -------------------------------------------------
# The two kernels below compile the head's forward pass (online_model.infer) into themselves.
# numba's on-disk cache is keyed on each function's own file, so a change to infer.py alone
# would leave them stale: this stamp of infer.py (checked by tests/unit/online_model/
# test_kernels_stamp.py) must be updated with it, which changes this file and so its cache.
INFER_STAMP = "59b303fea6e3e5b8"


@njit(cache=True, error_model="numpy")
def anchor_diam(user, ring, sig, n_cat, Vf, Af, hseq, h_emb_flat, h_cat, buf, off, dims,
                fusion_w, fusion_b, par, out):
    """Anchor one user on DIAM's network, in one compiled call: the network on the user's last
    ``window`` items (``ring_window``), K_u from its full gate, d_u's prior from its fusion
    layer on the user's signals, and the encoder summary into ``hseq``. A first anchoring
    (the user is not anchored) writes the anchors to ``out`` and returns K_u; a periodic one
    applies :func:`reanchor_vectors` (hysteresis, learnt offsets) and writes the new anchors
    and vectors in place when K_u is unchanged (returns -1), else to ``out`` (anchors in
    ``out[:K·d]``, vectors from ``out[k_max·d]``) and returns the new K_u. ``out``: float32
    [2·k_max·d], the caller's scratch."""
    u = user[0]
    p = par[0]
    n = u.n_recent
    rows = ring_window(ring, n, u.ring_pos, p.window)
    k_head = dims[3]
    d = hseq.shape[0]
    emb = h_emb_flat.reshape((h_emb_flat.shape[0] // d, d))
    vecs = np.empty((k_head, d), np.float32)
    h_new = np.empty(d, np.float32)
    a, b, c, e = signal_values(sig, n_cat, p.prior_weight)
    sig4 = np.empty(4, np.float32)
    sig4[0], sig4[1], sig4[2], sig4[3] = a, b, c, e
    k_net, gate_prob, d_net = head_outputs(rows, emb, h_cat, buf, off, dims, fusion_w,
                                           fusion_b, sig4, vecs, h_new)
    hseq[:] = h_new
    kk = min(k_net, p.k_max)
    bound = p.d_bound
    q = min(max(d_net, 1e-6), 1 - 1e-6)
    prior = min(max(math.log(q / (1.0 - q)), -bound), bound)
    if not u.anchored:  # first anchoring, or the first on a new snapshot
        for i in range(kk):
            for j in range(d):
                out[i * d + j] = vecs[i, j]
        anchored(user, kk, prior)
        return kk
    settled = p.guards and n >= p.k_settle
    h, h_up = (p.k_hysteresis, p.k_hysteresis_up) if settled else (1, 1)
    k_old = Vf.shape[0] // d
    if settled:
        # never above k_max, even for a K_u kept from before k_max was lowered
        kk = min(gate_proposal(gate_prob, k_head, kk, k_old, p.k_margin), p.k_max)
    A, V = reanchor_vectors(user, vecs, kk, h, h_up, Vf, Af, k_old, p.residual and p.learn,
                            p.keep, prior, bound)
    k_new = A.shape[0]
    if k_new == k_old:
        Af[:] = A.reshape(-1)
        Vf[:] = V.reshape(-1)
        return -1
    o = p.k_max * d
    for i in range(k_new):
        for j in range(d):
            out[i * d + j] = A[i, j]
            out[o + i * d + j] = V[i, j]
    return k_new


@njit(cache=True, error_model="numpy")
def learn_event_diam(user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms, item_cats, div_q,
                     table, par, idx, sess_mode, ts_ms, offset, hseq, h_emb_flat, h_cat, buf,
                     off, dims, fusion_w, fusion_b, out):
    """:func:`learn_event` on a DIAM base, with what its bits ask of the network done in the
    same call: a new user's first anchoring, the periodic re-anchoring (:func:`anchor_diam`),
    or slot 0's refresh on the window's mean in between. Returns learn_event's ``(bits, k,
    rms)``, :func:`anchor_diam`'s result (-2 when the network did not run) and d_u's logit
    after the step, before any re-anchoring (what the step's drift events report): the caller
    only turns bits into drift events and, when K_u changed, takes the arrays from ``out``."""
    bits, k, rms = learn_event(user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms,
                               item_cats, div_q, table, par, idx, sess_mode, ts_ms, offset)
    u = user[0]
    d_logit = u.d_logit
    if bits & (_UNANCHORED | _REANCHOR):
        return bits, k, rms, anchor_diam(user, ring, sig, n_cat, Vf, Af, hseq, h_emb_flat,
                                         h_cat, buf, off, dims, fusion_w, fusion_b, par,
                                         out), d_logit
    if bits & _REFRESH_GLOBAL and par[0].refresh:
        _refresh_global(ring_window(ring, u.n_recent, u.ring_pos, par[0].window), h_emb_flat,
                        hseq, buf, off, Af, Vf)
    return bits, k, rms, -2, d_logit



_HANDS_BACK = _FROZE_NOW | _UNANCHORED | _STEP_CAPPED | _CAP_REACHED
"""Outcome bits after which :func:`learn_events_diam` stops and hands the click back: the
caller emits a drift event (whose fields are the state as that click left it) or takes
arrays of a new shape (a first anchoring)."""


@njit(cache=True, error_model="numpy")
def learn_events_diam(user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms, item_cats, div_q,
                      table, par, ev, last_code, hseq, h_emb_flat, h_cat, buf, off, dims,
                      fusion_w, fusion_b, out, prog):
    """:func:`learn_event_diam` over one user's clicks in order, in one call (a Bytewax batch
    hands the dataflow several clicks of a user at once): ``ev`` int64 [m, 4] holds each
    click's item row, session code, event time and offset. It stops after the first click
    whose outcome the caller must act on (:data:`_HANDS_BACK`, the drift cap under the
    rollback policy, or K_u changed by the network) and returns ``(clicks applied, that
    click's bits, k, rms, anchor result and d_u logit, in-place runs of the network,
    last_code)``; with no such click the bits are 0 and the anchor result -2.

    Sessions: a code per distinct session id (-1: none); ``last_code`` is the code of the
    user's last session (-2: none of the batch's). A click's mode is -1 without a session,
    else whether its code differs from the last, and a click that is neither a duplicate nor
    frozen, on a known item of a known category, makes its code the last: the rule
    :meth:`online_model.online.OnlineLearner.apply` follows with the ids themselves.
    ``prog[0]`` is the index of the click being applied (the one that failed, should the
    call raise), ``prog[1]`` the last code so far and ``prog[2]`` the in-place runs so far
    (the caller zeroes ``prog[0]`` and ``prog[2]`` before the call)."""
    m = ev.shape[0]
    runs = 0
    stop = _HANDS_BACK | (_DRIFT_CAPPED if par[0].rollback else 0)
    for i in range(m):
        prog[0] = i
        idx, code = ev[i, 0], ev[i, 1]
        mode = -1 if code < 0 else (1 if code != last_code else 0)
        bits, k, rms, ran, d_logit = learn_event_diam(
            user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms, item_cats, div_q, table, par,
            idx, mode, ev[i, 2], ev[i, 3], hseq, h_emb_flat, h_cat, buf, off, dims, fusion_w,
            fusion_b, out)
        if (bits & (_DUPLICATE | _FROZEN)) == 0 and code >= 0 and 0 <= idx < item_cats.shape[0]:
            c = item_cats[idx]
            if 0 <= c < n_cat:
                last_code = code
                prog[1] = code
        if bits & stop or ran >= 0:
            return i + 1, bits, k, rms, ran, d_logit, runs, last_code
        if ran == -1:
            runs += 1
            prog[2] = runs
    return m, 0, -1, 0.0, -2, 0.0, runs, last_code


# The same two kernels releasing the GIL, for worker threads that share one learner (``diam run
# --workers N``, ``OnlineLearner.release_gil``): their compiled work then runs on several cores
# at once. Only there: with one worker, each release lets another Python thread (the Redis
# writer's) take the GIL, and the worker may wait for it on return.
@njit(cache=True, error_model="numpy", nogil=True)
def learn_event_diam_nogil(user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms, item_cats,
                           div_q, table, par, idx, sess_mode, ts_ms, offset, hseq, h_emb_flat,
                           h_cat, buf, off, dims, fusion_w, fusion_b, out):
    """:func:`learn_event_diam`, with the GIL released."""
    return learn_event_diam(user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms, item_cats,
                            div_q, table, par, idx, sess_mode, ts_ms, offset, hseq, h_emb_flat,
                            h_cat, buf, off, dims, fusion_w, fusion_b, out)


@njit(cache=True, error_model="numpy", nogil=True)
def learn_events_diam_nogil(user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms, item_cats,
                            div_q, table, par, ev, last_code, hseq, h_emb_flat, h_cat, buf, off,
                            dims, fusion_w, fusion_b, out, prog):
    """:func:`learn_events_diam`, with the GIL released."""
    return learn_events_diam(user, Vf, Af, ring, sig, n_cat, emb_flat, item_norms, item_cats,
                             div_q, table, par, ev, last_code, hseq, h_emb_flat, h_cat, buf, off,
                             dims, fusion_w, fusion_b, out, prog)


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) every kernel with the learner's types, so
    the first real event does not pay for it. Safe to call more than once."""
    dim, k, n_cat = 4, 2, 3
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((10, dim)).astype(np.float32)
    V = emb[:k].reshape(-1).copy()
    A = V.copy()
    user = new_user(12345, 5.0)
    user["anchored"] = True
    ring = np.zeros(5, dtype=np.int32)
    sig = np.zeros(sig_size(n_cat))
    sig[S_HEAD:S_HEAD + WINDOW] = -1.0
    par = np.zeros(1, PARAMS)
    for name in ("lr", "clip", "inv_temp", "ortho", "rho", "max_norm", "step_cap", "drift_cap",
                 "per_s"):
        par[name] = 1.0
    par["burst"], par["dim"], par["n_neg"], par["regate_every"] = 5.0, dim, 2, 3
    par["guards"] = par["learn"] = True
    table = np.arange(10, dtype=np.int64)
    learn_event(user, V, A, ring, sig, n_cat, emb.reshape(-1), np.ones(10, np.float32),
                np.zeros(10, np.int32), np.linspace(0.0, 1.0, 11), table, par, 3, -1, 1000, 7)
    diversity_target(ring, 3, 3, np.zeros(10, np.int32), n_cat, np.linspace(0.0, 1.0, 11))
    anchored(user, 2, 0.5)
    reanchored(user, 0.25, True, 4.0)
    propose_k(user, 2, 3, 2, 1)
    gate_proposal(0.3, 8, 3, 2, 0.5)
    centroids(emb.astype(np.float32), 2, 5)
    signal_values(sig, n_cat, 2.0)
    effective_categories(sig, n_cat)
    ring_distinct(ring, 3)
    ring_mean(ring, 3, emb.reshape(-1), dim)
    anchors_from_ring(ring, 3, emb.reshape(-1), dim, 2, 1.0, 5)
    mean_row(ring, 3, emb.reshape(-1), dim, 1.0)
