"""The stuck-client watchdogs (``KafkaConfig.stuck_client_s``) on the real broker: the
source's consumer against a partition it stops fetching, a sink's producer that stops delivering.

librdkafka can leave a partition leaderless for good after a broker restart (confluentinc/
librdkafka#5430): the client then never fetches or delivers it again while the broker serves
any fresh client. Pausing the partition in the consumer gives the same symptom on demand (no
record arrives while the high watermark moves on); a producer aimed at a dead port stands in
for the stuck producer.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TopicPartition

from streams.kafka_health import BrokerHealth
from streams.kafka_source import _SharedConsumer
from tests.integration.helpers import produce


def _drain(shared: _SharedConsumer, buf, want: int, timeout: float) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        shared.fill()
        while buf:
            got.append(buf.popleft().offset())
        time.sleep(0.01)
    return got


@pytest.mark.partitions(1)
def test_a_stuck_partition_is_read_again_from_its_next_offset(stack, topic) -> None:
    kafka = stack.settings.kafka
    produce(kafka, topic, [(b"u1", f"a{i}".encode()) for i in range(5)])
    conf = kafka.consumer_config()
    conf.update({"group.id": "diam-test-unused", "enable.auto.commit": "false"})
    shared = _SharedConsumer(conf, topic, 100, BrokerHealth(kafka.bootstrap), stall_s=1.0)
    try:
        buf = shared.add(0, 0)
        assert _drain(shared, buf, 5, 30) == [0, 1, 2, 3, 4]
        shared.consumer.pause([TopicPartition(topic, 0)])  # the stuck client, on demand
        produce(kafka, topic, [(b"u1", f"b{i}".encode()) for i in range(5)])
        # every record once, in order, from where the stuck consumer stopped
        assert _drain(shared, buf, 5, 30) == [5, 6, 7, 8, 9]
        assert shared.rebuilds == 1
    finally:
        shared.close()


@pytest.mark.partitions(1)
def test_an_idle_partition_is_not_taken_for_a_stuck_one(stack, topic) -> None:
    kafka = stack.settings.kafka
    produce(kafka, topic, [(b"u1", b"a")])
    conf = kafka.consumer_config()
    conf.update({"group.id": "diam-test-unused", "enable.auto.commit": "false"})
    shared = _SharedConsumer(conf, topic, 100, BrokerHealth(kafka.bootstrap), stall_s=0.5)
    try:
        buf = shared.add(0, 0)
        assert _drain(shared, buf, 1, 30) == [0]
        _drain(shared, buf, 1, 3)  # nothing more arrives: caught up, not stuck
        assert shared.rebuilds == 0
    finally:
        shared.close()


@pytest.mark.partitions(2)
def test_a_stuck_sink_producer_is_replaced_and_its_records_delivered(stack, topic) -> None:
    """A producer that cannot deliver while the cluster leads every partition (here: one
    that talks to a port nobody listens on, standing in for librdkafka's leaderless
    partition) is replaced in ``flush``, and its undelivered records arrive, in order."""
    import socket

    from confluent_kafka import Producer

    from streams.kafka_io import consume_all
    from streams.kafka_sink import KafkaOut, _Producing

    kafka = stack.settings.kafka.model_copy(update={"stuck_client_s": 1.0})
    out = _Producing(kafka, topic, BrokerHealth(kafka.bootstrap))
    with socket.socket() as s:  # a free port, closed again: nothing answers there
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    out.producer = Producer({"bootstrap.servers": dead, "message.timeout.ms": 0})
    recs = [KafkaOut(key=b"u1", value=f"r{i}".encode(), headers=[]) for i in range(6)]
    out.produce(recs)
    out.flush()
    out.check()
    assert out.rebuilds == 1
    got = sorted((r.offset, r.value) for r in consume_all(kafka, topic) if r.key == b"u1")
    assert [v for _, v in got] == [r.value for r in recs]
