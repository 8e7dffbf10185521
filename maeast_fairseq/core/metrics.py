"""Classification metrics, one definition each, used by fine-tuning (criterion ``maeast_classification``) and the
frozen-upstream heads (:mod:`maeast_fairseq.evaluation.superb`) alike.

Unit: every metric is a **fraction in [0, 1]** (callers that show percent multiply by 100 where they print or log).
Tie rule: top-1 predictions are ``argmax`` (the first of tied maxima); average precision treats tied scores as one
threshold (scikit-learn's ``average_precision_score``), so the result does not depend on the order of the rows.
"""
import torch


def num_correct(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of top-1 hits (a 0-d integer tensor, summable over batches and workers). ``target``: class indices
    (B,) or (soft / one-hot) rows (B, C), whose argmax is the class."""
    if target.dim() == 2:
        target = target.argmax(dim=-1)
    return (logits.argmax(dim=-1) == target).sum()


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy (fraction) of ``logits`` (B, C) against ``target`` as in :func:`num_correct`; NaN when B = 0."""
    if logits.shape[0] == 0:
        return float("nan")
    return float(num_correct(logits, target)) / logits.shape[0]


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision (C,) in float64, NaN for classes without a positive.

    ``scores`` (N, C) any monotone scores (logits or probabilities); ``targets`` (N, C) 0/1 (values > 0.5 count as
    positive). ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing order, tied scores
    forming one threshold. Vectorised over the classes (one sort).
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
    """mAP (fraction): the mean of :func:`average_precision` over the classes with at least one positive (EAT's
    ``nanmean``); NaN when no class has a positive."""
    ap = average_precision(scores, targets)
    ap = ap[~torch.isnan(ap)]
    return float(ap.mean()) if ap.numel() else float("nan")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts, rows = true class, columns = predicted class, of class indices ``pred`` / ``target`` (N,)
    (one ``bincount``)."""
    pred, target = pred.detach().long().flatten(), target.detach().long().flatten()
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).view(
        num_classes, num_classes)


def precision_recall_f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict:
    """Per-class ``precision`` = tp / (tp + fp), ``recall`` = tp / (tp + fn), ``f1`` = 2 tp / (2 tp + fp + fn) (their
    harmonic mean where both exist; 0 for a class never predicted that has true clips) and ``support`` = tp + fn, from
    per-class counts (C,); float64, NaN where a denominator is 0 (a class never predicted: precision; a class without
    a true clip: recall; neither: F1)."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    nan = torch.full_like(tp, float("nan"))
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), nan)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), nan)
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": (tp + fn).long()}


def confusion_scores(confusion: torch.Tensor) -> dict:
    """:func:`precision_recall_f1` of a (C, C) confusion matrix (rows true, columns predicted)."""
    tp = confusion.diagonal()
    return precision_recall_f1(tp, confusion.sum(0) - tp, confusion.sum(1) - tp)


def multilabel_scores(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """:func:`precision_recall_f1` per class of 0/1 decisions ``pred`` (N, C) against 0/1 ``target`` (N, C)."""
    pred, target = pred.bool(), target > 0.5
    return precision_recall_f1((pred & target).sum(0), (pred & ~target).sum(0), (~pred & target).sum(0))
