"""Criterion ``eat_ufo``: EAT's Utterance-Frame Objective with EAT's exact scaling (decision D11).

``loss = sum_masked ||y_hat - y||^2 / sqrt(D) + w * M * sum_rows ||c - y_bar||^2 / sqrt(D)`` and
``sample_size = M`` (masked tokens), so fairseq's trainer, which divides the summed gradients by the total
``sample_size`` over workers, optimises a per-masked-token frame mean plus ``w`` times a *sum* over the
``B x clones`` CLS rows -- what EAT's ``model`` criterion does with ``cls_loss = w``. With several workers (or
``update_freq`` > 1) each forward multiplies by its own ``M`` while the trainer divides by the update's total, so the
utterance weight follows the clips *per forward* (EAT: 12 per GPU): accumulate rather than enlarge ``batch_size``.
``utterance_scale='global'`` (decision D26) multiplies by the masked tokens of *every process's* forward instead
(an all-reduce), so N processes optimise what one process with the whole batch does; with ``update_freq`` k the
weight stays that of one micro-batch (k equal micro-batches: the utterance term is 1/k of one big batch's).

Every logging output is a sum over samples (values that are means are logged multiplied by the number of clips and
divided back in :meth:`reduce_metrics`), so outputs of several workers can simply be summed (CPU DDP).

Teacher-target collapse: every forward's ``target_var`` goes through a
:class:`TargetCollapseMonitor` (``min_target_var``, default 0.1 as data2vec 2.0 / EAT;
``collapse_warn_interval`` updates between repeated warnings). Each collapsed forward counts 1 in
``target_collapsed``, a *sum* in the logs (collapsed forwards over all workers in the log interval; 0 when healthy)
next to the mean ``target_var``. The run goes on (data2vec 2.0 / EAT stop it): the warning says what to look at.
The example EAT yamls list both fields (``criterion.min_target_var=0.2`` overrides without a ``+``).
"""

import functools
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from ..core.losses import ufo_loss
from .logging_outputs import logged_total

logger = logging.getLogger(__name__)

#: Default floor on ``target_var`` below which the teacher targets count as collapsed (see
#: :class:`TargetCollapseMonitor`): data2vec 2.0's and EAT's own ``min_target_var``.
MIN_TARGET_VAR = 0.1
#: Default number of updates between two collapse warnings while the targets stay collapsed.
COLLAPSE_WARN_INTERVAL = 1000


