"""How many more photos per class: a learning curve of the frozen-feature head, out of fold.

The training images (train + val, as the delivered head learned from them) are split into K
folds (folderfit.frozen.crossfit.assign_folds: stratified, copies in one fold). In each fold
the head (folderfit.frozen.head.refit) is solved at the delivered head's l2 on nested,
stratified subsets of the other folds' images (FRACTIONS of each class, at least one photo)
and scores the fold left out, the way evaluate scores (logits on the mean of the evaluation
views). Every image is thus scored once per fraction by a head that never saw it: per class
recall and overall accuracy against photos per class.

Per class, the error e = 1 - recall is fitted with a saturating power law e(n) = a n^-b + c
(a, c >= 0; `fit_power_law`) and read at the class's photos now and at twice as many: the
gain of one doubling, said in words (`statement`). The exponent b is fitted once, on the
overall error (all images: far less noisy than one class's), and shared by the classes, which
fit only a and c: with b free, a class's five noisy points often bent into a false plateau. Fewer than MIN_POINTS
distinct subset sizes: no forecast. A gain below FLAT_GAIN reads "flat".

Cost: len(FRACTIONS) fits per fold, each warm-started from the previous fold's solution at
the same fraction; skipped when the training rows hold more than MAX_VALUES feature values.
Deterministic: seeded subsets, deterministic solves.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from folderfit.frozen import feature_cache, head
from folderfit.frozen.crossfit import assign_folds

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
FOLDS = 5
# rows x features of the training rows above which the curve is skipped: each of the
# len(FRACTIONS) x FOLDS solves would cost about as much as the delivered head's refit
MAX_VALUES = 30_000_000
MIN_POINTS = 3  # distinct subset sizes needed to fit a curve
FLAT_GAIN = 0.01  # a doubling forecast to add less accuracy than this: "flat"
EXPONENTS = tuple(np.round(np.linspace(0.05, 2.0, 40), 4))  # b of e = a n^-b + c


def too_big(n_images: int, n_views: int, dim: int) -> str | None:
    """Why the curve is skipped for this many training rows, or None."""
    values = n_images * n_views * dim
    if values <= MAX_VALUES:
        return None
    return (f"{n_images} images x {n_views} views x {dim} features = {values:,d} feature values "
            f"> {MAX_VALUES:,d}: {len(FRACTIONS)} x {FOLDS} head solves would cost too much")


def _subsets(labels: np.ndarray, rows: np.ndarray, n_classes: int, rng) -> list[np.ndarray]:
    """Nested stratified subsets of `rows` (image indices), one per fraction: per class a
    seeded order, of which each fraction takes the first ceil(f * n) (at least 1)."""
    orders = {c: rows[labels[rows] == c][rng.permutation(int((labels[rows] == c).sum()))]
              for c in range(n_classes)}
    out = []
    for f in FRACTIONS:
        keep = [order[:max(1, math.ceil(f * len(order)))] for order in orders.values() if len(order)]
        out.append(np.sort(np.concatenate(keep)) if keep else np.array([], dtype=np.int64))
    return out


def curve(train_views: list[torch.Tensor], eval_views: list[torch.Tensor], labels, n_classes: int,
          groups, *, l2: float, seed: int, class_weights: torch.Tensor | None = None,
          label_smoothing: float = 0.0, folds: int = FOLDS) -> dict:
    """The out-of-fold learning curve (module docstring).

    train_views: [images, dim] per training view (the rows the head learns from);
    eval_views: [images, dim] per view averaged for scoring (clean, + mirror with flip TTA);
    labels: [images] class indices; groups: one key per image, copies share one.
    Returns {"folds", "fractions", "photos" [fraction][class] (mean over folds),
    "correct_per_class" [fraction][class], "count_per_class" [class], "accuracy" [fraction]}."""
    labels = np.asarray(labels)
    fold = assign_folds(labels, np.asarray(groups), folds, seed)
    k_total = int(fold.max()) + 1
    x_eval = feature_cache.mean_over_views(list(eval_views))
    correct = np.zeros((len(FRACTIONS), len(labels)), dtype=bool)
    photos = np.zeros((len(FRACTIONS), n_classes))
    previous: dict[int, tuple] = {}  # fraction index -> the last fold's solution (warm start)
    for k in range(k_total):
        held = np.flatnonzero(fold == k)
        rng = np.random.default_rng([seed, k])
        for i, subset in enumerate(_subsets(labels, np.flatnonzero(fold != k), n_classes, rng)):
            index = torch.from_numpy(subset)
            x = torch.cat([v[index] for v in train_views])
            y = torch.from_numpy(labels[subset]).long().repeat(len(train_views))
            weight, bias = head.refit(x, y, n_classes, l2, class_weights=class_weights,
                                      label_smoothing=label_smoothing, start=previous.get(i))
            previous[i] = (weight, bias)
            logits = x_eval[torch.from_numpy(held)].float() @ weight.T + bias
            correct[i, held] = logits.argmax(1).numpy() == labels[held]
            photos[i] += np.bincount(labels[subset], minlength=n_classes)
    count = np.bincount(labels, minlength=n_classes)
    per_class = [[int(correct[i, labels == c].sum()) for c in range(n_classes)]
                 for i in range(len(FRACTIONS))]
    return {"folds": k_total, "fractions": list(FRACTIONS),
            "photos": (photos / k_total).round(2).tolist(), "correct_per_class": per_class,
            "count_per_class": count.tolist(), "accuracy": [round(float(c.mean()), 6) for c in correct]}


def fit_power_law(n, error, exponents=EXPONENTS) -> tuple[float, float, float] | None:
    """(a, b, c) of e(n) = a n^-b + c (a, c >= 0) with the least squared error over the points,
    b from `exponents`; None with fewer than MIN_POINTS distinct n."""
    n, error = np.asarray(n, dtype=float), np.asarray(error, dtype=float)
    if len(np.unique(n)) < MIN_POINTS or (n <= 0).any():
        return None
    best = None
    for b in exponents:
        u = n ** -b
        design = np.stack([u, np.ones_like(u)], 1)
        a, c = np.linalg.lstsq(design, error, rcond=None)[0]
        if a < 0:  # no decrease with n: a constant
            a, c = 0.0, float(error.mean())
        elif c < 0:
            a, c = float(u @ error / (u @ u)), 0.0
        sse = float(((a * u + c - error) ** 2).sum())
        if best is None or sse < best[0] - 1e-12:
            best = (sse, float(a), float(b), float(c))
    return best[1:]


def forecast(n, accuracy, photos_now: float, exponents=EXPONENTS) -> dict | None:
    """Accuracy read off the fitted curve at `photos_now` and at twice as many, and the gain
    of that doubling; None when the points cannot carry a curve."""
    fit = fit_power_law(n, 1 - np.asarray(accuracy, dtype=float), exponents)
    if fit is None or photos_now <= 0:
        return None
    a, b, c = fit

    def acc(m: float) -> float:
        return float(np.clip(1 - (a * m ** -b + c), 0.0, 1.0))
    now, double = acc(photos_now), acc(2 * photos_now)
    return {"a": round(a, 6), "b": round(b, 4), "c": round(c, 6), "accuracy_now": round(now, 4),
            "accuracy_doubled": round(double, 4), "gain_per_doubling": round(max(double - now, 0.0), 4)}


def statement(name: str, photos: list, accuracy: list, photos_now: int, fc: dict | None) -> tuple[str, str]:
    """(verdict: rising | flat | unknown, the sentence the results page shows)."""
    last_n, last_acc = photos[-1], accuracy[-1]
    seen = f"{last_acc:.2f} at {last_n:.0f} photos"
    if fc is None:
        return "unknown", f"{name}: {seen}; too few photos to draw a curve"
    gain = fc["gain_per_doubling"]
    if gain < FLAT_GAIN:
        return "flat", (f"{name}: flat ({accuracy[0]:.2f} at {photos[0]:.0f} photos, {seen}): "
                        f"more photos of this class are unlikely to help")
    points = max(1, round(100 * gain))
    unit = "point" if points == 1 else "points"
    return "rising", (f"{name}: {seen}, still rising ~{points} {unit} per doubling: about "
                      f"{photos_now} more photos would give ~+{points} {unit}")


def describe(result: dict, class_names: list[str]) -> dict:
    """The curve as recorded in metrics/train/learning_curve.json: per class its points,
    forecast, verdict and statement, and the overall accuracy per fraction."""
    overall_n = [float(np.mean([v for v, t in zip(row, result["count_per_class"]) if t]))
                 for row in result["photos"]]
    shape = fit_power_law(overall_n, 1 - np.asarray(result["accuracy"]))
    classes = {}
    for c, name in enumerate(class_names):
        total = result["count_per_class"][c]
        if not total:
            continue
        photos = [row[c] for row in result["photos"]]
        accuracy = [round(row[c] / total, 6) for row in result["correct_per_class"]]
        fc = forecast(photos, accuracy, total, (shape[1],)) if shape else None
        verdict, text = statement(name, photos, accuracy, total, fc)
        # the binomial standard error of the last point: how far chance alone moves it
        noise = math.sqrt(accuracy[-1] * (1 - accuracy[-1]) / total)
        classes[name] = {"photos_now": total, "photos": photos, "accuracy": accuracy,
                         "standard_error": round(noise, 4), "forecast": fc, "verdict": verdict,
                         "statement": text}
    return {"folds": result["folds"], "fractions": result["fractions"],
            "overall": {"photos_per_class": [round(v, 2) for v in overall_n], "accuracy": result["accuracy"],
                        "exponent": shape[1] if shape else None},
            "classes": classes}
