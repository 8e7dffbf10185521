"""Criterion ``eat_ufo``: EAT's Utterance-Frame Objective with EAT's exact scaling (SYSTEMS 4.5, trap 11).

``loss = sum_masked ||y_hat - y||^2 / sqrt(D) + w * M * sum_rows ||c - y_bar||^2 / sqrt(D)`` and
``sample_size = M`` (masked tokens), so fairseq's trainer, which divides the summed gradients by the total
``sample_size`` over workers, optimises a per-masked-token frame mean plus ``w`` times a *sum* over the
``B x clones`` CLS rows -- what EAT's ``model`` criterion does with ``cls_loss = w``. With several workers (or
``update_freq`` > 1) each forward multiplies by its own ``M`` while the trainer divides by the update's total, so the
utterance weight follows the clips *per forward* (EAT: 12 per GPU): accumulate rather than enlarge ``batch_size``.

Every logging output is a sum over samples (values that are means are logged multiplied by the number of clips and
divided back in :meth:`reduce_metrics`), so outputs of several workers can simply be summed (CPU DDP).

Teacher-target collapse: every forward's ``target_var`` goes through a
:class:`~maeast_fairseq.core.eat.TargetCollapseMonitor` (``min_target_var``, default 0.1 as data2vec 2.0 / EAT;
``collapse_warn_interval`` updates between repeated warnings). Each collapsed forward counts 1 in
``target_collapsed``, a *sum* in the logs (collapsed forwards over all workers in the log interval; 0 when healthy)
next to the mean ``target_var``. The run goes on (data2vec 2.0 / EAT stop it): the warning says what to look at.
The example yamls do not list these two fields, so override them with a ``+``: ``+criterion.min_target_var=0.2``.
"""

from dataclasses import dataclass, field

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from ..core.eat import COLLAPSE_WARN_INTERVAL, MIN_TARGET_VAR, TargetCollapseMonitor, ufo_loss


@dataclass
class EatUfoConfig(FairseqDataclass):
    utterance_loss_weight: float = field(
        default=1.0,
        metadata={"help": "lambda of the utterance (CLS) term; EAT's cls_loss (1 in the paper: +1.3 mAP over 0)"},
    )
    min_target_var: float = field(
        default=MIN_TARGET_VAR,
        metadata={"help": "teacher targets count as collapsed when target_var (mean over features of their std "
                          "across the masked tokens; ~1 when healthy, ~0.001 when collapsed) is below this: a "
                          "warning is logged and target_collapsed counts it (data2vec 2.0 / EAT: 0.1); 0 disables"},
    )
    collapse_warn_interval: int = field(
        default=COLLAPSE_WARN_INTERVAL,
        metadata={"help": "while the targets stay collapsed, repeat the warning at most once per this many updates"},
    )


@register_criterion("eat_ufo", dataclass=EatUfoConfig)
class EatUfoCriterion(FairseqCriterion):
    def __init__(self, cfg: EatUfoConfig, task):
        super().__init__(task)
        self.cfg = cfg
        self.collapse_monitor = TargetCollapseMonitor(cfg.min_target_var, cfg.collapse_warn_interval)

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        loss, frame, utterance, num_masked = ufo_loss(out, self.cfg.utterance_loss_weight)
        collapsed = self.collapse_monitor.update(out["target_var"], getattr(model, "num_updates", None))
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
            "target_collapsed": int(collapsed),
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
        # a count (summed over the log interval), not a mean: any non-zero value in the train log is a collapse
        metrics.log_scalar_sum("target_collapsed", total("target_collapsed"), round=0)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
