"""Pretraining losses of SSAST, MAE-AST and EAT (pure torch, float32 even under autocast).

* :func:`info_nce` — the masked-patch InfoNCE of SSAST/MAE-AST with either softmax orientation (decision D1).
* :func:`masked_mse` — the generative / reconstruction MSE.
* :func:`ssast_logged_accuracy` — the masked-patch accuracy exactly as SSAST's code logs it.
* :func:`nce_mse_loss` — SSAST's / MAE-AST's joint objective ``nce_weight x InfoNCE + mse_weight x MSE``.
* :func:`eat_targets`, :func:`eat_frame_loss`, :func:`eat_utterance_loss` — EAT's Utterance-Frame Objective
  with EAT's exact scaling (decision D11).
* :func:`ufo_loss` — the whole UFO objective from EAT's model output.
* :func:`regression_var` — data2vec-style spread statistic for logging ``target_var`` / ``pred_var``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "info_nce",
    "masked_mse",
    "ssast_logged_accuracy",
    "nce_mse_loss",
    "eat_targets",
    "eat_frame_loss",
    "eat_utterance_loss",
    "ufo_loss",
    "regression_var",
]


@contextmanager
def _no_autocast(t: torch.Tensor):
    """Disable autocast for the device type of ``t`` (no-op where autocast is unsupported)."""
    try:
        ctx = torch.autocast(device_type=t.device.type, enabled=False)
    except (RuntimeError, ValueError):  # pragma: no cover - exotic device types
        ctx = None
    if ctx is None:
        yield
    else:
        with ctx:
            yield


def info_nce(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    orientation: str = "targets",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Masked-patch InfoNCE with in-clip negatives (SSAST ``mpc``, MAE-AST classification loss).

    Per clip, ``logits[b, i, j] = pred[b, i] . target[b, j]`` (``(B, M, M)``; no temperature, no
    normalisation); the positive of prediction ``i`` is target ``i``, the negatives are the other masked
    patches of the same clip.

    * ``orientation='targets'``: for each prediction, softmax over the targets (``log_softmax`` over ``j``) —
      the SSAST paper's Eq. 1 and the MAE-AST code.
    * ``orientation='predictions'``: for each fixed target, softmax over the predictions (``log_softmax``
      over ``i``) — what the SSAST code computes (``targets @ preds^T`` with ``log_softmax(dim=-1)``; decision D1).

    ``valid (B, M)`` bool (None = all valid) removes positions from both the positives and the negatives
    (their logits are excluded from every softmax) and from the mean.

    Returns ``(loss, accuracy)``: ``loss`` = mean over all valid positions of the batch of ``-log p(correct)``
    (equal to SSAST/MAE-AST's mean of per-clip means when every clip has the same number of positions);
    ``accuracy`` = fraction of valid positions whose argmax (over the softmax axis) is the correct partner.
    Both float32 scalars, computed in float32 even under autocast.  Zero valid positions give ``(0, 0)``.
    """
    if orientation not in ("targets", "predictions"):
        raise ValueError(f"orientation must be 'targets' or 'predictions', got {orientation!r}")
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (B, M, D), got {tuple(pred.shape)} / {tuple(target.shape)}")
    B, M, _ = pred.shape
    with _no_autocast(pred):
        p = pred.float()
        y = target.float()
        if M == 0:  # nothing masked (e.g. a batch cropped to a one-patch clip): zero, still part of the graph
            zero = p.sum() * 0 + y.sum() * 0
            return zero, zero.detach()
        logits = torch.bmm(p, y.transpose(1, 2))  # (B, M_pred, M_target)
        # softmax axis: over targets (dim 2) or over predictions (dim 1)
        dim = 2 if orientation == "targets" else 1
        if valid is not None:
            valid = valid.to(device=p.device, dtype=torch.bool)
            # exclude invalid partners from the softmax axis (finite fill: a clip with no valid position
            # yields finite garbage that is masked out below instead of NaN)
            excl = ~valid.unsqueeze(1) if dim == 2 else ~valid.unsqueeze(2)
            logits = logits.masked_fill(excl, torch.finfo(torch.float32).min)
        logp = torch.log_softmax(logits, dim=dim)
        diag = torch.diagonal(logp, dim1=1, dim2=2)  # (B, M): log p(correct) at position i
        correct = torch.argmax(logits, dim=dim) == torch.arange(M, device=p.device).view(1, M)
        if valid is None:
            loss = -diag.mean() if diag.numel() else diag.new_zeros(())
            acc = correct.float().mean() if correct.numel() else diag.new_zeros(())
            return loss, acc
        n = valid.sum().clamp(min=1).float()
        loss = -torch.where(valid, diag, torch.zeros_like(diag)).sum() / n
        acc = (correct & valid).sum().float() / n
        return loss, acc


