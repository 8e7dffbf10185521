"""Tests for maeast_fairseq.core.losses (hand-computed cases, CPU)."""

import math

import pytest
import torch
import torch.nn.functional as F

from maeast_fairseq.core.losses import (
    eat_frame_loss,
    eat_targets,
    eat_utterance_loss,
    info_nce,
    masked_mse,
    regression_var,
)

# ============================================================================ InfoNCE, a 2 x 3 x 2 case by hand
# clip 0: pred rows p0=(2,0) p1=(0,2) p2=(0.5,1); targets t0=(1,0) t1=(0,3) t2=(-1,1)
# clip 1: pred rows p0=(1,1) p1=(-1,0) p2=(0.2,0.1); targets t0=(2,1) t1=(0,1) t2=(-1,-1)
PRED = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [0.5, 1.0]], [[1.0, 1.0], [-1.0, 0.0], [0.2, 0.1]]])
TARGET = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-1.0, 1.0]], [[2.0, 1.0], [0.0, 1.0], [-1.0, -1.0]]])
# logits[b][i][j] = p_i . t_j, worked out by hand
LOGITS = [
    [[2.0, 0.0, -2.0], [0.0, 6.0, 2.0], [0.5, 3.0, 0.5]],
    [[3.0, 1.0, -2.0], [-2.0, 0.0, 1.0], [0.5, 0.1, -0.3]],
]


def _nll(correct, others):
    """-log( e^correct / (e^correct + sum e^others) )"""
    return -math.log(math.exp(correct) / (math.exp(correct) + sum(math.exp(o) for o in others)))


def test_hand_logits():
    assert torch.allclose(PRED @ TARGET.transpose(1, 2), torch.tensor(LOGITS), atol=1e-6)


def test_info_nce_targets_orientation_by_hand():
    # softmax over the targets (rows of LOGITS), positive = diagonal
    expected_terms = [
        _nll(2.0, [0.0, -2.0]),  # clip 0, prediction 0
        _nll(6.0, [0.0, 2.0]),  # clip 0, prediction 1
        _nll(0.5, [0.5, 3.0]),  # clip 0, prediction 2
        _nll(3.0, [1.0, -2.0]),  # clip 1, prediction 0
        _nll(0.0, [-2.0, 1.0]),  # clip 1, prediction 1
        _nll(-0.3, [0.5, 0.1]),  # clip 1, prediction 2
    ]
    loss, acc = info_nce(PRED, TARGET, orientation="targets")
    assert loss.dtype == torch.float32
    assert abs(float(loss) - sum(expected_terms) / 6) < 1e-5
    # row argmaxes: clip 0 -> 0, 1, 1 (2 right); clip 1 -> 0, 2, 0 (1 right)
    assert abs(float(acc) - 3 / 6) < 1e-7


def test_info_nce_predictions_orientation_by_hand():
    # SSAST code: softmax over the predictions (columns of LOGITS) for each fixed target
    expected_terms = [
        _nll(2.0, [0.0, 0.5]),  # clip 0, target 0: column (2, 0, 0.5)
        _nll(6.0, [0.0, 3.0]),  # clip 0, target 1: column (0, 6, 3)
        _nll(0.5, [-2.0, 2.0]),  # clip 0, target 2: column (-2, 2, 0.5)
        _nll(3.0, [-2.0, 0.5]),  # clip 1, target 0: column (3, -2, 0.5)
        _nll(0.0, [1.0, 0.1]),  # clip 1, target 1: column (1, 0, 0.1)
        _nll(-0.3, [-2.0, 1.0]),  # clip 1, target 2: column (-2, 1, -0.3)
    ]
    loss, acc = info_nce(PRED, TARGET, orientation="predictions")
    assert abs(float(loss) - sum(expected_terms) / 6) < 1e-5
    # column argmaxes: clip 0 -> 0, 1, 1 (2 right); clip 1 -> 0, 0, 1 (1 right)
    assert abs(float(acc) - 3 / 6) < 1e-7
    # the two orientations really differ here
    assert abs(float(loss) - float(info_nce(PRED, TARGET)[0])) > 1e-2


def test_info_nce_validity_by_hand():
    valid = torch.tensor([[True, False, True], [True, True, True]])
    loss, _ = info_nce(PRED, TARGET, valid, orientation="targets")
    # clip 0 without position 1: rows 0 and 2 over columns {0, 2}
    terms = [_nll(2.0, [-2.0]), _nll(0.5, [0.5])]
    terms += [_nll(3.0, [1.0, -2.0]), _nll(0.0, [-2.0, 1.0]), _nll(-0.3, [0.5, 0.1])]
    assert abs(float(loss) - sum(terms) / 5) < 1e-5
    loss_p, _ = info_nce(PRED, TARGET, valid, orientation="predictions")
    terms = [_nll(2.0, [0.5]), _nll(0.5, [-2.0])]  # columns 0 and 2 over rows {0, 2}
    terms += [_nll(3.0, [-2.0, 0.5]), _nll(0.0, [1.0, 0.1]), _nll(-0.3, [-2.0, 1.0])]
    assert abs(float(loss_p) - sum(terms) / 5) < 1e-5


