"""Spectrogram normalisation inside the model (MAE-AST): ``BatchNorm2d(1, affine=False)(x) * 0.5``.

Training normalises with the statistics of the batch (over every valid frame and bin), evaluation with running
statistics (momentum 0.1) that live in the checkpoint. Unlike a plain ``BatchNorm2d``, padded frames are left out of
the statistics when a frame padding mask is given (with no padding it is numerically ``BatchNorm2d``).

``sync=True``: when ``torch.distributed`` is initialised with more than one process, training takes the moments of
the *global* batch (two all-reduces: count and sum, then the sum of squared deviations from the global mean; the
same two-pass formula as one process), so every process normalises like one process holding the whole batch and the
running statistics stay identical on every rank (decision D25). ``sync=False`` is the official per-process
BatchNorm. The all-reduces carry gradients (``torch.distributed.nn``) in case the input requires them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class SpectrogramBatchNorm(nn.Module):
    def __init__(self, scale: float = 0.5, momentum: float = 0.1, eps: float = 1e-5, sync: bool = False):
        super().__init__()
        self.scale, self.momentum, self.eps, self.sync = scale, momentum, eps, sync
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.ones(()))

    def forward(self, x: torch.Tensor, frame_padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, T, F); frame_padding: (B, T) True = padding."""
        xf = x.float()
        if self.training and self.sync and _world_size() > 1:
            mean, var, n = _global_moments(xf, frame_padding)
            self._update_running(mean, var, n, xf.dtype)
        elif self.training:
            if frame_padding is None:
                n = xf.numel()
                mean = xf.mean()
                var = xf.var(unbiased=False)
            else:
                w = (~frame_padding).to(xf.dtype)[:, :, None].expand_as(xf)
                n = w.sum()
                mean = (xf * w).sum() / n
                var = (((xf - mean) ** 2) * w).sum() / n
            self._update_running(mean, var, n, xf.dtype)
        else:
            mean, var = self.running_mean, self.running_var
        return ((xf - mean) * torch.rsqrt(var + self.eps) * self.scale).to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean, var, n, dtype) -> None:
        unbiased = var * n / torch.clamp(torch.as_tensor(n, dtype=dtype) - 1, min=1)
        self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_moments(xf: torch.Tensor, frame_padding: Optional[torch.Tensor]):
    """Mean and (biased) variance over the valid frames x bins of every process's batch, and their count."""
    from torch.distributed.nn.functional import all_reduce

    w = (torch.ones_like(xf[:, :, :1]) if frame_padding is None else (~frame_padding).to(xf.dtype)[:, :, None])
    w = w.expand_as(xf)
    count_and_sum = all_reduce(torch.stack([w.sum(), (xf * w).sum()]))  # every rank: the same two numbers
    n = count_and_sum[0]
    mean = count_and_sum[1] / n
    var = all_reduce((((xf - mean) ** 2) * w).sum()) / n
    return mean, var, n
