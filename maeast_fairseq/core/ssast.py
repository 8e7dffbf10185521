"""SSAST: Self-Supervised Audio Spectrogram Transformer (Gong et al., AAAI 2022), pure torch.

The method, as in the official code (departures are numbered in ``docs/decisions.md``):

1. the log-mel spectrogram arrives normalised by the front end (``(x - mean) / (2 std)``, AudioSet statistics,
   padded / cut to 1024 frames);
2. it is cut into **frequency-major** tokens (index ``f * n_time + t``): 16x16 patches (``patch`` model: 8 freq x 64
   time = 512 tokens) or 128-bin x 2-frame frames (``frame`` model: 1 x 512), each projected by a linear layer (the
   official strided ``Conv2d``; its weight ``(D, 1, F, T)`` flattens to our ``(D, F*T)`` because a patch vector is
   freq-major inside the patch too);
3. 400 of the 512 tokens are masked (78.1 %, decision D3): square clusters of 3-5 patches for the patch model, uniform
   random for the frame model. A masked token's embedding is **replaced** by a learned ``mask_embed`` — unlike
   MAE-AST the encoder sees every token, masked or not;
4. a CLS and a distillation token (DeiT; one token for ``base_nokd``) are prepended and learned positions
   (trunc-normal 0.02, one per extra token and per grid cell) are added;
5. a pre-LN ViT encoder (12 layers, 768 wide, 12 heads, MLP 3072, LayerNorm eps 1e-6, final LayerNorm) runs over
   all ``2 + 512`` tokens; there is no decoder;
6. at the masked positions two 2-layer heads ``Linear(D, D) -> ReLU -> Linear(D, patch_dim)`` predict the patch:
   ``cpred`` feeds the discriminative InfoNCE term (negatives = the other masked patches of the clip), ``gpred`` the
   generative MSE term; the targets are the raw normalised patches. Loss = InfoNCE + 10 x MSE (criterion
   ``masked_recon_nce``).

``passes`` picks how the two terms are computed (decision D2):

* ``'one'`` (default): one forward pass, one mask, both terms on it — as the loss is written in the paper
  (``L = L_d + lambda L_g``), as MAE-AST does, and at half the cost of ``'two'``;
* ``'two'``: reproduces the official code (``pretrain_joint``): two forward passes with independently drawn masks,
  InfoNCE from the first and MSE from the second. The second mask comes from the same per-clip
  :class:`~maeast_fairseq.core.rng.MaskRNG` (its next streams), so it is still a function of (seed, epoch, clip).

The InfoNCE softmax axis (decision D1) is a criterion setting (``nce_orientation``), not a model one.

Padding (``frame_padding``, True = padded frame): a token whose frames are all padding is never masked, never
scored, never a negative, and no token attends to it. (The official code treats padding as data; decision D18.)

Inputs of other lengths (downstream use) take the learned positions of the first time columns when shorter than
``target_frames`` (``position_crop='start'``; SSAST's fine-tuning centre crop is ``'center'``; decision D19) and a
bilinear interpolation of the grid when longer.

Masking differs from the official code where that code is biased (decision D4, :func:`~.masking.cluster_mask`):
clusters are clipped in 2-D instead of wrapping across row ends, token 0 can be masked, and exactly 400 tokens are
masked without the ``list(set)[:400]`` truncation bias.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

from .base import CoreModel, masked_patch_output
from .blocks import TransformerStack
from .masking import cluster_mask, random_mask
from .positions import LearnedPositions
from .rng import MaskRNG
from .tokenizer import PatchEmbed, Tokenizer


@dataclass
class SsastConfig:
    patch_time: int = field(
        default=16, metadata={"help": "patch size in frames (16 = patch model, 2 = frame model: SSAST's 128x2 frame)"}
    )
    patch_freq: int = field(default=16, metadata={"help": "patch size in mel bins (16 = patch model, 128 = frame model)"})
    num_mel_bins: int = field(default=128, metadata={"help": "mel bins of the input spectrogram"})
    target_frames: int = field(
        default=1024,
        metadata={"help": "frames of the pretraining input: sizes the learned position grid (1024 -> 64 x 8 patches); "
                          "other lengths crop (shorter) or interpolate (longer) the grid"},
    )
    encoder_layers: int = field(default=12, metadata={"help": "encoder depth (DeiT-B: 12)"})
    embed_dim: int = field(default=768, metadata={"help": "encoder width (base 768, small 384, tiny 192)"})
    ffn_dim: int = field(default=3072, metadata={"help": "encoder MLP width (4 x embed_dim in DeiT)"})
    num_heads: int = field(default=12, metadata={"help": "attention heads (base 12, small 6, tiny 3)"})
    num_extra_tokens: int = field(
        default=2, metadata={"help": "tokens prepended to the patches: 2 = CLS + distillation (DeiT, SSAST default), "
                                     "1 = CLS only (base_nokd)"}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout after the positions and in the layers (SSAST: 0)"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights (SSAST: 0)"})
    norm_eps: float = field(default=1e-6, metadata={"help": "LayerNorm epsilon (timm ViT: 1e-6)"})
    position_crop: str = field(
        default="start",
        metadata={"help": "positions of an input shorter than target_frames: 'start' = the first time columns of the "
                          "grid (where short clips sit in pretraining, which pads at the end; a clip's features then "
                          "do not depend on how far its batch is padded); 'center' = SSAST fine-tuning's centre "
                          "crop. Longer inputs interpolate the grid (bilinear) either way"},
    )
    mask_ratio: float = field(
        default=400 / 512, metadata={"help": "fraction of (valid) tokens masked: 400/512 = 0.78125 (SSAST)"}
    )
    mask_type: str = field(
        default="cluster",
        metadata={"help": "'cluster': square clusters of 3-5 patches (patch model); 'random': uniform (frame model)"},
    )
    passes: str = field(
        default="one",
        metadata={"help": "'one': both loss terms on one forward pass and mask (paper's joint loss, half the cost); "
                          "'two': InfoNCE and MSE from two passes with independent masks (official code)"},
    )


def _prediction_head(dim: int, out_dim: int) -> nn.Sequential:
    """SSAST's ``cpredlayer`` / ``gpredlayer``: ``Linear(D, D) -> ReLU -> Linear(D, patch_dim)``."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out_dim))


