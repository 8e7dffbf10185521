"""Fine-tuning a pretrained encoder (MAE-AST, SSAST or EAT) for clip classification, in pure torch.

This module holds everything of the fine-tuning recipe that is not fairseq plumbing, so it can be tested and used
without fairseq (the ``maeast_classifier`` fairseq model is :class:`AudioClassifier` + a thin shell, and
``maeast-predict`` rebuilds it from a checkpoint with no fairseq import):

* metrics: :func:`accuracy`, :func:`average_precision` and :func:`mean_average_precision` (per-class AP as
  scikit-learn's ``average_precision_score``, averaged over the classes that have at least one positive);
* augmentation inside the model's training forward: batch-mode :func:`mixup` (one ``lambda ~ Beta(a, a)`` per batch,
  pairs = the batch flipped, labels mixed; EAT / timm ``Mixup(mode='batch')``) and iid :func:`spec_augment` (one
  frequency and one time mask per clip, sized by ratios, torchaudio's ``mask_along_axis_iid`` rule), both vectorised;
* encoder surgery: drop the pretraining-only modules (decoders, heads, EMA teacher), dropout / layerdrop overrides,
  drop path rising linearly ``0 .. rate`` over the blocks, SSAST's overlapping fine-tuning patches with its
  positional-embedding crop / interpolation (:func:`apply_patch_strides`);
* layer-wise learning-rate decay (:func:`layer_scales`): ``blocks_only`` (EAT: block ``i`` of ``L`` gets
  ``decay^(L-i)``, the stem keeps 1, SYSTEMS.md trap 14) or ``beit`` (the stem also decays, to ``decay^(L+1)``);
  :func:`param_groups` turns them into torch optimizer groups, :func:`tag_parameters` into fairseq's per-parameter
  ``optim_overrides`` for its ``composite`` optimizer;
* :class:`AudioClassifier`: encoder + pooling (``mean`` over valid tokens or ``cls``) + ``LayerNorm -> Linear`` head
  (trunc-normal 0.02, bias 0), and the checkpoint builders :func:`classifier_from_pretrained` /
  :func:`classifier_from_state`.

Conventions: targets are float ``(B, C)`` multi-hot rows (one-hot for single-label data), so mixup works the same
for both; accuracy and mAP are returned in percent.
"""

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import TransformerStack
from .positions import LearnedPositions
from .tokenizer import Tokenizer

logger = logging.getLogger(__name__)

POOLINGS = ("auto", "mean", "cls")
LAYER_DECAY_RULES = ("blocks_only", "beit")
NO_DECAY_GROUP = "no_decay"
CLASSIFIER_NAME = "maeast_classifier"

# modules only pretraining needs, for cores without a ``remove_pretraining_modules`` method (EAT has one)
PRETRAINING_ONLY = {
    "MaeAst": ("decoder", "post_encoder_proj", "decoder_mask_embed", "reconstruction_head", "classification_head"),
    "Ssast": ("mask_embed", "cpred", "gpred"),
}


