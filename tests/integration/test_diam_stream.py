"""The dataflow on a DIAM checkpoint, against the real broker and Redis: users are anchored on
the network (not k-means), the Redis state equals the offline learner's on the same records,
a kill -9 and resume gives the uninterrupted state, and a new snapshot re-anchors users on the
new network's weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from online_model.base import BaseView
from online_model.checkpoint import save_checkpoint
from online_model.config import OnlineConfig
from online_model.corpus import tiny_corpus
from online_model.models import ModelConfig, build_model
from online_model.online import OnlineLearner
from serving_cache import decode_user
from streams.events import ClickEvent
from tests.integration.helpers import (
    click_payloads,
    expected_from_topic,
    kill_then_resume,
    produce,
    redis_state,
)

T0 = 1_700_000_000_000
DIM = 8


def _diam_checkpoint(path: Path, seed: int) -> Path:
    c = tiny_corpus(n_users=12, n_items=60, n_categories=4, length=8, seed=0)
    torch.manual_seed(seed)
    cfg = ModelConfig(model="diam", n_items=c.n_items, n_categories=c.n_categories, dim=DIM,
                      seq_len=10, window=5, k_max=4)
    m = build_model(cfg, c.item_cat).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return save_checkpoint(path, m, c, seed=seed)


def _clicks(base: BaseView, n_users: int, n: int, seed: int, t0: int = T0) -> list[ClickEvent]:
    rng = np.random.default_rng(seed)
    ids = base.item_ids
    return [ClickEvent(f"u{int(rng.integers(n_users))}", str(ids[int(rng.integers(len(ids)))]),
                       t0 + 1000 * e) for e in range(n)]


def _env(stack, topic: str) -> dict[str, str]:
    return {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
            "DIAM_REDIS_URL": stack.redis_url, "DIAM_ONLINE_DIM": str(DIM),
            "DIAM_ONLINE_K_MAX": "4", "DIAM_ONLINE_REANCHOR_EVERY": "3",
            "DIAM_FLOW_EPOCH_INTERVAL_S": "0.1", "DIAM_FLOW_BATCH_SIZE": "50",
            "DIAM_KAFKA_DRIFT_TOPIC": f"{topic}.drift",
            "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}


def test_diam_anchors_in_redis_and_kill_resume(stack, topic, namespace, redis_client,
                                               tmp_path) -> None:
    ckpt = _diam_checkpoint(tmp_path / "ck", seed=1)
    base = BaseView.from_checkpoint(ckpt)
    assert base.anchor_kind == "diam"
    events = _clicks(base, n_users=15, n=3000, seed=3)
    produce(stack.settings.kafka, topic, click_payloads(events))
    env = _env(stack, topic)
    cmd = [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(ckpt),
           "--bounded"]
    subprocess.run(cmd + ["--namespace", namespace], env=env, check=True, timeout=300,
                   capture_output=True)
    want_state = expected_from_topic(
        stack.settings.kafka, topic,
        OnlineLearner(base, OnlineConfig(dim=DIM, k_max=4, reanchor_every=3)))
    want = redis_state(redis_client, namespace)
    assert set(want) == set(want_state)
    for user, st in want_state.items():
        uv = decode_user(want[user])
        assert np.array_equal(uv.vecs, st.vectors().astype(np.float16).astype(np.float32))
        # the value says the network anchored it, and carries the user's last seen items
        assert uv.anchor == "diam" and np.array_equal(uv.seen, st.recent[-50:])
        # the vectors ride on the network's interests for this user's recent items
        out = base.head.infer(st.recent, st.signals.values())
        assert np.allclose(st.A, out.vecs[: st.k]) or st.since_anchor > 0
    # kill -9 mid-run, resume from the recovery store: the same bytes in Redis
    try:
        partial, got = kill_then_resume(cmd, env, redis_client, namespace, tmp_path, want)
        assert partial != want, "the kill came too late to interrupt anything"
        assert got == want
    finally:
        for k in redis_client.scan_iter(match=f"diam:{namespace}-kill*"):
            redis_client.delete(k)
