"""The decision rules of a feature_extract model (when to say `unsure` or `unfamiliar`, and
the conformal prediction sets), fitted from out-of-sample scores; folderfit.compute.decisions
applies them, folderfit.artifacts.model_file stores them.

Which scores: the K-fold cross-validation of the whole head procedure over train + val
(folderfit.frozen.probe.cross_validate): each image is scored by a head solved without it,
with its own l2, flip choice and temperature. The val split's probabilities under the
delivered head are not out of sample: with refit_head the delivered head is solved on val
too, and its temperature is fitted on val. The fold heads learn from (K-1)/K of the images,
so they are slightly weaker than the delivered head: the thresholds err on the safe side.

* Confidence threshold: candidate thresholds are the calibration confidences; a threshold
  passes when the one-sided 95% Clopper-Pearson lower bound on the accuracy of the images
  it accepts reaches `target_accuracy`, and the lowest passing one is kept. Choosing among
  many thresholds costs a little of the nominal 95%: on calibrated synthetic scores the
  accuracy of accepted fresh images reached the target in 93-99 of 100 seeds (testing in a
  fixed order from the top and stopping at the first failure was no safer there and kept
  fewer images). None passes: only images at the highest calibration confidence are
  accepted, and `target_met` is False.
* Unfamiliar images: the cosine distance of an image's backbone features to its nearest
  training vector (NEIGHBOURS) (a seeded sample of at most MAX_REFERENCE of them,
  L2-normalised, stored in half precision). The threshold is the DISTANCE_QUANTILE
  conformal quantile of the out-of-sample distances of train + val images: each to the
  stored vectors outside its own fold. So at most ~5% of in-distribution photos are flagged.
  Measured with tf_efficientnet_lite0 trained on five trashnet-mini classes: against
  scikit-learn digits every rule separates perfectly (ROC-AUC 1.0); against the held-out
  sixth class (trash, photos much like the others) the nearest vector gave ROC-AUC 0.75,
  the mean of the 5 nearest 0.71 and the class centroids 0.69.
* Prediction sets: per class, the sorted scores 1 - p(true class) (split conformal);
  classes with fewer than MIN_CLASS_CALIBRATION use the pooled scores.
"""

from __future__ import annotations

import numpy as np
import torch

from folderfit.artifacts.model_file import DecisionRules
from folderfit.compute.decisions import conformal_quantile, neighbour_distance, normalise

CONFIDENCE = 0.95  # of the one-sided lower bound on accepted accuracy
MAX_REFERENCE = 2000  # training vectors kept in the model file for the distance
NEIGHBOURS = 1  # nearest training vectors averaged (measured: 1 separated best, docstring)
DISTANCE_QUANTILE = 0.95
MIN_CLASS_CALIBRATION = 30


def accuracy_lower_bound(correct: np.ndarray, n: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound on the success rate of `correct` out of `n`:
    the beta distribution's quantile (scipy.stats.beta.ppf's numbers, from scipy.special,
    which spares train the import of scipy.stats)."""
    from scipy.special import betaincinv

    correct, n = np.asarray(correct, float), np.asarray(n, float)
    with np.errstate(invalid="ignore"):
        low = betaincinv(correct, n - correct + 1, 1 - confidence)
    return np.where(correct > 0, np.nan_to_num(low, nan=0.0), 0.0)


def confidence_threshold(confidence: np.ndarray, correct: np.ndarray,
                         target: float) -> tuple[float, bool, float, float]:
    """(threshold, target met, accepted fraction, lower bound of accepted accuracy) from
    calibration confidences and whether each prediction was right (module docstring)."""
    confidence = np.asarray(confidence, float)
    correct = np.asarray(correct, bool)
    n = len(confidence)
    if n == 0:
        return 1.0, False, 0.0, 0.0
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.cumsum(correct[order])
    # each candidate accepts everything at or above its value: the last index of each value
    last = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True])
    low = accuracy_lower_bound(hits[last], last + 1)
    passing = np.flatnonzero(low >= target)
    if not len(passing):
        first = last[0]
        return float(conf[first]), False, (first + 1) / n, float(low[0])
    lowest = passing[-1]
    index = last[lowest]
    return float(conf[index]), True, (index + 1) / n, float(low[lowest])


def reference_sample(n: int, seed: int) -> np.ndarray:
    """Sorted indices of the training vectors stored (all up to MAX_REFERENCE, else seeded)."""
    if n <= MAX_REFERENCE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_REFERENCE, replace=False))


def out_of_fold_distances(vectors: torch.Tensor, folds: np.ndarray, keep: np.ndarray,
                          k: int = NEIGHBOURS) -> np.ndarray:
    """Each image's distance to the stored vectors (rows `keep`) outside its own fold."""
    out = np.zeros(len(vectors))
    for fold in np.unique(folds):
        inside = folds == fold
        reference = vectors[keep[folds[keep] != fold]]
        out[inside] = neighbour_distance(vectors[torch.from_numpy(inside)], reference, k).numpy()
    return out


