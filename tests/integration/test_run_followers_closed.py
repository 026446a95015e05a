"""A run on the active snapshot follows the catalogue and the clicks topic (``diam.app``: the
click-first rule's reader thread and its Kafka consumer, the catalogue follower's consumer):
an in-process ``diam run`` stops them when it ends, however it ends (done, refused after the
base was loaded), and ``LearnerHolder.close`` stops them for a holder made with
``diam.app.load_holder``; none is left running. Against the real broker and Redis.

Python threads are seen by ``threading.enumerate``; a Kafka client's own threads are not, so
its main thread (``rdk:main``, one per client handle, named by librdkafka) is counted in
``/proc/self/task``."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from click.testing import CliRunner

from diam.app import load_holder
from diam.cli import main
from online_model.config import OnlineConfig
from snapshotter.config import SnapshotConfig
from snapshotter.publish import publish
from snapshotter.store import SnapshotStore
from snapshotter.testing import write_checkpoint
from streams.catalog import CatalogItem, publish_items
from streams.config import FlowConfig
from streams.events import ClickEvent
from tests.flowkit import N_ITEMS, click_stream
from tests.integration.helpers import click_payloads, produce

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2, reload_check_s=0.1)


def _followers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "click-first"}


def _kafka_clients() -> int:
    """Kafka client handles alive in this process (librdkafka's main thread of each), once the
    unreachable ones are collected (a client a helper dropped ends when collected)."""
    gc.collect()
    n = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            n += (task / "comm").read_text().strip() == "rdk:main"
        except OSError:  # the thread ended while listed
            pass
    return n


def _settings(stack, topic: str, tmp_path):  # type: ignore[no-untyped-def]
    """Settings of a run on an active snapshot whose catalogue (``<topic>.items``) holds one
    item the snapshot lacks, and whose clicks topic holds one the click-first rule takes."""
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snapshots")))
    publish(write_checkpoint(tmp_path / "ck", n_items=N_ITEMS, dim=16, k_max=4, seed=0), store)
    s = stack.settings.model_copy(update={
        "kafka": stack.settings.kafka.model_copy(update={
            "clicks_topic": topic, "items_topic": f"{topic}.items",
            "drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"}),
        "online": OnlineConfig(dim=16, k_max=4), "flow": FLOW, "snapshot": store.cfg})
    assert publish_items(s.kafka, s.kafka.items_topic, [CatalogItem("cat-new", (), "new", 0)]).ok
    events = click_stream(n_users=4, n_events=40, seed=3)
    t = events[-1].ts
    produce(s.kafka, topic, click_payloads(
        events + [ClickEvent(u, "cf-x", t + 1000 * n) for n, u in enumerate(("user1", "user2"), 1)]))
    return s


def test_an_in_process_run_leaves_no_follower_running(stack, topic, namespace, tmp_path) -> None:
    s = _settings(stack, topic, tmp_path)
    threads, clients = _followers(), _kafka_clients()

    # the followers are there while a holder is open (the checks below can fail) ...
    holder = load_holder(s, namespace=namespace)
    assert {"cat-new", "cf-x"} <= set(holder.learner.base.item_ids.tolist())
    holder.maybe_reload()  # the catalogue follower's first poll: its consumer
    assert len(_followers() - threads) == 1
    assert _kafka_clients() >= clients + 2
    # ... and gone once it is closed (twice: nothing more)
    holder.close()
    holder.close()
    assert not _followers() - threads
    assert _kafka_clients() <= clients
    holder.maybe_reload()  # a closed holder asks its hook no more
    assert _kafka_clients() <= clients

    def run(*extra: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, ["run", "--bounded", "--topic", topic, "--namespace",
                                         namespace, "--no-recovery", *extra],
                                  obj={"settings": s})

    res = run()  # to its end
    assert res.exit_code == 0 and "online dataflow:" in res.output, res.output
    assert not _followers() - threads
    assert _kafka_clients() <= clients
    res = run("--partitions", "0,7")  # refused after the base (and its followers) started
    assert res.exit_code == 2 and "not [7]" in res.output, res.output
    assert not _followers() - threads
    assert _kafka_clients() <= clients
