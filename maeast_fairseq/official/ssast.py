"""Official SSAST pretraining files (``SSAST-Base-Patch-400.pth``, ``SSAST-Base-Frame-400.pth``) -> our ``ssast``.

The file is a bare state dict of the official ``ASTModel(pretrain_stage=True)`` wrapped in ``nn.DataParallel``
(keys prefixed ``module.``; files saved without the wrapper are accepted too). It stores no config: the patch
shape comes from the patch projection's kernel, the input size from ``p_input_fdim`` / ``p_input_tdim``, the width,
depth, MLP width and number of extra tokens from the tensors. The number of attention heads is not in the file; it
follows DeiT's sizes (768 -> 12, 384 -> 6, 192 -> 3), or ``num_heads=`` gives it.

Mapping (official -> ours): patch projection ``Conv2d`` weight ``(D, 1, F, T)`` reshaped to our ``Linear``
``(D, F*T)`` (freq-major inside the patch, as our SSAST tokens); ``cls_token`` + ``dist_token`` concatenated into
``extra_tokens``; ``pos_embed`` -> ``positions.table``; timm blocks -> ``encoder.blocks`` (same fused qkv);
``v.norm`` -> ``encoder.final_norm``; ``cpredlayer`` / ``gpredlayer`` -> ``cpred`` / ``gpred``.
"""
from __future__ import annotations

import re
from typing import Any, Dict

import torch

from .common import Converted, OfficialFormatError, apply_table, same

FAMILY = "ssast"

#: DeiT sizes: embedding width -> attention heads (SSAST's tiny / small / base)
DEIT_HEADS = {192: 3, 384: 6, 768: 12}
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974

DROPPED = {
    "v.head.weight": "timm's ImageNet classification head, never used by SSAST",
    "v.head.bias": "timm's ImageNet classification head, never used by SSAST",
    "v.head_dist.weight": "timm's ImageNet distillation head, never used by SSAST",
    "v.head_dist.bias": "timm's ImageNet distillation head, never used by SSAST",
    "p_input_fdim": "input mel bins: becomes the config's num_mel_bins",
    "p_input_tdim": "input frames: becomes the config's target_frames (the position grid)",
}


def _strip(raw: Any) -> Dict[str, torch.Tensor]:
    if not isinstance(raw, dict) or not raw or not all(torch.is_tensor(v) for v in raw.values()):
        return {}
    prefix = "module." if all(str(k).startswith("module.") for k in raw) else ""
    return {str(k)[len(prefix):]: v for k, v in raw.items()}


def matches(raw: Any) -> bool:
    sd = _strip(raw)
    return "v.patch_embed.proj.weight" in sd and "v.pos_embed" in sd and any(k.startswith("cpredlayer.") for k in sd)


