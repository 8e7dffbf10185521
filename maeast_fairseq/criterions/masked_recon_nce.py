"""Criterion ``masked_recon_nce``: ``nce_weight x InfoNCE + reconstruction_weight x MSE`` on the masked patches
(MAE-AST: 1 and 10 on one forward pass; SSAST uses the same pair)."""

from dataclasses import dataclass, field

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from ..core.losses import nce_mse_loss, ssast_logged_accuracy


@dataclass
class MaskedReconNceConfig(FairseqDataclass):
    reconstruction_weight: float = field(default=10.0, metadata={"help": "weight of the masked-patch MSE"})
    nce_weight: float = field(default=1.0, metadata={"help": "weight of the InfoNCE term"})
    nce_orientation: str = field(
        default="targets",
        metadata={"help": "'targets': softmax over the clip's masked targets for each prediction (SSAST paper Eq. 1, "
                          "MAE-AST code); 'predictions': softmax over the predictions for each target (SSAST code)"},
    )


@register_criterion("masked_recon_nce", dataclass=MaskedReconNceConfig)
class MaskedReconNceCriterion(FairseqCriterion):
    def __init__(self, cfg: MaskedReconNceConfig, task):
        super().__init__(task)
        if cfg.nce_orientation not in ("targets", "predictions"):
            raise ValueError(f"nce_orientation must be 'targets' or 'predictions', got {cfg.nce_orientation!r}")
        self.cfg = cfg

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        loss, nce, mse, acc = nce_mse_loss(out, self.cfg.nce_weight, self.cfg.reconstruction_weight,
                                           self.cfg.nce_orientation)
        masked = out["target_valid"].sum()
        logging_output = {
            "loss": loss.detach(),
            "nce": nce.detach(),
            "mse": mse.detach(),
            "acc": acc.detach(),
            "masked_tokens": masked.detach(),
            "ntokens": sample.get("ntokens", 0),
            "nsentences": sample["net_input"]["fbank"].shape[0],
            "sample_size": 1,
        }
        if self.cfg.nce_orientation == "predictions":  # SSAST's own accuracy metric, comparable with its curves
            nce_out = (out.get("terms") or {}).get("nce", out)
            logging_output["acc_ssast"] = ssast_logged_accuracy(nce_out["nce"], nce_out["target"],
                                                                nce_out["target_valid"]).detach()
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return float(sum(torch.as_tensor(log.get(key, 0)).float().sum() for log in logging_outputs))

        n = max(total("sample_size"), 1.0)  # one per worker and step: the logged values are means over workers
        for key in ("loss", "nce", "mse", "acc"):
            metrics.log_scalar(key, total(key) / n, n, round=4)
        if any("acc_ssast" in log for log in logging_outputs):  # nce_orientation=predictions: SSAST's metric
            metrics.log_scalar("acc_ssast", total("acc_ssast") / n, n, round=4)
        metrics.log_scalar("masked_tokens", total("masked_tokens") / n, n, round=1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
