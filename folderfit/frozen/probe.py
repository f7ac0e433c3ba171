"""The head of a frozen backbone, from its cached features: which views of each image it
learns from, whether mirror images belong to the training set, and the final refit.

Built on folderfit.frozen.feature_cache (vectors of an image under a view, cached) and folderfit.frozen.head
(the exact L-BFGS solve with l2 chosen on val). Used by feature_extract training, by the warm
start of fine_tune / full_tune, and by bench/defaults_study.py (which feeds it precomputed
features), so the study measures exactly what the pipeline runs.

* Views of a training image: the clean one (eval resize + centre crop), its mirror image when
  flips are on, and `feature_views - 1` random-resized crops (mirrored at random when flips
  are on), each computed once per image and cached.
* `augment.hflip: auto` decides whether labels survive mirroring (mirror_test): a head solved
  on the clean training views scores the val images and their mirror images. Photos of
  objects score the same both ways; handwriting, text or arrows lose accuracy when mirrored
  (a mirrored 3 is no digit). Flips are used unless mirroring costs more than
  max(MIRROR_TOLERANCE, 2 / n_val) of val accuracy. Mirror images double the backbone passes
  (the cost of a feature_extract run), and what they add shrinks as the training set grows:
  above MIRROR_VIEWS_UP_TO training images `auto` uses the clean view only, without a test
  (`mirror_views_pay`; hflip: true keeps them at any size).
* `evaluate.tta`: flip averages the logits of an image and of its mirror image (for a linear
  head on pooled features that is the head applied to the mean of the two feature vectors,
  which is how l2 is chosen on val here); auto = flip exactly when training used flips.
* `refit_head`: once l2 and flips are chosen on val, the head is solved again at that l2 on
  train + val (every view of both): 15% more images for the final head. The reported val
  scores stay those of the selection (the refit head has seen val).
* `calibrate` (the delivered feature_extract head): one temperature fitted on val to the
  logits of the head chosen on train (folderfit.frozen.head.temperature) divides the final head's
  weights and bias, so its confidences match how often it is right. Fitted before the refit,
  on images that head has not learned from; the refit at the same l2 keeps a similar scale.
  The argmax, and so every accuracy, is unchanged. Below CALIBRATION_MIN_VAL val images T
  stays 1 (recorded with the reason). Not applied to the warm start of
  fine_tune / full_tune, whose epochs change the scale anyway.
* `cross_validate`: without a test split, nothing is left that the delivered head has not
  learned from, so the honest estimate is a K-fold cross-validation of this whole procedure
  (mirror test, l2 choice on val, refit) over train + val: each fold runs `solve` on the
  images outside it (their own train/val roles kept) and scores the images inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from folderfit.frozen import feature_cache, head

# calibrate: fewer val images than this leave T at 1 (one or two mistakes would set it alone)
CALIBRATION_MIN_VAL = 20
MIRROR_TOLERANCE = 0.05  # hflip auto: largest val-accuracy cost of mirroring that keeps flips
# hflip auto: mirror views only up to this many training images. On 600 photos they added
# +0.008 test accuracy (not significant, bench/head_study.py); on 7,000 they cost ~4 minutes
# of a 2-core CPU for the figure in docs/speed.md.
MIRROR_VIEWS_UP_TO = 2000

# requests of (split name, view) -> one [images, dim] tensor per request, in request order
FeatureSource = Callable[[list[tuple[str, feature_cache.View]]], list[torch.Tensor]]


def training_views(flip: bool, n_views: int, min_scale: float, seed: int) -> list[feature_cache.View]:
    """The views of each training image (see the module docstring)."""
    views = [feature_cache.CLEAN] + ([feature_cache.FLIP] if flip else [])
    return views + [feature_cache.View("augment", k, min_scale, flip, seed) for k in range(1, n_views)]


def uses_tta(tta: str, flip: bool) -> bool:
    """evaluate.tta: flip = always, none = never, auto = exactly when training used flips."""
    return tta == "flip" or (tta == "auto" and flip)


def mirror_views_pay(hflip: bool | str, n_train: int) -> bool | str:
    """hflip as used for `n_train` training images: auto becomes False above
    MIRROR_VIEWS_UP_TO (module docstring); anything else is kept."""
    return False if hflip == "auto" and n_train > MIRROR_VIEWS_UP_TO else hflip


def size_note(n_train: int) -> str:
    return (f"hflip auto: {n_train} training images > {MIRROR_VIEWS_UP_TO}: clean views only "
            f"(mirror images would double the backbone passes; hflip: true keeps them)")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def mirror_test(train_clean: torch.Tensor, train_y: torch.Tensor, val_clean: torch.Tensor,
                val_mirrored: torch.Tensor, val_y: torch.Tensor, n_classes: int, *,
                class_weights=None, label_smoothing: float = 0.0) -> dict:
    """hflip auto: do the labels survive mirroring? (module docstring). Returns the facts and
    the decision (`hflip`)."""
    fit = head.fit_head(train_clean, train_y, val_clean, val_y, n_classes,
                     class_weights=class_weights, label_smoothing=label_smoothing)
    mirrored = accuracy(val_mirrored @ fit.weight.T + fit.bias, val_y)
    tolerance = max(MIRROR_TOLERANCE, 2 / max(len(val_y), 1))
    return {"val_accuracy": fit.val_accuracy, "val_accuracy_mirrored": mirrored,
            "tolerance": tolerance, "hflip": fit.val_accuracy - mirrored <= tolerance}


@dataclass
class SolvedHead:
    fit: head.HeadFit  # the head put into the model (refit on train + val when asked)
    hflip: bool  # mirror images used in training (decided on val with hflip: auto)
    tta: str  # "flip" | "none": what evaluate, predict and export apply
    refit: bool
    views: list  # names of the training views the head learned from
    mirror_test: dict | None  # hflip auto only
    feature_engine: str = "torch-fp32"  # what ran the backbone, with its precision (folderfit.frozen.extractor)
    calibration: dict | None = None  # calibrate only: temperature, val loss before and after
    learning_curve: dict | None = None  # folderfit.frozen.learning_curve.curve, when asked for
    decisions: object = None  # train's decision rules (folderfit.frozen.decisions), when asked


def solve(features: FeatureSource, train_y: torch.Tensor, val_y: torch.Tensor, n_classes: int, *,
          hflip: bool | str, n_views: int, min_scale: float, seed: int, tta: str, refit: bool,
          class_weights=None, label_smoothing: float = 0.0, calibrate: bool = False,
          log=None) -> SolvedHead:
    """The head from features of the "train" and "val" images (module docstring)."""
    test = None
    if hflip == "auto":
        train_clean, val_clean, val_flip = features([("train", feature_cache.CLEAN), ("val", feature_cache.CLEAN),
                                                     ("val", feature_cache.FLIP)])
        test = mirror_test(train_clean, train_y, val_clean, val_flip, val_y, n_classes,
                           class_weights=class_weights, label_smoothing=label_smoothing)
        flip = test["hflip"]
    else:
        flip = bool(hflip)
    with_tta = uses_tta(tta, flip)
    views = training_views(flip, n_views, min_scale, seed)
    val_views = [feature_cache.CLEAN] + ([feature_cache.FLIP] if with_tta else [])
    val_views += [v for v in views if refit and v not in val_views]
    requests = [("train", v) for v in views] + [("val", v) for v in val_views]
    got = dict(zip(requests, features(requests)))
    val_x = got["val", feature_cache.CLEAN]
    if with_tta:
        val_x = feature_cache.mean_over_views([val_x, got["val", feature_cache.FLIP]])
    fit = head.fit_head(torch.cat([got["train", v] for v in views]), train_y.repeat(len(views)),
                     val_x, val_y, n_classes, class_weights=class_weights,
                     label_smoothing=label_smoothing, log=log)
    calibration = None
    if calibrate and len(val_y) < CALIBRATION_MIN_VAL:
        calibration = {"temperature": 1.0, "skipped": f"{len(val_y)} val images (< {CALIBRATION_MIN_VAL}): "
                                                      f"too few to fit a temperature"}
    elif calibrate:
        logits = (val_x.to(fit.weight.dtype) @ fit.weight.T + fit.bias).double()
        t = head.temperature(logits, val_y)

        def val_loss(scale: float) -> float:
            return round(float(torch.nn.functional.cross_entropy(logits / scale, val_y)), 6)
        calibration = {"temperature": round(t, 6), "val_loss": val_loss(1.0), "val_loss_calibrated": val_loss(t)}
    if refit:
        x = torch.cat([torch.cat([got["train", v], got["val", v]]) for v in views])
        y = torch.cat([train_y, val_y]).repeat(len(views))
        # from the head chosen on train (the same convex problem plus val's rows): a few
        # steps instead of the whole warm-start path again
        fit.weight, fit.bias = head.refit(x, y, n_classes, fit.l2, class_weights=class_weights,
                                       label_smoothing=label_smoothing, start=(fit.weight, fit.bias))
    if calibration and calibration["temperature"] != 1.0:  # logits / T: the same linear layer, scaled
        fit.weight, fit.bias = fit.weight / calibration["temperature"], fit.bias / calibration["temperature"]
    return SolvedHead(fit, flip, "flip" if with_tta else "none", refit,
                      [v.name for v in views], test, calibration=calibration)


@dataclass
class CrossValidation:
    probs: torch.Tensor  # [train + val images, classes] out-of-fold softmax, float64
    labels: torch.Tensor  # [train + val images]
    fold: torch.Tensor  # [train + val images] fold that scored each image
    folds: int
    l2: list  # l2 chosen in each fold
    hflip: list  # flip decision of each fold


def _subset(source: FeatureSource, keep: dict[str, torch.Tensor]) -> FeatureSource:
    """The rows of `keep[split]` (boolean masks) of every request to `source`."""
    def features(requests):
        return [x[keep[split]] for (split, _), x in zip(requests, source(requests))]
    return features


def held_out_logits(features: FeatureSource, split: str, rows: torch.Tensor, fit: head.HeadFit,
                    tta: str) -> torch.Tensor:
    """Logits of the images `rows` of `split` the way evaluate scores them (flip TTA: the head
    on the mean of the clean and mirrored vectors)."""
    views = [feature_cache.CLEAN] + ([feature_cache.FLIP] if tta == "flip" else [])
    x = feature_cache.mean_over_views([v[rows] for v in features([(split, view) for view in views])])
    return x @ fit.weight.T + fit.bias


def cross_validate(features: FeatureSource, train_y: torch.Tensor, val_y: torch.Tensor,
                   n_classes: int, *, folds: int, groups, seed: int, **solve_args) -> CrossValidation:
    """K-fold cross-validation of `solve` (same keyword arguments) over train + val; `groups`:
    one id per image (train then val) of which copies share one, so that copies stay in one
    fold. See the module docstring."""
    from folderfit.frozen.crossfit import assign_folds

    n_train = len(train_y)
    labels = torch.cat([train_y, val_y])
    fold = torch.from_numpy(assign_folds(labels.numpy(), groups, folds, seed))
    cache: dict = {}

    def memo(requests):  # every fold asks for the same full matrices
        missing = [r for r in requests if r not in cache]
        if missing:
            cache.update(zip(missing, features(missing)))
        return [cache[r] for r in requests]

    probs = torch.zeros(len(labels), n_classes, dtype=torch.float64)
    chosen_l2, flips = [], []
    k_total = int(fold.max()) + 1
    for k in range(k_total):
        inside = {"train": fold[:n_train] == k, "val": fold[n_train:] == k}
        outside = {split: ~mask for split, mask in inside.items()}
        solved = solve(_subset(memo, outside), train_y[outside["train"]], val_y[outside["val"]],
                       n_classes, seed=seed, **solve_args)
        for split, offset in (("train", 0), ("val", n_train)):
            rows = torch.nonzero(inside[split]).flatten()
            if len(rows):
                logits = held_out_logits(memo, split, rows, solved.fit, solved.tta)
                probs[rows + offset] = torch.softmax(logits.double(), 1)
        chosen_l2.append(solved.fit.l2)
        flips.append(solved.hflip)
    return CrossValidation(probs, labels, fold, k_total, chosen_l2, flips)


def tensor_source(vectors: dict[tuple[str, feature_cache.View], torch.Tensor]) -> FeatureSource:
    """A FeatureSource over precomputed features (tests, bench/defaults_study.py)."""
    return lambda requests: [vectors[r] for r in requests]
