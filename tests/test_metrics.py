"""Metrics against values worked out by hand."""

import math

import pytest
import torch

from trainers.metrics import classification_metrics, ece

P = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
Y = torch.tensor([0, 1, 1, 0])


def test_accuracy_nll_brier_by_hand():
    m = classification_metrics(P, Y, bins=10)
    assert m["accuracy"] == pytest.approx(0.75)  # sample 2 (conf 0.6 for class 0, truth 1) is wrong
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4)
    brier = ((0.1**2 + 0.1**2) + (0.6**2 + 0.6**2) + (0.3**2 + 0.3**2) + (0.2**2 + 0.2**2)) / 4
    assert m["brier"] == pytest.approx(brier)


def test_ece_by_hand():
    # 10 bins: confidences 0.9, 0.6, 0.7, 0.8 fall in bins (0.8,0.9], (0.5,0.6], (0.6,0.7], (0.7,0.8]:
    # one example each; accuracies 1, 0, 1, 1 -> |1-.9| + |0-.6| + |1-.7| + |1-.8| = 1.2, / 4
    assert ece(P, Y, bins=10) == pytest.approx(0.3)
    # one bin: |mean acc - mean conf| = |0.75 - 0.75|
    assert ece(P, Y, bins=1) == pytest.approx(0.0)


def test_ece_bins_are_right_closed():
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5]])  # conf exactly 0.5 -> bin (0.4, 0.5] with 10 bins
    y = torch.tensor([0, 1])
    assert ece(p, y, bins=10) == pytest.approx(0.0)  # acc 0.5 (argmax picks class 0), conf 0.5
    assert ece(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), bins=15) == pytest.approx(1.0)


def test_perfect_and_uniform_predictions():
    y = torch.arange(4)
    m = classification_metrics(torch.eye(4), y)
    assert (m["accuracy"], m["brier"], m["ece"]) == (1.0, 0.0, 0.0)
    assert m["nll"] == pytest.approx(0.0, abs=1e-12)
    u = classification_metrics(torch.full((4, 4), 0.25), y)
    assert u["nll"] == pytest.approx(math.log(4))
    assert u["brier"] == pytest.approx(0.75)
