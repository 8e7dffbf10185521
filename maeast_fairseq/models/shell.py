"""The thin fairseq shell around a pure-torch core model.

A registered model is ``class X(CoreModel, FairseqShell)``: the core's ``__init__``/``forward``/``extract_features``
do the work (fairseq calls ``model(**sample["net_input"])`` = the core's ``forward(fbank, frame_padding, mask_rng)``);
the shell only adds what fairseq's trainer expects. Because the core *is* the model, checkpoint keys are the core's
own, so ``ckpt["model"]`` loads into the core class without fairseq.
"""
from __future__ import annotations

from fairseq.models import BaseFairseqModel


class FairseqShell(BaseFairseqModel):
    @classmethod
    def build_model(cls, cfg, task=None):
        task_bins = getattr(getattr(task, "cfg", None), "num_mel_bins", cfg.num_mel_bins)
        if cfg.num_mel_bins != task_bins:
            raise ValueError(
                f"model.num_mel_bins={cfg.num_mel_bins} but the task's front end makes {task_bins} mel bins; "
                "set both to the same value"
            )
        return cls(cfg)

    def max_positions(self):
        return None