def test_info_nce_matches_official_formulas():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, 5, generator=g)
    # MAE-AST: dots = pred @ target^T, -mean(diag(log_softmax(dots, -1)))
    mae = torch.stack([-torch.diagonal(torch.log_softmax(pred[b] @ target[b].T, -1)).mean() for b in range(3)])
    # SSAST: total = target @ pred^T, -mean(diag(log_softmax(total, -1)))
    ssast = torch.stack([-torch.diagonal(torch.log_softmax(target[b] @ pred[b].T, -1)).mean() for b in range(3)])
    assert torch.allclose(info_nce(pred, target, orientation="targets")[0], mae.mean(), atol=1e-5)
    assert torch.allclose(info_nce(pred, target, orientation="predictions")[0], ssast.mean(), atol=1e-5)
    # 'predictions' = 'targets' with the roles of predictions and targets swapped
    assert torch.allclose(
        info_nce(pred, target, orientation="predictions")[0], info_nce(target, pred, orientation="targets")[0]
    )


@pytest.mark.parametrize("orientation", ["targets", "predictions"])
def test_info_nce_invalid_positions_change_nothing(orientation):
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, 2] = False
    valid[1, 4:] = False
    loss, acc = info_nce(pred, target, valid, orientation)
    # garbage at invalid positions does not matter
    pred2, target2 = pred.clone(), target.clone()
    pred2[~valid] = 1e3
    target2[~valid] = -7.0
    loss2, acc2 = info_nce(pred2, target2, valid, orientation)
    assert torch.allclose(loss, loss2) and torch.allclose(acc, acc2)
    # equals the valid-count-weighted mean of the per-clip losses on the reduced clips
    keep0 = valid[0].nonzero().flatten()
    keep1 = valid[1].nonzero().flatten()
    l0, a0 = info_nce(pred[:1, keep0], target[:1, keep0], orientation=orientation)
    l1, a1 = info_nce(pred[1:, keep1], target[1:, keep1], orientation=orientation)
    assert torch.allclose(loss, (l0 * 5 + l1 * 4) / 9, atol=1e-6)
    assert torch.allclose(acc, (a0 * 5 + a1 * 4) / 9, atol=1e-6)


def test_info_nce_gradients_finite_with_empty_clip():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 4, 3, generator=g, requires_grad=True)
    target = torch.randn(2, 4, 3, generator=g)
    valid = torch.tensor([[True, True, False, True], [False, False, False, False]])
    for orientation in ("targets", "predictions"):
        loss, acc = info_nce(pred, target, valid, orientation)
        (g_pred,) = torch.autograd.grad(loss, pred)
        assert torch.isfinite(loss) and torch.isfinite(g_pred).all()
        assert bool((g_pred[1] == 0).all()) and bool((g_pred[0, 2] == 0).all())
    loss, acc = info_nce(pred, target, torch.zeros(2, 4, dtype=torch.bool))
    assert float(loss.detach()) == 0.0 and float(acc) == 0.0


def test_info_nce_float32_under_autocast():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 5, 8, generator=g).bfloat16()
    target = torch.randn(2, 5, 8, generator=g).bfloat16()
    ref, _ = info_nce(pred.float(), target.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, acc = info_nce(pred, target)
        mse = masked_mse(pred, target)
    assert loss.dtype == torch.float32 and acc.dtype == torch.float32 and mse.dtype == torch.float32
    assert torch.allclose(loss, ref, atol=1e-6)


# ============================================================================ MSE
def test_masked_mse_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 4.0]]])
    assert abs(float(masked_mse(pred, target)) - (0 + 4 + 9 + 0) / 4) < 1e-7
    assert abs(float(masked_mse(pred, target, torch.tensor([[True, False]]))) - (0 + 4) / 2) < 1e-7
    assert abs(float(masked_mse(pred, target, torch.tensor([[False, True]]))) - (9 + 0) / 2) < 1e-7
    assert float(masked_mse(pred, target, torch.tensor([[False, False]]))) == 0.0
    assert torch.allclose(masked_mse(pred, target), F.mse_loss(pred, target))


# ============================================================================ EAT
def _inorm_cols(rows, eps=1e-5):
    """Instance norm of a T x D list-of-lists: per column over the rows (biased variance)."""
    T, D = len(rows), len(rows[0])
    out = [[0.0] * D for _ in range(T)]
    for d in range(D):
        col = [rows[t][d] for t in range(T)]
        mu = sum(col) / T
        var = sum((v - mu) ** 2 for v in col) / T
        for t in range(T):
            out[t][d] = (rows[t][d] - mu) / math.sqrt(var + eps)
    return out


def _lnorm_rows(rows, eps=1e-5):
    out = []
    for r in rows:
        mu = sum(r) / len(r)
        var = sum((v - mu) ** 2 for v in r) / len(r)
        out.append([(v - mu) / math.sqrt(var + eps) for v in r])
    return out


