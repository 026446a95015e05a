"""``LearnerHolder`` when worker threads share it: one reload at a time, and the learners it
holds release the GIL once shared."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from streams.online import LearnerHolder


def test_the_reload_hook_runs_once_at_a_time() -> None:
    """Every worker's decoding step asks the holder; while one thread is in the hook (which
    keeps state of its own), another finds it busy and goes on instead of calling it too."""
    inside, release = threading.Event(), threading.Event()
    calls = []

    def hook():
        calls.append(threading.get_ident())
        inside.set()
        release.wait(10)
        return None

    holder = LearnerHolder(SimpleNamespace(release_gil=False), "v1", reload=hook,
                           check_every_s=0.0)
    t = threading.Thread(target=holder.maybe_reload)
    t.start()
    assert inside.wait(10)
    holder.maybe_reload()  # due (check_every_s=0), but the other thread is in the hook
    assert len(calls) == 1
    release.set()
    t.join(10)
    holder.maybe_reload()  # free again: asked
    assert len(calls) == 2


def test_a_shared_holder_s_learners_release_the_gil_after_a_reload_too() -> None:
    first, second = SimpleNamespace(release_gil=False), SimpleNamespace(release_gil=False)
    holder = LearnerHolder(first, "v1", reload=lambda: (second, "v2"), check_every_s=0.0)
    holder.share()
    assert first.release_gil
    holder.maybe_reload()
    assert holder.learner is second and second.release_gil and holder.version == "v2"
    alone = LearnerHolder(SimpleNamespace(release_gil=False), "v1")
    assert not alone.learner.release_gil  # one worker: the GIL is kept
