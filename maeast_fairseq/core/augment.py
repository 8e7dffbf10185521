"""Training-time augmentation of fine-tuning, applied inside the classifier's training forward (vectorised, no
per-clip loops):

* :func:`mixup`: batch mode, one ``lambda ~ Beta(a, a)`` per batch, pairs = the batch flipped, labels mixed
  (EAT / timm ``Mixup(mode='batch')``);
* :func:`spec_augment`: iid SpecAugment, one frequency and one time mask per clip sized by ratios (torchaudio's
  ``mask_along_axis_iid`` rule).

Targets are float ``(B, C)`` multi-hot rows (one-hot for single-label data), so mixup works the same for both.
"""
from typing import Optional

import torch


def mixup(x: torch.Tensor, target: torch.Tensor, alpha: float, prob: float = 1.0,
          frame_padding: Optional[torch.Tensor] = None):
    """Batch-mode mixup: with probability ``prob`` draw one ``lam ~ Beta(alpha, alpha)`` and mix every clip with the
    clip at the mirrored batch position (``x.flip(0)``); labels are mixed the same way (no label smoothing here).
    Draws from torch's global generator (fairseq seeds it per update).

    A frame of the mix is padding only when it is padding in both clips. Returns ``(x, target, frame_padding, lam)``
    (``lam = 1.0`` when nothing was mixed).
    """
    if alpha <= 0 or prob <= 0 or x.shape[0] < 2:
        return x, target, frame_padding, 1.0
    if float(torch.rand(())) >= prob:
        return x, target, frame_padding, 1.0
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    x = x * lam + x.flip(0) * (1.0 - lam)
    target = target * lam + target.flip(0) * (1.0 - lam)
    if frame_padding is not None:
        frame_padding = frame_padding & frame_padding.flip(0)
    return x, target, frame_padding, lam


def _mask_along(size: torch.Tensor, mask_param: torch.Tensor, length: int, generator, device) -> torch.Tensor:
    """torchaudio ``mask_along_axis_iid`` per row: width ``w = U*param``, start ``U*(size - w)``; (B, length) bool."""
    b = size.shape[0]
    value = torch.rand(b, device=device, generator=generator) * mask_param
    start = torch.rand(b, device=device, generator=generator) * (size - value).clamp(min=0)
    lo, hi = start.long(), (start + value).long()
    pos = torch.arange(length, device=device)[None, :]
    return (pos >= lo[:, None]) & (pos < hi[:, None])


def spec_augment(x: torch.Tensor, freq_ratio: float, time_ratio: float,
                 frame_padding: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 fill: float = 0.0) -> torch.Tensor:
    """SpecAugment with iid masks: one frequency mask of width ``U[0, freq_ratio * F)`` and one time mask of width
    ``U[0, time_ratio * T)`` per clip (EAT: ``freqm = 128 * mask_ratio``, ``timem = target_length * mask_ratio``),
    filled with ``fill`` (0 = the mean of normalised features). ``x`` (B, T, F). With ``frame_padding`` the time
    mask is placed (and sized) within each clip's valid frames."""
    b, t, f = x.shape
    keep = torch.ones(b, t, f, dtype=torch.bool, device=x.device)
    if freq_ratio > 0:
        fm = _mask_along(torch.full((b,), float(f), device=x.device), torch.tensor(freq_ratio * f, device=x.device),
                         f, generator, x.device)
        keep &= ~fm[:, None, :]
    if time_ratio > 0:
        valid = torch.full((b,), float(t), device=x.device)
        if frame_padding is not None:
            valid = (~frame_padding).sum(1).float()
        tm = _mask_along(valid, time_ratio * valid, t, generator, x.device)
        keep &= ~tm[:, :, None]
    return torch.where(keep, x, torch.full_like(x, fill))