class Ssast(CoreModel):
    pretraining_only = ("mask_embed", "cpred", "gpred")
    default_pooling = "mean"  # of the patch tokens; 'cls' = the mean of CLS and DIST
    head_norm_eps = 1e-5  # the official fine-tuning head: nn.LayerNorm's default

    def __init__(self, cfg: SsastConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.mask_type not in ("cluster", "random"):
            raise ValueError(f"mask_type must be 'cluster' or 'random', got {cfg.mask_type!r}")
        if cfg.passes not in ("one", "two"):
            raise ValueError(f"passes must be 'one' or 'two', got {cfg.passes!r}")
        if cfg.position_crop not in ("start", "center"):
            raise ValueError(f"position_crop must be 'start' or 'center', got {cfg.position_crop!r}")
        if cfg.num_extra_tokens < 1:
            raise ValueError(f"num_extra_tokens must be 1 (CLS) or 2 (CLS + DIST), got {cfg.num_extra_tokens}")
        self.tokenizer = Tokenizer((cfg.patch_time, cfg.patch_freq), num_mel_bins=cfg.num_mel_bins,
                                   token_order="freq_major")
        grid = self.tokenizer.grid(cfg.target_frames)
        if grid[0] < 1:
            raise ValueError(f"target_frames={cfg.target_frames} is shorter than one patch ({cfg.patch_time} frames)")
        d = cfg.embed_dim
        # (1) patch embedding: PyTorch's default Linear init = the default init of SSAST's Conv2d (same fan-in)
        self.patch_embed = PatchEmbed(self.tokenizer, d)
        # (2) learned mask embedding, xavier-normal
        self.mask_embed = nn.Parameter(torch.empty(1, 1, d))
        nn.init.xavier_normal_(self.mask_embed)
        # (3) CLS (+ DIST) tokens and learned positions over extra tokens + grid, trunc-normal 0.02
        self.extra_tokens = nn.Parameter(torch.empty(1, cfg.num_extra_tokens, d))
        nn.init.trunc_normal_(self.extra_tokens, std=0.02)
        self.positions = LearnedPositions(grid, d, num_extra=cfg.num_extra_tokens, token_order="freq_major")
        # (4) pre-LN encoder with a final LayerNorm; timm init: Linear trunc-normal 0.02 / bias 0, LayerNorm 1 / 0
        self.encoder = TransformerStack(cfg.encoder_layers, d, cfg.num_heads, cfg.ffn_dim, norm_first=True,
                                        qkv_bias=True, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                                        norm_eps=cfg.norm_eps)
        for m in self.encoder.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # (5) prediction heads (PyTorch default init, as in SSAST)
        self.cpred = _prediction_head(d, self.tokenizer.patch_dim)  # discriminative: InfoNCE
        self.gpred = _prediction_head(d, self.tokenizer.patch_dim)  # generative: MSE

    # -- pieces ------------------------------------------------------------------------------------------------
    def embed(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None):
        """Tokenise + project: tokens (B, N, D), patches (B, N, P) = the targets, token padding (B, N) or None."""
        tokens, patches = self.patch_embed(fbank)
        token_padding = self.tokenizer.token_padding(frame_padding, self.tokenizer.n_time(fbank.shape[1]))
        return tokens, patches, token_padding

    def make_mask(self, rng: MaskRNG, n_time: int, token_padding: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, N) bool, True = masked; exactly ``mask_ratio`` of each clip's valid tokens (400 of 512)."""
        c = self.cfg
        if c.mask_type == "random":
            return random_mask(rng, None, n_time * self.tokenizer.n_freq, c.mask_ratio, padding_mask=token_padding)
        return cluster_mask(rng, (n_time, self.tokenizer.n_freq), c.mask_ratio, token_order="freq_major",
                            padding_mask=token_padding)

    def position_table(self, n_time: int) -> torch.Tensor:
        """(1, E + n_freq * n_time, D) positions for ``n_time`` time patches (freq-major after the extra tokens)."""
        n_t, n_f = self.positions.grid
        if n_time < n_t and self.cfg.position_crop == "start":
            e = self.cfg.num_extra_tokens
            table = self.positions.table
            grid = table[:, e:].reshape(1, n_f, n_t, -1)[:, :, :n_time]
            return torch.cat([table[:, :e], grid.reshape(1, n_f * n_time, -1)], dim=1)
        return self.positions((n_time, n_f))  # same grid: the table; shorter: centre crop; longer: bilinear

    def encode(self, tokens: torch.Tensor, token_padding: Optional[torch.Tensor], n_time: int, *,
               return_hidden: bool = False):
        """[extra tokens; tokens] + positions through the encoder. Returns (out (B, E+N, D), hidden states)."""
        b = tokens.shape[0]
        e = self.cfg.num_extra_tokens
        x = torch.cat([self.extra_tokens.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        x = x + self.position_table(n_time).to(x.dtype)
        padding = None
        if token_padding is not None:
            padding = torch.cat([token_padding.new_zeros(b, e), token_padding], dim=1)
        x, hidden, _ = self.encoder(x, padding, return_hidden=return_hidden)
        return x, hidden

    def _masked_pass(self, tokens, patches, mask, token_padding, n_time) -> Dict[str, torch.Tensor]:
        """One pretraining pass for one mask: predictions and targets at the masked positions."""
        x = torch.where(mask.unsqueeze(-1), self.mask_embed.to(tokens.dtype), tokens)
        y, _ = self.encode(x, token_padding, n_time)
        y = y[:, self.cfg.num_extra_tokens:]
        return masked_patch_output(y, patches, mask, token_padding, pred_head=self.gpred, nce_pred_head=self.cpred)

    # -- pretraining ----------------------------------------------------------------------------------------------
    def forward(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None,
                mask_rng: Optional[MaskRNG] = None, mask=None) -> Dict:
        """fbank: (B, T, F) normalised log-mel; frame_padding: (B, T) True = padding (None = every frame is data).
        ``mask``: an explicit (B, N) bool mask (True = masked) instead of drawing one (e.g. to replay a recorded
        mask); with ``passes='two'`` a pair ``(nce mask, mse mask)``.

        Returns (keys: :mod:`~maeast_fairseq.core.base`) ``pred`` (gpred) / ``nce_pred`` (cpred) predictions and
        ``target`` patches at the masked positions, each (B, M, P), ``target_valid`` (B, M), the token ``mask``
        (B, N) and ``padding_mask`` (B, N) or None. With ``passes='two'`` the top-level keys are those of the first
        pass and ``terms = {"nce": pass 1, "mse": pass 2}`` tells the criterion which pass feeds which term.
        """
        b = fbank.shape[0]
        tokens, patches, token_padding = self.embed(fbank, frame_padding)
        n_time = self.tokenizer.n_time(fbank.shape[1])
        rng = mask_rng.to(fbank.device) if mask_rng is not None else MaskRNG.from_generator(None, b, fbank.device)
        given = list(mask) if isinstance(mask, (tuple, list)) else ([mask] if mask is not None else [])

        def next_mask():
            if not given:
                return self.make_mask(rng, n_time, token_padding)
            m = given.pop(0).to(device=fbank.device, dtype=torch.bool)
            if tuple(m.shape) != tuple(tokens.shape[:2]):
                raise ValueError(f"mask must be (batch, tokens) = {tuple(tokens.shape[:2])}, got {tuple(m.shape)}")
            return m if token_padding is None else m & ~token_padding

        out = self._masked_pass(tokens, patches, next_mask(), token_padding, n_time)
        if self.cfg.passes == "two":
            # the official joint task: a second, independently masked forward pass for the generative term
            second = self._masked_pass(tokens, patches, next_mask(), token_padding, n_time)
            out = dict(out, terms={"nce": dict(out), "mse": second})
        return out

    # -- downstream -----------------------------------------------------------------------------------------------
    def extract_features(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None) -> Dict:
        """Encoder on all tokens, no masking (any input length: positions are cropped / interpolated, see
        ``position_crop``).

        Returns ``x`` (B, N, D): the patch tokens after the final LayerNorm (SSAST's ``ft_avgtok`` pools these);
        ``cls`` (B, D): the mean of the CLS / DIST outputs (``ft_cls``); ``hidden_states``: L+1 tensors (the encoder
        input, then every layer's output, the last one after the final LayerNorm), **patch tokens only** (the extra
        tokens are sliced off so every entry lines up with ``padding_mask``); ``padding_mask`` (B, N) or None.
        """
        tokens, _, token_padding = self.embed(fbank, frame_padding)
        e = self.cfg.num_extra_tokens
        y, hidden = self.encode(tokens, token_padding, self.tokenizer.n_time(fbank.shape[1]), return_hidden=True)
        return {
            "x": y[:, e:],
            "cls": y[:, :e].mean(dim=1),
            "hidden_states": [h[:, e:] for h in hidden],
            "padding_mask": token_padding,
        }