def convert(raw: Any, source: str = "", *, num_heads: int = 0, **options) -> Converted:
    from ..core.ssast import Ssast, SsastConfig

    unknown_options = sorted(options)
    if unknown_options:
        raise TypeError(f"SSAST conversion options are num_heads=; got {unknown_options}")
    sd = _strip(raw)
    proj = sd.get("v.patch_embed.proj.weight")
    if proj is None or proj.dim() != 4 or proj.shape[1] != 1:
        raise OfficialFormatError(f"{source}: SSAST checkpoint: v.patch_embed.proj.weight must be (D, 1, F, T), got "
                                  f"{None if proj is None else tuple(proj.shape)}")
    dim, patch_freq, patch_time = int(proj.shape[0]), int(proj.shape[2]), int(proj.shape[3])
    for k in ("p_input_fdim", "p_input_tdim"):
        if k not in sd:
            raise OfficialFormatError(f"{source}: SSAST checkpoint is missing {k!r} (the pretraining input size); "
                                      "Nothing was loaded.")
    fdim, tdim = int(sd["p_input_fdim"].item()), int(sd["p_input_tdim"].item())
    blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"v\.blocks\.(\d+)\.", k)] if m})
    if not blocks or blocks != list(range(len(blocks))):
        raise OfficialFormatError(f"{source}: SSAST checkpoint: transformer blocks v.blocks.<i> must be numbered "
                                  f"0..L-1, found {blocks}")
    fc1 = sd.get("v.blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise OfficialFormatError(f"{source}: SSAST checkpoint is missing 'v.blocks.0.mlp.fc1.weight'")
    heads = int(num_heads) or DEIT_HEADS.get(dim, 0)
    notes = []
    if not heads:
        raise OfficialFormatError(f"{source}: SSAST checkpoint of width {dim}: the number of attention heads is not "
                                  "stored in the file and no DeiT size has this width. Fix: pass num_heads=<H>.")
    notes.append(f"attention heads {heads}: " + ("given by num_heads=" if num_heads else
                                                 f"not stored in the file, DeiT's value for width {dim}"))
    extra = 2 if "v.dist_token" in sd else 1
    mask_type = "cluster" if patch_freq < fdim else "random"
    cfg = SsastConfig(patch_time=patch_time, patch_freq=patch_freq, num_mel_bins=fdim, target_frames=tdim,
                      encoder_layers=len(blocks), embed_dim=dim, ffn_dim=int(fc1.shape[0]), num_heads=heads,
                      num_extra_tokens=extra, dropout=0.0, attention_dropout=0.0, norm_eps=1e-6, mask_type=mask_type)
    notes.append(f"masking for further pretraining: {mask_type} (as SSAST's "
                 f"{'patch' if mask_type == 'cluster' else 'frame'} model); passes='one' (model.passes=two: the "
                 "official two-pass joint objective)")
    notes.append(f"inputs shorter than {tdim} frames take the first time columns of the position grid "
                 "(position_crop='start'); SSAST's own fine-tuning centre-crops it (position_crop='center', or "
                 "model.patch_stride_time / target_frames in fine-tuning, which re-grid it as SSAST does)")
    expected = Ssast(cfg).state_dict()

    rows = [
        ("patch_embed.proj.weight", ["v.patch_embed.proj.weight"], lambda t: t[0].reshape(t[0].shape[0], -1)),
        ("patch_embed.proj.bias", ["v.patch_embed.proj.bias"], same),
        ("extra_tokens", ["v.cls_token"] + (["v.dist_token"] if extra == 2 else []), lambda t: torch.cat(t, dim=1)),
        ("positions.table", ["v.pos_embed"], same),
        ("mask_embed", ["mask_embed"], same),
        ("encoder.final_norm.weight", ["v.norm.weight"], same),
        ("encoder.final_norm.bias", ["v.norm.bias"], same),
    ]
    for i in blocks:
        for theirs, ours in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.qkv", "attn.qkv"),
                             ("attn.proj", "attn.proj"), ("mlp.fc1", "ffn.fc1"), ("mlp.fc2", "ffn.fc2")):
            for p in ("weight", "bias"):
                rows.append((f"encoder.blocks.{i}.{ours}.{p}", [f"v.blocks.{i}.{theirs}.{p}"], same))
    for theirs, ours in (("cpredlayer", "cpred"), ("gpredlayer", "gpred")):
        for j in (0, 2):
            for p in ("weight", "bias"):
                rows.append((f"{ours}.{j}.{p}", [f"{theirs}.{j}.{p}"], same))
    state = apply_table(source, sd, rows, DROPPED, expected, FAMILY)

    frontend = dict(num_mel_bins=fdim, window_type="hanning", subtract_waveform_mean=True, norm="dataset",
                    norm_mean=AUDIOSET_MEAN, norm_std=AUDIOSET_STD, length_policy="fixed", target_frames=tdim)
    notes.append(f"front end assumed: SSAST's AudioSet pretraining recipe: Kaldi fbank {fdim} mel, hanning window, "
                 f"waveform mean removed, (x + {-AUDIOSET_MEAN}) / (2 x {AUDIOSET_STD}), clips padded / cut to {tdim} "
                 "frames (the file stores no front end; pass frontend= if the model was trained otherwise)")
    kind = "patch" if patch_freq < fdim else "frame"
    dropped = {k: v for k, v in DROPPED.items() if k in sd}
    return Converted(family=FAMILY, variant=f"{kind} {patch_freq}x{patch_time} (freq x time)", model_name="ssast",
                     model_cfg=_asdict(cfg), state=state, frontend=frontend, dropped=dropped, notes=notes,
                     source=source)


def _asdict(cfg) -> Dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)
