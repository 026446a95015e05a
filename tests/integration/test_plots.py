"""``diam inspect namespace --plot`` and ``diam diff --plot`` over real Redis and Kafka."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from diam.cli import main
from serving_cache import RedisWriter, UserVectors
from tests.integration.helpers import produce


def _users(seed: int, n: int) -> list[tuple[str, UserVectors]]:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        k = 1 + u % 4
        vecs = rng.normal(size=(k, 8)).astype(np.float32)
        out.append((f"u{u}", UserVectors(seq=1 + seed, model="m", k=k, d=float(rng.random()),
                                         dim=8, vecs=vecs, ts=1, n=10)))
    return out


def _png(path) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_namespace_and_diff_plots(stack, topic, namespace, redis_client, tmp_path) -> None:
    s = stack.settings.model_copy(update={"kafka": stack.settings.kafka.model_copy(
        update={"drift_topic": topic})})
    ns_b = f"{namespace}-b"
    try:
        RedisWriter(redis_client, namespace).write_batch(_users(1, 40))
        RedisWriter(redis_client, ns_b).write_batch(_users(2, 40))
        events = [{"kind": ["k_change", "guard_trip", "freeze"][i % 3], "user_id": f"u{i % 40}",
                   "ts_ms": 1_700_000_000_000 + 60_000 * i, "offset": i, "detail": {}}
                  for i in range(90)]
        produce(s.kafka, topic, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])

        out = tmp_path / "ns.png"
        res = CliRunner().invoke(main, ["inspect", "namespace", "--namespace", namespace,
                                        "--plot", str(out)], obj={"settings": s})
        assert res.exit_code == 0, res.output
        assert "40 users, 90 drift events" in res.output
        w, h = _png(out)
        assert w >= 1000 and h >= 300

        out2 = tmp_path / "diff.png"
        res = CliRunner().invoke(main, ["diff", namespace, ns_b, "--plot", str(out2)],
                                 obj={"settings": s})
        assert res.exit_code == 0, res.output
        assert "plot written" in res.output
        assert _png(out2)[0] >= 1000
    finally:
        for k in redis_client.scan_iter(match=f"diam:{ns_b}:*"):
            redis_client.delete(k)


def test_namespace_plot_skips_and_counts_records_that_are_not_drift_events(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    """A JSON object without ``ts_ms`` (a clicks record, a hand-written one) on the drift topic
    is skipped and counted, not a KeyError traceback."""
    s = stack.settings.model_copy(update={"kafka": stack.settings.kafka.model_copy(
        update={"drift_topic": topic})})
    RedisWriter(redis_client, namespace).write_batch(_users(3, 5))
    good = {"kind": "k_change", "user_id": "u1", "ts_ms": 1_700_000_000_000, "offset": 1}
    produce(s.kafka, topic, [(b"x", b'{"kind":"k_change","user_id":"x"}'), (b"y", b"[1, 2]"),
                             (b"u1", json.dumps(good).encode())])
    out = tmp_path / "ns.png"
    res = CliRunner().invoke(main, ["inspect", "namespace", "--namespace", namespace,
                                    "--plot", str(out)], obj={"settings": s})
    assert res.exit_code == 0, res.output
    assert "5 users, 1 drift events" in res.output
    assert "2 not drift events (skipped)" in res.output
    assert _png(out)[0] >= 1000


def test_namespace_plot_refuses_an_unknown_drift_topic(stack, namespace, tmp_path) -> None:
    """A misspelt --drift-topic is a usage error, not a plot of "0 drift events"."""
    out = tmp_path / "ns.png"
    res = CliRunner().invoke(main, ["inspect", "namespace", "--namespace", namespace,
                                    "--plot", str(out), "--drift-topic", "fix1.no-such-topic"],
                             obj={"settings": stack.settings})
    assert res.exit_code == 2, res.output
    assert "does not exist" in res.output and "--drift-topic" in res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_namespace_plot_reads_a_replay_s_own_drift_topic(stack, topic, namespace, redis_client,
                                                         tmp_path) -> None:
    """A replay's drift events are in its own topic (``streams.replay.replay_topics``): the plot
    of its namespace reads them without --drift-topic, with the live topic's events of the
    namespace (a run into it writes there), and says which topics it read."""
    from streams.kafka_io import ensure_topic
    from streams.replay import replay_topics

    s = stack.settings.model_copy(update={"kafka": stack.settings.kafka.model_copy(
        update={"drift_topic": topic})})
    own = replay_topics(s.kafka, namespace).drift_topic
    ensure_topic(s.kafka, own, 1)
    RedisWriter(redis_client, namespace).write_batch(_users(4, 3))
    events = [{"kind": "k_change", "user_id": f"u{i}", "ts_ms": 1_700_000_000_000 + i,
               "offset": i, "namespace": namespace} for i in range(3)]
    produce(s.kafka, own, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])
    out = tmp_path / "ns.png"
    res = CliRunner().invoke(main, ["inspect", "namespace", "--namespace", namespace,
                                    "--plot", str(out)], obj={"settings": s})
    assert res.exit_code == 0, res.output
    assert f"3 users, 3 drift events from {topic} and {own}" in res.output, res.output