class TargetCollapseMonitor:
    """Detects a collapse of EAT's teacher targets from ``target_var`` and logs it, rate-limited.

    ``target_var`` is :func:`~maeast_fairseq.core.losses.regression_var` of the targets at the masked positions: the
    mean over the D features of their standard deviation across the masked tokens. EAT's targets are
    instance-normalised per channel and layer-normalised per token, so a healthy teacher gives ``target_var``
    close to 1 (0.98-1.0 at initialisation, > 0.5 throughout the tiny configs' runs, also on a batch of digital
    silence: the positions keep the tokens apart). A teacher whose FFN outputs stop varying over the tokens gives
    targets ~0 (the instance norm divides a ~0 spread by ``sqrt(eps)``) and ``target_var -> sqrt(1e-6) = 1e-3``:
    the student can then reach a near-zero loss by predicting zeros and learns nothing.

    Threshold: an **absolute** floor, ``min_target_var = 0.1`` by default -- the ``min_target_var`` of data2vec 2.0
    and EAT (which stop the run there after 5000 updates; we warn from the first update, since normalised targets
    start near 1). Absolute rather than relative to the first value because the normalisation fixes the healthy
    scale a priori, and an initial value would be one more piece of state to carry through checkpoint resumes.
    With ``instance_norm_targets`` and ``layer_norm_targets`` both off the targets keep the teacher's raw scale and
    the floor should be set from a healthy run's ``target_var``. Note that the instance norm also *hides* a partial
    collapse: targets are rescaled to unit spread as long as the raw per-channel variance over the tokens stays
    above its ``eps`` (1e-5), so this detects the collapse once the raw spread is below that.

    :meth:`update` is called once per forward; a NaN ``target_var`` also counts as collapsed. While collapsed, one
    warning (logger ``maeast_fairseq.criterions.eat_ufo``) is emitted at the first collapsed forward and then at
    most once every ``warn_interval`` updates (``step``; the number of calls when no step is given), each saying how
    many collapsed forwards there were so far; the first healthy forward after a collapse logs a recovery message.
    ``min_target_var <= 0`` disables the check.
    """

    def __init__(self, min_target_var: float = MIN_TARGET_VAR, warn_interval: int = COLLAPSE_WARN_INTERVAL,
                 name: str = "EAT"):
        self.min_target_var = float(min_target_var)
        self.warn_interval = max(int(warn_interval), 1)
        self.name = name
        self.collapsed_forwards = 0  # total so far
        self._calls = 0
        self._in_collapse = False
        self._last_warn_step: Optional[int] = None
        self._since_warn = 0

    def update(self, target_var, step: Optional[int] = None) -> bool:
        """Check one forward's ``target_var`` (float or 0-d tensor); returns True if the targets are collapsed."""
        self._calls += 1
        if self.min_target_var <= 0:
            return False
        value = float(target_var)
        step = self._calls - 1 if step is None else int(step)
        collapsed = not value >= self.min_target_var  # NaN counts as collapsed
        if not collapsed:
            if self._in_collapse:
                logger.warning("%s teacher targets recovered: target_var=%.4g >= min_target_var=%g at update %d "
                               "(after %d collapsed forward(s) in all)", self.name, value, self.min_target_var, step,
                               self.collapsed_forwards)
            self._in_collapse = False
            self._last_warn_step = None
            self._since_warn = 0
            return False
        self._in_collapse = True
        self.collapsed_forwards += 1
        self._since_warn += 1
        last = self._last_warn_step
        if last is None or step < last or step - last >= self.warn_interval:
            logger.warning(
                "%s teacher targets have collapsed: target_var=%.4g < min_target_var=%g at update %d (%d collapsed "
                "forward(s) since the last warning, %d in all; next warning in >= %d updates while it lasts). The "
                "targets barely vary over the tokens, so the student learns nothing: check the teacher's weights, "
                "the EMA decay and the learning rate.", self.name, value, self.min_target_var, step,
                self._since_warn, self.collapsed_forwards, self.warn_interval,
            )
            self._last_warn_step = step
            self._since_warn = 0
        return True




@dataclass
class EatUfoConfig(FairseqDataclass):
    utterance_loss_weight: float = field(
        default=1.0,
        metadata={"help": "lambda of the utterance (CLS) term; EAT's cls_loss (1 in the paper: +1.3 mAP over 0)"},
    )
    utterance_scale: str = field(
        default="per_forward",
        metadata={"help": "multiplier M of the utterance term: 'per_forward' = this process's masked tokens (EAT's "
                          "code: the weight follows the per-GPU batch); 'global' = the masked tokens of every "
                          "process's forward (all-reduced), so N processes train as one with the whole batch"},
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
        if cfg.utterance_scale not in ("per_forward", "global"):
            raise ValueError(f"criterion.utterance_scale must be 'per_forward' or 'global', got "
                             f"{cfg.utterance_scale!r}")

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        multiplier = None
        # training only: validation batches are not in step across processes (an all-reduce there could hang)
        if self.cfg.utterance_scale == "global" and model.training and torch.distributed.is_available() \
                and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            multiplier = out["num_masked"].detach().clone()
            torch.distributed.all_reduce(multiplier)  # every process's masked tokens of this step
        loss, frame, utterance, num_masked = ufo_loss(out, self.cfg.utterance_loss_weight, multiplier)
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
        total = functools.partial(logged_total, logging_outputs)

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
