"""Transformer building blocks shared by SSAST, MAE-AST and EAT (pure torch).

One block class covers the three encoders; the differences are parameters:

* ``norm_first=True``  -> pre-LN (timm ViT / DeiT, used by SSAST):
  ``x = x + attn(LN1(x)); x = x + ffn(LN2(x))`` and a final LayerNorm after the stack.
* ``norm_first=False`` -> post-LN (fairseq wav2vec 2.0 layers used by MAE-AST, data2vec ``AltBlock`` used by EAT):
  ``x = LN1(x + attn(x)); x = LN2(x + ffn(x))`` and a LayerNorm on the *input* of the stack.

Every block also returns the FFN output before its residual add (``ffn_out``), the per-layer target of EAT/data2vec.
Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on
GPU); a key padding mask (True = padding) is turned into a boolean attention mask. On CPU, training with attention
dropout (MAE-AST's recipe) takes :func:`cpu_dropout_attention` instead: SDPA would fall back to its unfused math path
there anyway, whose dropout mask costs more than the attention's matrix products in bfloat16; with
``CPU_DROPOUT_RECOMPUTE`` that attention is recomputed in backward instead of keeping the probabilities (less memory,
a slower step). Dropout on CPU draws its mask 16 bits at a time (:class:`Dropout`, :func:`cpu_dropout`).
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


#: CPU dropout masks are drawn as 16-bit integers: the drop probability is ``round(p * 2^16) / 2^16`` (0.1 -> 0.100006)
_DROPOUT_LEVELS = 2 ** 16


class _CpuDropout(torch.autograd.Function):
    """Inverted dropout whose mask comes from 64-bit random words cut into four 16-bit draws: one generator call per
    4 elements instead of one per element (``torch.bernoulli_`` on CPU), the same distribution up to the 2^-16
    rounding of ``p``. The global CPU generator is used, as ``nn.Dropout`` does (seeded runs stay reproducible)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2 ** 63), None)
        drop = words.view(torch.int16)[:n].view(x.shape) < (round(p * _DROPOUT_LEVELS) - _DROPOUT_LEVELS // 2)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.mul(scale).masked_fill_(drop, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (drop,) = ctx.saved_tensors
        return grad.mul(ctx.scale).masked_fill_(drop, 0.0), None


def cpu_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with the cheaper mask of :class:`_CpuDropout` on CPU (elsewhere ``F.dropout`` itself)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    return _CpuDropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` that uses :func:`cpu_dropout` on CPU (same ``p`` attribute, no state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_dropout(x, self.p, self.training)


def cpu_dropout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
                          p: float) -> torch.Tensor:
    """Attention with dropout on the probabilities, unfused (what CPU SDPA does with dropout, minus its costly mask
    and its fully-masked-row guard: every row here has a key to attend, a clip has at least one valid token):
    ``dropout(softmax(q k^T / sqrt(d) + mask)) v``. ``attn_mask``: bool, True = may attend (SDPA convention)."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = cpu_dropout(torch.softmax(scores, dim=-1), p)
    return torch.matmul(probs.to(v.dtype), v)


def attention_mask_from_padding(padding_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, L) bool, True = padding  ->  (B, 1, 1, L) bool, True = may attend (SDPA convention)."""
    if padding_mask is None or not bool(padding_mask.any()):
        return None
    return (~padding_mask)[:, None, None, :]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, attention_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu" and CPU_DROPOUT_RECOMPUTE and torch.is_grad_enabled():
            # The dropout path keeps the (B, H, N, N) probabilities and the dropout mask for backward (+375 MB per
            # 512-token layer at batch 8); recomputing them in backward keeps neither (the RNG state is restored for
            # the recomputation: the same mask, the same gradients), and batch chunks bound the probabilities alive
            # at once to ~CPU_DROPOUT_CHUNK_BYTES.
            y = checkpoint(_chunked_dropout_attention, q, k, v, attn_mask, p, use_reentrant=False)
        elif p > 0.0 and x.device.type == "cpu":
            y = cpu_dropout_attention(q, k, v, attn_mask, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


#: CPU training with attention dropout: recompute the attention in backward, in batch chunks, instead of keeping the
#: probabilities (MAE-AST base, batch 8: peak 3.9 -> 3.4 GB, step 5.2 -> 6.8 s; BENCHMARKS.md). Off by default (speed);
#: on with MAEAST_CPU_DROPOUT_RECOMPUTE=1 or by setting this flag. No effect on GPU or without attention dropout.
CPU_DROPOUT_RECOMPUTE = os.environ.get("MAEAST_CPU_DROPOUT_RECOMPUTE", "0").strip().lower() in ("1", "true", "yes")
#: bytes of (H, N, N) float32 attention probabilities computed at once by the CPU dropout path
CPU_DROPOUT_CHUNK_BYTES = 64 * 2 ** 20


def _chunked_dropout_attention(q, k, v, attn_mask: Optional[torch.Tensor], p: float) -> torch.Tensor:
    """:func:`cpu_dropout_attention` over batch chunks of at most ``CPU_DROPOUT_CHUNK_BYTES`` of probabilities (one
    chunk when the batch fits)."""
    b, h, n = q.shape[0], q.shape[1], q.shape[2]
    step = max(1, CPU_DROPOUT_CHUNK_BYTES // (h * n * k.shape[2] * 4))
    if step >= b:
        return cpu_dropout_attention(q, k, v, attn_mask, p)
    per_clip = attn_mask is not None and attn_mask.shape[0] == b
    return torch.cat([cpu_dropout_attention(q[i:i + step], k[i:i + step], v[i:i + step],
                                            attn_mask[i:i + step] if per_clip else attn_mask, p)
                      for i in range(0, b, step)])


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, *, activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.activation_dropout = Dropout(activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """One transformer layer, pre-LN or post-LN. ``forward`` returns ``(x, ffn_out)``.

    Built without regularisation: its dropout, attention dropout, activation dropout and drop-path rates are set by
    :meth:`TransformerStack.configure` (the one place that knows a block's depth in its stack).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, *, norm_first: bool, qkv_bias: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.norm_first = norm_first
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.ffn = FeedForward(dim, ffn_dim)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = Dropout(0.0)
        self.drop_path = DropPath(0.0)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.norm_first:
            x = x + self.drop_path(self.dropout(self.attn(self.norm1(x), attn_mask)))
            ffn_out = self.dropout(self.ffn(self.norm2(x)))
            return x + self.drop_path(ffn_out), ffn_out
        x = self.norm1(x + self.drop_path(self.dropout(self.attn(x, attn_mask))))
        ffn_out = self.dropout(self.ffn(x))
        return self.norm2(x + self.drop_path(ffn_out)), ffn_out


class TransformerStack(nn.Module):
    """A stack of :class:`TransformerBlock` with the norm placement of its family.

    post-LN: ``LayerNorm`` on the input, then the blocks (MAE-AST, EAT);  pre-LN: blocks then a final ``LayerNorm``
    (SSAST). ``layerdrop`` skips whole layers in training (MAE-AST uses 0.05); ``drop_path`` rises linearly from 0 to
    the given rate over the depth (used in fine-tuning). :meth:`configure` changes these rates (and the dropouts)
    of a built stack.
    """

    def __init__(
        self,
        depth: int,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        *,
        norm_first: bool,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        drop_path: float = 0.0,
        layerdrop: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.layerdrop = 0.0
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, ffn_dim, norm_first=norm_first, qkv_bias=qkv_bias, norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.input_norm = None if norm_first else nn.LayerNorm(dim, eps=norm_eps)
        self.final_norm = nn.LayerNorm(dim, eps=norm_eps) if norm_first else None
        self.input_dropout = Dropout(0.0)
        self.configure(dropout=dropout, attention_dropout=attention_dropout, activation_dropout=activation_dropout,
                       drop_path=drop_path, layerdrop=layerdrop)

    def configure(self, *, dropout: Optional[float] = None, attention_dropout: Optional[float] = None,
                  activation_dropout: Optional[float] = None, drop_path: Optional[float] = None,
                  layerdrop: Optional[float] = None) -> None:
        """Set the regularisation of the stack and all its blocks (fine-tuning overrides); ``None`` keeps a value.

        ``dropout`` applies to the blocks' residual branches and to the stack's input; ``drop_path`` rises linearly
        over the depth, ``rate * i / (L - 1)`` for block ``i`` of ``L`` (0 on the first block, ``rate`` on the last;
        ``rate`` for a single block); ``layerdrop`` is the probability of skipping a whole block in training.
        """
        if layerdrop is not None:
            self.layerdrop = float(layerdrop)
        if dropout is not None:
            self.input_dropout.p = float(dropout)
        depth = len(self.blocks)
        for i, block in enumerate(self.blocks):
            if drop_path is not None:
                block.drop_path.p = float(drop_path) * i / (depth - 1) if depth > 1 else float(drop_path)
            if dropout is not None:
                block.dropout.p = float(dropout)
            if attention_dropout is not None:
                block.attn.attention_dropout = float(attention_dropout)
            if activation_dropout is not None:
                block.ffn.activation_dropout.p = float(activation_dropout)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        *,
        return_hidden: bool = False,
        return_ffn: bool = False,
    ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """x: (B, L, D); padding_mask: (B, L) True = padding. Returns (out, hidden_states, ffn_outputs).

        ``hidden_states`` (if asked) holds the stack input followed by every layer's output (L+1 tensors; SUPERB's
        weighted sum uses them); ``ffn_outputs`` (if asked) holds every layer's FFN output before the residual.
        """
        attn_mask = attention_mask_from_padding(padding_mask)
        if self.input_norm is not None:
            x = self.input_norm(x)
        x = self.input_dropout(x)
        hidden, ffn = ([x] if return_hidden else []), []
        for block in self.blocks:
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                continue
            x, f = block(x, attn_mask)
            if return_hidden:
                hidden.append(x)
            if return_ffn:
                ffn.append(f)
        if self.final_norm is not None:
            x = self.final_norm(x)
            if return_hidden:
                hidden[-1] = x
        return x, hidden, ffn


def init_bert_params(module: nn.Module, std: float = 0.02) -> None:
    """BERT/fairseq initialisation: Linear and Embedding weights ~ N(0, std), biases 0 (MAE-AST, EAT)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
