"""``diam serve --log-level info`` as a real process on the stack's Redis: each hot reload of
a snapshot is one INFO line (the version, the one it replaces, how long the load took), and
a snapshot it refuses (a file that fails its hash) is one line naming it, once."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

from diam.stack_proc import free_port
from serving_cache import model_active_key
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from tests.integration.helpers import serving


def test_each_reload_is_one_info_line_and_a_refused_snapshot_one_line(
        stack, tmp_path, redis_client, namespace):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))

    def ck(i: int):
        return write_checkpoint(tmp_path / f"ck{i}", n_items=60, dim=8, seed=i)

    v1 = publish(ck(1), store, redis_client, namespace).version
    env = {**os.environ, "DIAM_SNAPSHOT_DIR": str(store.root), "DIAM_CONFIG": "",
           "DIAM_REDIS_URL": stack.redis_url, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
           "DIAM_REDIS_NAMESPACE": namespace}
    lines: list[str] = []
    with serving(env, free_port(), "--log-level", "info", "--reload-every", "0.2", "--no-ui",
                 "--no-follow-items", "--no-live-popularity") as p:
        reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
        reader.start()

        def wait_for(pattern: str) -> None:
            deadline = time.monotonic() + 60  # a bound on waiting, not on speed
            while not any(re.search(pattern, x) for x in list(lines)):
                assert p.poll() is None and time.monotonic() < deadline, (pattern, lines)
                time.sleep(0.1)

        v2 = publish(ck(2), store, redis_client, namespace).version
        wait_for(rf"INFO .*snapshot reload: serving {v2} \(was {v1}\), loaded in \d+\.\d\d s")
        v3 = publish(ck(3), store).version  # not announced until it is damaged
        faiss_file = store.path(v3) / "items.faiss"
        faiss_file.write_bytes(faiss_file.read_bytes()[:-8] + b"\x00" * 8)
        redis_client.set(model_active_key(namespace), v3)
        wait_for(rf"snapshot {v3}: items.faiss")
        v4 = publish(ck(4), store, redis_client, namespace).version  # polled after v3's refusal
        wait_for(rf"snapshot reload: serving {v4} \(was {v2}\)")
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        reader.join(timeout=60)
    assert len([x for x in lines if f"snapshot {v3}: items.faiss" in x]) == 1, lines
    assert not [x for x in lines if "snapshot reload: serving" in x and v3 in x], lines
