"""What every core model (one per method: :class:`~maeast_fairseq.core.mae_ast.MaeAst`,
:class:`~maeast_fairseq.core.ssast.Ssast`, :class:`~maeast_fairseq.core.eat.Eat`) declares about its method, in the
class itself:

* ``pretraining_only``: the top-level attributes (modules, parameters, buffers) that only pretraining uses
  (decoder, prediction heads, mask embeddings, EAT's EMA teacher). :meth:`CoreModel.remove_pretraining_modules`
  drops them, after which ``state_dict()`` holds the encoder only (fine-tuning, embedding, export);
* ``default_pooling``: the clip embedding the method uses by default, one of :data:`POOLINGS`;
* ``head_norm_eps``: the epsilon of the method's official fine-tuning head LayerNorm (SSAST 1e-5, EAT 1e-6).

The registry of the core models is :data:`maeast_fairseq.core.registry.CORE_MODELS`.

**The pretraining output.** Every core model's ``forward(fbank, frame_padding, mask_rng, mask)`` returns a dict in
one vocabulary, :data:`PRETRAINING_OUTPUT_KEYS`: a prediction is ``pred`` or ``<what>_pred``, what it is scored
against is ``target`` or ``<what>_target``; a method returns the keys its objective uses. Shapes: B clips, N tokens
a clip, R mask rows (B; EAT: B * clones, row ``b * clones + c`` = clone c of clip b), M masked tokens (SSAST /
MAE-AST: the most of any clip; EAT: of all rows together), P = patch values (``patch_time * patch_freq``), D =
encoder width.

* ``mask`` (R, N) bool, True = masked (never a padding token);
* ``padding_mask`` (B, N) bool, True = padding token, or None (no padding);
* ``target``: the targets at the masked positions -- SSAST / MAE-AST: the masked patches (B, M, P), a row per
  clip, empty slots at the end of the rows of padded clips; EAT: the teacher targets (M, D), the masked tokens of
  all rows in the row-major order of ``mask``;
* ``target_valid`` (B, M) bool, SSAST / MAE-AST: True = a real masked token, False = an empty slot (the rows of a
  padded batch hold different numbers of masked tokens); every loss and metric skips the empty slots;
* ``pred``: the regression prediction of ``target`` (same shape), scored by a squared error -- SSAST's generative
  head (``gpred``), MAE-AST's reconstruction head, EAT's decoder;
* ``nce_pred`` (B, M, P), SSAST / MAE-AST: the prediction scored against ``target`` by InfoNCE (negatives: the
  other masked patches of the clip) -- SSAST's ``cpred``, MAE-AST's classification head;
* ``cls_pred`` / ``cls_target`` (R, D), EAT: the student's CLS output per row and its utterance target (the mean
  of the clip's teacher targets over its valid tokens);
* ``num_masked`` / ``num_tokens``, EAT: 0-d long tensors, the masked and the valid tokens over the R rows
  (``num_masked`` is the loss's ``sample_size``);
* ``target_var`` / ``pred_var``, EAT: the spread of ``target`` / ``pred`` (data2vec's statistic, logged under
  these names); ``ema_decay``: the teacher's current EMA decay (0-d float64);
* ``terms``, SSAST with ``passes='two'``: ``{"nce": output of pass 1, "mse": output of pass 2}``, each a dict of
  the keys above (the top-level keys are pass 1's): which masked pass feeds which loss term.

The losses read these keys: :func:`~maeast_fairseq.core.losses.nce_mse_loss` (SSAST, MAE-AST) and
:func:`~maeast_fairseq.core.losses.ufo_loss` (EAT). ``extract_features`` (downstream, no masking) returns ``x``,
``hidden_states``, ``padding_mask`` and (SSAST, EAT) ``cls``.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .masking import gather_visible

#: clip poolings of an encoder's output: the mean over the valid patch tokens, or the CLS token
POOLINGS = ("mean", "cls")

#: every key a core model's pretraining ``forward`` may return (the vocabulary of this module's docstring)
PRETRAINING_OUTPUT_KEYS = ("mask", "padding_mask", "target", "target_valid", "pred", "nce_pred", "cls_pred",
                           "cls_target", "num_masked", "num_tokens", "target_var", "pred_var", "ema_decay", "terms")


class CoreModel(nn.Module):
    """Base of the core models: the method's pretraining-only parts and default pooling, and their removal."""

    #: top-level attribute names only pretraining uses (a name covers everything under ``name.`` in a state dict)
    pretraining_only: Tuple[str, ...] = ()
    #: clip pooling used when none is asked for (one of :data:`POOLINGS`)
    default_pooling: str = "mean"
    #: epsilon of the fine-tuning head's LayerNorm in the method's official code
    head_norm_eps: float = 1e-6

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.default_pooling not in POOLINGS:
            raise TypeError(f"{cls.__name__}.default_pooling must be one of {POOLINGS}, got {cls.default_pooling!r}")

    @classmethod
    def is_pretraining_only(cls, key: str) -> bool:
        """Whether a state-dict key belongs to a pretraining-only part of this method."""
        return any(key == name or key.startswith(name + ".") for name in cls.pretraining_only)

    def remove_pretraining_modules(self) -> List[str]:
        """Drop the pretraining-only parts (idempotent); returns ``"name (N params)"`` for each part removed now."""
        removed = []
        for name in self.pretraining_only:
            part = getattr(self, name, None)
            if part is None:
                continue
            count = part.numel() if isinstance(part, torch.Tensor) else sum(p.numel() for p in part.parameters())
            setattr(self, name, None)
            removed.append(f"{name} ({count:,} params)")
        return removed


def masked_patch_output(decoded: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor,
                        padding_mask: Optional[torch.Tensor], pred_head: Callable[[torch.Tensor], torch.Tensor],
                        nce_pred_head: Callable[[torch.Tensor], torch.Tensor]) -> Dict[str, torch.Tensor]:
    """SSAST's / MAE-AST's pretraining output (the keys of this module's docstring) from the last stage's token
    outputs ``decoded`` (B, N, D), the ``patches`` (B, N, P) and the ``mask`` (B, N): the masked positions are
    gathered to (B, M, .) with a validity flag per slot (the rows of padded clips hold fewer masked tokens) and the
    two prediction heads applied there."""
    masked, _, slot_invalid, _ = gather_visible(decoded, ~mask)
    target, _, _, _ = gather_visible(patches, ~mask)
    return {
        "pred": pred_head(masked),
        "nce_pred": nce_pred_head(masked),
        "target": target,
        "target_valid": ~slot_invalid,
        "mask": mask,
        "padding_mask": padding_mask,
    }
