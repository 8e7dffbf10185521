"""Criterion ``maeast_classification``: cross-entropy + accuracy, or BCE-with-logits + mAP.

* ``loss: auto`` picks cross-entropy for single-label data (``task.multi_label: false``) and BCE for multi-label
  data; ``ce`` / ``bce`` force one (the SSAST / EAT Speech Commands recipes train single-label data with BCE).
* ``label_smoothing`` (EAT's ESC-50 / SPC-2 scripts: 0.1): torch's for CE; for BCE ``y (1 - e) + e / C`` (timm).
  Applied after mixup, which mixes the hard labels.
* ``bce_normalisation``: the summed BCE is divided by ``batch`` = the number of clips, ``positives`` = the number
  of positive labels of the (mixed) targets (EAT's AudioSet recipe, decision D14), or ``elements`` = clips x
  classes (SSAST's ``BCEWithLogitsLoss()`` mean). fairseq divides the gradient by the summed ``sample_size``, so
  the normalisation is exact over workers and gradient-accumulation steps.
* Logged: ``loss``; ``accuracy`` (percent, top-1 against the unmixed labels) for single-label data; ``mAP``
  (percent; per-class AP averaged over the classes with a positive) in validation for multi-label data, or for any
  data with ``report_map: true``.

mAP is not a sum over batches: validation logging outputs carry the batch's logits and targets, and a custom
fairseq meter (:class:`MapMeter`) concatenates them over the whole validation set and computes mAP once. With
several workers the rows must be concatenated across workers too, but fairseq sums logging outputs (its other path,
``all_gather_list``, is CUDA-only), so each worker learns the batch sizes of the others (one small
``all_gather_object`` per validation batch) and writes its rows at its own offset of a zero tensor of all the
workers' rows: the sum *is* the concatenation, exactly (``x + 0 = x``). A validity column drops the rows of the
dummy batches fairseq uses to keep workers in step. The logging outputs therefore stay summable everywhere.
"""

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.logging.meters import Meter

from ..core.metrics import mean_average_precision, num_correct
from .logging_outputs import logged_total

LOSSES = ("auto", "ce", "bce")
BCE_NORMS = ("batch", "positives", "elements")


