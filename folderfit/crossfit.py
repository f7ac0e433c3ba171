"""Out-of-sample class probabilities for every image: K-fold cross-fitting of the head.

The images are split into K folds (stratified by label, seeded); the head (folderfit.head's
exact logistic regression on frozen-backbone features) is fitted on K-1 folds and scores
the fold left out, so no image is scored by a head that saw its label. Copies go together:
the folds are grouped (sklearn's StratifiedGroupKFold) by `groups`, so an image is never
scored by a head that trained on its identical or near-identical copy either.

The regularisation strength is chosen once: the head's l2 path (GRID) is solved on folds
2..K-1 and the l2 with the lowest log loss on fold 1 wins (log loss: the ranking needs good
probabilities, not only the right argmax). Fold 0's labels play no part in it; for the other
folds the choice of one scalar saw their labels, their head's weights never did. (Choosing
per fold picked the same l2 in 4 of 5 folds on trashnet-mini and cost 5x the time.) Each
fold's head is then solved at that l2, warm-started from the previous fold's solution: the
folds share most of their rows, so this converges in a few steps. Rows: every view of every
training image; scores: the softmax of the logits averaged over the views (test-time
augmentation with the same views).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from folderfit import head as H

# l2 candidates: the head's grid down to 1e-2. Weaker penalties give over-confident
# probabilities (the ranking needs calibrated ones) and are the slowest solves.
GRID = tuple(l2 for l2 in H.L2_GRID if l2 >= 1e-2)


@dataclass
class CrossFit:
    probs: np.ndarray  # [N, classes] float64, out of sample
    fold: np.ndarray  # [N] fold of each image
    l2: list  # l2 chosen for each fold


def plan_folds(counts, wanted: int) -> tuple[int, str | None]:
    """(K to use, a note or None). Stratified folds need every class in every fold, so K is at
    most the smallest class's image count (classes with one image cannot be cross-fitted at
    all: the caller leaves them out); at least 2."""
    counts = [int(c) for c in counts if c >= 2]
    if not counts:
        return 2, None
    k = max(2, min(wanted, min(counts)))
    if k == wanted:
        return k, None
    return k, (f"review.folds is {wanted}, but the smallest class has {min(counts)} images: "
               f"{k}-fold cross-fitting instead")


def assign_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per image: stratified by label, copies (same group) in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    # never more folds than the smallest class has images (sklearn refuses: plan_folds)
    k = max(2, min(k, n_groups, int(np.bincount(labels)[np.unique(labels)].min())))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    with warnings.catch_warnings():  # a class smaller than k: sklearn warns, the folds are fine
        warnings.simplefilter("ignore", UserWarning)
        for i, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            fold[held] = i
    return fold


def _rows(views: list[torch.Tensor], mask: np.ndarray, labels: np.ndarray):
    index = torch.from_numpy(np.flatnonzero(mask))
    x = torch.cat([v[index] for v in views])
    y = torch.from_numpy(labels[mask]).repeat(len(views))
    return x, y


def _mean_view(views: list[torch.Tensor], mask: np.ndarray) -> torch.Tensor:
    """The views' features averaged per image: the head is linear, so its logits on the mean
    are the mean of its logits on the views."""
    index = torch.from_numpy(np.flatnonzero(mask))
    return torch.stack([v[index] for v in views]).mean(0)


def _probs(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    logits = x.double() @ weight.double().T + bias.double()
    return torch.softmax(logits, 1).numpy()


def _choose_l2(views, labels, train: np.ndarray, held: np.ndarray, n_classes: int,
               class_weights) -> float:
    """The l2 of the grid whose head, fitted on `train`, gives `held` the lowest log loss."""
    x, y = _rows(views, train, labels)
    fit = H.fit_head(x, y, _mean_view(views, held), torch.from_numpy(labels[held]), n_classes,
                     class_weights=class_weights, grid=GRID)
    return min(fit.path, key=lambda row: (row["val_loss"], -row["l2"]))["l2"]


def cross_fit(views: list[torch.Tensor], labels: np.ndarray, n_classes: int, groups: np.ndarray,
              k: int, seed: int, class_weights: torch.Tensor | None = None) -> CrossFit:
    """views: [N, features] per view (same image order); labels: [N] given class indices."""
    fold = assign_folds(labels, groups, k, seed)
    k = int(fold.max()) + 1
    # one l2 for every fold, chosen on fold 1 with folds 2.. as training rows
    l2 = _choose_l2(views, labels, fold >= 2, fold == 1, n_classes, class_weights) if k > 2 \
        else GRID[len(GRID) // 2]
    probs = np.zeros((len(labels), n_classes))
    solution = None
    for f in range(k):
        scored = fold == f
        x, y = _rows(views, ~scored, labels)
        solution = H.refit(x, y, n_classes, l2, class_weights=class_weights, start=solution)
        probs[scored] = _probs(*solution, _mean_view(views, scored))
    return CrossFit(probs, fold, [l2] * k)
