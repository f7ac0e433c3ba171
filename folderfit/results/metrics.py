"""Scores computed from predicted probabilities and true labels (pure functions, no I/O).

Conventions (also in docs/outputs.md):
* `probs` is [N, classes] softmax output, `labels` the true class indices; the prediction is
  the arg-max and its probability the confidence.
* Per-class and macro scores count every class the model knows, also one absent from the
  scored split (its F1 is 0, as scikit-learn's zero_division=0 defines it).
* ROC-AUC is one-vs-rest per class and macro-averaged over the classes that have both
  positives and negatives in the scored split; `roc_auc_classes` says how many that was.
* Expected calibration error: top-1 confidence in ECE_BINS equal-width bins ((0, 1/15],
  (1/15, 2/15], ...); ECE = sum over bins of (bin share of images) x |accuracy - mean confidence|.
* Confidence intervals, 95%: accuracy's is the Wilson score interval (closed form,
  `accuracy_interval`): honest at 0% and 100% (all 20 right: 0.839-1.0, where a percentile
  bootstrap says 1.0-1.0) and needs no resampling. Macro-F1's is a seeded percentile
  bootstrap over images with at least MIN_RESAMPLES resamples (params: evaluate.bootstrap is
  0 = off or >= MIN_RESAMPLES); a bootstrap interval of zero width (every resample scored the
  same, e.g. all images right) is no interval and is not reported. The resamples are
  stratified by true class (each class keeps its count), so macro-F1 is averaged over the
  same classes in every resample as in the estimate.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from folderfit.params import BOOTSTRAP_MIN

ECE_BINS = 15
CI_LEVEL = 0.95
# fewer resamples give percentile tails that move with the seed (params validates the key)
MIN_RESAMPLES = BOOTSTRAP_MIN
CURVE_POINTS = 100  # at most this many points per class curve: keeps the DVC plot files small


def _r(value) -> float | None:
    return None if value is None else round(float(value), 6)


def confusion(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return skm.confusion_matrix(labels, preds, labels=list(range(n_classes)))


def row_normalized(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall view); rows of absent classes stay 0."""
    sums = matrix.sum(1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape, dtype=np.float64), where=sums > 0)


