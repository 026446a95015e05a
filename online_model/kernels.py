"""Compiled per-event kernels of the online learner (numba, no fastmath: IEEE results, hence bit
for bit the same on every run of the same machine type; numpy's error model: a division by
zero gives inf/nan as in numpy instead of raising).

Why: the update touches a K×d block (K ≤ 8, d = 64) and ~17 candidate items per click. As a
chain of numpy calls it costs ~190 µs per event, almost all of it call overhead on tiny arrays;
fused into loops it costs a few µs, which is what 20k events/s per process needs.

This module is the single implementation of the update's arithmetic. ``online_model.guards``,
``online_model.routing`` and ``online_model.signals`` keep their documented numpy-facing
functions and call these; :class:`online_model.online.OnlineLearner` calls
:func:`learn_event` once per click.

Layouts (all flat, C order, so that a call unboxes 1-D arrays only: 2-D arguments cost numba
~1.5 µs more per call):

- interest vectors ``V`` and anchors ``A``: float32 ``[K·d]``;
- per-user scalars ``ust`` float64 ``[USER_SLOTS]``: ``U_*`` below (d_u logit and prior, the
  token bucket, the recent-item ring's length and position);
- signal accumulators ``sig`` float64 ``[sig_size(C)]``: ``S_*`` scalars, then the category
  window ring, its per-category counts, the session's counts, "seen" flags, the short- and
  long-term decayed counts (each ``C`` long);
- learner constants ``par`` float64 ``[PARAM_SLOTS]``: ``P_*``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "learn_event",
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
S_N, S_SESSIONS, S_DISTINCT, S_WIN_POS = 0, 1, 2, 3
S_SESS_LEN, S_SESS_SWITCHES, S_SESS_TOP, S_LAST_CAT = 4, 5, 6, 7
S_LAST_TS, S_EXPLORE, S_SESS_EWM, S_LAST_EXPLORE = 8, 9, 10, 11
S_HEAD = 16
WINDOW = 20  # = signals.EXPLORE_WINDOW (checked there)


def sig_size(n_categories: int) -> int:
    return S_HEAD + WINDOW + 5 * n_categories


# -- per-user scalars ------------------------------------------------------------------------
U_D_LOGIT, U_D_PRIOR, U_TOKENS, U_LAST, U_UNTIL, U_N_RECENT, U_RING_POS = 0, 1, 2, 3, 4, 5, 6
USER_SLOTS = 8

# -- learner constants -------------------------------------------------------------------------
(P_LR, P_CLIP, P_INV_TEMP, P_ORTHO, P_RHO, P_MAX_NORM, P_STEP_CAP, P_DRIFT_CAP, P_GUARDS,
 P_LEARN, P_D_LR, P_D_PULL, P_D_STEP_CAP, P_D_MAX_OFFSET, P_D_BOUND, P_N_NEG, P_BURST,
 P_PER_S, P_FREEZE_MS, P_ROLLBACK) = range(20)
PARAM_SLOTS = 20

# -- learn_event result bits ---------------------------------------------------------------
FROZEN = 1  # the event was not learnt: the user is frozen
FROZE_NOW = 2  # this event froze the user
COLD = 4  # unknown item, or one without an embedding
UNANCHORED = 8  # a known item, but the user has no anchors yet (the caller anchors)
LEARNT = 16  # a gradient step was taken
STEP_CAPPED = 32  # the per-step cap bit
DRIFT_CAPPED = 64  # the drift cap bit (vectors clamped, or rolled back with P_ROLLBACK)

_EPS = 1e-12


@njit(cache=True, error_model="numpy")
def _dot(a, b) -> float:
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


# -- token bucket -------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def admit(ust, ts_ms, burst, per_s, freeze_ms):
    """Token bucket on event time over ``ust[U_TOKENS:U_UNTIL+1]`` (tokens, last refill ts or
    -1, frozen-until ts or -1). Returns ``(learn from this event, froze now)``."""
    tokens, last, until = ust[U_TOKENS], ust[U_LAST], ust[U_UNTIL]
    t = np.float64(ts_ms)
    if until >= 0.0:
        if t < until:
            return False, False
        tokens, last, until = burst, t, -1.0  # thawed: a fresh bucket
    if last >= 0.0 and t > last:
        tokens = min(burst, tokens + (t - last) / 1000.0 * per_s)
    last = max(last, t)
    if tokens >= 1.0:
        ust[U_TOKENS], ust[U_LAST], ust[U_UNTIL] = tokens - 1.0, last, until
        return True, False
    ust[U_TOKENS], ust[U_LAST], ust[U_UNTIL] = tokens, last, t + freeze_ms
    return False, True


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
    # Only the cosines to the seeds are needed: n·k of them, not the n×n matrix (a re-anchor
    # over a full ring of 50 items took ~260 µs, nearly all of it that matrix). Each cosine is
    # computed exactly as _cosines computes it, so the seeds are the same.
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
def learn_event(Vf, Af, dim, ust, ring, sig, n_cat, emb_flat, item_norms, item_cats, table, par,
                sigc, idx, sess_mode, ts_ms, uhash, offset, anchored):
    """Apply one click to one user: rate limit, signals, the recent-item ring, and (for an
    anchored user) the guarded gradient step on the routed interest, the d_u step and the
    drift cap. Returns ``(bits, routed interest or -1, RMS drift before capping)``; the caller
    emits drift events from the bits and handles anchoring and K_u re-gating.

    ``sigc`` = (session gap ms, exploration fading, session fading, short decay, long decay).
    """
    bits = 0
    if par[P_GUARDS] != 0.0:
        ok, froze = admit(ust, ts_ms, par[P_BURST], par[P_PER_S], par[P_FREEZE_MS])
        if froze:
            bits |= FROZE_NOW
        if not ok:
            return bits | FROZEN, -1, 0.0
    n_items = item_norms.shape[0]
    c = -1
    if 0 <= idx < n_items:
        c = item_cats[idx]
    explore = signals_update(sig, n_cat, c, sess_mode, ts_ms, sigc[0], sigc[1], sigc[2],
                             sigc[3], sigc[4])
    if idx < 0 or idx >= n_items or item_norms[idx] == 0.0:
        return bits | COLD, -1, 0.0
    # the recent-item ring
    cap_n = ring.shape[0]
    pos = int(ust[U_RING_POS])
    ring[pos] = idx
    ust[U_RING_POS] = (pos + 1) % cap_n
    if ust[U_N_RECENT] < cap_n:
        ust[U_N_RECENT] += 1.0
    if not anchored:
        return bits | UNANCHORED, -1, 0.0
    if par[P_LEARN] == 0.0:
        return bits, -1, 0.0
    emb = emb_flat.reshape((n_items, dim))
    K = Vf.shape[0] // dim
    V = Vf.reshape((K, dim))
    A = Af.reshape((K, dim))
    guards = par[P_GUARDS] != 0.0
    # route, then one sampled-softmax step on the routed interest
    norms = np.empty(K)
    k = route(V, emb[idx], norms)
    n_neg = int(par[P_N_NEG])
    start = _event_start(uhash, offset, table.shape[0], n_neg + 1)
    g = softmax_step(V[k].astype(np.float64), emb, idx, table[start + 1:start + 1 + n_neg],
                     par[P_INV_TEMP], par[P_CLIP])
    old = V[k]
    v = np.empty(dim)
    lr = par[P_LR]
    for i in range(dim):
        v[i] = old[i] + lr * g[i]
    if K > 1:
        push_apart(v, V, k, par[P_ORTHO], norms)
    feasible(v, A[k], par[P_RHO], par[P_MAX_NORM])
    bits |= LEARNT
    if guards and cap_step(v, old, par[P_STEP_CAP]):
        bits |= STEP_CAPPED
    for i in range(dim):
        V[k, i] = v[i]
    # d_u: one step on its logit toward this click's exploration flag, bounded around the prior
    if explore != 0.5:
        l0 = ust[U_D_LOGIT]
        prior = ust[U_D_PRIOR]
        p = 1.0 / (1.0 + math.exp(-l0))
        dl = -par[P_D_LR] * ((p - explore) + par[P_D_PULL] * (l0 - prior))
        if guards:
            dl = min(max(dl, -par[P_D_STEP_CAP]), par[P_D_STEP_CAP])
        lo = max(prior - par[P_D_MAX_OFFSET], -par[P_D_BOUND])
        hi = min(prior + par[P_D_MAX_OFFSET], par[P_D_BOUND])
        ust[U_D_LOGIT] = min(max(l0 + dl, lo), hi)
    rms = 0.0
    if guards:
        if par[P_ROLLBACK] != 0.0:
            rms = rms_drift(V, A)
            if rms > par[P_DRIFT_CAP]:
                V[:, :] = A
                bits |= DRIFT_CAPPED
        else:
            rms = cap_drift(V, A, par[P_DRIFT_CAP])
            if rms > par[P_DRIFT_CAP]:
                bits |= DRIFT_CAPPED
    return bits, k, rms


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) every kernel with the learner's types, so
    the first real event does not pay for it. Safe to call more than once."""
    dim, k, n_cat = 4, 2, 3
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((10, dim)).astype(np.float32)
    V = emb[:k].reshape(-1).copy()
    A = V.copy()
    ust = np.zeros(USER_SLOTS)
    ust[U_TOKENS], ust[U_LAST], ust[U_UNTIL] = 5.0, -1.0, -1.0
    ring = np.zeros(5, dtype=np.int32)
    sig = np.zeros(sig_size(n_cat))
    sig[S_HEAD:S_HEAD + WINDOW] = -1.0
    par = np.zeros(PARAM_SLOTS)
    par[[P_LR, P_CLIP, P_INV_TEMP, P_ORTHO, P_RHO, P_MAX_NORM, P_STEP_CAP, P_DRIFT_CAP]] = 1.0
    par[[P_GUARDS, P_LEARN, P_N_NEG, P_BURST, P_PER_S]] = [1.0, 1.0, 2.0, 5.0, 1.0]
    table = np.arange(10, dtype=np.int64)
    sigc = np.array([1800000.0, 0.1, 0.3, 0.8, 0.98])
    learn_event(V, A, dim, ust, ring, sig, n_cat, emb.reshape(-1), np.ones(10, np.float32),
                np.zeros(10, np.int32), table, par, sigc, 3, -1, 1000, 12345, 7, True)
    centroids(emb.astype(np.float32), 2, 5)
    signal_values(sig, n_cat, 2.0)
    effective_categories(sig, n_cat)
    ring_distinct(ring, 3)
    ring_mean(ring, 3, emb.reshape(-1), dim)
    anchors_from_ring(ring, 3, emb.reshape(-1), dim, 2, 1.0, 5)
    mean_row(ring, 3, emb.reshape(-1), dim, 1.0)