# ------------------------------------------------------------------------------------------------------- metrics
def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy in percent. ``target``: class indices (B,) or (soft / one-hot) rows (B, C) -> their argmax."""
    if target.dim() == 2:
        target = target.argmax(dim=-1)
    if logits.shape[0] == 0:
        return float("nan")
    return float((logits.argmax(dim=-1) == target).float().mean() * 100.0)


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision (C,), NaN for classes without a positive.

    ``scores`` (N, C) any monotone scores (logits or probabilities); ``targets`` (N, C) 0/1. Same definition as
    scikit-learn's ``average_precision_score``: ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds
    in decreasing order, tied scores forming one threshold. Vectorised over the classes (one sort).
    """
    scores = scores.detach().double()
    targets = (targets.detach() > 0.5).double()
    n, c = scores.shape
    if n == 0:
        return torch.full((c,), float("nan"), dtype=torch.float64)
    s, order = torch.sort(scores, dim=0, descending=True)
    y = torch.gather(targets, 0, order)
    tp = torch.cumsum(y, dim=0)
    seen = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)[:, None]
    # last row of every group of tied scores = one threshold
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp_at = torch.where(last, tp, torch.zeros_like(tp))
    prev = torch.cummax(tp_at, dim=0).values  # tp is non-decreasing: the tp of the latest threshold so far
    prev = torch.cat([torch.zeros_like(prev[:1]), prev[:-1]], dim=0)
    n_pos = tp[-1]
    gain = torch.where(last, tp - prev, torch.zeros_like(tp)) * (tp / seen)
    ap = gain.sum(dim=0) / n_pos.clamp(min=1)
    return torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP in percent: the mean of :func:`average_precision` over the classes with at least one positive (EAT's
    ``nanmean``); NaN when no class has a positive."""
    ap = average_precision(scores, targets)
    ap = ap[~torch.isnan(ap)]
    return float(ap.mean() * 100.0) if ap.numel() else float("nan")


# -------------------------------------------------------------------------------------------------- augmentation
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


# --------------------------------------------------------------------------------------------- encoder surgery
def drop_pretraining_modules(core: nn.Module) -> List[str]:
    """Remove what only pretraining uses (decoder, prediction heads, mask embeddings, EAT's EMA teacher); returns
    the names removed with their parameter counts."""
    before = {n: sum(p.numel() for p in m.parameters()) for n, m in core.named_children()}
    if hasattr(core, "remove_pretraining_modules"):
        core.remove_pretraining_modules()
        return [f"{n} ({c:,} params)" for n, c in before.items() if getattr(core, n, None) is None]
    removed = []
    for name in PRETRAINING_ONLY.get(type(core).__name__, ()):
        obj = getattr(core, name, None)
        if obj is None:
            continue
        count = obj.numel() if isinstance(obj, nn.Parameter) else sum(p.numel() for p in obj.parameters())
        setattr(core, name, None)
        removed.append(f"{name} ({count:,} params)")
    return removed


def encoder_stack(core: nn.Module) -> TransformerStack:
    """The one transformer stack of an encoder (after :func:`drop_pretraining_modules`)."""
    stacks = [m for m in core.modules() if isinstance(m, TransformerStack)]
    if len(stacks) != 1:
        raise ValueError(f"{type(core).__name__}: expected one transformer stack in the encoder, found {len(stacks)} "
                         "(were the pretraining modules dropped?)")
    return stacks[0]


def configure_encoder(core: nn.Module, *, dropout: Optional[float] = None, attention_dropout: Optional[float] = None,
                      activation_dropout: Optional[float] = None, layerdrop: float = 0.0,
                      drop_path: float = 0.0) -> None:
    """Fine-tuning regularisation of the encoder stack: dropout overrides (None keeps the pretrained value),
    ``layerdrop`` (0 in fine-tuning), and drop path rising linearly ``0 .. drop_path`` over the blocks (EAT 0.1)."""
    stack = encoder_stack(core)
    stack.layerdrop = float(layerdrop)
    n = len(stack.blocks)
    for i, block in enumerate(stack.blocks):
        block.drop_path.p = float(drop_path) * i / (n - 1) if n > 1 else float(drop_path)
        if dropout is not None:
            block.dropout.p = float(dropout)
        if attention_dropout is not None:
            block.attn.attention_dropout = float(attention_dropout)
        if activation_dropout is not None:
            block.ffn.activation_dropout.p = float(activation_dropout)
    if dropout is not None:
        stack.input_dropout.p = float(dropout)


def _tokenizers(core: nn.Module) -> List[Tokenizer]:
    found = {}
    for m in core.modules():
        tok = getattr(m, "tokenizer", None)
        if isinstance(tok, Tokenizer):
            found[id(tok)] = tok
    if not found:
        raise ValueError(f"{type(core).__name__} has no patch tokenizer")
    return list(found.values())


def adapt_position_grid(table: torch.Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int],
                        num_extra: int, token_order: str) -> torch.Tensor:
    """SSAST fine-tuning's positional-embedding adaptation of a learned ``(1, E + n_t * n_f, D)`` table to a new
    ``(n_time, n_freq)`` grid: time first (centre crop when fewer time patches, else linear interpolation), then
    frequency (centre crop when fewer, else interpolation). (SSAST's own freq branches hard-code 8 rows and slice
    with the time size: fixed here.)"""
    (old_t, old_f), (new_t, new_f) = old_grid, new_grid
    extra, patches = table[:, :num_extra], table[:, num_extra:]
    d = patches.shape[-1]
    if token_order == "freq_major":
        img = patches.reshape(1, old_f, old_t, d).permute(0, 3, 1, 2)  # (1, D, F, T)
    else:
        img = patches.reshape(1, old_t, old_f, d).permute(0, 3, 2, 1)
    if new_t <= old_t:
        start = old_t // 2 - new_t // 2
        img = img[..., start:start + new_t]
    else:
        img = F.interpolate(img, size=(old_f, new_t), mode="bilinear")
    if new_f <= old_f:
        start = old_f // 2 - new_f // 2
        img = img[:, :, start:start + new_f]
    else:
        img = F.interpolate(img, size=(new_f, new_t), mode="bilinear")
    if token_order == "freq_major":
        patches = img.permute(0, 2, 3, 1).reshape(1, new_f * new_t, d)
    else:
        patches = img.permute(0, 3, 2, 1).reshape(1, new_t * new_f, d)
    return torch.cat([extra, patches], dim=1)


def apply_patch_strides(core: nn.Module, stride_time: int = 0, stride_freq: int = 0,
                        target_frames: int = 1024) -> bool:
    """Fine-tuning patch grid: overlapping patches (SSAST: stride 10 x 10 for 16x16 patches, time stride 1 for 128x2
    frames) and SSAST's positional-embedding adaptation.

    0 keeps the pretraining stride. The patch projection is reused as is. A learned position table (SSAST) is
    re-gridded to the fine-tuning grid of ``target_frames`` with :func:`adapt_position_grid` (centre crop or
    interpolation, as SSAST's fine-tuning does for every input size) and stays trainable. Fixed positions (MAE-AST's
    1-D sinusoid over the token index, EAT's 2-D sin-cos over (time patch, freq patch)) index patches, not frames:
    a new *time* stride works (positions simply count more time patches) but a new *frequency* stride would change
    the number of frequency patches the tables were laid out for, so it raises. Returns whether anything changed.
    """
    toks = _tokenizers(core)
    tok = toks[0]
    new_t = int(stride_time) or tok.stride_time
    new_f = int(stride_freq) or tok.stride_freq
    learned = [m for m in core.modules() if isinstance(m, LearnedPositions)]
    strides_change = (new_t, new_f) != (tok.stride_time, tok.stride_freq)
    if strides_change:
        if new_t > tok.patch_time or new_f > tok.patch_freq:
            raise ValueError(f"patch strides ({new_t}, {new_f}) larger than the patch ({tok.patch_time}, "
                             f"{tok.patch_freq}) would skip input frames / bins")
        if new_f != tok.stride_freq and not learned:
            raise ValueError(
                f"{type(core).__name__} uses fixed positions laid out for {tok.n_freq} frequency patches; a frequency "
                f"stride of {new_f} (instead of {tok.stride_freq}) cannot be mapped onto them. Only "
                "model.patch_stride_time can change for this method (overlapping patches with re-gridded positions "
                "are SSAST's recipe)")
        for t in toks:
            t.stride_time, t.stride_freq = new_t, new_f
            t.n_freq = (t.num_mel_bins - t.patch_freq) // t.stride_freq + 1
    new_grid = tok.grid(target_frames)
    if new_grid[0] < 1:
        raise ValueError(f"target_frames={target_frames} is shorter than one patch ({tok.patch_time} frames)")
    regridded = False
    for parent in list(core.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LearnedPositions) and tuple(child.grid) != tuple(new_grid):
                table = adapt_position_grid(child.table.data, child.grid, new_grid, child.num_extra,
                                            child.token_order)
                fresh = LearnedPositions(new_grid, table.shape[-1], num_extra=child.num_extra,
                                         token_order=child.token_order)
                fresh.table.data.copy_(table)
                setattr(parent, name, fresh)
                logger.info(f"learned positions {tuple(child.grid)} -> {tuple(new_grid)} (time x freq patches) for "
                            f"{target_frames} frames")
                regridded = True
    if strides_change:
        logger.info(f"patch strides -> time {new_t}, freq {new_f}: {new_grid} patches at {target_frames} frames")
    return strides_change or regridded


# ---------------------------------------------------------------------------------------------- layer-wise decay
def layer_scales(model: nn.Module, encoder: nn.Module, decay: float, rule: str = "blocks_only") -> Dict[str, float]:
    """Learning-rate scale of every named parameter of ``model`` (which contains ``encoder``).

    With ``L`` blocks, block ``i`` (0-based) gets ``decay^(L-i)`` under both rules (the last block ``decay``, the
    first ``decay^L``); the head (and a pre-LN final LayerNorm) keep 1. The *stem* (patch projection, positions,
    CLS / extra tokens, the stack's input LayerNorm) keeps 1 under ``blocks_only`` (EAT, SYSTEMS.md 4.7, trap 14)
    and gets ``decay^(L+1)`` under ``beit`` (BEiT / data2vec: the stem is layer 0).
    """
    if rule not in LAYER_DECAY_RULES:
        raise ValueError(f"layer_decay_rule must be one of {LAYER_DECAY_RULES}, got {rule!r}")
    stack = encoder_stack(encoder)
    n = len(stack.blocks)
    block_of = {id(p): i for i, b in enumerate(stack.blocks) for p in b.parameters()}
    top = {id(p) for p in stack.final_norm.parameters()} if stack.final_norm is not None else set()
    in_encoder = {id(p) for p in encoder.parameters()}
    scales = {}
    for name, p in model.named_parameters():
        if id(p) in block_of:
            s = decay ** (n - block_of[id(p)])
        elif id(p) in top or id(p) not in in_encoder:
            s = 1.0
        else:
            s = decay ** (n + 1) if rule == "beit" else 1.0
        scales[name] = float(s)
    return scales


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    """EAT's rule: no weight decay on 1-D parameters (norms) and biases."""
    return p.dim() <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> List[Dict[str, Any]]:
    """torch optimizer groups honouring :meth:`AudioClassifier.lr_scales` and the no-decay rule (for use without
    fairseq, e.g. ``torch.optim.AdamW(param_groups(model, 5e-5, 0.05))``)."""
    scales = model.lr_scales() if hasattr(model, "lr_scales") else {}
    groups: Dict[Tuple[float, bool], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        s = scales.get(name, 1.0)
        nd = no_weight_decay(name, p)
        g = groups.setdefault((s, nd), {"params": [], "lr": lr * s, "lr_scale": s,
                                        "weight_decay": 0.0 if nd else weight_decay})
        g["params"].append(p)
    return list(groups.values())


def tag_parameters(model: nn.Module, scales: Dict[str, float], no_decay_group: bool) -> Dict[str, int]:
    """Mark parameters for fairseq's ``composite`` optimizer (``dynamic_groups: true``): ``p.optim_overrides =
    {"optimizer": {"lr_scale": s}}`` when ``s != 1`` (a fresh dict per parameter: the optimizer writes into it) and,
    with ``no_decay_group``, ``p.param_group = "no_decay"`` for 1-D parameters and biases (their group in the yaml
    sets ``weight_decay: 0``; fairseq's own ``weight_decay_scale`` override is never applied by its composite
    optimizer). Returns the number of tensors per (scale, group) for the log."""
    counts: Dict[str, int] = {}
    for name, p in model.named_parameters():
        s = scales.get(name, 1.0)
        group = NO_DECAY_GROUP if no_decay_group and no_weight_decay(name, p) else "default"
        for attr in ("optim_overrides", "param_group"):
            if hasattr(p, attr):
                delattr(p, attr)
        if s != 1.0:
            p.optim_overrides = {"optimizer": {"lr_scale": s}}
        if group != "default":
            p.param_group = group
        key = f"{group} x{s:.4g}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------- the classifier
@dataclass
class ClassifierConfig:
    model_path: str = field(
        default="",
        metadata={"help": "pretrained checkpoint (mae_ast, ssast or eat; or a maeast_classifier checkpoint, whose "
                          "encoder is reused with a new head)"},
    )
    pooling: str = field(
        default="auto",
        metadata={"help": "clip embedding fed to the head: 'mean' over valid patch tokens, 'cls' (EAT's CLS token; "
                          "SSAST: mean of CLS and DIST), 'auto' = the method's default (EAT cls, others mean)"},
    )
    dropout: Optional[float] = field(
        default=None, metadata={"help": "dropout in the encoder blocks (None = the pretrained model's)"}
    )
    attention_dropout: Optional[float] = field(
        default=None, metadata={"help": "attention-weight dropout (None = the pretrained model's)"}
    )
    activation_dropout: Optional[float] = field(
        default=None, metadata={"help": "dropout after the FFN activation (None = the pretrained model's)"}
    )
    layerdrop: float = field(default=0.0, metadata={"help": "probability of skipping an encoder block (0 here)"})
    drop_path: float = field(
        default=0.0, metadata={"help": "stochastic depth rising linearly from 0 to this rate over the blocks (EAT 0.1)"}
    )
    mixup_alpha: float = field(
        default=0.0,
        metadata={"help": "batch mixup, lambda ~ Beta(alpha, alpha) (EAT: 0.8; SSAST draws from Beta(10, 10)); "
                          "0 = off"},
    )
    mixup_prob: float = field(
        default=1.0, metadata={"help": "probability that a training batch is mixed (EAT 0.9; SSAST's 'mixup' 0.5/0.6)"}
    )
    specaug_freq: float = field(
        default=0.0, metadata={"help": "SpecAugment: max frequency-mask width as a fraction of the mel bins"}
    )
    specaug_time: float = field(
        default=0.0, metadata={"help": "SpecAugment: max time-mask width as a fraction of the (valid) frames"}
    )
    layer_decay: float = field(
        default=1.0, metadata={"help": "layer-wise lr decay (EAT 0.65); needs optimizer._name=composite with "
                                       "dynamic_groups=true (see examples/finetune)"}
    )
    layer_decay_rule: str = field(
        default="blocks_only",
        metadata={"help": "'blocks_only': block i of L gets decay^(L-i), stem and head keep 1 (EAT); 'beit': the "
                          "stem also decays, to decay^(L+1)"},
    )
    no_decay_group: bool = field(
        default=False,
        metadata={"help": "put 1-D parameters and biases in the optimizer group 'no_decay' (define "
                          "optimizer.groups.no_decay with weight_decay 0, as examples/finetune do)"},
    )
    patch_stride_time: int = field(
        default=0, metadata={"help": "fine-tuning patch stride in frames, 0 = the checkpoint's stride (SSAST: 10 for "
                                     "16x16 patches, 1 for 128x2 frames)"}
    )
    patch_stride_freq: int = field(
        default=0, metadata={"help": "fine-tuning patch stride in mel bins, 0 = keep (SSAST: 10; SSAST only)"}
    )
    # filled by the task (label list, front end) and from the pretrained checkpoint when the model is built; kept in
    # the fine-tuned checkpoint so it can be rebuilt without the data or the pretrained checkpoint
    num_classes: int = field(default=0, metadata={"help": "set by the task from its label list"})
    class_names: Optional[List[str]] = field(default=None, metadata={"help": "set by the task: the label list"})
    multi_label: bool = field(default=False, metadata={"help": "set by the task"})
    target_frames: int = field(default=1024, metadata={"help": "set by the task: frames per clip in fine-tuning"})
    encoder_name: str = field(default="", metadata={"help": "set from the checkpoint: mae_ast, ssast or eat"})
    encoder_cfg: Any = field(default=None, metadata={"help": "set from the checkpoint: the pretrained model config"})
    frontend: Any = field(default=None, metadata={"help": "set by the task: the effective front end (a dict)"})


class AudioClassifier(nn.Module):
    """A pretrained encoder + pooling + ``LayerNorm -> Linear`` head, with mixup and SpecAugment in training.

    ``forward(fbank, frame_padding, target)`` returns ``logits`` (B, C) and the (mixed, in training) ``target``.
    """

    def __init__(self, cfg: ClassifierConfig, encoder: nn.Module):
        super().__init__()
        self.cfg = cfg
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {cfg.pooling!r}")
        if cfg.num_classes < 1:
            raise ValueError("num_classes must be >= 1 (the task sets it from labels.txt)")
        self.pooling = cfg.pooling if cfg.pooling != "auto" else ("cls" if cfg.encoder_name == "eat" else "mean")
        self.encoder = encoder
        dim = encoder_stack(encoder).blocks[0].norm1.normalized_shape[0]
        self.head_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, cfg.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.class_names = list(cfg.class_names) if cfg.class_names else [str(i) for i in range(cfg.num_classes)]

    # -- forward ---------------------------------------------------------------------------------------------------
    def pool(self, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.pooling == "cls":
            if feats.get("cls") is None:
                raise ValueError(f"pooling='cls' but the {self.cfg.encoder_name or 'encoder'} has no CLS token; use "
                                 "model.pooling=mean")
            return feats["cls"]
        x, pad = feats["x"], feats.get("padding_mask")
        if pad is None:
            return x.mean(dim=1)
        valid = (~pad).unsqueeze(-1).to(x.dtype)
        return (x * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)

    def forward(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None,
                target: Optional[torch.Tensor] = None, **unused) -> Dict[str, torch.Tensor]:
        c = self.cfg
        if self.training:
            if target is not None and c.mixup_alpha > 0:
                fbank, target, frame_padding, _ = mixup(fbank, target.to(fbank.dtype), c.mixup_alpha, c.mixup_prob,
                                                        frame_padding)
            if c.specaug_freq > 0 or c.specaug_time > 0:
                fbank = spec_augment(fbank, c.specaug_freq, c.specaug_time, frame_padding)
        feats = self.encoder.extract_features(fbank, frame_padding)
        logits = self.head(self.head_norm(self.pool(feats)))
        return {"logits": logits, "target": target}

    @torch.no_grad()
    def probabilities(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None,
                      activation: str = "softmax") -> torch.Tensor:
        logits = self.forward(fbank, frame_padding)["logits"].float()
        return logits.sigmoid() if activation == "sigmoid" else logits.softmax(dim=-1)

    # -- optimisation ----------------------------------------------------------------------------------------------
    def lr_scales(self) -> Dict[str, float]:
        if self.cfg.layer_decay == 1.0:
            return {n: 1.0 for n, _ in self.named_parameters()}
        return layer_scales(self, self.encoder, self.cfg.layer_decay, self.cfg.layer_decay_rule)


# --------------------------------------------------------------------------------------------- checkpoint builders
def _filtered(dc_cls, values: Dict[str, Any]):
    names = {f.name for f in dataclasses.fields(dc_cls)}
    return dc_cls(**{k: v for k, v in (values or {}).items() if k in names})


def build_core(name: str, encoder_cfg: Dict[str, Any]) -> nn.Module:
    from ..checkpoint import CORE_MODELS  # late: checkpoint.py may import this module

    if name not in CORE_MODELS:
        raise ValueError(f"encoder {name!r} is not one of ours ({sorted(CORE_MODELS)})")
    core_cls, cfg_cls = CORE_MODELS[name]
    return core_cls(_filtered(cfg_cls, encoder_cfg))


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A fairseq checkpoint read without running pickled code: :func:`maeast_fairseq.checkpoint.read_checkpoint`
    (``weights_only`` loading that also admits OmegaConf config containers), else plain ``weights_only``."""
    try:
        from ..checkpoint import read_checkpoint
    except ImportError:  # pragma: no cover - older checkpoint module
        return torch.load(path, map_location="cpu", weights_only=True)
    return read_checkpoint(path, map_location="cpu")


def _load_strict(module: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        raise RuntimeError(
            f"{what}: the weights do not match the model built from its config: "
            + (f"missing {show(missing)}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {show(unexpected)}" if unexpected else "")
            + ". Was it written by another version of the model?")


def _prepare_encoder(core: nn.Module, cfg: ClassifierConfig) -> nn.Module:
    drop_pretraining_modules(core)
    apply_patch_strides(core, cfg.patch_stride_time, cfg.patch_stride_freq, cfg.target_frames)
    configure_encoder(core, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                      activation_dropout=cfg.activation_dropout, layerdrop=cfg.layerdrop, drop_path=cfg.drop_path)
    return core


def pretrained_encoder_info(state: Dict[str, Any], path: str = "checkpoint") -> Tuple[str, Dict[str, Any]]:
    """(encoder name, encoder config) of a pretrained or classifier checkpoint dict (``torch.load`` output)."""
    model_cfg = dict((state.get("cfg") or {}).get("model") or {})
    name = model_cfg.get("_name")
    if name == CLASSIFIER_NAME:
        return model_cfg.get("encoder_name"), dict(model_cfg.get("encoder_cfg") or {})
    if not name:
        raise ValueError(f"{path}: no cfg.model._name; is it a fairseq checkpoint of this project?")
    return name, model_cfg


def classifier_from_pretrained(cfg: ClassifierConfig, state: Dict[str, Any], path: str = "checkpoint",
                               model_cls=AudioClassifier):
    """Build a classifier whose encoder holds the weights of a pretrained checkpoint (``torch.load`` dict); fills
    ``cfg.encoder_name`` / ``cfg.encoder_cfg``. A classifier checkpoint gives its encoder (the head is new)."""
    model_cfg = dict((state.get("cfg") or {}).get("model") or {})
    name, encoder_cfg = pretrained_encoder_info(state, path)
    cfg.encoder_name, cfg.encoder_cfg = name, encoder_cfg
    core = build_core(name, encoder_cfg)
    weights = state["model"]
    if model_cfg.get("_name") == CLASSIFIER_NAME:
        # its encoder as it was fine-tuned (strides, position grid); this fine-tuning's strides apply on top
        # (0 keeps that checkpoint's)
        old = (model_cfg.get("patch_stride_time", 0), model_cfg.get("patch_stride_freq", 0))
        drop_pretraining_modules(core)
        apply_patch_strides(core, *old, model_cfg.get("target_frames", cfg.target_frames))
        weights = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
        _load_strict(core, weights, f"{path} (encoder of a {CLASSIFIER_NAME})")
    else:
        _load_strict(core, weights, path)
    removed = drop_pretraining_modules(core)
    _prepare_encoder(core, cfg)
    n = sum(p.numel() for p in core.parameters())
    logger.info(f"loaded the {name} encoder from {path} ({n:,} parameters kept"
                + (f"; dropped {', '.join(removed)}" if removed else "") + ")")
    return model_cls(cfg, core)


def classifier_from_state(state: Dict[str, Any], path: str = "checkpoint") -> Tuple[AudioClassifier, Dict[str, Any]]:
    """Rebuild a fine-tuned classifier from its checkpoint dict (no fairseq, no pretrained checkpoint, no data).
    Returns ``(model in eval mode, the checkpoint's cfg dict)``."""
    full = state.get("cfg") or {}
    model_cfg = dict(full.get("model") or {})
    if model_cfg.get("_name") != CLASSIFIER_NAME:
        raise ValueError(f"{path} is not a {CLASSIFIER_NAME} checkpoint (model {model_cfg.get('_name')!r}); "
                         "fine-tune it first")
    cfg = _filtered(ClassifierConfig, model_cfg)
    core = build_core(cfg.encoder_name, dict(cfg.encoder_cfg or {}))
    drop_pretraining_modules(core)
    model = AudioClassifier(cfg, _prepare_encoder(core, cfg))
    _load_strict(model, state["model"], path)
    return model.eval(), full
