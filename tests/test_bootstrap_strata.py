"""The macro-F1 bootstrap interval surrounds its own estimate on small, imbalanced sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from folderfit.results import metrics


def _point(labels, preds, k):
    return f1_score(labels, preds, average="macro", labels=range(k), zero_division=0)


def test_interval_contains_the_estimate_with_rare_classes():
    # six classes of one photo each and one of three: a plain resample misses ~2 of the
    # single-photo classes and scored them F1 0 (interval 0.375-0.813 around 0.833)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 7, 7])
    preds = np.array([0, 1, 2, 3, 2, 5, 6, 7, 7, 7])
    point = _point(labels, preds, 8)
    low, high = metrics.bootstrap_ci(labels, preds, 8, 1000, seed=42)["macro_f1"]
    assert low <= point <= high, (low, point, high)


def test_interval_contains_the_estimate_across_small_imbalanced_cases():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(3, 9))
        sizes = rng.integers(1, 8, k)
        sizes[: int(rng.integers(1, k))] = 1
        labels = np.repeat(np.arange(k), sizes)
        preds = np.where(rng.random(len(labels)) < rng.uniform(0.6, 1), labels,
                         rng.integers(0, k, len(labels)))
        low, high = metrics.bootstrap_ci(labels, preds, k, 400, seed=1)["macro_f1"]
        assert low <= _point(labels, preds, k) <= high, (labels.tolist(), preds.tolist())


def test_every_resample_keeps_each_class_count():
    labels = np.array([2, 0, 0, 1, 0, 2, 0, 0])
    idx = metrics.stratified_resamples(labels, 50, np.random.default_rng(3))
    assert idx.shape == (50, len(labels))
    for row in labels[idx]:
        assert np.bincount(row, minlength=3).tolist() == np.bincount(labels).tolist()


def test_all_right_gives_no_interval():
    labels = np.array([0] * 9 + [1] * 3 + [2])
    summary = metrics.summary(np.eye(3)[labels], labels, seed=0, resamples=200)
    assert summary["macro_f1"] == 1.0 and "macro_f1_ci95_low" not in summary


@pytest.mark.parametrize("seed", [0, 1])
def test_reproducible_for_a_seed(seed):
    labels = np.array([0] * 7 + [1] * 4 + [2] * 2)
    preds = labels.copy()
    preds[[0, 8]] = [1, 2]
    assert metrics.bootstrap_ci(labels, preds, 3, 300, seed) == metrics.bootstrap_ci(labels, preds, 3, 300, seed)
