"""Load a checkpoint of ours without fairseq: the pure-torch core model + its front end, ready to embed audio.

fairseq checkpoints store the config as plain containers, so they are read with ``torch.load(weights_only=True)``:
no pickle code runs. The front end (window, mel bins, normalisation statistics, ...) comes from ``cfg["task"]``.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .core.mae_ast import MaeAst, MaeAstConfig
from .fbank import Fbank
from .frontend import FrontendConfig, fbank_config, normalise

# registered model name -> (core class, core config class)
CORE_MODELS = {"mae_ast": (MaeAst, MaeAstConfig)}


def _build(dc_cls, values: dict):
    names = {f.name for f in dataclasses.fields(dc_cls)}
    return dc_cls(**{k: v for k, v in values.items() if k in names})


class Pretrained(torch.nn.Module):
    """A core model with the front end it was trained with. ``embed`` takes raw waveforms."""

    def __init__(self, model: torch.nn.Module, frontend: FrontendConfig, name: str):
        super().__init__()
        self.model, self.frontend, self.name = model, frontend, name
        self.fbank = Fbank(fbank_config(frontend))

    def features(self, waveforms: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """16 kHz 1-D waveforms of any lengths -> normalised log-mel (B, T, F) + frame padding (B, T)."""
        device = next(self.model.parameters()).device
        lengths = torch.tensor([len(w) for w in waveforms], device=device)
        wavs = torch.nn.utils.rnn.pad_sequence([w.to(device, torch.float32) for w in waveforms], batch_first=True)
        if self.frontend.subtract_waveform_mean:
            valid = torch.arange(wavs.shape[1], device=device)[None] < lengths[:, None]
            mean = (wavs * valid).sum(1, keepdim=True) / lengths[:, None]
            wavs = (wavs - mean) * valid
        feats, frames = self.fbank(wavs, lengths)
        padding = torch.arange(feats.shape[1], device=device)[None] >= frames[:, None]
        return normalise(feats, self.frontend), padding

    @torch.no_grad()
    def embed(self, waveforms: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Encoder outputs for a batch of 16 kHz waveforms: ``x`` (B, N, D), ``hidden_states``, ``padding_mask``,
        and ``clip`` (B, D): the mean over the valid tokens."""
        feats, padding = self.features(waveforms)
        out = self.model.extract_features(feats, padding)
        valid = (~out["padding_mask"]).unsqueeze(-1).to(out["x"].dtype)
        out["clip"] = (out["x"] * valid).sum(1) / valid.sum(1).clamp(min=1)
        return out


def load_pretrained(path: str, map_location: Union[str, torch.device] = "cpu") -> Pretrained:
    state = torch.load(path, map_location=map_location, weights_only=True)
    cfg = state.get("cfg") or {}
    model_cfg, task_cfg = dict(cfg.get("model") or {}), dict(cfg.get("task") or {})
    name = model_cfg.get("_name")
    if name not in CORE_MODELS:
        raise ValueError(f"{path}: model {name!r} is not one of ours ({sorted(CORE_MODELS)})")
    core_cls, core_cfg_cls = CORE_MODELS[name]
    model = core_cls(_build(core_cfg_cls, model_cfg))
    model.load_state_dict(state["model"], strict=True)
    return Pretrained(model.eval(), _build(FrontendConfig, task_cfg), name).eval()
