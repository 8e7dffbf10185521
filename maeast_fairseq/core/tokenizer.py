"""Patch / frame tokeniser for log-mel spectrograms (pure torch).

A spectrogram ``(B, T, F)`` is cut into patches of ``patch_time x patch_freq`` bins with a stride (equal to the patch
for pretraining; smaller for SSAST's overlapping fine-tuning patches). Patch (16x16: an 8-freq x 64-time grid for
1024x128) and frame (128x2: one frequency row) models are the same code with other sizes.

The **token order** is explicit: ``time_major`` (MAE-AST, EAT: index = t * n_freq + f) or ``freq_major`` (SSAST:
index = f * n_time + t). The values inside a patch follow the same convention (``time_major``: ``dt * patch_freq +
df``, as ``nn.Unfold`` on ``(B, 1, T, F)``; ``freq_major``: ``df * patch_time + dt``, as ``nn.Unfold`` on
``(B, 1, F, T)``), so reconstruction targets line up with each method's released checkpoints.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

TOKEN_ORDERS = ("time_major", "freq_major")


class Tokenizer:
    def __init__(self, patch: Tuple[int, int], stride: Optional[Tuple[int, int]] = None, *,
                 num_mel_bins: int = 128, token_order: str = "time_major"):
        if token_order not in TOKEN_ORDERS:
            raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {token_order!r}")
        self.patch_time, self.patch_freq = int(patch[0]), int(patch[1])
        self.stride_time, self.stride_freq = (int(stride[0]), int(stride[1])) if stride else (self.patch_time, self.patch_freq)
        if self.patch_freq > num_mel_bins:
            raise ValueError(f"patch of {self.patch_freq} frequency bins is larger than the {num_mel_bins} mel bins")
        self.num_mel_bins = num_mel_bins
        self.token_order = token_order
        self.n_freq = (num_mel_bins - self.patch_freq) // self.stride_freq + 1

    @property
    def patch_dim(self) -> int:
        return self.patch_time * self.patch_freq

    def n_time(self, num_frames):
        """Number of time patches for ``num_frames`` frames (int or LongTensor); 0 when shorter than one patch."""
        if isinstance(num_frames, torch.Tensor):
            return torch.clamp((num_frames - self.patch_time) // self.stride_time + 1, min=0)
        return max(0, (int(num_frames) - self.patch_time) // self.stride_time + 1)

    def grid(self, num_frames: int) -> Tuple[int, int]:
        return self.n_time(num_frames), self.n_freq

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, N, patch_time * patch_freq) in the configured token order."""
        if x.shape[1] < self.patch_time:
            raise ValueError(
                f"input has {x.shape[1]} frames, fewer than one patch ({self.patch_time} frames); "
                "drop such clips (task.min_sample_size) or pad them"
            )
        p = x.unfold(1, self.patch_time, self.stride_time).unfold(2, self.patch_freq, self.stride_freq)
        # p: (B, n_time, n_freq, patch_time, patch_freq)
        b, nt, nf = p.shape[:3]
        if self.token_order == "time_major":
            return p.reshape(b, nt * nf, self.patch_dim)
        return p.permute(0, 2, 1, 4, 3).reshape(b, nf * nt, self.patch_dim)

    def unpatchify(self, patches: torch.Tensor, n_time: int) -> torch.Tensor:
        """Inverse of :meth:`patchify` for non-overlapping patches: (B, N, P) -> (B, n_time*patch_time, F)."""
        if (self.stride_time, self.stride_freq) != (self.patch_time, self.patch_freq):
            raise ValueError("unpatchify needs non-overlapping patches")
        b = patches.shape[0]
        nf = self.n_freq
        if self.token_order == "time_major":
            p = patches.reshape(b, n_time, nf, self.patch_time, self.patch_freq)
        else:
            p = patches.reshape(b, nf, n_time, self.patch_freq, self.patch_time).permute(0, 2, 1, 4, 3)
        return p.permute(0, 1, 3, 2, 4).reshape(b, n_time * self.patch_time, nf * self.patch_freq)

    def token_padding(self, frame_padding: Optional[torch.Tensor], n_time: int) -> Optional[torch.Tensor]:
        """(B, T) frame padding (True = pad) -> (B, N) token padding.

        A token is valid only when all its frames are real: a clip's tokens in a padded batch are then exactly the
        tokens it has alone (the trailing partial patch is dropped in both cases), so batching changes nothing.
        """
        if frame_padding is None:
            return None
        valid_frames = (~frame_padding).sum(1)  # (B,)
        starts = torch.arange(n_time, device=frame_padding.device) * self.stride_time
        pad_t = starts[None, :] + self.patch_time > valid_frames[:, None]  # (B, n_time)
        if self.token_order == "time_major":
            pad = pad_t[:, :, None].expand(-1, -1, self.n_freq)
        else:
            pad = pad_t[:, None, :].expand(-1, self.n_freq, -1)
        return pad.reshape(pad.shape[0], -1)

    def time_index(self, n_time: int, device=None) -> torch.Tensor:
        """(N,) time-patch index of every token in the token order."""
        t = torch.arange(n_time, device=device)
        if self.token_order == "time_major":
            return t.repeat_interleave(self.n_freq)
        return t.repeat(self.n_freq)


class PatchEmbed(torch.nn.Module):
    """Tokeniser + linear projection of each flattened patch (equivalent to the official code's strided ``Conv2d``)."""

    def __init__(self, tokenizer: Tokenizer, dim: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.proj = torch.nn.Linear(tokenizer.patch_dim, dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) -> (tokens (B, N, D), patches (B, N, P))."""
        patches = self.tokenizer.patchify(x)
        return self.proj(patches), patches
