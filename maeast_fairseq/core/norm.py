"""Spectrogram normalisation inside the model (MAE-AST): ``BatchNorm2d(1, affine=False)(x) * 0.5``.

Training normalises with the statistics of the batch (over every valid frame and bin), evaluation with running
statistics (momentum 0.1) that live in the checkpoint. Unlike a plain ``BatchNorm2d``, padded frames are left out of
the statistics when a frame padding mask is given (with no padding it is numerically ``BatchNorm2d``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class SpectrogramBatchNorm(nn.Module):
    def __init__(self, scale: float = 0.5, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.scale, self.momentum, self.eps = scale, momentum, eps
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.ones(()))

    def forward(self, x: torch.Tensor, frame_padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, T, F); frame_padding: (B, T) True = padding."""
        xf = x.float()
        if self.training:
            if frame_padding is None:
                n = xf.numel()
                mean = xf.mean()
                var = xf.var(unbiased=False)
            else:
                w = (~frame_padding).to(xf.dtype)[:, :, None].expand_as(xf)
                n = w.sum()
                mean = (xf * w).sum() / n
                var = (((xf - mean) ** 2) * w).sum() / n
            with torch.no_grad():
                unbiased = var * n / torch.clamp(torch.as_tensor(n, dtype=xf.dtype) - 1, min=1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return ((xf - mean) * torch.rsqrt(var + self.eps) * self.scale).to(x.dtype)
