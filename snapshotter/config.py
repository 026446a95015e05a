"""Configuration of the snapshot store and of the FAISS item index it builds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SnapshotConfig(BaseModel):
    """Where snapshots live, how many are kept, and how the item index is built."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dir: str = "snapshots"
    """Root directory of versioned snapshots (``snapshots/<version>/``)."""

    keep: int = Field(default=5, ge=1)
    """Versions kept on disk; older ones are deleted after a successful publish, except those
    in use or the way back (the active one, the one before it, what Redis announces:
    :meth:`snapshotter.store.SnapshotStore.prune`). Five covers a few rollbacks without
    unbounded disk use."""

    lock_timeout_s: float | None = Field(default=None, gt=0)
    """How long a publish or rollback waits for another switch of the same directory (the
    store's lock) before it refuses, naming the holder; None waits until the holder ends (a
    lock never goes stale: it dies with its holder). The wait is said at once on stderr."""

    trainer_dir: str = "checkpoints"
    """What ``diam snapshot watch`` watches: a checkpoint directory, or a directory whose
    sub-directories are checkpoints (the newest complete one is published)."""

    watch_every_s: float = Field(default=30.0, gt=0)
    """Default period of ``watch``. Thirty seconds: a new base model is rare (hours), and a
    checkpoint scan is a few ``stat`` calls."""

    settle_s: float = Field(default=5.0, ge=0)
    """``watch`` publishes a checkpoint only when its files are this many seconds old, so a
    trainer still writing it is not caught half-way."""

    exact_max_items: int = Field(default=20_000, ge=1)
    """Catalogues up to this size get an exact ``IndexFlatIP``. Beyond it exact search of a few
    interest vectors costs milliseconds (a handful of queries stays below FAISS's BLAS
    threshold of 20 queries, so each is a scan of the whole table), so IVF + SQ8 is used."""

    ivf_nlist: int = Field(default=0, ge=0)
    """IVF lists; 0 picks the power of two nearest to 4·sqrt(N), clipped to [64, 4096]
    (about 1024 at 100k items, 4096 at 1M): a few hundred items per list."""

    ivf_nprobe: int = Field(default=0, ge=0)
    """Lists probed per query; 0 tunes it at publish time: the smallest of 8, 16, 32, 64, 96,
    128 whose recall@50 against exact search reaches ``target_recall`` on the tuning queries
    (the served users' interest vectors, see ``tune_users``), with 95% confidence (the mean
    over the queries minus 1.645 standard errors, ``recall_at_50_lower`` in the manifest)."""

    target_recall: float = Field(default=0.95, gt=0, le=1)
    """Recall@50 of IVF against exact search that the nprobe tuning must reach (the serving
    goal of issue 5)."""

    tune_users: int = Field(default=2000, ge=0)
    """At most this many users of the namespace's Redis are sampled (seeded by ``seed``) and
    their interest vectors are the queries ``nprobe`` is tuned on: the queries the index will
    serve. Below 200 such vectors, with no Redis, or at 0, the tuning uses mixtures of item
    vectors instead (the manifest's ``index.tuning_queries_source`` says which). Its cost is a
    SCAN of the namespace, a GET per sampled user and an exact search of their vectors (K_u
    each) at publish time."""

    train_points_per_list: int = Field(default=64, ge=39)
    """IVF k-means trains on at most this many real item vectors per list (FAISS warns below
    39); 64 keeps a 1M-item publish to tens of seconds on two cores."""

    seed: int = 0
    """Seed of the training sample and the tuning queries, so a publish is reproducible."""
