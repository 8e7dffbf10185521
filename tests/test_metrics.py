"""Accuracy, per-class average precision and mAP (fractions) against hand-computed cases (pure torch, no fairseq)."""
import math

import pytest
import torch

from maeast_fairseq.core.metrics import accuracy, average_precision, mean_average_precision, num_correct


def test_accuracy_with_indices_and_one_hot_rows():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.2, 0.9], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])  # right, right, wrong, wrong
    assert accuracy(logits, labels) == pytest.approx(0.5)
    assert accuracy(logits, torch.eye(3)[labels]) == pytest.approx(0.5)
    assert int(num_correct(logits, labels)) == 2 and math.isnan(accuracy(logits[:0], labels[:0]))
    # soft (mixed) rows count for their largest label
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0], [0.0, 0.4, 0.6], [0.9, 0.1, 0.0]])
    assert accuracy(logits, soft) == pytest.approx(1.0)


def test_average_precision_hand_computed():
    # class 0: ranking 1 0 1 0 -> precision at the hits 1/1, 2/3 -> AP = (1 + 2/3) / 2
    # class 1: ranking 0 1 0 1 -> precisions 1/2, 2/4 -> AP = 0.5
    # class 2: positives ranked first -> AP = 1
    scores = torch.tensor([[0.9, 0.9, 0.8], [0.8, 0.7, 0.7], [0.7, 0.1, 0.1], [0.6, 0.05, 0.0]])
    targets = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]])
    ap = average_precision(scores, targets)
    assert ap.tolist() == pytest.approx([(1 + 2 / 3) / 2, 0.5, 1.0])
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 0.5 + 1.0) / 3)


def test_tied_scores_form_one_threshold():
    # scores 0.5, 0.5, 0.2 with labels 1, 0, 1: threshold 0.5 -> P 1/2, R 1/2; threshold 0.2 -> P 2/3, R 1
    # AP = 0.5 * 1/2 + 0.5 * 2/3 (not 1 * 1/2 + ... as an arbitrary order of the tie could give)
    scores = torch.tensor([[0.5], [0.5], [0.2]])
    targets = torch.tensor([[1], [0], [1]])
    assert average_precision(scores, targets).item() == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    flipped = average_precision(scores.flip(0), targets.flip(0)).item()
    assert flipped == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)  # independent of the order of tied rows


def test_classes_without_positives_are_skipped():
    scores = torch.tensor([[0.9, 0.3, 0.1], [0.1, 0.8, 0.2], [0.4, 0.2, 0.9]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 1]])  # class 1 has no positive
    ap = average_precision(scores, targets)
    assert math.isnan(ap[1].item())
    assert ap[0].item() == pytest.approx(1.0) and ap[2].item() == pytest.approx(1.0)
    assert mean_average_precision(scores, targets) == pytest.approx(1.0)  # NaN class not averaged in
    assert math.isnan(mean_average_precision(scores, torch.zeros_like(targets)))


def test_worst_ranking_and_monotone_invariance():
    scores = torch.tensor([[0.9], [0.8], [0.1]])
    targets = torch.tensor([[0], [0], [1]])  # the only positive ranked last: AP = 1/3
    assert average_precision(scores, targets).item() == pytest.approx(1 / 3)
    assert average_precision(torch.logit(scores), targets).item() == pytest.approx(1 / 3)


def test_matches_scikit_learn_on_random_data():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 7, generator=g).round(decimals=1)  # rounding makes plenty of ties
    targets = (torch.rand(200, 7, generator=g) < 0.2).long()
    targets[:, 3] = 0  # one class without positives
    ours = average_precision(scores, targets)
    for c in range(7):
        if c == 3:
            assert math.isnan(ours[c].item())
            continue
        ref = metrics.average_precision_score(targets[:, c].numpy(), scores[:, c].numpy())
        assert ours[c].item() == pytest.approx(ref, abs=1e-12)
