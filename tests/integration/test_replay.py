"""``diam replay`` and ``diam diff`` against the real broker and Redis.

One test runs three dataflows (a run with explicit offsets, two replays resolved by time), so
the setup cost is paid once: the replay over a time range must leave exactly the bytes the
online run over the same offsets left, and replays under two snapshot versions must differ in
the ways ``diam diff`` reports.
"""

from __future__ import annotations

import csv
import json
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from diam.cli import main
from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.online import OnlineLearner
from serving_cache.keys import generation_key
from serving_cache.namespaces import drop_namespace, namespace_in_use
from snapshotter.config import SnapshotConfig
from snapshotter.publish import publish
from snapshotter.store import SnapshotStore
from snapshotter.testing import write_checkpoint
from streams.config import FlowConfig
from streams.kafka_io import delete_topics, watermarks
from streams.online import LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import N_ITEMS, click_stream
from tests.integration.helpers import click_payloads, produce, redis_state

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def _topics(settings) -> set[str]:  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return set(AdminClient(settings.kafka.client_config()).list_topics(timeout=30).topics)


def _cli(settings, *args: str, input: str | None = None):
    result = CliRunner().invoke(main, list(args), obj={"settings": settings}, input=input)
    return result


def test_replay_by_time_equals_the_run_over_those_offsets_and_diff_compares_snapshots(
        stack, topic, new_topic, redis_client, tmp_path) -> None:
    drift, dlq = new_topic(1, "drift"), new_topic(1, "dlq")
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snapshots")))
    versions = [publish(write_checkpoint(tmp_path / f"ck{seed}", n_items=N_ITEMS, dim=16, k_max=4,
                                         seed=seed), store).version for seed in (0, 1)]
    s = stack.settings.model_copy(update={
        "kafka": stack.settings.kafka.model_copy(update={"drift_topic": drift, "deadletter_topic": dlq}),
        "online": OnlineConfig(dim=16, k_max=4), "flow": FLOW, "snapshot": store.cfg})
    run_id = topic.split(".")[-1][:8]
    ns_live, ns_a, ns_b = (f"{x}-{run_id}" for x in ("run", "replay-a", "replay-b"))

    events = click_stream(n_users=12, n_events=400, seed=5)
    produce(s.kafka, topic, click_payloads(events[:150]))          # history before the range
    before = {p: hi for p, (_lo, hi) in watermarks(s.kafka, topic).items()}
    time.sleep(0.05)
    t_from = datetime.now(UTC)
    time.sleep(0.05)
    produce(s.kafka, topic, click_payloads(events[150:]))          # the range: record times >= t_from
    try:
        # The "live" run over the range, given as explicit offsets.
        base = BaseView.from_checkpoint(store.path(versions[0]))
        run_online(OnlineJob(kafka=s.kafka, redis=s.redis, flow=FLOW, topic=topic,
                             namespace=ns_live, bounded=True, start=before),
                   LearnerHolder(OnlineLearner(base, s.online), base.version))
        live = redis_state(redis_client, ns_live)
        assert len(live) == 12

        iso = t_from.isoformat(timespec="milliseconds")
        res = _cli(s, "replay", "--topic", topic, "--from", iso, "--namespace", ns_a,
                   "--snapshot", versions[0], "--no-progress", "--json")
        assert res.exit_code == 0, res.output
        report = json.loads(res.output.strip().splitlines()[-1])
        assert {int(p): o for p, o in report["start"].items()} == before  # offsets-for-times
        assert (report["records"], report["users"], report["deadlettered"]) == (250, 12, 0)
        assert redis_state(redis_client, ns_a) == live                     # bit for bit

        res = _cli(s, "diff", ns_live, ns_a, "--json")
        body = json.loads(res.output)
        assert {k: body.pop(k) for k in ("bases_a", "bases_b", "different_bases", "bases_note")
                } == {"bases_a": [versions[0]], "bases_b": [versions[0]], "different_bases": 0,
                      "bases_note": None}
        assert body.pop("base_a") == body.pop("base_b")  # one base record: version and items
        assert body == pytest.approx({
            "ns_a": ns_live, "ns_b": ns_a, "users_a": 12, "users_b": 12, "both": 12, "only_a": 0,
            "only_b": 0, "identical": 12, "k_agree_rate": 1.0, "mean_matched_cos": 1.0,
            "min_matched_cos": 1.0, "mean_abs_dd": 0.0, "undecodable": 0, "relabelled": 0},
            abs=1e-9)

        res = _cli(s, "replay", "--topic", topic, "--from", iso, "--namespace", ns_b,
                   "--snapshot", versions[1], "--no-progress")
        assert res.exit_code == 0, res.output
        assert "replayed 250 events" in res.output and "dead-lettered 0" in res.output
        out_csv = tmp_path / "diff.csv"
        res = _cli(s, "diff", ns_a, ns_b, "--csv", str(out_csv))
        assert res.exit_code == 0, res.output
        assert "in both 12" in res.output and "identical values 0 (0.0%)" in res.output
        assert (f"note: 12 of 12 users in both were written on different base models "
                f"({versions[0]!r} vs {versions[1]!r}): their matched cosines compare different "
                "embedding spaces") in res.stderr
        rows = list(csv.DictReader(open(out_csv)))
        assert len(rows) == 12 and all(float(r["mean_cos"]) < 0.999 for r in rows)
        print("\n" + res.output)  # the diff of two snapshots' replays, for the report (-s)

        res = _cli(s, "replay", "--topic", topic, "--namespace", ns_a, "--snapshot", versions[0])
        assert res.exit_code == 1 and "--clear" in res.output
        res = _cli(s, "replay", "--topic", topic, "--namespace", "live", "--snapshot", versions[0])
        assert res.exit_code == 1 and "refusing to replay into 'live'" in res.output

        # diam drop: the serving namespaces are refused; a "no" keeps everything; then only
        # ns_b's keys go (its 12 users and the generation marker its replay set)
        res = _cli(s, "drop", "live", "--yes")
        assert res.exit_code == 1 and "refusing to drop 'live'" in res.output
        assert namespace_in_use(redis_client, ns_b) and redis_client.exists(generation_key(ns_b))
        res = _cli(s, "drop", ns_b, input="n\n")
        assert res.exit_code == 1 and len(redis_state(redis_client, ns_b)) == 12
        own_b = [f"{t}.replay.{ns_b}" for t in (dlq, drift)]
        assert set(own_b) <= _topics(s)  # the replay made its own dead-letter and drift topics
        res = _cli(s, "drop", ns_b, "--yes")
        # 12 users, the generation marker, the base record and the partition count's record
        assert res.exit_code == 0 and f"dropped 15 keys of namespace '{ns_b}'" in res.output, res.output
        assert "deleted the replay's topic(s)" in res.output and not set(own_b) & _topics(s)
        assert {f"{t}.replay.{ns_a}" for t in (dlq, drift)} <= _topics(s)  # ns_a's stay
        assert list(redis_client.scan_iter(match=f"diam:{ns_b}:*")) == []
        assert not namespace_in_use(redis_client, ns_b)
        assert redis_state(redis_client, ns_a) == live
        # users without a generation marker (written another way) still count as a run
        redis_client.set(f"diam:{ns_b}:u:someone", b"x")
        assert namespace_in_use(redis_client, ns_b)
    finally:
        for ns in (ns_live, ns_a, ns_b):
            drop_namespace(redis_client, ns)
        delete_topics(s.kafka, [f"{t}.replay.{ns}" for t in (drift, dlq) for ns in (ns_a, ns_b)])
