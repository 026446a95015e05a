"""Warm-start diagnostic for the retrain service, offline (issue 16): is a retrained model better
than the first one, scored by the model's own inference rather than through the stream?

ml-100k in time order, ten windows of 10%. The first model trains on windows 1-3 (as
``bench/loop.py``'s: DIAM dim 32 on the served window of 10 items, 2 epochs, 16 positions per
user, the newest 10% held out).
Each variant then retrains after windows 4..9 on every event so far (newest 10% held out, as
the retrain service does), warm-started from its previous model (or from scratch with
``"cold": true``), and each model is scored on the next window: Recall@20 of users with events
before and in it, history before, truth in it, items the model does not know never
recommended (``online_model.retrain.evaluate_slice``). ``never`` scores the first model on the
same windows. No online learner, no FAISS, no gate: every retrain is kept.

Writes ``bench/results/retrain_offline.json``. Command:
``python bench/retrain_offline.py '{"warm_e2_lr1e-2": {"epochs": 2, "lr": 1e-2}}'``
(variant name -> epochs, lr, cold).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provenance import provenance, sized_out, sized_out_help  # noqa: E402

DEFAULT = {"warm_e1_lr1e-2": {"epochs": 1, "lr": 1e-2}, "warm_e2_lr1e-2": {"epochs": 2, "lr": 1e-2},
           "warm_e1_lr1e-3": {"epochs": 1, "lr": 1e-3}, "warm_e2_lr1e-3": {"epochs": 2, "lr": 1e-3},
           "cold_e2_lr1e-2": {"epochs": 2, "lr": 1e-2, "cold": True}}


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="?", default=None,
                    help="a JSON object: variant name -> {epochs, lr, cold} (default: the "
                         "variants of DEFAULT in this file; others need --out)")
    ap.add_argument("--out", type=Path, default=None,
                    help=sized_out_help("retrain_offline", (), variants=("variants",)))
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--out``, else the committed ``bench/results/retrain_offline.json`` for the default
    variants; variants given without ``--out`` are refused (exit 2, ``provenance.sized_out``)."""
    if args.out:
        return Path(args.out)
    return sized_out(ap, args, "retrain_offline", (), variants=("variants",))


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    out_path = results_path(ap, args)  # variants without --out are refused before anything runs

    import torch

    from online_model.config import OnlineConfig
    from online_model.corpus import corpus_from_prepared, prefix_signals
    from online_model.datasets import ItemRows, dataset_from_events, load_prepared, read_item_titles
    from online_model.models import ModelConfig, build_model
    from online_model.retrain import (
        evaluate_slice,
        remap_state,
        slice_eval_set,
        time_split,
        unknown_rows,
    )
    from online_model.train import Features, TrainConfig, train
    from streams.catalog import items_of_dataset

    prov = provenance()  # when and on which code this run starts
    try:
        variants = json.loads(args.variants) if args.variants is not None else DEFAULT
    except ValueError as exc:
        sys.exit(f"the argument is a JSON object of variants ({exc}); --help shows the form")
    SEQ_LEN = OnlineConfig().train_seq_len("diam")  # the retrain service's window  # noqa: N806
    data = str(ROOT / "data" / "ml-100k")
    ds = load_prepared(data)
    n = len(ds.ts_ms)
    users, items, ts = ds.user_ids, ds.item_ids, ds.ts_ms
    catalog = {it.item_id: it for it in items_of_dataset(ds, read_item_titles(data))}

    def cut(k: int) -> int:
        return int(round(k * n / 10))

    def corpus_upto(b: int):  # type: ignore[no-untyped-def]
        seen = list(dict.fromkeys(items[:b].tolist()))
        rows = ItemRows(seen, [catalog[i].title for i in seen],
                        [list(catalog[i].categories) for i in seen])
        return corpus_from_prepared(dataset_from_events("ml-100k", users[:b], items[:b], ts[:b], rows))

    def fit(c, init=None, epochs: int = 2, lr: float = 1e-2):  # type: ignore[no-untyped-def]
        tr, _ = time_split(c, 0.1)
        torch.manual_seed(0)
        mcfg = ModelConfig(model="diam", n_items=c.n_items, n_categories=c.n_categories, dim=32,
                           seq_len=SEQ_LEN)
        state = None
        if init is not None:
            state, _ = remap_state(init[0], init[1], build_model(mcfg, c.item_cat), c.item_ids)
        r = train(tr, mcfg, TrainConfig(epochs=epochs, lr=lr, seed=0, device="cpu",
                                        max_per_user=16, threads=1),
                  feats=Features.of(tr), progress=False, log=lambda _: None, init_state=state)
        return r.model.eval(), c.item_ids

    def score(model_ids, k: int) -> float:  # type: ignore[no-untyped-def]
        """Recall@20 on window k+1 (events cut(k)..cut(k+1))."""
        m, ids = model_ids
        c = corpus_upto(cut(k + 1))
        es = slice_eval_set(c, int(ts[cut(k)]), prefix_signals(c))
        torch.manual_seed(0)
        view = build_model(ModelConfig(model="diam", n_items=c.n_items,
                                       n_categories=c.n_categories, dim=32, seq_len=SEQ_LEN),
                           c.item_cat)
        state, _ = remap_state(m, ids, view, c.item_ids)
        view.load_state_dict(state)
        return round(float(evaluate_slice(view.eval(), c, es,
                                          exclude=unknown_rows(c, ids))["recall@20"]), 4)

    t0 = time.time()
    first = fit(corpus_upto(cut(3)))
    ks = range(4, 10)  # retrain after window k (events up to cut(k)), score window k+1
    res = {"never": [score(first, k) for k in ks]}
    print("never", res["never"], file=sys.stderr)
    for name, kw in variants.items():
        kw = dict(kw)
        cold = kw.pop("cold", False)
        cur, out = first, []
        for k in ks:
            cur = fit(corpus_upto(cut(k)), None if cold else cur, **kw)
            out.append(score(cur, k))
        res[name] = out
        print(name, out, file=sys.stderr)
    report = {"provenance": prov, "dataset": "ml-100k", "seq_len": SEQ_LEN, "windows": "recall@20_by_window[j] is window j+5 of 10",
              "arms": {k: {"recall@20_by_window": v, "mean": round(float(np.mean(v)), 4)}
                       for k, v in res.items()},
              "variants": variants, "wall_s": round(time.time() - t0, 1),
              "command": "python bench/retrain_offline.py " + " ".join(f"'{a}'" for a in sys.argv[1:])}
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
