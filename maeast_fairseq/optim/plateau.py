"""LR scheduler ``reduce_lr_on_plateau_per_validation``: SSAST's ReduceLROnPlateau, tested at every validation.

SSAST validates every ``epoch_iter`` updates (4000) and steps ``ReduceLROnPlateau(mode='max', factor 0.5,
patience 2)`` on the validation masked-patch accuracy each time. fairseq's ``reduce_lr_on_plateau`` is stepped once
per fairseq *epoch* (``trainer.lr_step`` at the epoch's end), so with ~93k updates per epoch it could halve the lr
~23x less often. This scheduler is fairseq's one (same fields: ``lr_shrink``, ``lr_patience``, ``lr_threshold``,
warm-up) but takes its plateau step at every validation (``dataset.validate_interval_updates``, SSAST: 4000) on the
metric ``checkpoint.best_checkpoint_metric`` of the first validation subset (``acc``: the validation masked-patch
accuracy, maximised), through :meth:`PretrainingTask.post_validate`; fairseq's epoch-end call then does nothing (the
epoch's last validation has already been counted). Its state (best value, bad validations, cool-down, the last
validated update) is in the checkpoint, so a resumed run continues the same schedule.
"""
import weakref
from dataclasses import dataclass

from fairseq.optim.lr_scheduler import register_lr_scheduler
from fairseq.optim.lr_scheduler.reduce_lr_on_plateau import (
    ReduceLROnPlateauLRSchedule,
    ReduceLROnPlateauLRScheduleConfig,
)
from omegaconf import II

_LIVE = weakref.WeakSet()  # schedulers of this process, stepped by step_on_validation


@dataclass
class ReduceLROnPlateauPerValidationConfig(ReduceLROnPlateauLRScheduleConfig):
    # the metric of the plateau test: the one that picks checkpoint_best.pt (SSAST: the validation accuracy `acc`)
    best_checkpoint_metric: str = II("checkpoint.best_checkpoint_metric")


@register_lr_scheduler("reduce_lr_on_plateau_per_validation", dataclass=ReduceLROnPlateauPerValidationConfig)
class ReduceLROnPlateauPerValidation(ReduceLROnPlateauLRSchedule):
    def __init__(self, cfg: ReduceLROnPlateauPerValidationConfig, optimizer):
        super().__init__(cfg, optimizer)
        self.last_validated_update = -1
        _LIVE.add(self)

    def step(self, epoch, val_loss=None):
        """fairseq's epoch-end call: nothing to do (every validation already stepped the plateau test)."""
        return self.optimizer.get_lr()

    def validated(self, stats: dict) -> None:
        """The plateau test on one validation's ``stats`` (once per update: the first validation subset)."""
        num_updates = int(stats.get("num_updates", -1))
        if num_updates == self.last_validated_update:
            return
        metric = self.cfg.best_checkpoint_metric
        if metric not in stats:
            raise KeyError(f"lr_scheduler reduce_lr_on_plateau_per_validation: the validation logged no "
                           f"{metric!r} (checkpoint.best_checkpoint_metric; logged: {sorted(stats)}). Fix: set "
                           f"checkpoint.best_checkpoint_metric to one of them")
        self.last_validated_update = num_updates
        if self.warmup_end:  # as fairseq's: no plateau steps during the warm-up
            self.lr_scheduler.step(float(stats[metric]))

    def state_dict(self):
        sched = self.lr_scheduler
        return {"best": sched.best, "last_epoch": sched.last_epoch, "num_bad_epochs": sched.num_bad_epochs,
                "cooldown_counter": sched.cooldown_counter, "last_validated_update": self.last_validated_update}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        sched = self.lr_scheduler
        sched.num_bad_epochs = state_dict.get("num_bad_epochs", sched.num_bad_epochs)
        sched.cooldown_counter = state_dict.get("cooldown_counter", sched.cooldown_counter)
        self.last_validated_update = state_dict.get("last_validated_update", self.last_validated_update)


def step_on_validation(stats: dict) -> None:
    """Give one validation's stats to every live :class:`ReduceLROnPlateauPerValidation` of this process."""
    for scheduler in list(_LIVE):
        scheduler.validated(stats)
