"""Configuration of the online update rule and its drift guards (DESIGN.md §5).

Lengths (radii, caps, clip) are in units of the base's ``scale``, the median norm of its item
embeddings, so one configuration fits a PPMI base and a trained DIAM base alike.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OnlineConfig(BaseModel):
    """Thresholds of the online learner. Each default says why it is what it is."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    """NaN and inf are refused, as by every settings model (``DIAM_ONLINE_LR=nan`` would
    otherwise turn every vector to NaN at the first step, and ``inf`` switch a cap off)."""

    dim: int = 64
    """Interest vector dimension; must equal the base model's item embedding size."""

    k_max: int = Field(default=8, ge=1)
    """Upper bound of K_u, the number of interests per user (the base model's K_max)."""

    # -- what the learner does ----------------------------------------------------------
    learn: bool = True
    """False freezes vectors at their anchors, K_u and d_u at their values at anchoring: the
    "frozen snapshot" arm of the prequential evaluation."""

    guards: bool = True
    """Run the drift guards (step cap, drift cap, rate limit) and K_u hysteresis. False is the
    "unguarded" arm; the trust region and norm bound stay on, they are part of the update."""

    recent_len: int = Field(default=50, ge=1)
    """Items kept per user: the base model's sequence length, the gate's input window."""

    anchor_min_items: int = Field(default=3, ge=1)
    """Known items a new user needs before getting anchors (centroids of recent items): with
    fewer, centroids are noise and the user keeps one mean vector."""

    reanchor_every: int = Field(default=6, ge=0)
    """On a base with DIAM's extractor: re-run the network on the user's recent items every
    this many known-item events (0: only at the first anchoring and after a new snapshot),
    and at once on a surprising click (``reanchor_cos``). The network's interests are what the
    model knows; the stream's steps (and the global slot's refresh) adapt from them in
    between. With ``infer_items`` this is the stream's largest cost per event. 6 with the
    trigger at cosine 0.4 was chosen on the earlier period (every user's second quarter on a
    first-quarter network) as the fewest runs per event that reach the network re-run before
    every prediction (``python bench/prequential_steps.py --early``,
    ``bench/results/prequential.md``); before the trigger, 3 with 10 items on the tuning
    users."""

    infer_items: int = Field(default=10, ge=0)
    """On a base with DIAM's extractor: the network (and the global slot's refresh) reads the
    user's last this many recent items (0: its whole window, ``seq_len``). Inference costs
    about linearly in the items, so a short window re-run often tracks the user better than the
    whole window re-run rarely, for the same CPU."""

    refresh_global: bool = True
    """Between re-inferences, recompute DIAM's global interest (slot 0: the window's mean
    embedding plus an MLP of it and the encoder's summary from the last inference) on every
    event: a few microseconds, where the full network costs about a millisecond."""

    reanchor_cos: float = Field(default=0.4, ge=-1, le=1)
    """On a base with DIAM's extractor: also re-run the network at once on a click whose
    cosine to the interest it is routed to (before the step) is below this, a click the
    current interests explain poorly, whatever ``reanchor_every`` says; -1: never (the cadence
    alone). On the earlier period the trigger at 0.4 with a run every 6 events reaches
    re-inference (+0.0003 Recall@20, CI -0.0019..+0.0025) at 0.47 runs per event, where a run
    every 3 events without it stays 0.0044 below at 0.34
    (``bench/results/prequential_tune_steps_early.json``, with the uniform cadence at a similar
    number of runs, ``c2``, beside it)."""

    reanchor_explore: bool = True
    """On a base with DIAM's extractor: also re-run the network at once on an exploring click,
    one whose category none of the user's last 20 clicks had (the exploration signal's flag),
    where the interests should widen; False: the cadence and ``reanchor_cos`` alone. Chosen on
    the earlier period (``bench/prequential_steps.py --early --only c6_exp``), then read once on
    the reported users: served Entropy@20 2.024 against 1.998 without it (re-inference 2.026),
    level with re-inference at matched entropy, at 0.49 network runs per event against 0.41
    (``bench/results/prequential.md``)."""

    reanchor_gap: int = Field(default=1, ge=1)
    """On a base with DIAM's extractor: the fewest known-item events between two runs of the
    network that a surprising or exploring click may start (``reanchor_cos``,
    ``reanchor_explore``); the cadence is not affected (a gap of ``reanchor_every`` or more
    leaves the cadence alone). 1: any such click runs it. A larger gap bounds what surprising
    clicks add to the network's cost (at most one triggered run per ``reanchor_gap`` events;
    the cadence's runs come on top), at a price: on the earlier period 2 cut the runs per
    event from 0.547 to 0.348 and lost 0.0014 Recall@20 and 0.008 Entropy@20, 3 more
    (``bench/results/prequential.md``, "A gap between triggered runs"), so 1 is served."""

    reanchor_residual: bool = False
    """At a re-anchoring, keep what the online steps learnt (each interest's offset from its
    anchor, and d_u's from its prior) on top of the network's new output; False restarts the
    vectors at the new anchors and d_u at its prior, so the steps adapt the user between two
    runs of the network. False since the network reads the window it was trained on: on the
    tuning users carried offsets fought the network's fresher reading (guarded's front
    0.2177 against 0.2121 at Entropy@20 2.0; a share of them, ``reanchor_keep``, in between;
    ``bench/results/prequential_tune_steps.json``)."""

    reanchor_keep: float = Field(default=1.0, ge=0, le=1)
    """With ``reanchor_residual``: the share of each interest's learnt offset carried onto the
    network's new output (d_u's offset is carried whole); 0 restarts the vectors at the new
    anchors while d_u keeps what it learnt."""

    k_fixed: int = Field(default=4, ge=1)
    """K_u when the base has no light gate and ``no_gate_policy`` is "fixed": ComiRec's and
    DIAM's warm-up K."""

    no_gate_policy: Literal["categories", "fixed"] = "categories"
    """K_u proposal without a light gate: "categories" proposes the effective number of
    categories (exp of the entropy) of the long-term decayed category counts, so K_u still
    follows the user's breadth; "fixed" uses ``k_fixed`` and never changes K_u."""

    # -- the gradient step ---------------------------------------------------------------
    n_negatives: int = Field(default=16, ge=1)
    """Uniform negatives of the sampled softmax: 16 keeps the step cheap, and more negatives
    barely change its direction."""

    temperature: float = Field(default=1.0, gt=0)
    """Softmax temperature on logits ``v·e / scale²``. Tuned on a 10% user sample of ml-100k
    over {0.2, 0.5, 1, 1.5, 3}: 1 was best (Recall@20 0.175 vs 0.156 at 0.5); sharper makes
    the step chase the few negatives scored above the click, flatter degenerates to a pull."""

    lr: float = Field(default=0.3, ge=0)
    """Step size on the interest vector, in scale units per unit gradient; with ``grad_clip``
    it bounds a step to 0.3·scale, so ~3-4 consistent clicks move an interest by one item
    norm: fast enough to follow a session, slow enough that one stray click moves little
    (0.05 and 0.15 learnt less on ml-100k)."""

    grad_clip: float = Field(default=1.0, gt=0)
    """Gradient norm clip (scale units): the softmax gradient is at most ~2 item norms; one
    item norm is its typical size, so only outliers (huge-norm items) get clipped."""

    trust_radius: float = Field(default=1.5, gt=0)
    """Trust region ``‖v_k − a_k‖ ≤ ρ``: 1.5 item norms from the anchor, so online learning
    can re-centre an interest on a neighbouring taste but never replace it wholesale (1.0
    held new ml-100k users too close to anchors built from their first three items)."""

    max_norm: float = Field(default=2.0, gt=0)
    """Norm bound on interest vectors: twice a typical item, which keeps dot-product scores in
    the range the base was trained in (a growing norm would only sharpen the softmax)."""

    ortho_threshold: float = 0.3
    """Cosine above which two interests overlap: DESIGN §4's L_ortho margin."""

    ortho_margin: float = 0.2
    """Slack before the stream pushes apart: anchors themselves may overlap up to 0.3 in
    training, so only cos > 0.5 (clearly duplicated interests) is corrected online."""

    # -- d_u -----------------------------------------------------------------------------
    d_lr: float = Field(default=0.05, ge=0)
    """Step on the d_u logit toward the percentile of the category diversity the user's last 20
    clicks realised, on the scale the checkpoint's fusion layer was trained to (its
    ``online.div_quantiles``; ``kernels.diversity_target``): ~20 clicks to move d_u by one
    logit unit, on the scale of a session or two. 0.05 rather than 0.1 with
    ``k_hysteresis_up`` 1, chosen together on the earlier period so that the served arm's
    Entropy@20 reaches reinfer's (``bench/results/prequential.md``, "K_u up faster and d_u's
    step smaller, together"); alone, d_u's step moves Entropy@20 by under 0.002."""

    d_prior_pull: float = Field(default=0.05, ge=0)
    """Pull of the d_u logit back to its prior (fusion layer on the signals): weak, so d_u
    reflects the last few tens of clicks, yet returns to the prior when the user settles."""

    d_max_offset: float = Field(default=2.0, gt=0)
    """The logit never strays further than this from the prior (×7 in odds): online evidence
    refines, it does not overturn the fusion layer."""

    d_logit_bound: float = Field(default=4.0, gt=0)
    """Absolute logit bound, d_u ∈ [0.018, 0.982]: keeps d_u strictly inside (0, 1) and the
    aggregator's regimes reachable both ways."""

    # -- K_u re-gating ---------------------------------------------------------------------
    regate_every: int = Field(default=10, ge=1)
    """Re-propose K_u (and refresh d_u's prior) every m events: the gate's input (mean of the
    last 50 items) barely moves in fewer, and a re-gate costs several steps' worth."""

    k_settle_items: int = Field(default=10, ge=0)
    """On a DIAM base, K_u follows the full gate without hysteresis or gate margin while the
    user's window holds fewer known items than this (0: both from the first anchoring). 10,
    the network's window: a new user's K_u climbs to what the gate reads in a full window
    instead of holding the K_u of their first clicks. With the gate margin it keeps the
    planted K_u of the synthetic stream recoverable (Spearman 0.22, against 0.06 with the
    margin alone and 0.28 with neither) at about half the K_u changes of the rule without
    the margin, on the same Recall@20-Entropy@20 front on ml-100k's tuning users
    (``bench/results/prequential.md``, "K_u's gate margin")."""

    k_hysteresis: int = Field(default=3, ge=1)
    """Consecutive equal proposals needed to lower K_u (guards on; to raise it too when
    ``k_hysteresis_up`` is None): on a DIAM base one
    proposal per re-anchoring (3 proposals = 9 events), on a base without the network one per
    ``regate_every`` events. Chosen with ``k_gate_margin`` on ml-100k's tuning users
    (``bench/results/prequential.md``, "K_u's gate margin"): the rule with the settling window
    sits on the same Recall@20-Entropy@20 front as 4 proposals without a margin, with 9.3
    instead of 16.9 K_u changes per 1k events (paired Recall@20 −0.0012, CI [−0.0035,
    +0.0010], at Entropy@20 2.042 against 2.012; ``prequential_pair_tune_gate_margin.json``).
    Bases without the network share the count; their K_u rule was not re-measured with 3."""

    k_hysteresis_up: int | None = Field(default=1, ge=1)
    """Consecutive equal proposals needed to raise K_u (guards on); None: the same count as
    ``k_hysteresis`` (when set, ``k_hysteresis`` counts only the proposals that lower K_u).
    1 (K_u rises at the first proposal above it, falls after 3), with ``d_lr`` 0.05: chosen
    on the earlier period against a rule written before the runs, the one candidate whose
    served Entropy@20 reached reinfer's there, at the same Recall@20 at matched diversity and
    11.6 K_u changes per 1k events against 11.3 (``bench/results/prequential.md``, "K_u up
    faster and d_u's step smaller, together"). At an earlier cadence on the tuning users,
    1 or 2 with 4 or 8 to lower it cost Recall@20 and gave 1.5-3× the K_u changes (kup rows
    of ``prequential_tune_steps.json``)."""

    k_gate_margin: float = Field(default=0.5, ge=0, lt=1)
    """DIAM base, guards on: a Schmitt trigger on the gate. K_u = floor(g · K_max) + 1; while
    g · K_max stays within this margin (in units of one K) of the current K_u's bucket, the
    gate proposes the current K_u (``kernels.gate_proposal``). 0.5 with 3 proposals halves the
    K_u changes at the same front on the tuning users (gm rows of
    ``prequential_tune_steps.json``); 0: any bucket change proposes. Below 1: a margin of one
    K would let K_u move only by two or more at a time."""

    def k_hysteresis_pair(self) -> tuple[int, int]:
        """(proposals to lower K_u, proposals to raise it): (1, 1) without guards."""
        if not self.guards:
            return 1, 1
        up = self.k_hysteresis if self.k_hysteresis_up is None else self.k_hysteresis_up
        return self.k_hysteresis, up

    # -- guards --------------------------------------------------------------------------------
    step_cap: float = Field(default=0.5, gt=0)
    """Largest change of one interest vector per event (scale units), push-apart included:
    above the largest gradient step (lr·grad_clip = 0.3), so it trips only when the push-apart
    or a projection would jump."""

    d_step_cap: float = Field(default=0.2, gt=0)
    """Largest change of the d_u logit per event: about four times ``d_lr``'s largest step
    (``|d_u - target| <= 1``), so it binds only if ``d_lr`` is raised."""

    drift_cap: float = Field(default=1.0, gt=0)
    """Cap on the user's RMS drift from anchors over interests (scale units): below the trust
    radius, so consistent clicks (or a bot) move a user's vectors at most one item norm on
    average until a re-anchoring confirms it. ml-100k users settle at ~0.75 on average, so
    the cap binds on outliers; 0.6 cost ~15% of the online gain there."""

    drift_policy: Literal["clamp", "rollback"] = "clamp"
    """On a drift-cap trip: "clamp" scales every interest's drift back to the cap (keeps what
    was learnt, emits guard_trip); "rollback" resets vectors to anchors (emits rollback)."""

    rate_burst: int = Field(default=30, ge=1)
    """Token bucket size: the most events a user may send at once without being frozen.
    ml-100k's busiest rater sends 30 ratings in a minute; a human clicker far fewer."""

    rate_per_s: float = Field(default=0.5, gt=0)
    """Token refill rate: 30 events per minute sustained, twice ml-100k's busiest 10-minute
    window (157 events), so no ml-100k user is ever frozen while a 10/s bot is within seconds."""

    freeze_ms: int = Field(default=600_000, ge=0)
    """How long a user whose bucket ran dry stays frozen (events counted, nothing learnt):
    10 minutes outlasts a typical bot burst, so it cannot learn half-speed through the refill."""

    # -- what the network behind the stream is trained on ---------------------------------------
    def train_seq_len(self, model: str) -> int:
        """Items of history a ``model`` network is trained on when it is to be served by this
        configuration: the one place ``diam train``, the retrain service and the benchmarks'
        served checkpoints take it from.

        DIAM's network is run by the stream on a user's last ``infer_items`` items, so it is
        trained on that window (``recent_len`` when ``infer_items`` is 0: the whole window). A
        network trained on 50 items and served on 10 reads a window shorter than any it learnt
        on; trained on the served 10 it serves +2.7% Recall@20 at higher Entropy@20 (paired
        95% CI [+0.0020, +0.0094], ``bench/results/prequential_pair_seq10.json``). Models
        without an extractor are anchored by k-means centroids of ``recent_len`` items and are
        trained on that window (the offline comparison's 50)."""
        if model == "diam" and self.infer_items:
            return min(self.infer_items, self.recent_len)
        return self.recent_len
