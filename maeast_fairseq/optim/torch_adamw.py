"""fairseq optimizer ``torch_adamw``: ``torch.optim.AdamW`` with its fused (CPU, CUDA) or foreach kernels.

fairseq's own ``adam`` is AdamW too, but without apex it steps every parameter in a Python loop (its ``Adam``
class; ``FusedAdam`` exists only with apex's CUDA extension, and its ``fp16_adam_stats`` needs that too). PyTorch's
``AdamW(fused=True)`` updates all parameters of a device in one kernel per step and handles float32 master weights
under fairseq's ``FP16Optimizer`` (common.fp16 / bf16) as well as plain float32 training (task.autocast_bf16).

Same hyper-parameters as fairseq's ``adam`` (``adam_betas``, ``adam_eps``, ``weight_decay``, decoupled); the only
numerical difference is where ``eps`` enters: torch divides by ``sqrt(v_hat) + eps``, fairseq by
``sqrt(v) + eps`` before the bias correction (the same update up to eps / sqrt(1 - beta2^t)).
Works inside the ``composite`` optimizer (``optimizer.groups.X.optimizer._name: torch_adamw``).
"""
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from .kernels import fused_supported


@dataclass
class TorchAdamWConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for the AdamW optimizer: '(b1,b2)' or a list"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for the AdamW optimizer"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay"})
    implementation: str = field(
        default="auto",
        metadata={"help": "'auto': fused where torch has the kernel (CPU, CUDA), else foreach; 'fused', 'foreach' "
                          "or 'for_loop'"},
    )
    lr: List[float] = II("optimization.lr")


def _betas(v):
    if isinstance(v, str):
        return tuple(float(x) for x in v.strip("()[] ").split(","))
    return tuple(OmegaConf.to_container(v) if OmegaConf.is_config(v) else v)


@register_optimizer("torch_adamw", dataclass=TorchAdamWConfig)
class TorchAdamW(FairseqOptimizer):
    def __init__(self, cfg: TorchAdamWConfig, params):
        super().__init__(cfg)
        params = list(params)
        impl = cfg.implementation
        if impl not in ("auto", "fused", "foreach", "for_loop"):
            raise ValueError(f"optimizer.implementation must be auto, fused, foreach or for_loop, got {impl!r}")
        if impl == "auto":
            tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
            impl = "fused" if fused_supported(tensors) else "foreach"
        kw = {"fused": impl == "fused", "foreach": impl == "foreach"}
        if impl == "fused":
            kw["foreach"] = None
        self.implementation = impl
        self._optimizer = torch.optim.AdamW(params, **self.optimizer_config, **kw)

    @property
    def optimizer_config(self):
        lr = self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr
        return {"lr": lr, "betas": _betas(self.cfg.adam_betas), "eps": self.cfg.adam_eps,
                "weight_decay": self.cfg.weight_decay}

    @property
    def supports_flat_params(self):
        return True
