"""REMI (Xie et al., RecSys 2023, "Rethinking Multi-Interest Learning for Candidate Matching").

ComiRec-SA's extractor with two training changes, no change at inference:

- interest-aware hard negatives (IHN): the sampled negatives are reweighted by
  ``exp(beta * score)`` under the interest read out for the target, so negatives that interest
  already likes count more (``losses.hard_negative_log_weights``, ``cfg.hard_beta``);
- routing regularisation (RR): a penalty on the spread of each interest's attention over the
  history (``losses.routing_regularization``, weight ``cfg.remi_rr``), against "routing
  collapse", where an interest attends to a single item.

Written from the paper's description; the RR weight is of the order the authors' code uses
once its batch sum is read as a per-user mean, not tuned here.
"""

from __future__ import annotations

import torch

from online_model import losses
from online_model.models.base import Batch
from online_model.models.comirec_sa import ComiRecSA

__all__ = ["REMI"]


class REMI(ComiRecSA):
    """``seq [B, L] -> K interests [B, K, d]``; ComiRec-SA trained with IHN and RR."""

    name = "remi"

    def loss(self, batch: Batch, neg_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        assert batch.target is not None, "training batches carry a target"
        out = self.interests(batch)
        pos = self.item_emb(batch.target)  # [B, d]
        user = self.readout(out, pos)  # [B, d] the interest closest to the target
        main = losses.sampled_softmax(user, pos, self.item_emb(neg_ids), batch.target, neg_ids,
                                      self.cfg.hard_beta)
        rr = losses.routing_regularization(out.extra["att"], out.extra["seq_mask"])
        return main + self.cfg.remi_rr * rr, {"main": float(main.detach()),
                                              "rr": float(rr.detach())}
