"""Criterion ``eat_ufo``: EAT's Utterance-Frame Objective with EAT's exact scaling (SYSTEMS 4.5, trap 11).

``loss = sum_masked ||y_hat - y||^2 / sqrt(D) + w * M * sum_rows ||c - y_bar||^2 / sqrt(D)`` and
``sample_size = M`` (masked tokens), so fairseq's trainer, which divides the summed gradients by the total
``sample_size`` over workers, optimises a per-masked-token frame mean plus ``w`` times a *sum* over the
``B x clones`` CLS rows -- what EAT's ``model`` criterion does with ``cls_loss = w``. With several workers (or
``update_freq`` > 1) each forward multiplies by its own ``M`` while the trainer divides by the update's total, so the
utterance weight follows the clips *per forward* (EAT: 12 per GPU): accumulate rather than enlarge ``batch_size``.

Every logging output is a sum over samples (values that are means are logged multiplied by the number of clips and
divided back in :meth:`reduce_metrics`), so outputs of several workers can simply be summed (CPU DDP).
"""

from dataclasses import dataclass, field

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from ..core.eat import ufo_loss


@dataclass
class EatUfoConfig(FairseqDataclass):
    utterance_loss_weight: float = field(
        default=1.0,
        metadata={"help": "lambda of the utterance (CLS) term; EAT's cls_loss (1 in the paper: +1.3 mAP over 0)"},
    )


@register_criterion("eat_ufo", dataclass=EatUfoConfig)
class EatUfoCriterion(FairseqCriterion):
    def __init__(self, cfg: EatUfoConfig, task):
        super().__init__(task)
        self.cfg = cfg

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        loss, frame, utterance, num_masked = ufo_loss(out, self.cfg.utterance_loss_weight)
        n = sample["net_input"]["fbank"].shape[0]
        logging_output = {
            "loss": loss.detach(),
            "frame_loss": frame.detach(),
            "utterance_loss": utterance.detach(),
            "sample_size": num_masked.detach(),
            "masked_tokens": num_masked.detach(),
            "valid_tokens": out["num_tokens"].detach(),
            "clone_rows": out["cls_pred"].shape[0],
            "nsentences": n,
            "ntokens": sample.get("ntokens", 0),
            # per-worker statistics, weighted by the clips they were computed on
            "ema_decay": float(out["ema_decay"]) * n,
            "target_var": out["target_var"].detach().float() * n,
            "pred_var": out["pred_var"].detach().float() * n,
        }
        return loss, num_masked, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return float(sum(torch.as_tensor(log.get(key, 0)).double().sum() for log in logging_outputs))

        m = max(total("sample_size"), 1.0)
        n = max(total("nsentences"), 1.0)
        rows = max(total("clone_rows"), 1.0)
        # loss = frame per masked token + utterance (a sum over clone rows), as optimised
        metrics.log_scalar("loss", total("loss") / m, m, round=4)
        metrics.log_scalar("frame_loss", total("frame_loss") / m, m, round=4)
        metrics.log_scalar("utterance_loss", total("utterance_loss") / m, m, round=4)
        metrics.log_scalar("masked_pct", 100.0 * m / max(total("valid_tokens"), 1.0), rows, round=2)
        metrics.log_scalar("ema_decay", total("ema_decay") / n, n, round=6)
        metrics.log_scalar("target_var", total("target_var") / n, n, round=4)
        metrics.log_scalar("pred_var", total("pred_var") / n, n, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
