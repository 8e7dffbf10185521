"""Positional encodings (pure torch).

* :func:`sinusoid_1d` - MAE-AST: the classic interleaved table (sin on even dims, cos on odd dims) over the flattened
  token index, added before the encoder and again before the decoder.
* :func:`sincos_2d` - EAT: fixed 2-D sin-cos; the first half of the dims encodes the *frequency* patch index, the
  second half the *time* patch index, each half ``[sin(p*w_k) | cos(p*w_k)]`` with ``w_k = 10000^(-k/(D/4))``.
  The table is built for ``max_time`` time patches and sliced to the sequence length (variable-length input).
* :class:`LearnedPositions` - SSAST: a learned table (trunc-normal 0.02) over the extra tokens + the patch grid, with
  crop / bilinear interpolation to another grid (fine-tuning with other strides or lengths).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_1d(length: int, dim: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, dim) table; even dims sin, odd dims cos (fairseq/MAE-AST ``SinusoidalPositionalEncoding``)."""
    pos = torch.arange(length, device=device, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table.to(dtype)


def _sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0))
    out = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(n_time: int, n_freq: int, dim: int, *, token_order: str = "time_major", dtype=torch.float32,
              device=None) -> torch.Tensor:
    """(n_time * n_freq, dim) fixed 2-D sin-cos table in the given token order (EAT layout: freq half first)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need an embedding dim divisible by 4, got {dim}")
    t = torch.arange(n_time, device=device)
    f = torch.arange(n_freq, device=device)
    tt, ff = torch.meshgrid(t, f, indexing="ij")  # (n_time, n_freq)
    if token_order == "freq_major":
        tt, ff = tt.t(), ff.t()
    table = torch.cat([_sincos(ff.reshape(-1), dim // 2), _sincos(tt.reshape(-1), dim // 2)], dim=1)
    return table.to(dtype)


class LearnedPositions(nn.Module):
    """Learned positions for ``num_extra`` leading tokens + a (n_time, n_freq) patch grid (SSAST)."""

    def __init__(self, grid: Tuple[int, int], dim: int, *, num_extra: int = 0, token_order: str = "freq_major"):
        super().__init__()
        self.grid = tuple(grid)
        self.num_extra = num_extra
        self.token_order = token_order
        self.table = nn.Parameter(torch.zeros(1, num_extra + grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, grid: Tuple[int, int]) -> torch.Tensor:
        """Positions for another grid: crop in time when shorter (centre crop, as SSAST), else bilinear."""
        if tuple(grid) == self.grid:
            return self.table
        n_t, n_f = self.grid
        extra, patches = self.table[:, : self.num_extra], self.table[:, self.num_extra:]
        d = patches.shape[-1]
        if self.token_order == "freq_major":
            img = patches.reshape(1, n_f, n_t, d).permute(0, 3, 1, 2)  # (1, D, F, T)
        else:
            img = patches.reshape(1, n_t, n_f, d).permute(0, 3, 2, 1)
        new_t, new_f = grid
        if new_t <= n_t and new_f == n_f:
            start = (n_t - new_t) // 2
            img = img[..., start:start + new_t]
        else:
            img = F.interpolate(img, size=(new_f, new_t), mode="bilinear", align_corners=False)
        if self.token_order == "freq_major":
            patches = img.permute(0, 2, 3, 1).reshape(1, new_f * new_t, d)
        else:
            patches = img.permute(0, 3, 2, 1).reshape(1, new_t * new_f, d)
        return torch.cat([extra, patches], dim=1)
