"""What a re-anchoring setting costs on the throughput benchmark's stream, in process.

``bench/stream.py`` measures the served settings end to end (Kafka, Bytewax, Redis) in about
half an hour; most of the learner's time per event is the network's runs. This script replays
the same synthetic stream (``stream.synth_events``: 20,000 users in bursty sessions with a
trickle of new ones, on ``stream.make_checkpoint``'s DIAM checkpoint) through the dataflow's
own per-user step (``stream.logic_pass``) once per variant, in turns, and prints the network's
runs per event and the learner's µs per event for each: a minute's answer to "how many runs
would this setting save?" before a setting goes through the quality cycle
(``bench/prequential.py --early``) and the end-to-end benchmark.

Variants are ``OnlineConfig`` overrides, ``;``-separated groups of ``FIELD=VALUE``; the empty
group is the served settings. The defaults draw the stream exactly as ``bench/stream.py`` does
(400,000 events, 20,000 users, seed 1: its ``network_runs_per_event`` is the served row's).
Runs per event are exact and deterministic; the µs depend on the box (run it alone, compare
variants within one run; their order alternates by turn).

``--base trained`` replays the same events on a network trained on the stream's users instead
of ``stream.make_checkpoint``'s untrained one (:func:`trained_checkpoint`: another draw of the
same generator, seed 2, 200,000 events, two epochs from the benchmark's item table, cached under
``checkpoints/``), and reports the network's mean K_u at the end for either base: how often the
trigger fires depends on the weights, and this answers in which direction the untrained
network's rate errs.

Run: ``python bench/trigger_cost.py [--events 400000] [--repeats 2]
[--variants ';reanchor_gap=2;reanchor_gap=3'] [--base untrained|trained]
[--out bench/results/trigger_cost.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import numpy as np  # noqa: E402
import stream  # noqa: E402
from prequential import with_sets  # noqa: E402
from provenance import provenance  # noqa: E402

from diam.settings import load_settings  # noqa: E402
from online_model.base import BaseView  # noqa: E402

TRAIN_EVENTS, TRAIN_EPOCHS, TRAIN_SEED = 200_000, 2, 2


def table_rows(item_ids) -> list[int]:
    """For each row of a corpus's item table (padding row 0, then ``item_ids`` in the corpus's
    order: by id string, it0, it1, it10, ...), the row of ``stream.make_checkpoint``'s table
    (padding, then it0, it1, it2, ...) holding the same item."""
    return [0] + [int(str(i)[2:]) + 1 for i in item_ids]


def trained_checkpoint(users: int, seq_len: int) -> Path:
    """A DIAM network trained on the benchmark's synthetic users: ``TRAIN_EVENTS`` events of
    ``stream.synth_events`` drawn with seed ``TRAIN_SEED`` (the benchmark's stream is seed 1:
    the same users and categories, other clicks), ``TRAIN_EPOCHS`` epochs from
    ``stream.make_checkpoint``'s weights (its clustered item table included), as
    ``bench/prequential.py`` trains (lr 1e-2, seed 0, one CPU thread, fp32). Cached: the same
    arguments reuse the directory."""
    import torch

    from online_model.checkpoint import load_checkpoint, save_checkpoint
    from online_model.corpus import corpus_from_prepared
    from online_model.datasets import ItemRows, dataset_from_events
    from online_model.models import ModelConfig
    from online_model.train import TrainConfig, train

    out = (ROOT / "checkpoints" / f"stream-synth-{users}u-{stream.N_ITEMS}i-{stream.N_CATS}c-"
           f"d{stream.DIM}-s{TRAIN_SEED}-{TRAIN_EVENTS}-e{TRAIN_EPOCHS}-L{seq_len}")
    if (out / "weights.safetensors").is_file():
        return out
    evs = stream.synth_events(TRAIN_EVENTS, users, seed=TRAIN_SEED, t0=1_600_000_000_000)
    ids = [f"it{j}" for j in range(stream.N_ITEMS)]
    rows = ItemRows(ids, ids, [[f"c{c:02d}"] for c in stream.ITEM_CATS])
    corpus = corpus_from_prepared(dataset_from_events(
        "bench-synthetic", np.array([e.user_id for e in evs]), np.array([e.item_id for e in evs]),
        np.array([e.ts for e in evs]), rows))
    with tempfile.TemporaryDirectory() as tmp:
        init = load_checkpoint(stream.make_checkpoint(Path(tmp) / "init", seq_len=seq_len)
                               .meta["path"]).model.state_dict()
    init["item_emb.weight"] = init["item_emb.weight"][torch.as_tensor(table_rows(corpus.item_ids))]
    mcfg = ModelConfig(model="diam", n_items=corpus.n_items, n_categories=corpus.n_categories,
                       dim=stream.DIM, k_max=8, seq_len=seq_len)
    res = train(corpus, mcfg, TrainConfig(epochs=TRAIN_EPOCHS, lr=1e-2, seed=0, device="cpu",
                                          threads=1, amp=False, eval_every=0),
                init_state=init, progress=sys.stderr.isatty(),
                log=lambda line: print(line, file=sys.stderr))
    return save_checkpoint(out, res.model, corpus, seed=0, train_metrics=res.metrics())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default=";reanchor_gap=2;reanchor_gap=3",
                    help="';'-separated groups of ','-separated FIELD=VALUE overrides "
                         "(empty: the served settings)")
    ap.add_argument("--base", choices=("untrained", "trained"), default="untrained",
                    help="the benchmark's untrained network (stream.make_checkpoint) or one "
                         "trained on another draw of its users (trained_checkpoint) [untrained]")
    ap.add_argument("--out", type=Path, default=None, help="JSON results [default: stdout only]")
    args = ap.parse_args()
    prov = provenance()  # when and on which code this run starts
    settings = load_settings()
    variants = {v.strip(): [s.strip() for s in v.split(",") if s.strip()]
                for v in args.variants.split(";")}
    cfgs = {}
    for name, sets in variants.items():
        try:
            cfgs[name or "served"] = with_sets(settings.online, sets)
        except Exception as exc:  # noqa: BLE001 - say which variant is refused, and why
            sys.exit(f"variant {name!r}: {exc}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows: dict[str, dict] = {n: {"overrides": variants[n if n != "served" else ""], "us": []}
                             for n in cfgs}
    with tempfile.TemporaryDirectory() as tmp:
        seq_len = settings.online.train_seq_len("diam")
        base = (stream.make_checkpoint(Path(tmp) / "ckpt", seq_len=seq_len)
                if args.base == "untrained"
                else BaseView.from_checkpoint(trained_checkpoint(args.users, seq_len)))
        events = stream.synth_events(args.events, args.users, seed=1, t0=1_700_000_000_000)
        order = list(cfgs.items())
        for r in range(args.repeats):  # in turns, so that every variant sees the same spells
            for name, cfg in (order if r % 2 == 0 else order[::-1]):
                us, runs, logics = stream.logic_pass(base, cfg, settings.flow, events)
                rows[name]["us"].append(round(us, 2))
                rows[name]["runs_per_event"] = runs
                ks = [lg.state.k for lg in logics.values()
                      if lg.state is not None and lg.state.anchored]
                rows[name]["mean_k_at_end"] = round(float(np.mean(ks)), 3) if ks else None
                print(f"[{r + 1}/{args.repeats}] {name}: {runs:.3f} runs/event, {us:.1f} µs/event",
                      file=sys.stderr, flush=True)
    for row in rows.values():
        row["us_per_event_median"] = float(np.median(row["us"]))
    out = {"bench": "trigger_cost", "started": started,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": " ".join(["python bench/trigger_cost.py", *sys.argv[1:]]),
           "events": args.events, "users": args.users, "repeats": args.repeats,
           "base": ("untrained but its item table (bench/stream.py's make_checkpoint)"
                    if args.base == "untrained" else
                    f"trained {TRAIN_EPOCHS} epochs on {TRAIN_EVENTS} events of the same "
                    f"generator, seed {TRAIN_SEED} (trained_checkpoint)"),
           "served": {k: getattr(settings.online, k) for k in
                      ("reanchor_every", "reanchor_cos", "reanchor_explore", "reanchor_gap",
                       "infer_items")},
           "variants": rows}
    text = json.dumps({"provenance": prov, **out}, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
