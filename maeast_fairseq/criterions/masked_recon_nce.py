"""Criterion ``masked_recon_nce``: ``nce_weight x InfoNCE + reconstruction_weight x MSE`` on the masked patches
(MAE-AST: 1 and 10 on one forward pass; SSAST uses the same pair).

Normalisation (``loss_normalization``, decision D24):

* ``'global'`` (default): the loss handed to the trainer is the *sum* over the scored masked patches of
  ``nce_weight x (-log p) + reconstruction_weight x (patch MSE)`` and ``sample_size`` is the number of scored masked
  patches. fairseq sums ``sample_size`` over processes and ``update_freq`` steps and divides the summed gradient by it
  (as wav2vec), so the update is that of the mean over every masked patch of the global batch, however the batch is
  split over processes: with padded clips the processes weigh by their patch counts.
* ``'per_process'``: the official SSAST / MAE-AST normalisation: each forward averages its own masked patches and
  ``sample_size`` is 1, so N processes average N per-process means (equal weights, whatever their patch counts).

The logged ``loss`` / ``nce`` / ``mse`` / ``acc`` mean the same in both: the mean over the masked patches of the
log interval (``'global'``) or the mean of the per-forward means (``'per_process'``); they are equal when every
forward scores the same number of patches. ``masked_tokens`` is the mean number of masked patches per forward.
"""

import functools
from dataclasses import dataclass, field

from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from ..core.losses import nce_mse_loss, ssast_logged_accuracy
from .logging_outputs import logged_total


@dataclass
class MaskedReconNceConfig(FairseqDataclass):
    reconstruction_weight: float = field(default=10.0, metadata={"help": "weight of the masked-patch MSE"})
    nce_weight: float = field(default=1.0, metadata={"help": "weight of the InfoNCE term"})
    loss_normalization: str = field(
        default="global",
        metadata={"help": "'global': sum over the masked patches, sample_size = their number (fairseq divides by the "
                          "total over processes: N processes train as one); 'per_process': the official SSAST / "
                          "MAE-AST mean per forward, sample_size 1 (processes weigh equally whatever their patches)"},
    )
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
        if cfg.loss_normalization not in ("global", "per_process"):
            raise ValueError(f"criterion.loss_normalization must be 'global' or 'per_process', got "
                             f"{cfg.loss_normalization!r}")
        self.cfg = cfg

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        loss, nce, mse, acc = nce_mse_loss(out, self.cfg.nce_weight, self.cfg.reconstruction_weight,
                                           self.cfg.nce_orientation)
        terms = out.get("terms") or {}
        nce_out, mse_out = terms.get("nce", out), terms.get("mse", out)
        masked = nce_out["target_valid"].sum()
        if self.cfg.loss_normalization == "global":
            # sums over the scored patches; the trainer divides by the global count (sample_size summed over workers)
            n_nce = masked.to(loss.dtype)
            n_mse = mse_out["target_valid"].sum().to(loss.dtype)  # = n_nce unless passes='two' masks other counts
            loss = self.cfg.nce_weight * nce * n_nce + self.cfg.reconstruction_weight * mse * n_mse
            nce, mse, acc, weight, sample_size = nce * n_nce, mse * n_mse, acc * n_nce, n_nce, masked.detach()
        else:
            weight, sample_size = 1, 1
        logging_output = {
            "loss": loss.detach(),
            "nce": nce.detach(),
            "mse": mse.detach(),
            "acc": acc.detach(),
            "masked_tokens": masked.detach(),
            "forwards": 1,
            "ntokens": sample.get("ntokens", 0),
            "nsentences": sample["net_input"]["fbank"].shape[0],
            "sample_size": sample_size,
        }
        if self.cfg.nce_orientation == "predictions":  # SSAST's own accuracy metric, comparable with its curves
            logging_output["acc_ssast"] = (ssast_logged_accuracy(nce_out["nce_pred"], nce_out["target"],
                                                                 nce_out["target_valid"]) * weight).detach()
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = functools.partial(logged_total, logging_outputs)

        # masked patches ('global': the logged values are sums) or forwards ('per_process': per-forward means)
        n = max(total("sample_size"), 1.0)
        for key in ("loss", "nce", "mse", "acc"):
            metrics.log_scalar(key, total(key) / n, n, round=4)
        if any("acc_ssast" in log for log in logging_outputs):  # nce_orientation=predictions: SSAST's metric
            metrics.log_scalar("acc_ssast", total("acc_ssast") / n, n, round=4)
        forwards = max(total("forwards"), 1.0)
        metrics.log_scalar("masked_tokens", total("masked_tokens") / forwards, forwards, round=1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
