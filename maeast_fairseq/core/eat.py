"""EAT: Efficient Audio Transformer (Chen et al., IJCAI 2024), pure torch.

The method, as in the official code (where paper and code disagree, the decision is noted: ``docs/decisions.md``):

1. the front end gives a normalised log-mel spectrogram ``(B, T, 128)``, 1024 frames per clip (the task's ``fixed``
   length policy); it is cut into 16x16 patches, **time-major** (index ``t * 8 + f``: a 64 x 8 grid) and each patch
   is projected linearly (the official strided ``Conv2d``, as a matrix);
2. fixed 2-D sin-cos positions are added (first half of the dims = frequency index, second half = time index; a
   table of ``max_time_patches`` x 8 sliced to the clip's length -- decision D10: the paper says 1-D, the code is 2-D);
3. **multi-mask**: every clip is cloned ``clones`` (16) times and every clone gets its own inverse 5x5 block mask
   keeping exactly 20 % of the tokens (102 of 512; :func:`~maeast_fairseq.core.masking.inverse_block_mask`);
4. the **student** encoder sees only the visible tokens of each clone plus a learned CLS token (no position): a
   post-LN transformer with a LayerNorm on its input (decision D12);
5. the **decoder** puts the encoded tokens back in place, fills the masked slots with fresh ``N(0, 0.01^2)`` noise
   (no learned mask token, no positions: decision D13) and runs a light 2-D CNN over the time x frequency grid;
6. the **teacher** -- an exponential moving average of the student's encoder (its own patch embedding, positions,
   CLS, input norm and blocks; not the decoder; decision D10) -- encodes the *unmasked* clip once (not per clone); the
   targets are its per-layer FFN outputs (before the residual) on the patch tokens, instance-normalised, averaged
   over the top K layers and layer-normalised (:func:`~maeast_fairseq.core.losses.eat_targets`);
7. the Utterance-Frame Objective: frame MSE between the decoder outputs and the targets at the masked positions,
   plus the utterance MSE between the student's CLS output and the mean of the clip's targets, with EAT's exact
   scaling (decision D11, :func:`~maeast_fairseq.core.losses.ufo_loss`).

The teacher is a real submodule (``teacher``): it is saved in and restored from checkpoints with the student, its
parameters never require gradients (so fairseq never hands them to the optimiser) and it always runs in ``eval()``.
It keeps float32 storage even when the model is cast to half precision (``model.half()`` under fairseq ``--fp16``):
an EMA with a decay of 0.9998-0.99999 moves the weights by less than half precision resolves.
:meth:`Eat.ema_step` performs one EMA update; the caller (the fairseq model's ``set_num_updates``) decides when.

Numerics: under autocast (fairseq ``--amp``, or ``torch.autocast`` on CPU/GPU with bfloat16 or float16) the student
and decoder run in the low precision, and so do the teacher's matrix products on its float32 weights and the float32
input (``teacher_autocast``, default; false runs the teacher with autocast disabled, entirely in float32; with a
half-precision model, ``--fp16``, its matmuls run in half precision on GPU, see :meth:`Eat.forward_teacher`); the targets, their statistics and the UFO terms are always computed in float32
(:mod:`~maeast_fairseq.core.losses`).
``target_var`` is watched by the criterion ``eat_ufo`` (its ``TargetCollapseMonitor``): a teacher whose targets
collapse to near-zero variance is logged (rate-limited) and counted (``target_collapsed`` in the train log).

Padding (shorter clips under the ``fixed`` policy with ``padding_mask: true``): padded tokens are never masked, never
visible, ignored by attention (student and teacher), left out of the targets' statistics and of the utterance
target mean, and zeroed in the decoder (so the convolutions see zeros, as at the grid's edge).
"""

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import CoreModel
from .blocks import TransformerStack, init_bert_params
from .losses import eat_targets, regression_var
from .masking import gather_visible, inverse_block_mask, multi_mask, scatter_back
from .positions import sincos_2d
from .rng import MaskRNG
from .tokenizer import PatchEmbed, Tokenizer


