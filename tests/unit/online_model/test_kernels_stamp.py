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


def test_every_compiled_kernel_releases_the_gil() -> None:
    """Worker threads of one ``diam run -w N`` process share the learner; its compiled calls
    release the GIL (numba's ``nogil``) so that they run on several cores at once. A kernel
    compiled without it would serialise the workers again (what the two-worker figure in
    ``bench/results/stream.json`` measures)."""
    from numba.core.registry import CPUDispatcher

    found = {f"{m.__name__}.{name}": fn.targetoptions.get("nogil", False)
             for m in (kernels, infer) for name, fn in vars(m).items()
             if isinstance(fn, CPUDispatcher)}
    assert len(found) > 40
    assert [name for name, nogil in found.items() if not nogil] == []
