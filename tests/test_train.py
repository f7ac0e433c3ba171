"""Training-stage helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import params_with

from folderfit.pipeline.train import class_weights


def test_balanced_class_weights_follow_inverse_frequency():
    samples = [(Path("a"), 0)] * 10 + [(Path("b"), 1)] * 30
    weights = class_weights(params_with(class_weighting="balanced"), samples, 2)
    assert weights.tolist() == pytest.approx([40 / (2 * 10), 40 / (2 * 30)])
    assert class_weights(params_with(class_weighting="none"), samples, 2) is None


def test_a_class_absent_from_training_gets_weight_one():
    weights = class_weights(params_with(class_weighting="balanced"), [(Path("a"), 0)] * 4, 3)
    assert weights.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_weighted_loss_favours_the_rare_class():
    weights = class_weights(params_with(class_weighting="balanced"),
                            [(Path("a"), 0)] * 9 + [(Path("b"), 1)], 2)
    logits = torch.zeros(2, 2)
    loss = torch.nn.CrossEntropyLoss(weight=weights, reduction="none")
    per_sample = loss(logits, torch.tensor([0, 1]))
    assert per_sample[1] > per_sample[0]
