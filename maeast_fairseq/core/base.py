"""What every core model (one per method: :class:`~maeast_fairseq.core.mae_ast.MaeAst`,
:class:`~maeast_fairseq.core.ssast.Ssast`, :class:`~maeast_fairseq.core.eat.Eat`) declares about its method, in the
class itself:

* ``pretraining_only``: the top-level attributes (modules, parameters, buffers) that only pretraining uses
  (decoder, prediction heads, mask embeddings, EAT's EMA teacher). :meth:`CoreModel.remove_pretraining_modules`
  drops them, after which ``state_dict()`` holds the encoder only (fine-tuning, embedding, export);
* ``default_pooling``: the clip embedding the method uses by default, one of :data:`POOLINGS`;
* ``head_norm_eps``: the epsilon of the method's official fine-tuning head LayerNorm (SSAST 1e-5, EAT 1e-6).

The registry of the core models is :data:`maeast_fairseq.core.registry.CORE_MODELS`.
"""
from typing import List, Tuple

import torch
from torch import nn

#: clip poolings of an encoder's output: the mean over the valid patch tokens, or the CLS token
POOLINGS = ("mean", "cls")


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
