"""fairseq model ``eat`` = :class:`maeast_fairseq.core.eat.Eat` + the fairseq shell.

What fairseq needs beyond the core:

* the EMA teacher is stepped from ``set_num_updates``, which fairseq's task calls before every forward with the
  number of optimiser updates done so far (``task.train_step``) and once when a checkpoint is loaded;
* the teacher's parameters have ``requires_grad=False``: fairseq's trainer builds the optimiser from
  ``filter(lambda p: p.requires_grad, ...)`` only, and DDP skips them; they are still in ``state_dict()``, so
  ``checkpoint_*.pt`` stores and restores them (keys ``teacher.*``);
* biases and 1-D parameters of the student (:func:`~maeast_fairseq.core.classifier.no_weight_decay`) are tagged
  ``param_group = "no_decay"`` so that the ``composite`` optimiser of ``eat_base.yaml`` gives them a group without
  weight decay (other optimisers ignore the tag).
"""
from dataclasses import dataclass
from typing import Optional

from fairseq.dataclass import FairseqDataclass

from ..core.classifier import NO_DECAY_GROUP, no_weight_decay
from ..core.eat import Eat, EatConfig
from .shell import FairseqShell, register_ours


@dataclass
class EatModelConfig(FairseqDataclass, EatConfig):
    pass


@register_ours("eat", dataclass=EatModelConfig)
class EatModel(Eat, FairseqShell):
    def __init__(self, cfg: EatConfig):
        super().__init__(cfg)
        self._last_update: Optional[int] = None
        self.num_updates = 0  # the trainer's update count (read by the criterion's collapse monitor)
        for name, p in self.named_parameters():
            if p.requires_grad and no_weight_decay(name, p):
                p.param_group = NO_DECAY_GROUP

    def set_num_updates(self, num_updates: int) -> None:
        """One EMA step per optimiser update, before the forward that follows it.

        The first call only records the count: 0 at a fresh start, or the restored count when fairseq loads a
        checkpoint (the saved teacher is already up to date). Repeated calls with the same count (gradient
        accumulation) and calls in eval mode do nothing.
        """
        super().set_num_updates(num_updates)
        self.num_updates = num_updates
        last, self._last_update = self._last_update, num_updates
        if last is None:  # fresh start or resume: log the decay of this update count
            c = self.cfg
            self.current_ema_decay = self.ema_decay_at(num_updates, c.ema_decay, c.ema_end_decay,
                                                       c.ema_anneal_end_step)
        if last is None or num_updates <= last or not self.training or self.teacher is None:
            return
        self.ema_step(num_updates)
