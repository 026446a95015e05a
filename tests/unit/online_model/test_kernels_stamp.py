"""``kernels.learn_event_diam`` and ``kernels.anchor_diam`` compile the inference head's forward
pass (``online_model/infer.py``) into themselves, and numba's on-disk cache is keyed on each
function's own file only: after a change to infer.py alone, a machine with a warm cache would
run the old forward pass in the stream while the head's own tests ran the new one. The stamp in
kernels.py names the infer.py it was compiled against; updating it changes kernels.py, which
invalidates that cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from online_model import infer, kernels


def test_kernels_stamp_names_the_current_infer_py() -> None:
    digest = hashlib.sha256(Path(infer.__file__).read_bytes()).hexdigest()[:16]
    assert kernels.INFER_STAMP == digest, (
        f"online_model/infer.py changed: set INFER_STAMP = {digest!r} in "
        "online_model/kernels.py (its fused kernels compile infer.py's forward pass, and numba's "
        "cache only notices a change to kernels.py itself)"
    )



def test_only_the_shared_learner_s_entry_points_release_the_gil() -> None:
    """Worker threads of one ``diam run --workers N`` process share the learner, which then
    calls the ``_nogil`` twins of its two network kernels (``OnlineLearner.release_gil``), so
    their compiled work runs on several cores at once. The kernels a single worker calls keep
    the GIL: releasing it there only lets another Python thread in."""
    for name in ("learn_event_diam", "learn_events_diam"):
        assert getattr(kernels, f"{name}_nogil").targetoptions.get("nogil") is True
        assert not getattr(kernels, name).targetoptions.get("nogil", False)