LAYER_A = [[1.0, 2.0, 0.0], [3.0, 2.0, 1.0], [2.0, 5.0, 2.0]]  # 3 tokens x 3 channels
LAYER_B = [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [2.0, 3.0, 5.0]]
LAYER_C = [[9.0, 9.0, 9.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]  # first layer, excluded by top_k=2


def test_eat_targets_by_hand():
    layers = [torch.tensor([rows]) for rows in (LAYER_C, LAYER_A, LAYER_B)]  # each (1, 3, 3)
    a, b = _inorm_cols(LAYER_A), _inorm_cols(LAYER_B)
    avg = [[(a[t][d] + b[t][d]) / 2 for d in range(3)] for t in range(3)]
    expected = _lnorm_rows(avg)
    y = eat_targets(layers, top_k=2)
    assert y.shape == (1, 3, 3) and y.dtype == torch.float32
    assert torch.allclose(y, torch.tensor([expected]), atol=1e-5)
    # top_k = 1 uses the last layer only
    assert torch.allclose(eat_targets(layers, top_k=1), torch.tensor([_lnorm_rows(_inorm_cols(LAYER_B))]), atol=1e-5)
    # switches: plain average of the top-k layers
    plain = [[(LAYER_A[t][d] + LAYER_B[t][d]) / 2 for d in range(3)] for t in range(3)]
    assert torch.allclose(
        eat_targets(layers, top_k=2, instance_norm=False, layer_norm=False), torch.tensor([plain]), atol=1e-6
    )
    # the masked instance norm path equals F.instance_norm without padding
    no_pad = torch.zeros(1, 3, dtype=torch.bool)
    assert torch.allclose(eat_targets(layers, 2, padding_mask=no_pad), y, atol=1e-5)
    with pytest.raises(ValueError):
        eat_targets(layers, top_k=4)


def test_eat_targets_padding_ignores_padded_tokens():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 6, 4, generator=g) for _ in range(3)]
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    y = eat_targets(layers, 3, padding_mask=pad)
    y_short = eat_targets([l[1:, :4] for l in layers], 3)
    assert torch.allclose(y[1, :4], y_short[0], atol=1e-5)


def test_eat_frame_and_utterance_scaling_trap_11():
    D, M, R = 4, 6, 2
    pred, target = torch.ones(M, D), torch.zeros(M, D)
    frame = eat_frame_loss(pred, target)
    assert abs(float(frame) - M * D * 1.0 / math.sqrt(D)) < 1e-6  # = 12
    assert eat_frame_loss(pred, target, reduction="none").shape == (M, D)
    cls_pred = torch.tensor([[0.5] * D, [0.0] * D])
    cls_target = torch.zeros(R, D)
    utt_rows = D * 0.25 / math.sqrt(D)  # row 0: 0.5, row 1: 0
    for lam in (1.0, 2.0):
        utt = eat_utterance_loss(cls_pred, cls_target, M, weight=lam)
        assert abs(float(utt) - lam * M * utt_rows) < 1e-6
        # trainer-style normalisation by the number of masked tokens:
        # L = [sum frame + lam * M * sum_rows utt] / M = mean-per-token frame + lam * SUM over rows of utt
        total = (frame + utt) / M
        assert abs(float(total) - (12 / M + lam * utt_rows)) < 1e-6


def test_eat_losses_random_case_against_formula():
    g = torch.Generator().manual_seed(4)
    B, clones, T, D = 2, 3, 10, 8
    y = torch.randn(B, T, D, generator=g)
    mask = torch.rand(B * clones, T, generator=g) < 0.8
    M = int(mask.sum())
    dec = torch.randn(B * clones, T, D, generator=g)
    cls = torch.randn(B * clones, D, generator=g)
    y_rep = y.repeat_interleave(clones, 0)
    frame = eat_frame_loss(dec[mask], y_rep[mask])
    utt = eat_utterance_loss(cls, y.mean(1).repeat_interleave(clones, 0), M, weight=1.0)
    frame_ref = sum(((dec[r, t] - y_rep[r, t]) ** 2).sum() for r in range(B * clones) for t in range(T) if mask[r, t])
    utt_ref = sum(((cls[r] - y[r // clones].mean(0)) ** 2).sum() for r in range(B * clones))
    expected = frame_ref / math.sqrt(D) / M + utt_ref / math.sqrt(D)
    assert torch.allclose((frame + utt) / M, torch.as_tensor(expected, dtype=torch.float32), rtol=1e-5)
    # tensor num_masked_total works too
    assert torch.allclose(eat_utterance_loss(cls, y.mean(1).repeat_interleave(clones, 0), torch.tensor(M)), utt)


def test_regression_var_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # unbiased variances 2 and 8
    expected = (math.sqrt(2 + 1e-6) + math.sqrt(8 + 1e-6)) / 2
    assert abs(float(regression_var(x)) - expected) < 1e-6
    assert abs(float(regression_var(x.view(1, 2, 2))) - expected) < 1e-6  # (B, T, D) flattened
    assert float(regression_var(torch.ones(1, 3))) == 0.0
