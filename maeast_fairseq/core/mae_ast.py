"""MAE-AST: Masked Autoencoding Audio Spectrogram Transformer (Baade et al., Interspeech 2022), pure torch.

The method, as in the official code (departures are numbered in ``docs/decisions.md``):

1. normalise the log-mel spectrogram inside the model: ``BatchNorm(affine=False) * 0.5`` (``input_norm``);
2. cut it into time-major tokens: 16x16 patches (``patch`` model) or 2-frame x 128-bin frames (``frame`` model) and
   project each with a linear layer;
3. mask 75 % of the tokens: cluster masking (square clusters of 3-5 patches: the official ``chunk_mask``) for patches,
   uniform random masking for frames;
4. add 1-D sinusoidal positions (over the flattened token index) and drop the masked tokens;
5. encode the visible tokens only with a post-LN transformer (12 or 6 layers);
6. put the encoder outputs back in place, fill the masked slots with a learned mask embedding, add the positions
   again, and run a shallow (2-layer) post-LN transformer decoder over the full sequence;
7. at the masked positions, a reconstruction head and a classification head (each ``Linear(D, patch_dim)``) feed the
   joint objective ``1 x InfoNCE + 10 x MSE`` (see :mod:`maeast_fairseq.core.losses`).

With a token padding mask, padded tokens are never masked, never scored and never used as InfoNCE negatives, and
attention ignores them. Which tokens count as padding is ``token_padding_rule``: ``'any'`` (default for models
trained here: a token with any padded frame is padding, so a clip's tokens do not depend on how far its batch is
padded) or ``'all'`` (the official code: only a token whose frames are all padding; the default of models converted
from the official checkpoints, whose last partial token then holds zero-padded frames as data).

Initialisation (``init``): ``'bert'`` (default) applies the BERT/fairseq init N(0, 0.02) to every Linear layer;
``'official'`` reproduces the official code, where the patch projection and the two prediction heads keep
PyTorch's default Linear initialisation (for from-scratch reproduction of the released runs).

Input dropout (``dropout_input``) drops the token embeddings only; the positions are added after it, as the
official code does.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

from .base import CoreModel, masked_patch_output
from .blocks import Dropout, TransformerStack, init_bert_params
from .masking import cluster_mask, gather_visible, random_mask, scatter_back
from .norm import SpectrogramBatchNorm
from .positions import sinusoid_1d
from .rng import MaskRNG
from .tokenizer import PatchEmbed, Tokenizer


@dataclass
class MaeAstConfig:
    patch_time: int = field(default=16, metadata={"help": "patch size in frames (16 = patch model, 2 = frame model)"})
    patch_freq: int = field(default=16, metadata={"help": "patch size in mel bins (16 = patch model, 128 = frame model)"})
    num_mel_bins: int = field(default=128, metadata={"help": "mel bins of the input spectrogram"})
    input_norm: str = field(
        default="batchnorm",
        metadata={"help": "'batchnorm': MAE-AST's in-model BatchNorm(affine=False) x 0.5; 'none': the front end "
                          "already normalised with dataset statistics (task.norm = dataset)"},
    )
    input_norm_sync: bool = field(
        default=True,
        metadata={"help": "with several processes (torch.distributed), the input BatchNorm takes the moments of the "
                          "global batch, so N processes normalise as one (decision D25); false: per-process batch "
                          "statistics, as the official code"},
    )
    encoder_layers: int = field(default=12, metadata={"help": "encoder depth (the paper also trains 6)"})
    embed_dim: int = field(default=768, metadata={"help": "encoder width"})
    ffn_dim: int = field(default=3072, metadata={"help": "encoder feed-forward width"})
    num_heads: int = field(default=12, metadata={"help": "encoder attention heads"})
    decoder_layers: int = field(default=2, metadata={"help": "decoder depth"})
    decoder_embed_dim: int = field(default=768, metadata={"help": "decoder width (a projection is added if it differs)"})
    decoder_ffn_dim: int = field(default=3072, metadata={"help": "decoder feed-forward width"})
    decoder_heads: int = field(default=12, metadata={"help": "decoder attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the transformer layers"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    dropout_input: float = field(default=0.1, metadata={"help": "dropout on the token embeddings (masked training only)"})
    encoder_layerdrop: float = field(default=0.05, metadata={"help": "probability of skipping an encoder layer"})
    decoder_layerdrop: float = field(default=0.0, metadata={"help": "probability of skipping a decoder layer"})
    mask_ratio: float = field(default=0.75, metadata={"help": "fraction of (valid) tokens masked"})
    mask_type: str = field(
        default="cluster",
        metadata={"help": "'cluster': square clusters of 3-5 patches (patch model; the official chunk_mask); "
                          "'random': uniform (frame model)"},
    )
    mask_same_for_batch: bool = field(
        default=False,
        metadata={"help": "one mask for the whole batch, as the official chunk_mask (only without padding); "
                          "default: a mask per clip"},
    )
    token_padding_rule: str = field(
        default="any",
        metadata={"help": "'any': a token is padding when any of its frames is (a clip's tokens do not depend on its "
                          "batch); 'all': only when all its frames are (the official code; default of converted "
                          "official checkpoints)"},
    )
    init: str = field(
        default="bert",
        metadata={"help": "'bert': N(0, 0.02) init of every Linear layer; 'official': the patch projection and the "
                          "prediction heads keep PyTorch's default Linear init, as the official code (reproduction)"},
    )


class MaeAst(CoreModel):
    pretraining_only = ("decoder", "decoder_mask_embed", "post_encoder_proj", "reconstruction_head",
                        "classification_head")
    default_pooling = "mean"

    def __init__(self, cfg: MaeAstConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = Tokenizer((cfg.patch_time, cfg.patch_freq), num_mel_bins=cfg.num_mel_bins,
                                   token_order="time_major")
        if cfg.input_norm not in ("batchnorm", "none"):
            raise ValueError(f"input_norm must be 'batchnorm' or 'none', got {cfg.input_norm!r}")
        if cfg.mask_type not in ("cluster", "random"):
            renamed = " ('chunk' was renamed 'cluster')" if cfg.mask_type == "chunk" else ""
            raise ValueError(f"mask_type must be 'cluster' or 'random', got {cfg.mask_type!r}{renamed}")
        if cfg.token_padding_rule not in ("any", "all"):
            raise ValueError(f"token_padding_rule must be 'any' or 'all', got {cfg.token_padding_rule!r}")
        if cfg.init not in ("bert", "official"):
            raise ValueError(f"init must be 'bert' or 'official', got {cfg.init!r}")
        self.input_norm = (SpectrogramBatchNorm(sync=cfg.input_norm_sync) if cfg.input_norm == "batchnorm"
                           else None)
        self.patch_embed = PatchEmbed(self.tokenizer, cfg.embed_dim)
        self.dropout_input = Dropout(cfg.dropout_input)
        common = dict(norm_first=False, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                      activation_dropout=cfg.activation_dropout)
        self.encoder = TransformerStack(cfg.encoder_layers, cfg.embed_dim, cfg.num_heads, cfg.ffn_dim,
                                        layerdrop=cfg.encoder_layerdrop, **common)
        self.post_encoder_proj = (nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
                                  if cfg.decoder_embed_dim != cfg.embed_dim else nn.Identity())
        self.decoder = TransformerStack(cfg.decoder_layers, cfg.decoder_embed_dim, cfg.decoder_heads,
                                        cfg.decoder_ffn_dim, layerdrop=cfg.decoder_layerdrop, **common)
        self.decoder_mask_embed = nn.Parameter(torch.empty(cfg.decoder_embed_dim).uniform_())
        self.reconstruction_head = nn.Linear(cfg.decoder_embed_dim, self.tokenizer.patch_dim)
        self.classification_head = nn.Linear(cfg.decoder_embed_dim, self.tokenizer.patch_dim)
        init_bert_params(self)
        if cfg.init == "official":  # the official code leaves these at PyTorch's default Linear init
            for m in (self.patch_embed.proj, self.reconstruction_head, self.classification_head):
                m.reset_parameters()

    # -- pieces ------------------------------------------------------------------------------------------------
    def _positions(self, n: int, dim: int, like: torch.Tensor, token_padding: Optional[torch.Tensor]):
        pos = sinusoid_1d(n, dim, device=like.device, dtype=like.dtype)[None]
        if token_padding is not None:
            pos = pos * (~token_padding)[..., None].to(like.dtype)  # zero at padded positions, as MAE-AST
        return pos

    def embed(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None):
        """Normalise + tokenise: returns (tokens (B,N,D), patches (B,N,P) = the targets, token_padding (B,N))."""
        x = self.input_norm(fbank, frame_padding) if self.input_norm is not None else fbank
        tokens, patches = self.patch_embed(x)
        token_padding = self.token_padding(frame_padding, self.tokenizer.n_time(x.shape[1]))
        return tokens, patches, token_padding

    def token_padding(self, frame_padding: Optional[torch.Tensor], n_time: int) -> Optional[torch.Tensor]:
        """(B, T) frame padding -> (B, N) token padding under ``token_padding_rule`` (trailing padding)."""
        if frame_padding is None or self.cfg.token_padding_rule == "any":
            return self.tokenizer.token_padding(frame_padding, n_time)
        tok = self.tokenizer
        valid_frames = (~frame_padding).sum(1)
        starts = torch.arange(n_time, device=frame_padding.device) * tok.stride_time
        pad_t = starts[None, :] >= valid_frames[:, None]  # every frame of the token is padding
        return pad_t[:, :, None].expand(-1, -1, tok.n_freq).reshape(pad_t.shape[0], -1)

    def make_mask(self, rng: MaskRNG, n_time: int, token_padding: Optional[torch.Tensor], batch: int):
        c = self.cfg
        if c.mask_type == "random":
            return random_mask(rng, batch, n_time * self.tokenizer.n_freq, c.mask_ratio, padding_mask=token_padding)
        same = c.mask_same_for_batch and token_padding is None
        return cluster_mask(rng, (n_time, self.tokenizer.n_freq), c.mask_ratio, token_order="time_major",
                            padding_mask=token_padding, same_for_batch=same)

    # -- pretraining ----------------------------------------------------------------------------------------------
    def forward(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None,
                mask_rng: Optional[MaskRNG] = None, mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """fbank: (B, T, F) log-mel; frame_padding: (B, T) True = padding (None = every frame is data); ``mask``
        (B, N) bool, True = masked: an explicit mask instead of drawing one (e.g. to replay a recorded mask).

        Returns (keys: :mod:`~maeast_fairseq.core.base`) the ``pred`` (reconstruction head) / ``nce_pred``
        (classification head) predictions and the ``target`` patches at the masked positions, each (B, M, P), with
        ``target_valid`` (B, M) (rows have different numbers of masked tokens when clips are padded), the token
        ``mask`` (B, N) and ``padding_mask`` (B, N) or None.
        """
        b = fbank.shape[0]
        tokens, patches, token_padding = self.embed(fbank, frame_padding)
        n = tokens.shape[1]
        if mask is None:
            rng = mask_rng.to(fbank.device) if mask_rng is not None else MaskRNG.from_generator(None, b, fbank.device)
            mask = self.make_mask(rng, self.tokenizer.n_time(fbank.shape[1]), token_padding, b)
        elif tuple(mask.shape) != (b, n):
            raise ValueError(f"mask must be (batch, tokens) = {(b, n)}, got {tuple(mask.shape)}")
        mask = mask.to(device=fbank.device, dtype=torch.bool)
        if token_padding is not None:
            mask = mask & ~token_padding

        # input dropout on the embeddings only, positions added after (as the official code)
        x = self.dropout_input(tokens) + self._positions(n, tokens.shape[-1], tokens, token_padding)
        x_vis, ids_keep, vis_padding, _ = gather_visible(x, mask, token_padding)
        x_vis, _, _ = self.encoder(x_vis, vis_padding)

        y = scatter_back(self.post_encoder_proj(x_vis), ids_keep, vis_padding, n,
                         self.decoder_mask_embed.to(x_vis.dtype))
        y = y + self._positions(n, y.shape[-1], y, token_padding)
        y, _, _ = self.decoder(y, token_padding)

        return masked_patch_output(y, patches, mask, token_padding, pred_head=self.reconstruction_head,
                                   nce_pred_head=self.classification_head)

    # -- downstream -----------------------------------------------------------------------------------------------
    def extract_features(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None) -> Dict:
        """Encoder on all tokens (no masking): ``x`` (B, N, D), ``hidden_states`` (L+1 tensors), ``padding_mask``."""
        tokens, _, token_padding = self.embed(fbank, frame_padding)
        x = tokens + self._positions(tokens.shape[1], tokens.shape[-1], tokens, token_padding)
        x, hidden, _ = self.encoder(x, token_padding, return_hidden=True)
        return {"x": x, "hidden_states": hidden, "padding_mask": token_padding}