def fit_rules(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, vectors: torch.Tensor,
              target_accuracy: float, calibration: str, seed: int) -> DecisionRules:
    """The rules from out-of-sample `probs` [N, classes], their `labels` and `folds`, and
    the images' backbone `vectors` [N, D] as the delivered model sees them (module docstring)."""
    probs, labels, folds = np.asarray(probs, float), np.asarray(labels), np.asarray(folds)
    threshold, met, accepted, low = confidence_threshold(probs.max(1), probs.argmax(1) == labels,
                                                         target_accuracy)
    keep = reference_sample(len(vectors), seed)
    distances = out_of_fold_distances(vectors, folds, keep)
    distance_threshold = conformal_quantile(torch.from_numpy(np.sort(distances)), DISTANCE_QUANTILE)
    scores = 1 - probs[np.arange(len(labels)), labels]
    per_class = [torch.from_numpy(np.sort(scores[labels == c])).float() for c in range(probs.shape[1])]
    return DecisionRules(
        target_accuracy=float(target_accuracy), confidence_threshold=threshold, target_met=bool(met),
        calibration=calibration, n_calibration=int(len(labels)), accepted_fraction=float(accepted),
        accuracy_low=round(float(low), 6), reference=normalise(vectors[torch.from_numpy(keep)]).half(),
        neighbours=NEIGHBOURS, distance_threshold=float(distance_threshold),
        distance_quantile=DISTANCE_QUANTILE, conformal_scores=per_class,
        min_class_calibration=MIN_CLASS_CALIBRATION)


DEFAULT_FOLDS = 5  # when evaluate.cv_folds is 0 (off)


def rules_for_head(features, train_y: torch.Tensor, val_y: torch.Tensor, n_classes: int, *,
                   cv, delivered_tta: str, target_accuracy: float, folds: int, groups, seed: int,
                   **solve_args) -> DecisionRules:
    """The rules of a head solved by folderfit.frozen.probe.solve (`solve_args`) on the
    FeatureSource `features`: from `cv` (train's cross-validation) when it made one, else from
    a cross-validation run here; the distances in the delivered model's view (`delivered_tta`)."""
    from folderfit.frozen import feature_cache, probe

    if cv is None:
        cv = probe.cross_validate(features, train_y, val_y, n_classes, folds=folds or DEFAULT_FOLDS,
                                  groups=groups, seed=seed, **solve_args)
    views = [feature_cache.CLEAN] + ([feature_cache.FLIP] if delivered_tta == "flip" else [])
    got = features([(split, view) for view in views for split in ("train", "val")])
    vectors = feature_cache.mean_over_views([torch.cat(got[i:i + 2]) for i in range(0, len(got), 2)])
    return fit_rules(cv.probs.numpy(), cv.labels.numpy(), cv.fold.numpy(), vectors.float(),
                     target_accuracy, f"{cv.folds}-fold cross-validation of the head procedure "
                     f"over train + val", seed)
