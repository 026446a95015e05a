"""bench/train_device.py times the offline trainer on a device: on the CPU a run says it was
fp32 whatever ``amp`` asks (mixed precision is CUDA's), it reports the trainer's own epoch clock
and validation line, and the forward-pass timing covers every batch size it is asked for."""

from __future__ import annotations

import torch

from online_model.corpus import tiny_corpus
from online_model.train import Features
from tests.benchload import load_bench

td = load_bench("train_device")


def test_a_cpu_run_is_fp32_and_reports_its_epochs_and_validation() -> None:
    c = tiny_corpus(n_users=30, n_items=40, length=14)
    r = td.run_train(c, Features.of(c), "cpu", epochs=2, batch=64, amp=True)
    assert r["precision"] == "fp32"
    assert len(r["epoch_seconds"]) == 2 and r["seconds_per_epoch"] > 0
    assert 0.0 <= r["valid_recall@20"] <= 1.0
    assert r["wall_s"] >= sum(r["epoch_seconds"]) - 0.05


def test_forward_pass_timing_covers_each_batch_size() -> None:
    c = tiny_corpus(n_users=30, n_items=40, length=14)
    r = td.infer(c, torch.device("cpu"), (1, 8), repeats=2)
    assert set(r["sizes"]) == {"1", "8"}
    for row in r["sizes"].values():
        assert row["us_per_user"] > 0 and row["batch_ms_median"] > 0
    assert r["items_per_user"] == 10
