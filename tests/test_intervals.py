"""Intervals that stay honest at 0% and 100% (issue 24): Wilson for accuracy, a bootstrap of
at least MIN_RESAMPLES for macro-F1 that is left out when it has zero width, and a params
check that refuses a bootstrap too small to be an interval."""

from __future__ import annotations

import numpy as np
import pytest

from folderfit.results import metrics

Z = 1.959963984540054  # the 97.5% normal quantile


@pytest.mark.parametrize("n", [1, 9, 20, 500])
def test_wilson_at_the_ends_has_the_closed_form_bounds(n):
    # at 0 of n right: (0, z^2 / (n + z^2)); at n of n: (n / (n + z^2), 1)
    assert metrics.accuracy_interval(0, n) == pytest.approx((0.0, Z * Z / (n + Z * Z)))
    assert metrics.accuracy_interval(n, n) == pytest.approx((n / (n + Z * Z), 1.0))


def test_wilson_in_the_middle_and_its_edge_cases():
    low, high = metrics.accuracy_interval(8, 15)
    assert (round(low, 4), round(high, 4)) == (0.3012, 0.7519)  # textbook value
    assert metrics.accuracy_interval(8, 15, confidence=0.99)[0] < low  # wider at 99%
    assert metrics.accuracy_interval(0, 0) == (0.0, 1.0)  # nothing measured: anything is possible
    with pytest.raises(ValueError):
        metrics.accuracy_interval(3, 2)


def one_hot(preds, n_classes):
    return np.eye(n_classes)[preds] * 0.9 + 0.1 / n_classes


def test_all_right_is_not_reported_as_certain():
    labels = np.repeat([0, 1, 2], 5)
    summary = metrics.summary(one_hot(labels, 3), labels, seed=0, resamples=1000)
    assert summary["accuracy"] == 1.0
    assert summary["accuracy_ci95_high"] == 1.0
    assert summary["accuracy_ci95_low"] == pytest.approx(15 / (15 + Z * Z), abs=1e-6)  # 0.796
    # every resample scores macro-F1 1.0: a zero-width "interval" is not reported
    assert "macro_f1_ci95_low" not in summary and "macro_f1_ci95_high" not in summary


def test_accuracy_interval_is_there_without_bootstrap_and_bootstrap_needs_enough_resamples():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 40)
    preds = np.where(rng.random(40) < 0.6, labels, rng.integers(0, 3, 40))
    summary = metrics.summary(one_hot(preds, 3), labels, seed=0, resamples=0)
    correct = int((preds == labels).sum())
    assert (summary["accuracy_ci95_low"], summary["accuracy_ci95_high"]) == pytest.approx(
        metrics.accuracy_interval(correct, 40), abs=1e-6)
    assert "macro_f1_ci95_low" not in summary
    with_boot = metrics.summary(one_hot(preds, 3), labels, seed=0, resamples=metrics.MIN_RESAMPLES)
    assert with_boot["macro_f1_ci95_low"] < with_boot["macro_f1"] < with_boot["macro_f1_ci95_high"]
    with pytest.raises(ValueError, match="too few"):
        metrics.summary(one_hot(preds, 3), labels, seed=0, resamples=1)


@pytest.mark.parametrize("value, ok", [(0, True), (1, False), (199, False), (200, True),
                                       (1000, True), (100_001, False)])
def test_params_bootstrap_is_off_or_at_least_the_minimum(value, ok):
    from conftest import params_with

    from folderfit.errors import PipelineError

    if ok:
        assert params_with(**{"evaluate.bootstrap": value}).evaluate.bootstrap == value
    else:
        with pytest.raises(PipelineError, match=r"'evaluate.bootstrap' must be 0 \(off\) or in "
                                                r"200\.\.100000, got " + str(value)):
            params_with(**{"evaluate.bootstrap": value})
