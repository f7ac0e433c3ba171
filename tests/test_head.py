"""The exact head solver on frozen features (folderfit.frozen.head)."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from folderfit.frozen import head as linear_head


def blobs(n_per_class: int, dim: int = 20, classes: int = 3, spread: float = 2.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 2
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=gen) + 5.0  # offset: standardising matters
    return x, y


def test_solution_matches_scikit_learns_logistic_regression():
    """One l2 on standardised features is sklearn's L2 logistic regression with
    C = 1 / (l2 * n): same optimum, so the same probabilities."""
    x, y = blobs(40)
    l2 = 0.05
    weight, bias = linear_head.refit(x, y, 3, l2)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    reference = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000)
    reference.fit(((x - mean) / std).numpy(), y.numpy())
    ours = torch.softmax(x @ weight.T + bias, 1)
    theirs = torch.from_numpy(reference.predict_proba(((x - mean) / std).numpy())).float()
    assert torch.allclose(ours, theirs, atol=2e-3)


def test_regularisation_is_chosen_on_val_and_folded_into_a_plain_linear():
    x, y = blobs(30, seed=1)
    vx, vy = blobs(20, seed=1)  # same centres, new points
    fit = linear_head.fit_head(x, y, vx[:60], vy[:60], 3)
    assert [row["l2"] for row in fit.path] == list(linear_head.L2_GRID)
    best = max(fit.path, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert fit.l2 == best["l2"] and fit.val_accuracy == best["val_accuracy"]
    head = torch.nn.Linear(x.shape[1], 3)
    fit.apply_to(head)
    with torch.no_grad():
        accuracy = float((head(vx).argmax(1) == vy).float().mean())
    assert accuracy == pytest.approx(fit.val_accuracy) and accuracy > 0.9


def test_same_features_same_head():
    x, y = blobs(25, seed=2)
    first = linear_head.fit_head(x, y, x[:10], y[:10], 3)
    again = linear_head.fit_head(x, y, x[:10], y[:10], 3)
    assert torch.equal(first.weight, again.weight) and torch.equal(first.bias, again.bias)


def test_stronger_regularisation_shrinks_the_weights():
    x, y = blobs(25, seed=3)
    strong, _ = linear_head.refit(x, y, 3, 1.0)
    weak, _ = linear_head.refit(x, y, 3, 1e-3)
    assert strong.norm() < weak.norm()


def test_the_solve_restores_torchs_thread_count():
    before = torch.get_num_threads()
    x, y = blobs(10, seed=4)
    linear_head.fit_head(x, y, x, y, 3)
    assert torch.get_num_threads() == before
