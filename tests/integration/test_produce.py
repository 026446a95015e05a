"""``diam produce`` / streams.producer against the real broker of the local stack."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from online_model.datasets import load_prepared
from online_model.synth import SynthParams, write_synth
from streams.events import ClickEvent, decode_event
from streams.producer import produce_dataset, produce_raw


def _read_back(cfg, topic: str, expect: int, timeout: float = 30.0) -> list:  # type: ignore[no-untyped-def]
    """Every record of ``topic`` read by an independent consumer, waiting for ``expect``."""
    admin = AdminClient(cfg.client_config())
    parts = sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    c = Consumer(
        {
            **cfg.client_config(),
            "group.id": f"t-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                assert m.error() is None, m.error()
                out.append(m)
        for m in c.consume(1000, 0.5):  # nothing beyond what was produced
            out.append(m)
    finally:
        c.close()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("data") / "synth"
    write_synth(SynthParams(users=25, items=60, categories=8, events_per_user=12, seed=4), out)
    return load_prepared(out)


def test_dataset_round_trip(stack, topic, small) -> None:  # type: ignore[no-untyped-def]
    report = produce_dataset(small, stack.settings.kafka, topic)
    n = len(small.ts_ms)
    assert (report.sent, report.failed, report.errors, report.ok) == (n, 0, [], True)

    msgs = _read_back(stack.settings.kafka, topic, n)
    assert len(msgs) == n
    events = [decode_event(m.value()) for m in msgs]
    assert all(isinstance(e, ClickEvent) for e in events)
    assert all(m.key() == e.user_id.encode() for m, e in zip(msgs, events, strict=True))
    got = sorted((e.user_id, e.item_id, e.ts) for e in events)
    want = sorted(
        zip(small.user_ids.tolist(), small.item_ids.tolist(), small.ts_ms.tolist(), strict=True)
    )
    assert got == want
    # keyed by user: one partition per user, and within it the user's clicks in time order
    by_user: dict[str, list[tuple[int, int]]] = {}
    for m, e in zip(msgs, events, strict=True):
        by_user.setdefault(e.user_id, []).append((m.partition(), m.offset(), e.ts))
    for rows in by_user.values():
        assert len({p for p, _, _ in rows}) == 1
        ts_in_offset_order = [t for _, _, t in sorted(rows)]
        assert ts_in_offset_order == sorted(ts_in_offset_order)


def test_raw_bytes_missing_topic_created_and_limit_rate(stack, small) -> None:  # type: ignore[no-untyped-def]
    cfg = stack.settings.kafka.model_copy(update={"partitions": 2})
    name = f"t.{uuid.uuid4().hex[:16]}"
    admin = AdminClient(cfg.client_config())
    try:
        raw = [(None, b"\xc1garbage"), (b"u1", b'{"user_id": "a:b"}'), (b"u2", b"")]
        report = produce_raw(cfg, name, raw)
        assert (report.sent, report.failed) == (3, 0)
        assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 2
        back = _read_back(cfg, name, 3)
        assert sorted((m.key() or b"", m.value() or b"") for m in back) == sorted(
            (k or b"", v) for k, v in raw
        )

        # --limit takes the first events in time order; --rate paces them (a lower bound only)
        report = produce_dataset(small, cfg, name, rate=200.0, limit=40)
        assert (report.sent, report.failed) == (40, 0)
        assert report.seconds >= (40 - 4) / 200.0
        back = _read_back(cfg, name, 43)
        ts = sorted(
            e.ts for e in (decode_event(m.value()) for m in back) if isinstance(e, ClickEvent)
        )
        assert ts == sorted(small.ts_ms[:40].tolist())
    finally:
        admin.delete_topics([name], operation_timeout=30)[name].result(30)


def test_delivery_errors_are_reported(stack, new_topic) -> None:  # type: ignore[no-untyped-def]
    name = new_topic(partitions=1)
    admin = AdminClient(stack.settings.kafka.client_config())
    entry = ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET)
    res = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[entry])
    admin.incremental_alter_configs([res])[res].result(30)
    # random bytes: lz4 cannot shrink them under the topic's limit
    report = produce_raw(stack.settings.kafka, name, [(b"u", os.urandom(10_000))])
    assert report.failed >= 1 and not report.ok
    assert any("too large" in e.lower() or "MSG_SIZE" in e for e in report.errors), report.errors


def test_cli_produce(stack, topic, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from diam.cli import main

    data = tmp_path / "d"
    write_synth(
        SynthParams(users=5, items=20, categories=4, events_per_user=4, seed=1, max_interests=3),
        data,
    )
    monkeypatch.setenv("DIAM_KAFKA_BOOTSTRAP", stack.bootstrap)
    res = CliRunner().invoke(
        main, ["produce", "--data", str(data), "--topic", topic, "--no-progress"]
    )
    n = len(load_prepared(data).ts_ms)
    assert res.exit_code == 0, res.output
    assert f"{n:,} events sent to {topic}" in res.output and "failed: 0" in res.output
    assert "already holds" not in res.output
    res = CliRunner().invoke(  # again: appended, and said so
        main, ["produce", "--data", str(data), "--topic", topic, "--no-progress"]
    )
    assert res.exit_code == 0 and f"warning: {topic} already holds {n:,} records" in res.output
    res = CliRunner().invoke(main, ["produce", "--data", str(tmp_path / "none"), "--topic", topic])
    assert res.exit_code == 1 and "diam data prepare" in res.output and "Traceback" not in res.output


def test_an_idle_partition_does_not_read_a_backlogged_one_ahead_without_bound(stack, new_topic) -> None:
    """One worker reads both partitions through one consumer: polling the idle partition
    fetches the backlogged one's records into its buffer. The buffers stop growing at the
    source's bound, and the backlogged partition still gets every record once, in order."""
    from confluent_kafka import Producer

    from streams.kafka_source import ClickSource

    topic = new_topic(2)
    prod = Producer({**stack.settings.kafka.client_config(), "linger.ms": 5})
    n = 6000
    for i in range(n):
        prod.produce(topic, value=b"v%d" % i, key=b"k", partition=1)
        if i % 1000 == 0:
            prod.poll(0)
    assert prod.flush(60) == 0
    src = ClickSource(stack.settings.kafka, topic, batch_size=100)  # tailing: nothing ends
    idle = src.build_part("in", f"0-{topic}", None)
    busy = src.build_part("in", f"1-{topic}", None)
    held = busy._buf
    most, deadline = 0, time.monotonic() + 8
    while time.monotonic() < deadline:
        assert idle.next_batch() == []
        most = max(most, len(held))
    assert 0 < most <= 4 * 100 + 100, most
    got: list[int] = []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        got += [r.offset for r in busy.next_batch()]
        idle.next_batch()
    assert got == list(range(n))
    idle.close()
    busy.close()