def per_class(labels: np.ndarray, preds: np.ndarray, class_names: list) -> dict:
    p, r, f, s = skm.precision_recall_fscore_support(
        labels, preds, labels=list(range(len(class_names))), zero_division=0)
    return {name: {"precision": _r(p[i]), "recall": _r(r[i]), "f1": _r(f[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)}


def top_k(n_classes: int) -> int:
    """k = min(5, classes - 1): with k = classes every image would count as a hit."""
    return max(1, min(5, n_classes - 1))


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """[N, k] class indices by falling probability (ties: lower index first)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    scores = probs[:, 1] if probs.shape[1] == 2 else probs  # scikit-learn's binary form
    return float(skm.top_k_accuracy_score(labels, scores, k=k, labels=list(range(probs.shape[1]))))


def _ovr_scorable(labels: np.ndarray, c: int) -> bool:
    positives = int((labels == c).sum())
    return 0 < positives < len(labels)


def ranking_per_class(probs: np.ndarray, labels: np.ndarray) -> tuple[list, list]:
    """One-vs-rest (ROC-AUC, average precision) per class; None where the scored split lacks
    the class's positives or negatives (the score is undefined then)."""
    aucs, aps = [], []
    for c in range(probs.shape[1]):
        if _ovr_scorable(labels, c):
            aucs.append(float(skm.roc_auc_score(labels == c, probs[:, c])))
            aps.append(float(skm.average_precision_score(labels == c, probs[:, c])))
        else:
            aucs.append(None)
            aps.append(None)
    return aucs, aps


def macro_over_defined(values: list) -> tuple[float | None, int]:
    defined = [v for v in values if v is not None]
    return (float(np.mean(defined)) if defined else None), len(defined)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin (right-closed): count, mean confidence, accuracy."""
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    safe = np.maximum(count, 1)
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count,
            "confidence": conf_sum / safe, "accuracy": hit_sum / safe}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               n_bins: int = ECE_BINS) -> float:
    bins = reliability_bins(confidence, correct, n_bins)
    share = bins["count"] / max(len(confidence), 1)
    return float(np.sum(share * np.abs(bins["accuracy"] - bins["confidence"])))


def macro_f1_rows(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of every row of [B, N] label/prediction arrays at once (same definition as
    per_class: all classes count, an undefined F1 is 0)."""
    rows = np.arange(labels.shape[0])[:, None] * n_classes
    size = labels.shape[0] * n_classes
    hits = np.bincount((rows + labels)[labels == preds], minlength=size)
    true = np.bincount((rows + labels).ravel(), minlength=size)
    pred = np.bincount((rows + preds).ravel(), minlength=size)
    denom = (true + pred).astype(np.float64)
    f1 = np.divide(2.0 * hits, denom, out=np.zeros(size), where=denom > 0)
    return f1.reshape(-1, n_classes).mean(1)


def stratified_resamples(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[count, N] image indices: each row redraws every class's images from that class (with
    replacement), so every resample holds each class exactly as often as the scored set.
    A plain resample of a small or imbalanced set often misses a rare class, whose F1 then
    counts as 0 and drags the interval below the estimate it should surround."""
    parts = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        parts.append(members[rng.integers(0, len(members), size=(count, len(members)))])
    return np.concatenate(parts, axis=1)


def bootstrap_ci(labels: np.ndarray, preds: np.ndarray, n_classes: int, resamples: int,
                 seed: int, level: float = CI_LEVEL) -> dict:
    """{"accuracy": (low, high), "macro_f1": (low, high)}: percentile bootstrap over images,
    stratified by true class (stratified_resamples)."""
    rng = np.random.default_rng(seed)
    labels, preds = np.asarray(labels), np.asarray(preds)
    accuracy, macro_f1 = [], []
    for start in range(0, resamples, 256):  # chunks bound the memory of [B, N] index arrays
        idx = stratified_resamples(labels, min(256, resamples - start), rng)
        y, p = labels[idx], preds[idx]
        accuracy.append((y == p).mean(1))
        macro_f1.append(macro_f1_rows(y, p, n_classes))
    tails = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {name: tuple(float(v) for v in np.percentile(np.concatenate(values), tails))
            for name, values in (("accuracy", accuracy), ("macro_f1", macro_f1))}


def accuracy_interval(correct: int, n: int, confidence: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion `correct`/`n`: (low, high) within [0, 1], never of
    zero width for n > 0 (at 0 or n right it still says how far the truth may lie); (0, 1)
    for n = 0 (nothing measured). Closed form, so the same for any seed."""
    from statistics import NormalDist

    if not 0 <= correct <= n:
        raise ValueError(f"accuracy_interval: correct={correct} must be in 0..n={n}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at the ends the exact bound is 0 or 1: no rounding leaves it a hair inside
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return float(low), float(high)


def _thin(n: int, limit: int = CURVE_POINTS) -> np.ndarray:
    """Indices of at most `limit` points spread over a curve of n, first and last kept."""
    return np.arange(n) if n <= limit else np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def class_curves(probs: np.ndarray, labels: np.ndarray, class_names: list) -> tuple[list, list]:
    """One-vs-rest ROC and precision-recall points of every scorable class, as rows for DVC
    plots: ({class, point, fpr, tpr}, {class, point, recall, precision}); `point` orders them."""
    roc, pr = [], []
    for c, name in enumerate(class_names):
        if not _ovr_scorable(labels, c):
            continue
        fpr, tpr, _ = skm.roc_curve(labels == c, probs[:, c])
        for i, j in enumerate(_thin(len(fpr))):
            roc.append({"class": name, "point": i, "fpr": _r(fpr[j]), "tpr": _r(tpr[j])})
        precision, recall, _ = skm.precision_recall_curve(labels == c, probs[:, c])
        precision, recall = precision[::-1], recall[::-1]  # rising recall
        for i, j in enumerate(_thin(len(recall))):
            pr.append({"class": name, "point": i, "recall": _r(recall[j]),
                       "precision": _r(precision[j])})
    return roc, pr


def per_class_report(probs: np.ndarray, labels: np.ndarray, class_names: list) -> dict:
    """per_class() plus one-vs-rest ROC-AUC and average precision (None where undefined), and
    the Wilson 95% interval of each class's recall (how little a few scored photos say)."""
    preds = probs.argmax(1)
    report = per_class(labels, preds, class_names)
    aucs, aps = ranking_per_class(probs, labels)
    for i, row in enumerate(report.values()):
        row["roc_auc"], row["average_precision"] = _r(aucs[i]), _r(aps[i])
        hits = int(((labels == i) & (preds == i)).sum())
        row["recall_ci95"] = [_r(v) for v in accuracy_interval(hits, row["support"])]
    return report


def summary(probs: np.ndarray, labels: np.ndarray, seed: int, resamples: int) -> dict:
    """The headline numbers of eval.json (flat, so `dvc metrics diff` stays readable)."""
    preds = probs.argmax(1)
    n_classes = probs.shape[1]
    k = top_k(n_classes)
    auc, auc_classes = macro_over_defined(ranking_per_class(probs, labels)[0])
    confidence = probs.max(1)
    out = {
        "accuracy": _r(skm.accuracy_score(labels, preds)),
        "balanced_accuracy": _r(skm.balanced_accuracy_score(labels, preds)),
        "macro_f1": _r(skm.f1_score(labels, preds, average="macro",
                                    labels=list(range(n_classes)), zero_division=0)),
        "top_k": k,
        "top_k_accuracy": _r(top_k_accuracy(probs, labels, k)),
        "roc_auc_ovr_macro": _r(auc),
        "roc_auc_classes": auc_classes,
        "ece": _r(expected_calibration_error(confidence, preds == labels)),
        "ece_bins": ECE_BINS,
    }
    low, high = accuracy_interval(int((preds == labels).sum()), len(labels))
    out["accuracy_ci95_low"], out["accuracy_ci95_high"] = _r(low), _r(high)
    out["accuracy_ci_method"] = "wilson"
    if resamples > 0:
        if resamples < MIN_RESAMPLES:  # params.validate stops this earlier; a library caller too
            raise ValueError(f"bootstrap: {resamples} resamples are too few for a 95% interval "
                             f"(at least {MIN_RESAMPLES}, or 0 = off)")
        low, high = bootstrap_ci(labels, preds, n_classes, resamples, seed)["macro_f1"]
        if high > low:  # zero width: every resample agreed; that is no interval
            out["macro_f1_ci95_low"], out["macro_f1_ci95_high"] = _r(low), _r(high)
        out["bootstrap_resamples"] = resamples
    return out
