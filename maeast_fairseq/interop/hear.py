"""The HEAR API (module-level functions) for any checkpoint of ours; no fairseq, no hearvalidator needed.

::

    from maeast_fairseq.interop import hear
    model = hear.load_model("checkpoint_best.pt")            # or an exported folder
    emb, ts = hear.get_timestamp_embeddings(audio, model)    # audio: (n_sounds, n_samples) at model.sample_rate
    scene = hear.get_scene_embeddings(audio, model)          # (n_sounds, model.scene_embedding_size)

* **timestamp embeddings**: the time sequence of :meth:`Pretrained.embed` (frequency patches of one time step
  concatenated, ``n_freq * D`` wide) at the chosen layer (default: the last). HEAR wants a hop of at most 50 ms:
  a model whose time step is longer (16-frame patches: 160 ms) has every step repeated ``r = ceil(hop / 50 ms)``
  times, with timestamps spread evenly over the step (hop / r apart, e.g. 40 ms), so the spacing is regular.
  Timestamps are in milliseconds at the centre of the fbank frames a step covers (``(patch_time - 1) / 2`` frame
  hops plus half a 25 ms window after the step's first frame). Long sounds are encoded in windows of the training
  length, as :meth:`Pretrained.embed` does;
* **scene embeddings**: the clip embedding of :meth:`Pretrained.embed` (the method's pooling: mean over the valid
  tokens for SSAST / MAE-AST, the CLS token for EAT), ``D`` wide.

Everything returned is a float32 ``torch.Tensor`` on the model's device.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..embed import Pretrained

MAX_HOP_MS = 50.0

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings"]


class HearModel(nn.Module):
    """A :class:`Pretrained` with HEAR's attributes: ``sample_rate``, ``scene_embedding_size``,
    ``timestamp_embedding_size`` (ints)."""

    def __init__(self, pretrained: Pretrained, *, layer: Optional[int] = None, pooling: Optional[str] = None,
                 max_hop_ms: float = MAX_HOP_MS, batch_size: int = 16):
        super().__init__()
        self.pretrained = pretrained.eval()
        self.layer, self.pooling, self.batch_size = layer, pooling, int(batch_size)
        self.sample_rate = int(pretrained.sample_rate)
        self.scene_embedding_size = int(pretrained.embed_dim)
        self.timestamp_embedding_size = int(pretrained.frame_dim)
        hop_ms = 1000.0 / pretrained.frame_rate
        self.repeat = max(1, math.ceil(hop_ms / max_hop_ms - 1e-9))
        self.hop_ms = hop_ms / self.repeat

    def timestamps(self, n_steps: int) -> torch.Tensor:
        """(n_steps * repeat,) float64 timestamps in ms of the (repeated) steps."""
        centres = self.pretrained.timestamps(n_steps) * 1000.0  # (n_steps,) in ms
        r = self.repeat
        offsets = (torch.arange(r, dtype=torch.float64) - (r - 1) / 2.0) * self.hop_ms
        return (centres[:, None] + offsets[None, :]).reshape(-1)

    def _embed(self, audio):
        return self.pretrained.embed(_as_batch(audio), self.sample_rate, layer=self.layer, pooling=self.pooling,
                                     hidden_states=False)


def _as_batch(audio) -> torch.Tensor:
    a = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
    if a.dim() != 2:
        raise ValueError(f"HEAR audio must be (n_sounds, n_samples), got shape {tuple(a.shape)}")
    return a.float()


def load_model(model_file_path: str = "", *, layer: Optional[int] = None, pooling: Optional[str] = None,
               device: Union[str, torch.device, None] = None, **kwargs) -> HearModel:
    """A checkpoint of ours (fairseq ``.pt`` or exported folder) as a HEAR model. ``layer``: hidden state for the
    embeddings (default: last); ``pooling``: scene pooling ('mean' / 'cls', default: the method's)."""
    if not model_file_path:
        raise ValueError("load_model needs the path of a checkpoint or exported model folder")
    from ..checkpoint import load_pretrained

    pre = load_pretrained(model_file_path)
    if device is not None:
        pre = pre.to(device)
    return HearModel(pre, layer=layer, pooling=pooling, **kwargs)


def _batches(audio: torch.Tensor, size: int):
    for s in range(0, audio.shape[0], size):
        yield audio[s: s + size]


def get_timestamp_embeddings(audio, model: HearModel) -> Tuple[torch.Tensor, torch.Tensor]:
    """``audio`` (n_sounds, n_samples) -> ``(embeddings (n_sounds, n_timestamps, timestamp_embedding_size),
    timestamps (n_sounds, n_timestamps) in ms)``, both float32."""
    audio = _as_batch(audio)
    embs = []
    for chunk in _batches(audio, model.batch_size):
        frames = model._embed(chunk)["frames"]  # (b, T, F*D); all sounds have the same length: no padding
        embs.append(frames.repeat_interleave(model.repeat, dim=1) if model.repeat > 1 else frames)
    emb = torch.cat(embs).float()
    n_steps = emb.shape[1] // model.repeat
    ts = model.timestamps(n_steps).to(torch.float32).to(emb.device)
    return emb, ts[None].expand(audio.shape[0], -1).contiguous()


def get_scene_embeddings(audio, model: HearModel) -> torch.Tensor:
    """``audio`` (n_sounds, n_samples) -> (n_sounds, scene_embedding_size) float32."""
    audio = _as_batch(audio)
    return torch.cat([model._embed(chunk)["clip"] for chunk in _batches(audio, model.batch_size)]).float()