@dataclass
class EatConfig:
    # -- tokens ---------------------------------------------------------------------------------------------------
    patch_time: int = field(default=16, metadata={"help": "patch size in frames"})
    patch_freq: int = field(default=16, metadata={"help": "patch size in mel bins (128 / 16 = 8 frequency patches)"})
    num_mel_bins: int = field(default=128, metadata={"help": "mel bins of the input spectrogram"})
    max_time_patches: int = field(
        default=768,
        metadata={"help": "time rows of the fixed 2-D sin-cos position table (768 x 16 frames ~ 123 s); the table "
                          "is sliced to the clip's length"},
    )
    # -- encoder (student; the teacher is its EMA copy) -----------------------------------------------------------
    embed_dim: int = field(default=768, metadata={"help": "encoder width"})
    encoder_layers: int = field(default=12, metadata={"help": "encoder blocks (depth)"})
    num_heads: int = field(default=12, metadata={"help": "attention heads"})
    ffn_dim: int = field(default=3072, metadata={"help": "encoder feed-forward width (4 x embed_dim in EAT)"})
    norm_eps: float = field(default=1e-6, metadata={"help": "LayerNorm epsilon of the encoder"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the blocks and on the encoder input"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth, rising linearly to this rate"})
    encoder_layerdrop: float = field(default=0.0, metadata={"help": "probability of skipping a student block"})
    # -- multi-mask -------------------------------------------------------------------------------------------------
    clones: int = field(default=16, metadata={"help": "masked copies of each clip (each with its own mask)"})
    mask_ratio: float = field(default=0.8, metadata={"help": "fraction of the (valid) tokens masked (exact count)"})
    mask_prob_adjust: float = field(
        default=0.07, metadata={"help": "extra keep probability used to place the block centres (data2vec 2.0)"}
    )
    mask_block: int = field(default=5, metadata={"help": "side of the square kept blocks, in patches (5 = 5x5)"})
    # -- decoder (student only) -------------------------------------------------------------------------------------
    decoder_embed_dim: int = field(default=768, metadata={"help": "decoder width (channels of its convolutions)"})
    decoder_layers: int = field(default=6, metadata={"help": "conv layers of the decoder"})
    decoder_kernel: int = field(default=3, metadata={"help": "conv kernel (odd)"})
    decoder_groups: int = field(default=16, metadata={"help": "conv groups"})
    mask_noise_std: float = field(default=0.01, metadata={"help": "std of the noise filling the masked slots"})
    decoder_proj_init: str = field(
        default="bert",
        metadata={"help": "init of the decoder's output projection: 'bert' (N(0, 0.02), bias 0, like every other "
                          "Linear here; the default) or 'pytorch' (nn.Linear's default uniform init, which EAT's "
                          "official code leaves on it: for from-scratch reproduction)"},
    )
    # -- targets / teacher ------------------------------------------------------------------------------------------
    average_top_k_layers: int = field(default=12, metadata={"help": "teacher layers averaged into the targets"})
    instance_norm_targets: bool = field(
        default=True,
        metadata={"help": "instance-normalise each teacher layer's FFN output over the tokens before averaging "
                          "(EAT's instance_norm_target_layer)"},
    )
    layer_norm_targets: bool = field(default=True, metadata={"help": "layer-normalise the averaged targets"})
    ema_decay: float = field(default=0.9998, metadata={"help": "teacher EMA decay at update 0"})
    ema_end_decay: float = field(default=0.99999, metadata={"help": "teacher EMA decay after the anneal"})
    ema_anneal_end_step: int = field(
        default=100000, metadata={"help": "updates over which the decay rises linearly to ema_end_decay"}
    )
    teacher_autocast: bool = field(
        default=True,
        metadata={"help": "under torch.autocast (task.autocast_bf16), run the teacher's matrix products in the "
                          "autocast dtype too, on its float32 weights (the targets' normalisation stays float32); "
                          "false: the teacher runs entirely in float32 under autocast (on a CPU a third of the bf16 "
                          "step's time)"},
    )


def ema_decay_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """EMA decay after ``step`` updates: linear from ``start`` to ``end`` over ``anneal_steps``, ``end`` after.

    ``end - (end - start) * (1 - step / anneal_steps)`` (data2vec's annealed rate).
    """
    if start == end or anneal_steps <= 0 or step >= anneal_steps:
        return float(end)
    return float(end - (end - start) * (1.0 - step / anneal_steps))


