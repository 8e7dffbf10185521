"""An s3prl-compatible upstream for any checkpoint of ours (no s3prl or fairseq needed to use it).

::

    from maeast_fairseq.interop.s3prl import S3prlUpstream
    upstream = S3prlUpstream("checkpoint_best.pt")            # or an exported folder, or a Pretrained
    out = upstream([wav_1, wav_2])                             # 1-D float tensors at 16 kHz, any lengths
    out["hidden_states"]                                       # L+1 x (B, T, n_freq * D)
    upstream.get_downsample_rates("hidden_states")             # stride_time * 160 samples per time step

As s3prl's own MAE-AST / SSAST wrappers: the patch tokens of one time step are concatenated over
frequency (``(B, T_p, F_p * D)``), long inputs are encoded in windows of the training length and concatenated.
The time axis is sized to ``T = round(max_len / rate)`` exactly, which is what s3prl's ``Featurizer`` expects
(it asserts ``|T - round(max_len / rate)| < 5`` and cuts clip ``i`` to ``round(len_i / rate)`` steps): when a clip
has fewer encoder steps than ``round(len_i / rate)`` (the last, incomplete patch is dropped), its last step is
repeated, never zeros. The upstream runs in ``eval()`` with layer drop 0, so the number of hidden states is fixed.
``forward`` does not disable gradients (s3prl's runner does that for frozen upstreams). ``UpstreamExpert`` is an
alias with s3prl's constructor signature ``(ckpt, model_config=None, **kwargs)``, for an ``expert.py`` in s3prl's
upstream hub.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import torch
from torch import nn

from ..embed import Pretrained

SAMPLE_RATE = 16000


def _no_layerdrop(module: nn.Module) -> None:
    for m in module.modules():
        for attr in ("layerdrop", "encoder_layerdrop"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


def fit_length(h: torch.Tensor, valid: torch.Tensor, target: int) -> torch.Tensor:
    """(B, T, D) with ``valid`` (B,) steps per row -> (B, target, D): steps past a row's end repeat its last valid
    step (so s3prl's per-clip cut never takes padding), and extra steps are cut."""
    b, t, _ = h.shape
    idx = torch.arange(target, device=h.device)[None].expand(b, -1)
    idx = torch.minimum(idx, (valid.clamp(min=1) - 1)[:, None]).clamp(max=max(t - 1, 0))
    return torch.gather(h, 1, idx[:, :, None].expand(-1, -1, h.shape[-1]))


class S3prlUpstream(nn.Module):
    """``forward(wavs: List[Tensor]) -> {"hidden_states": [h_0 .. h_L], "last_hidden_state": h_L, ...}``."""

    def __init__(self, ckpt: Union[str, Pretrained], model_config: Optional[str] = None, *,
                 chunk_frames: Optional[int] = None, layer_for_task: Optional[Dict[str, int]] = None,
                 **load_kwargs):
        super().__init__()
        del model_config  # s3prl passes it to every UpstreamExpert; the checkpoint holds the whole config
        if isinstance(ckpt, Pretrained):
            self.pretrained = ckpt
        else:
            from ..checkpoint import load_pretrained
            self.pretrained = load_pretrained(ckpt, **load_kwargs)
        if self.pretrained.sample_rate != SAMPLE_RATE:
            raise ValueError(f"s3prl feeds 16 kHz audio; this model runs at {self.pretrained.sample_rate} Hz")
        self.chunk_frames = chunk_frames
        # optional per-task layer choice (s3prl upstreams may return "KS", "SID", "ER" keys)
        self.layer_for_task = dict(layer_for_task or {})
        _no_layerdrop(self.pretrained)
        self.eval()

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return int(self.pretrained.downsample_rate)

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, object]:
        if not wavs:
            raise ValueError("S3prlUpstream: empty batch")
        out = self.pretrained.encode(list(wavs), SAMPLE_RATE, hidden_states=True, chunk_frames=self.chunk_frames)
        rate = self.get_downsample_rates()
        target = max(1, round(max(len(w) for w in wavs) / rate))
        valid = out["frame_lengths"]
        hidden = [fit_length(h, valid, target) for h in out["hidden_states"]]
        result = {"hidden_states": hidden, "last_hidden_state": hidden[-1]}
        for task, layer in self.layer_for_task.items():
            result[task] = hidden[layer]
        return result


#: the name s3prl's upstream hub expects in an ``expert.py`` (``UpstreamExpert(ckpt, model_config, **kwargs)``)
UpstreamExpert = S3prlUpstream
