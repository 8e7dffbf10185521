"""Fine-tuning a pretrained encoder (MAE-AST, SSAST or EAT) for clip classification, in pure torch.

This module holds the fine-tuning recipe that is not fairseq plumbing, so it can be tested and used without fairseq
(the ``maeast_classifier`` fairseq model is :class:`AudioClassifier` + a thin shell; ``maeast-predict`` rebuilds it
from a checkpoint with no fairseq import):

* encoder surgery (:func:`prepare_encoder`): drop the pretraining-only modules (the core model's own
  ``remove_pretraining_modules``), dropout / layerdrop overrides and drop path rising linearly ``0 .. rate`` over
  the blocks (:meth:`~maeast_fairseq.core.blocks.TransformerStack.configure`), SSAST's overlapping fine-tuning
  patches with its positional-embedding crop / interpolation (:func:`apply_patch_strides`);
* layer-wise learning-rate decay (:func:`layer_scales`): ``blocks_only`` (EAT: block ``i`` of ``L`` gets
  ``decay^(L-i)``, the stem keeps 1, decision D14) or ``beit`` (the stem also decays, to ``decay^(L+1)``);
  :func:`param_groups` turns them into torch optimizer groups, :func:`tag_parameters` into fairseq's per-parameter
  ``optim_overrides`` for its ``composite`` optimizer;
* :class:`AudioClassifier`: encoder + pooling (``mean`` over valid tokens or ``cls``) + ``LayerNorm -> Linear`` head
  (trunc-normal 0.02, bias 0), with mixup and SpecAugment (:mod:`~maeast_fairseq.core.augment`) in training.

Elsewhere: the metrics in :mod:`~maeast_fairseq.core.metrics`; the checkpoint builders
(``classifier_from_pretrained`` / ``classifier_from_state``) beside the strict loader in
:mod:`maeast_fairseq.checkpoint`.

Conventions: targets are float ``(B, C)`` multi-hot rows (one-hot for single-label data), so mixup works the same
for both.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .augment import mixup, spec_augment
from .base import POOLINGS
from .blocks import TransformerStack
from .positions import LearnedPositions
from .tokenizer import Tokenizer

logger = logging.getLogger(__name__)

#: ``model.pooling`` values: 'auto' = the encoder's default (``CoreModel.default_pooling``)
CLASSIFIER_POOLINGS = ("auto",) + POOLINGS
LAYER_DECAY_RULES = ("blocks_only", "beit")
#: optimizer group of the parameters without weight decay (1-D parameters and biases, :func:`no_weight_decay`)
NO_DECAY_GROUP = "no_decay"
CLASSIFIER_NAME = "maeast_classifier"


# --------------------------------------------------------------------------------------------- encoder surgery
def encoder_stack(core: nn.Module) -> TransformerStack:
    """The one transformer stack of an encoder (after ``remove_pretraining_modules()``)."""
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
    encoder_stack(core).configure(dropout=dropout, attention_dropout=attention_dropout,
                                  activation_dropout=activation_dropout, layerdrop=layerdrop, drop_path=drop_path)


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


def prepare_encoder(core: nn.Module, cfg: "ClassifierConfig") -> nn.Module:
    """A core model as the classifier's encoder: pretraining-only modules dropped, ``cfg``'s patch strides (and
    position grid) applied, its dropout / layerdrop / drop-path set. Returns ``core``."""
    core.remove_pretraining_modules()
    apply_patch_strides(core, cfg.patch_stride_time, cfg.patch_stride_freq, cfg.target_frames)
    configure_encoder(core, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                      activation_dropout=cfg.activation_dropout, layerdrop=cfg.encoder_layerdrop,
                      drop_path=cfg.drop_path)
    return core


# ---------------------------------------------------------------------------------------------- layer-wise decay
def layer_scales(model: nn.Module, encoder: nn.Module, decay: float, rule: str = "blocks_only") -> Dict[str, float]:
    """Learning-rate scale of every named parameter of ``model`` (which contains ``encoder``).

    With ``L`` blocks, block ``i`` (0-based) gets ``decay^(L-i)`` under both rules (the last block ``decay``, the
    first ``decay^L``); the head (and a pre-LN final LayerNorm) keep 1. The *stem* (patch projection, positions,
    CLS / extra tokens, the stack's input LayerNorm) keeps 1 under ``blocks_only`` (EAT, decision D14)
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
    encoder_layerdrop: float = field(default=0.0, metadata={"help": "probability of skipping an encoder block (0 here)"})
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
    head_norm_eps: Optional[float] = field(
        default=None,
        metadata={"help": "epsilon of the head's LayerNorm; None = the method's own (the core class's "
                          "head_norm_eps: SSAST 1e-5, EAT 1e-6, MAE-AST 1e-6)"},
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

    #: top-level modules beside ``encoder`` (what tells a classifier's state dict from a pretraining model's)
    head_modules = ("head_norm", "head")

    def __init__(self, cfg: ClassifierConfig, encoder: nn.Module):
        super().__init__()
        self.cfg = cfg
        if cfg.pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"pooling must be one of {CLASSIFIER_POOLINGS}, got {cfg.pooling!r}")
        if cfg.num_classes < 1:
            raise ValueError("num_classes must be >= 1 (the task sets it from labels.txt)")
        self.pooling = cfg.pooling if cfg.pooling != "auto" else getattr(encoder, "default_pooling", "mean")
        self.encoder = encoder
        dim = encoder_stack(encoder).blocks[0].norm1.normalized_shape[0]
        eps = cfg.head_norm_eps if cfg.head_norm_eps is not None else getattr(encoder, "head_norm_eps", 1e-6)
        self.head_norm = nn.LayerNorm(dim, eps=float(eps))
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