@dataclass
class ClassificationCriterionConfig(FairseqDataclass):
    loss: str = field(
        default="auto", metadata={"help": "'ce', 'bce' or 'auto' (ce for single-label data, bce for multi-label)"}
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing (EAT ESC-50 / SPC-2 scripts: 0.1)"})
    bce_normalisation: str = field(
        default="batch",
        metadata={"help": "summed BCE divided by 'batch' (clips), 'positives' (positive labels: EAT AudioSet) or "
                          "'elements' (clips x classes: SSAST)"},
    )
    report_map: bool = field(
        default=False, metadata={"help": "also log validation mAP for single-label data (always on for multi-label)"}
    )


class MapMeter(Meter):
    """Collects (scores, targets) of every validation batch; ``smoothed_value`` = mAP (percent) over all of them."""

    def __init__(self):
        super().__init__()
        self.scores, self.targets = [], []

    def reset(self):
        self.scores, self.targets = [], []

    def update(self, scores, targets):
        self.scores.append(scores)
        self.targets.append(targets)

    def state_dict(self):
        return {}  # lives in validation's temporary aggregator only

    def load_state_dict(self, state_dict):
        self.reset()

    @property
    def smoothed_value(self) -> float:
        if not self.scores:
            return float("nan")
        return round(100.0 * mean_average_precision(torch.cat(self.scores), torch.cat(self.targets)), 2)


@register_criterion("maeast_classification", dataclass=ClassificationCriterionConfig)
class ClassificationCriterion(FairseqCriterion):
    def __init__(self, cfg: ClassificationCriterionConfig, task):
        super().__init__(task)
        if cfg.loss not in LOSSES:
            raise ValueError(f"criterion.loss must be one of {LOSSES}, got {cfg.loss!r}")
        if cfg.bce_normalisation not in BCE_NORMS:
            raise ValueError(f"criterion.bce_normalisation must be one of {BCE_NORMS}, got {cfg.bce_normalisation!r}")
        self.cfg = cfg
        self.multi_label = bool(getattr(getattr(task, "cfg", None), "multi_label", False))
        self.loss_type = cfg.loss if cfg.loss != "auto" else ("bce" if self.multi_label else "ce")
        if self.loss_type == "ce" and self.multi_label:
            raise ValueError("criterion.loss=ce needs single-label data (task.multi_label=false)")

    def forward(self, model, sample, reduce=True):
        target = sample["target"]
        out = model(**sample["net_input"], target=target)
        logits = out["logits"].float()
        mixed = out["target"] if out.get("target") is not None else target
        mixed = mixed.float()
        b, c = logits.shape
        ls = self.cfg.label_smoothing
        if self.loss_type == "ce":
            probs = mixed / mixed.sum(dim=-1, keepdim=True).clamp(min=1e-12)
            loss = F.cross_entropy(logits, probs, label_smoothing=ls, reduction="sum")
            sample_size = b
        else:
            t = mixed * (1.0 - ls) + ls / c if ls > 0 else mixed
            loss = F.binary_cross_entropy_with_logits(logits, t, reduction="sum")
            norm = self.cfg.bce_normalisation
            if norm == "positives":
                sample_size = mixed.sum().detach().clamp(min=1.0)
            elif norm == "elements":
                sample_size = b * c
            else:
                sample_size = b
        logging_output = {
            "loss": loss.detach(),
            "sample_size": sample_size,
            "nsentences": b,
            "ntokens": sample.get("ntokens", b),
        }
        if not self.multi_label:
            logging_output["correct"] = num_correct(logits, target).detach()
        if not model.training and (self.multi_label or self.cfg.report_map):
            scores, targets, valid = rows_of_all_workers(logits.detach(), (target > 0.5).to(logits.dtype))
            logging_output.update({"_map_scores": scores, "_map_targets": targets, "_map_valid": valid})
        return loss, sample_size, logging_output

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = functools.partial(logged_total, logging_outputs)

        sample_size = max(total("sample_size"), 1e-12)
        metrics.log_scalar("loss", total("loss") / sample_size, sample_size, round=4)
        if any("correct" in log for log in logging_outputs):
            n = total("nsentences")
            if n > 0:
                metrics.log_scalar("accuracy", 100.0 * total("correct") / n, n, round=2)
        logs = [log for log in logging_outputs if "_map_scores" in log]
        if logs:
            keep = torch.cat([log["_map_valid"].detach().cpu() for log in logs]) > 0.5
            scores = torch.cat([log["_map_scores"].detach().cpu() for log in logs])[keep]
            targets = torch.cat([log["_map_targets"].detach().cpu() for log in logs])[keep]
            metrics.log_custom(MapMeter, "mAP", scores, targets, priority=20)


def rows_of_all_workers(scores: torch.Tensor, targets: torch.Tensor):
    """(scores, targets, valid) as zero tensors holding every data-parallel worker's rows, this worker's filled in
    at its offset: summing them over workers (fairseq's fast logging path) concatenates the rows exactly."""
    valid = torch.ones(scores.shape[0], dtype=scores.dtype, device=scores.device)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return scores, targets, valid
    from fairseq.distributed import utils as dist_utils

    group = dist_utils.get_data_parallel_group()
    world = dist_utils.get_data_parallel_world_size()
    if world <= 1:
        return scores, targets, valid
    rank = dist_utils.get_data_parallel_rank()
    sizes = [None] * world
    torch.distributed.all_gather_object(sizes, int(scores.shape[0]), group=group)
    start, total = sum(sizes[:rank]), sum(sizes)

    def place(x):
        out = x.new_zeros((total,) + tuple(x.shape[1:]))
        out[start:start + x.shape[0]] = x
        return out

    return place(scores), place(targets), place(valid)