class EatEncoder(nn.Module):
    """What the teacher copies: patch embedding, fixed positions, CLS token, input LayerNorm and blocks."""

    def __init__(self, cfg: EatConfig):
        super().__init__()
        self.tokenizer = Tokenizer((cfg.patch_time, cfg.patch_freq), num_mel_bins=cfg.num_mel_bins,
                                   token_order="time_major")
        d = cfg.embed_dim
        self.max_time_patches = cfg.max_time_patches
        self.patch_embed = PatchEmbed(self.tokenizer, d)
        # fixed, not learned: a non-persistent buffer (rebuilt from the config, not stored in checkpoints)
        self.register_buffer("positions", sincos_2d(cfg.max_time_patches, self.tokenizer.n_freq, d),
                             persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.transformer = TransformerStack(
            cfg.encoder_layers, d, cfg.num_heads, cfg.ffn_dim, norm_first=False, qkv_bias=True,
            dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
            drop_path=cfg.drop_path, layerdrop=cfg.encoder_layerdrop, norm_eps=cfg.norm_eps,
        )

    def embed(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None):
        """(B, T, F) -> patch tokens + positions (B, N, D), token padding (B, N) or None, n_time."""
        n_time = self.tokenizer.n_time(fbank.shape[1])
        if n_time > self.max_time_patches:
            raise ValueError(f"{fbank.shape[1]} frames make {n_time} time patches, more than the position table's "
                             f"{self.max_time_patches} (model.max_time_patches)")
        tokens, _ = self.patch_embed(fbank)
        x = tokens + self.positions[: tokens.shape[1]].to(tokens.dtype)
        return x, self.tokenizer.token_padding(frame_padding, n_time), n_time

    def encode(self, x: torch.Tensor, padding: Optional[torch.Tensor] = None, *, return_hidden: bool = False,
               return_ffn: bool = False) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """Prepend the CLS token (never padding) and run the post-LN stack: (B, 1 + L, D) outputs."""
        b = x.shape[0]
        x = torch.cat([self.cls_token.to(x.dtype).expand(b, -1, -1), x], dim=1)
        if padding is not None:
            padding = torch.cat([padding.new_zeros(b, 1), padding], dim=1)
        return self.transformer(x, padding, return_hidden=return_hidden, return_ffn=return_ffn)


class Decoder2d(nn.Module):
    """EAT's light CNN decoder over the (time, frequency) grid.

    ``layers`` x [``Conv2d(k, padding k//2, groups)`` -> LayerNorm over channels (no affine) -> GELU], each added to
    its input (a residual also around the first layer when the widths match), then ``Linear(decoder_embed_dim, embed_dim)``.
    """

    def __init__(self, embed_dim: int, dim: int, layers: int, kernel: int, groups: int):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"decoder_kernel must be odd (same padding), got {kernel}")
        for c in {embed_dim, dim}:
            if c % groups:
                raise ValueError(f"decoder_groups={groups} does not divide the {c} channels")
        self.convs = nn.ModuleList(
            nn.Conv2d(embed_dim if i == 0 else dim, dim, kernel, padding=kernel // 2, groups=groups)
            for i in range(layers)
        )
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int], valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (R, N, C) time-major tokens on an (n_time, n_freq) grid; valid (R, N) bool (False = padding)."""
        r, n, c = x.shape
        n_time, n_freq = grid
        h = x.transpose(1, 2).reshape(r, c, n_time, n_freq)
        keep = None if valid is None else valid.view(r, 1, n_time, n_freq).to(h.dtype)
        for conv in self.convs:
            y = conv(h)
            y = F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2]).permute(0, 3, 1, 2)
            y = F.gelu(y)
            if y.shape[1] == h.shape[1]:
                y = y + h
            h = y if keep is None else y * keep
        return self.proj(h.flatten(2).transpose(1, 2))


class StudentPass(NamedTuple):
    """What the student stage hands to the decoder and the targets (R = B * clones rows, V visible tokens a row)."""

    encoded: torch.Tensor  # (R, 1 + V, D): CLS output, then the visible tokens
    ids_keep: torch.Tensor  # (R, V) token index of each visible slot
    visible_padding: torch.Tensor  # (R, V) True = an empty slot (the row has fewer visible tokens)
    mask: torch.Tensor  # (R, N) True = masked
    row_padding: Optional[torch.Tensor]  # (R, N) True = padding, per clone row
    token_padding: Optional[torch.Tensor]  # (B, N) True = padding, per clip
    grid: Tuple[int, int]  # (time, frequency) patches


class Eat(CoreModel):
    pretraining_only = ("teacher", "decoder")  # the student encoder is what fine-tuning / embedding keep
    default_pooling = "cls"

    def __init__(self, cfg: EatConfig):
        super().__init__()
        self.cfg = cfg
        if not 1 <= cfg.average_top_k_layers <= cfg.encoder_layers:
            raise ValueError(f"average_top_k_layers must be in [1, encoder_layers={cfg.encoder_layers}], got "
                             f"{cfg.average_top_k_layers}")
        if cfg.clones < 1:
            raise ValueError(f"clones must be >= 1, got {cfg.clones}")
        self.encoder = EatEncoder(cfg)
        self.decoder = Decoder2d(cfg.embed_dim, cfg.decoder_embed_dim, cfg.decoder_layers, cfg.decoder_kernel,
                                 cfg.decoder_groups)
        # initialisation as EAT: BERT init of every Linear, then xavier patch projection, N(0, 1) CLS
        init_bert_params(self)
        proj = self.encoder.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight)
        nn.init.uniform_(proj.bias, -proj.in_features ** -0.5, proj.in_features ** -0.5)
        nn.init.normal_(self.encoder.cls_token)
        if cfg.decoder_proj_init == "pytorch":
            self.decoder.proj.reset_parameters()
        elif cfg.decoder_proj_init != "bert":
            raise ValueError(f"decoder_proj_init must be 'bert' or 'pytorch', got {cfg.decoder_proj_init!r}")
        self.teacher = copy.deepcopy(self.encoder).requires_grad_(False).eval()
        self.current_ema_decay = float(cfg.ema_decay)

    # -- teacher bookkeeping --------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never uses dropout / layerdrop
        return self

    def _apply(self, fn, *args, **kwargs):
        """Move the teacher with the model (device) but keep its float32 storage (EMA precision)."""
        teacher = self._modules.get("teacher")
        if teacher is None:
            return super()._apply(fn, *args, **kwargs)
        self._modules["teacher"] = None
        try:
            super()._apply(fn, *args, **kwargs)
        finally:
            self._modules["teacher"] = teacher
        p = next(teacher.parameters())
        device = fn(torch.empty(0, dtype=p.dtype, device=p.device)).device
        teacher._apply(lambda t: t.to(device=device))
        return self

    @staticmethod
    def ema_decay_at(step: int, start: float = 0.9998, end: float = 0.99999, anneal_steps: int = 100000) -> float:
        return ema_decay_at(step, start, end, anneal_steps)

    @torch.no_grad()
    def ema_step(self, num_updates: int) -> float:
        """One EMA update of the teacher towards the student encoder, with the decay for ``num_updates``.

        ``teacher = decay * teacher + (1 - decay) * student`` in float32 for the trainable parameters; the others
        (and the buffers) are copied. Returns the decay used.
        """
        if self.teacher is None:
            raise RuntimeError("the teacher was removed (remove_pretraining_modules)")
        c = self.cfg
        decay = ema_decay_at(num_updates, c.ema_decay, c.ema_end_decay, c.ema_anneal_end_step)
        self.current_ema_decay = decay
        if decay >= 1.0:
            return decay
        student = dict(self.encoder.named_parameters())
        avg_t, avg_s = [], []
        for name, t in self.teacher.named_parameters():
            s = student[name]
            if s.requires_grad:
                avg_t.append(t)
                avg_s.append(s.detach().to(device=t.device, dtype=t.dtype))
            else:
                t.copy_(s)
        if avg_t:
            torch._foreach_mul_(avg_t, decay)
            torch._foreach_add_(avg_t, avg_s, alpha=1.0 - decay)
        student_buffers = dict(self.encoder.named_buffers())
        for name, b in self.teacher.named_buffers():
            b.copy_(student_buffers[name])
        return decay

    # -- pretraining: the stages of forward ------------------------------------------------------------------------
    def make_mask(self, rng: MaskRNG, grid: Tuple[int, int], token_padding: Optional[torch.Tensor]) -> torch.Tensor:
        """(B * clones, N) inverse block masks, row ``b * clones + c`` = clone c of clip b."""
        c = self.cfg
        return multi_mask(inverse_block_mask, rng, c.clones, grid=grid, mask_ratio=c.mask_ratio,
                          mask_prob_adjust=c.mask_prob_adjust, block=(c.mask_block, c.mask_block),
                          padding_mask=token_padding)

    def forward_student(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None,
                        mask_rng: Optional[MaskRNG] = None, mask: Optional[torch.Tensor] = None) -> StudentPass:
        """Embed, clone every clip ``clones`` times, mask each clone and encode its visible tokens (+ CLS).

        ``mask`` (B * clones, N), True = masked, replaces the drawn masks (e.g. masks recorded elsewhere); every row
        must not mask padding."""
        b, k = fbank.shape[0], self.cfg.clones
        x, token_padding, n_time = self.encoder.embed(fbank, frame_padding)
        grid = (n_time, self.encoder.tokenizer.n_freq)
        if mask is None:
            # one mask per clone, drawn from the clip's own random stream
            rng = mask_rng.to(fbank.device) if mask_rng is not None else MaskRNG.from_generator(None, b, fbank.device)
            mask = self.make_mask(rng, grid, token_padding)
        else:
            mask = self.check_mask(torch.as_tensor(mask, device=x.device), b * k, x.shape[1], token_padding)
        row_padding = None if token_padding is None else token_padding.repeat_interleave(k, dim=0)
        # the visible tokens of every clone, then the encoder
        x_vis, ids_keep, visible_padding, _ = gather_visible(x.repeat_interleave(k, dim=0), mask, row_padding)
        encoded, _, _ = self.encoder.encode(x_vis, visible_padding)
        return StudentPass(encoded, ids_keep, visible_padding, mask, row_padding, token_padding, grid)

    def check_mask(self, mask: torch.Tensor, rows: int, n: int, token_padding: Optional[torch.Tensor]
                   ) -> torch.Tensor:
        """An explicit mask as :meth:`make_mask` gives it: (B * clones, N) bool, True = masked, padding never
        masked (rows may mask different numbers of tokens)."""
        if tuple(mask.shape) != (rows, n):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (B * clones, N) = ({rows}, {n}), row "
                             "b * clones + c = clone c of clip b")
        mask = mask.bool()
        if token_padding is not None and bool((mask & token_padding.repeat_interleave(rows // token_padding.shape[0],
                                                                                      dim=0)).any()):
            raise ValueError("the mask covers padding tokens")
        return mask

    def forward_decoder(self, student: StudentPass) -> torch.Tensor:
        """Predictions (M, D) at the masked positions (row-major order of ``student.mask``)."""
        h = student.encoded[:, 1:]  # CLS dropped
        r, n = student.mask.shape
        # visible tokens back in place, fresh noise in the masked slots (no mask token, no positions)
        if self.cfg.mask_noise_std > 0:
            noise = torch.randn(r, n, h.shape[-1], device=h.device, dtype=h.dtype) * self.cfg.mask_noise_std
        else:  # mask_noise_std 0: zeros, no random draw (reproducible without torch's generator)
            noise = h.new_zeros(r, n, h.shape[-1])
        y = scatter_back(h, student.ids_keep, student.visible_padding, n, noise)
        # zeros at padding, so the convolutions see it as the grid's edge
        valid = None if student.row_padding is None else ~student.row_padding
        if valid is not None:
            y = y * valid.unsqueeze(-1).to(y.dtype)
        return self.decoder(y, student.grid, valid)[student.mask]

    @torch.no_grad()
    def forward_teacher(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None):
        """The teacher on the unmasked clips: targets (B, N, D) float32 and the token padding (B, N) or None."""
        teacher = self.teacher
        t_dtype = next(teacher.parameters()).dtype
        low_precision = fbank.dtype in (torch.float16, torch.bfloat16) and fbank.dtype != t_dtype
        if low_precision and fbank.device.type == "cuda":
            ctx = torch.autocast("cuda", dtype=fbank.dtype)  # float32 weights, half-precision matmuls
        elif self.cfg.teacher_autocast and torch.is_autocast_enabled(fbank.device.type):
            ctx = contextlib.nullcontext()  # the caller's autocast: low-precision matmuls on float32 weights
            fbank = fbank.to(t_dtype)
        else:
            ctx = torch.autocast(fbank.device.type, enabled=False)
            fbank = fbank.to(t_dtype)
        with ctx:
            x, padding, _ = teacher.embed(fbank, frame_padding)
            _, _, ffn = teacher.encode(x, padding, return_ffn=True)
        layers = [f[:, 1:] for f in ffn]  # patch tokens only (CLS excluded)
        y = eat_targets(layers, self.cfg.average_top_k_layers, instance_norm=self.cfg.instance_norm_targets,
                        layer_norm=self.cfg.layer_norm_targets, padding_mask=padding)
        return y, padding

    def teacher_targets(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor], student: StudentPass
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frame targets (M, D) at the masked positions and utterance targets (R, D) per clone row."""
        k = self.cfg.clones
        # the teacher runs once per clip; each clone row takes its clip's targets
        y, _ = self.forward_teacher(fbank, frame_padding)
        rows, cols = student.mask.nonzero(as_tuple=True)
        target = y[torch.div(rows, k, rounding_mode="floor"), cols]
        # utterance target: the mean of the clip's targets over its valid tokens
        if student.token_padding is None:
            clip_mean = y.mean(dim=1)
        else:
            w = (~student.token_padding).unsqueeze(-1).to(y.dtype)
            clip_mean = (y * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        return target, clip_mean.repeat_interleave(k, dim=0)

    def forward(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None,
                mask_rng: Optional[MaskRNG] = None, mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """fbank: (B, T, F) normalised log-mel; frame_padding: (B, T) True = padding; mask_rng: one row per clip;
        mask: explicit (B * clones, N) masks instead of drawn ones (:meth:`forward_student`).

        Returns (keys: :mod:`~maeast_fairseq.core.base`), with R = B * clones rows and M = masked tokens over all
        rows:
        ``pred`` / ``target`` (M, D) at the masked positions (row-major order of ``mask``), ``cls_pred`` /
        ``cls_target`` (R, D), ``num_masked`` (M, long), ``num_tokens`` (valid tokens over the R rows), ``mask``
        (R, N), ``padding_mask`` (B, N) or None, and the statistics ``target_var``, ``pred_var``, ``ema_decay``.

        The noise in the masked decoder slots comes from torch's global generator (``torch.randn``; fairseq
        reseeds it with ``seed + num_updates`` before every step); the masks come from ``mask_rng`` only.
        """
        if self.teacher is None or self.decoder is None:
            raise RuntimeError("pretraining modules were removed; use extract_features")
        student = self.forward_student(fbank, frame_padding, mask_rng, mask)
        pred = self.forward_decoder(student)
        target, cls_target = self.teacher_targets(fbank, frame_padding, student)
        mask = student.mask
        num_tokens = (torch.full((), mask.numel(), device=mask.device, dtype=torch.long)
                      if student.row_padding is None else (~student.row_padding).sum())
        return {
            "pred": pred,
            "target": target,
            "cls_pred": student.encoded[:, 0],
            "cls_target": cls_target,
            "num_masked": mask.sum(),
            "num_tokens": num_tokens,
            "mask": mask,
            "padding_mask": student.token_padding,
            "target_var": regression_var(target),
            "pred_var": regression_var(pred),
            "ema_decay": torch.tensor(self.current_ema_decay, dtype=torch.float64),
        }

    # -- downstream -------------------------------------------------------------------------------------------------
    def extract_features(self, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor] = None) -> Dict:
        """Student encoder on all tokens (no masking, one clone).

        ``x`` (B, N, D) patch tokens, ``cls`` (B, D) (EAT's fine-tuning pools the CLS token), ``hidden_states``
        (L+1 tensors (B, N, D): the stack input after its LayerNorm, then every block; patch tokens only, aligned
        with ``padding_mask`` (B, N) or None).
        """
        x, token_padding, _ = self.encoder.embed(fbank, frame_padding)
        h, hidden, _ = self.encoder.encode(x, token_padding, return_hidden=True)
        return {"x": h[:, 1:], "cls": h[:, 0], "hidden_states": [s[:, 1:] for s in hidden],
                "padding_mask": token_padding}