def ssast_logged_accuracy(
    pred: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The masked-patch accuracy SSAST's code logs (its ``mpc`` ``acc``), for curves comparable with its runs.

    SSAST normalises ``targets @ preds^T`` over the predictions (softmax per target) and then, for each
    prediction ``i``, takes the argmax over the *targets* of those normalised values: correct when it is ``i``.
    (:func:`info_nce`'s accuracy takes the argmax along the softmax axis instead.) Invalid positions are excluded
    from the softmax, the argmax and the mean. float32 scalar.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (B, M, D), got {tuple(pred.shape)} / {tuple(target.shape)}")
    B, M, _ = pred.shape
    with torch.no_grad(), _no_autocast(pred):
        if M == 0:
            return pred.new_zeros((), dtype=torch.float32)
        logits = torch.bmm(pred.float(), target.float().transpose(1, 2))  # [b, i (prediction), j (target)]
        lowest = torch.finfo(torch.float32).min
        if valid is not None:
            valid = valid.to(device=pred.device, dtype=torch.bool)
            logits = logits.masked_fill(~valid.unsqueeze(2), lowest)  # invalid predictions leave every softmax
        logp = torch.log_softmax(logits, dim=1)  # per target j, over the predictions i
        if valid is not None:
            logp = logp.masked_fill(~valid.unsqueeze(1), -math.inf)  # invalid targets never win the argmax
        correct = torch.argmax(logp, dim=2) == torch.arange(M, device=pred.device).view(1, M)
        if valid is None:
            return correct.float().mean()
        return (correct & valid).sum().float() / valid.sum().clamp(min=1).float()


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean of ``(pred - target)**2`` over the valid positions and all features (float32).

    ``pred``/``target``: ``(..., D)``; ``valid``: bool over the leading dims (None = all).  This is SSAST's
    ``mpg`` / MAE-AST's ``F.mse_loss`` when all positions are valid.  No valid position gives 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}")
    with _no_autocast(pred):
        se = (pred.float() - target.float()).pow(2)
        if valid is None:
            return se.mean() if se.numel() else se.new_zeros(())
        valid = valid.to(device=se.device, dtype=torch.bool)
        se = torch.where(valid.unsqueeze(-1), se, torch.zeros_like(se))
        denom = valid.sum().float() * se.shape[-1]
        return se.sum() / denom.clamp(min=1.0)


def nce_mse_loss(
    out: Dict, nce_weight: float = 1.0, mse_weight: float = 10.0, orientation: str = "targets"
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SSAST's / MAE-AST's joint objective from their model output: ``nce_weight x InfoNCE + mse_weight x MSE``.

    ``out`` holds the ``nce_pred`` / ``pred`` predictions and the ``target`` patches (B, M, P) with ``target_valid``
    (B, M) (the keys of :mod:`~maeast_fairseq.core.base`); a model that scores each term on its own masked pass
    (SSAST's official two passes) returns them under ``out["terms"] = {"nce": pass, "mse": pass}``. Returns
    ``(total, nce, mse, accuracy)``, float32 scalars (:func:`info_nce` with ``orientation``, :func:`masked_mse`).
    """
    terms = out.get("terms")
    nce_out, mse_out = (terms["nce"], terms["mse"]) if terms else (out, out)
    nce, acc = info_nce(nce_out["nce_pred"], nce_out["target"], nce_out["target_valid"], orientation=orientation)
    mse = masked_mse(mse_out["pred"], mse_out["target"], mse_out["target_valid"])
    return nce_weight * nce + mse_weight * mse, nce, mse, acc


def _masked_instance_norm(x: torch.Tensor, keep: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Instance norm of ``x (B, T, D)`` per (clip, channel) over the tokens where ``keep (B, T)``."""
    w = keep.to(x.dtype).unsqueeze(-1)
    n = w.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * w).sum(dim=1, keepdim=True) / n
    var = ((x - mean).pow(2) * w).sum(dim=1, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + eps)


def eat_targets(
    layer_outputs: Sequence[torch.Tensor],
    top_k: int,
    instance_norm: bool = True,
    layer_norm: bool = True,
    padding_mask: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """EAT / data2vec 2.0 regression targets.

    ``layer_outputs``: list of the teacher's per-layer FFN outputs (before the residual), each ``(B, T, D)``
    over the patch tokens only (no CLS).  The last ``top_k`` layers are used: each is instance-normalised
    per clip and channel over the tokens (``F.instance_norm`` on ``(B, D, T)``, eps 1e-5, no affine), they are
    averaged, then ``F.layer_norm`` over ``D`` without affine.  Computed in float32.  With ``padding_mask
    (B, T)`` the instance-norm statistics use the non-padded tokens only (EAT has no padding).
    Returns ``(B, T, D)`` float32.
    """
    if top_k < 1 or top_k > len(layer_outputs):
        raise ValueError(f"top_k must be in [1, {len(layer_outputs)}], got {top_k}")
    layers = list(layer_outputs)[len(layer_outputs) - top_k:]
    with _no_autocast(layers[0]):
        acc = None
        for y in layers:
            y = y.float()
            if instance_norm:
                if padding_mask is None:
                    y = F.instance_norm(y.transpose(1, 2), eps=eps).transpose(1, 2)
                else:
                    y = _masked_instance_norm(y, ~padding_mask.to(torch.bool), eps=eps)
            acc = y if acc is None else acc + y
        y = acc / len(layers)
        if layer_norm:
            y = F.layer_norm(y, y.shape[-1:], eps=eps)
        return y


def eat_frame_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """EAT frame loss: ``sum over elements of (pred - target)**2 / sqrt(D)`` (``loss_beta=0``, ``loss_scale``
    None), for ``pred``/``target`` ``(N, D)`` at the masked positions.  Unreduced sum (the caller divides
    the grand total by the number of masked tokens, like fairseq's ``model`` criterion + trainer).
    ``reduction='none'`` returns the elementwise ``(N, D)`` terms.  float32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}")
    with _no_autocast(pred):
        d = pred.shape[-1]
        loss = (pred.float() - target.float()).pow(2) * (1.0 / math.sqrt(d))
        if reduction == "none":
            return loss
        if reduction != "sum":
            raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
        return loss.sum()


def eat_utterance_loss(
    cls_pred: torch.Tensor,
    cls_target: torch.Tensor,
    num_masked_total,
    weight: float = 1.0,
) -> torch.Tensor:
    """EAT utterance (CLS) loss with EAT's exact scaling (decision D11).

    Returns ``weight * num_masked_total * sum_rows sum_D (cls_pred - cls_target)**2 / sqrt(D)`` for
    ``cls_pred``/``cls_target`` ``(R, D)``, R = B * clones rows (``cls_target`` = mean of the clip's targets
    over tokens, repeated per clone).  EAT multiplies the CLS term by ``cls_loss * sample_size`` and the
    trainer divides the summed loss by ``sample_size = M`` (number of masked tokens), so with
    ``total = eat_frame_loss(...) + eat_utterance_loss(..., M, weight=lam)`` the optimised objective is

        ``total / M = (1/M) * sum_masked ||y_hat - y||^2 / sqrt(D) + lam * sum_rows ||c - y_bar||^2 / sqrt(D)``

    i.e. the frame term is a per-masked-token mean while the utterance term is a **sum over the R clone
    rows** (not a mean): its effective weight relative to a per-row mean is ``lam * R``.  Keep this to
    match EAT's lambda = 1 results.  (In multi-GPU EAT the multiplier is the local M while the division is
    by the global M; pass the number that matches your normalisation.)  float32.
    """
    if cls_pred.shape != cls_target.shape:
        raise ValueError(f"shape mismatch {tuple(cls_pred.shape)} vs {tuple(cls_target.shape)}")
    with _no_autocast(cls_pred):
        d = cls_pred.shape[-1]
        per_elem = (cls_pred.float() - cls_target.float()).pow(2) * (1.0 / math.sqrt(d))
        m = num_masked_total.float() if torch.is_tensor(num_masked_total) else float(num_masked_total)
        return per_elem.sum() * (float(weight) * m)


def ufo_loss(out: Dict[str, torch.Tensor], utterance_weight: float = 1.0, utterance_multiplier=None):
    """EAT's Utterance-Frame Objective from :meth:`~maeast_fairseq.core.eat.Eat.forward`'s output.

    Returns ``(total, frame, utterance, sample_size)``: ``frame`` = sum over the masked tokens of
    ``||pred - target||^2 / sqrt(D)``, ``utterance`` = ``utterance_weight * M * sum over the R clone rows of
    ||cls_pred - cls_target||^2 / sqrt(D)``, ``total = frame + utterance`` and ``sample_size = M`` (masked
    tokens). The trainer divides by ``M``: a per-masked-token frame mean plus a *sum* over clone rows.
    ``utterance_multiplier`` replaces ``M`` in the utterance term (e.g. the masked tokens of every process).
    """
    m = out["num_masked"]
    frame = eat_frame_loss(out["pred"], out["target"])
    multiplier = m if utterance_multiplier is None else utterance_multiplier
    utterance = eat_utterance_loss(out["cls_pred"], out["cls_target"], multiplier, weight=utterance_weight)
    return frame + utterance, frame, utterance, m


def regression_var(x: torch.Tensor) -> torch.Tensor:
    """Spread of features across samples, as data2vec's ``compute_var``: ``mean_D sqrt(var_N(x) + 1e-6)``
    for ``x`` reshaped to ``(N, D)`` (the mean over features of the per-feature standard deviation across the
    rows; local to this process).  Used for logging ``target_var`` / ``pred_var``; detached, float32.
    """
    with torch.no_grad(), _no_autocast(x):
        y = x.detach().float().reshape(-1, x.shape[-1])
        if y.shape[0] < 2:
            return y.new_zeros(())
        return torch.sqrt(y.var(dim=0) + 1e-6).mean()
