"""Scores computed from predicted probabilities and true labels (pure functions, no I/O)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def confusion(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return skm.confusion_matrix(labels, preds, labels=list(range(n_classes)))


def per_class(labels: np.ndarray, preds: np.ndarray, class_names: list) -> dict:
    p, r, f, s = skm.precision_recall_fscore_support(
        labels, preds, labels=list(range(len(class_names))), zero_division=0)
    return {name: {"precision": round(float(p[i]), 6), "recall": round(float(r[i]), 6),
                   "f1": round(float(f[i]), 6), "support": int(s[i])}
            for i, name in enumerate(class_names)}


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean([labels[i] in top[i] for i in range(len(labels))]))


def summary(probs: np.ndarray, labels: np.ndarray) -> dict:
    preds = probs.argmax(1)
    n_classes = probs.shape[1]
    k = max(1, min(5, n_classes - 1))
    return {
        "accuracy": round(float(skm.accuracy_score(labels, preds)), 6),
        "balanced_accuracy": round(float(skm.balanced_accuracy_score(labels, preds)), 6),
        "macro_f1": round(float(skm.f1_score(labels, preds, average="macro",
                                              labels=list(range(n_classes)), zero_division=0)), 6),
        f"top{k}_accuracy": round(top_k_accuracy(probs, labels, k), 6),
    }
