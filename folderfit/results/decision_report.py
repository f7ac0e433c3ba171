"""evaluate's report on the model file's decision rules (folderfit.compute.decisions) over the
scored split: how many predictions are accepted and how accurate they are (with a 95%
interval), how many images are called unfamiliar, the accuracy-vs-coverage curve, and the
coverage and size of the conformal prediction sets per class.

Files in metrics/eval/: decisions.json (every number here), coverage.json (the curve: one
row per confidence threshold). On the `cv` split the scored probabilities are the very ones
the thresholds were chosen on, so the numbers are in-sample for the rules (`in_sample`), and
the unfamiliar rate is left out (every scored image is one of the stored training vectors).
"""

from __future__ import annotations

import numpy as np
import torch

from folderfit.compute import decisions
from folderfit.results.metrics import accuracy_interval
from folderfit.support.fileio import write_json

SET_LEVEL = 0.95  # the prediction-set level evaluate reports
CURVE_POINTS = 101


def scored_features(loaded, samples, batch_size: int, rt, route=None) -> torch.Tensor:
    """[N, D] backbone features of the scored images as the model file sees them (the mean
    over its test-time views): from `route` ((head, extractor) of the cached features) when
    given, else through the whole model file with the head's input captured."""
    from folderfit.compute.inference import infer, make_loader
    from folderfit.compute.runtime import prepare_model
    from folderfit.frozen import feature_cache
    from folderfit.images import datasets

    files = [path for path, _ in samples]
    if route is not None:
        views = [feature_cache.CLEAN] + ([feature_cache.FLIP] if loaded.tta == "flip" else [])
        vectors = route[1].features_of([(files, view) for view in views], "features decisions")
        return feature_cache.mean_over_views([v.float() for v in vectors])
    model = prepare_model(loaded.model, rt)
    loader = make_loader(datasets.ImageTensorDataset(samples, datasets.eval_geometry(loaded.preprocess)),
                         batch_size, rt)
    normalizer = datasets.Normalizer(loaded.preprocess.mean, loaded.preprocess.std).to(rt.device)
    with decisions.capture_features(model, loaded.info["head_name"], loaded.tta) as seen:
        infer(model, loader, normalizer, rt, desc="features decisions", show_progress=False)
    return decisions.features(seen)


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Accuracy of the most confident predictions against the share kept, at most
    CURVE_POINTS rows (threshold, coverage, accuracy, n), coverage ascending."""
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    n = len(order)
    picks = sorted({max(1, int(round(f * n))) for f in np.linspace(0, 1, CURVE_POINTS)}) if n else []
    return [{"threshold": round(float(confidence[order[k - 1]]), 6), "coverage": round(k / n, 6),
             "accuracy": round(float(hits[k - 1] / k), 6), "n": k} for k in picks]


def set_report(rules, probs: np.ndarray, y: np.ndarray, classes: list, level: float = SET_LEVEL) -> dict:
    sets = decisions.prediction_sets(rules, torch.from_numpy(probs), level)
    covered = np.array([int(t) in s for t, s in zip(y, sets)])
    size = np.array([len(s) for s in sets])
    per_class = {name: {"n": int((y == c).sum()),
                        "coverage": round(float(covered[y == c].mean()), 6) if (y == c).any() else None,
                        "mean_size": round(float(size[y == c].mean()), 6) if (y == c).any() else None}
                 for c, name in enumerate(classes)}
    return {"level": level, "coverage": round(float(covered.mean()), 6) if len(y) else None,
            "mean_size": round(float(size.mean()), 6) if len(y) else None, "per_class": per_class}


def report(rules, probs: np.ndarray, y: np.ndarray, features: torch.Tensor | None, classes: list,
           split: str) -> tuple[dict, list[dict]]:
    """(decisions.json's content, the coverage curve) for the scored split."""
    in_sample = split == "cv"
    if in_sample:
        unfamiliar, accepted = None, probs.max(1) >= rules.confidence_threshold
    else:
        decided = decisions.decide(rules, torch.from_numpy(probs), features, classes)
        unfamiliar, accepted = decided.unfamiliar, decided.accepted
    correct = probs.argmax(1) == y
    n_acc, hits = int(accepted.sum()), int(correct[accepted].sum())
    low, high = accuracy_interval(hits, n_acc) if n_acc else (None, None)
    out = {"target_accuracy": rules.target_accuracy, "confidence_threshold": rules.confidence_threshold,
           "target_met_on_calibration": rules.target_met, "calibrated_on": rules.calibration,
           "in_sample": in_sample, "n_images": int(len(y)), "n_accepted": n_acc,
           "accepted_fraction": round(n_acc / len(y), 6) if len(y) else None,
           "accepted_accuracy": round(hits / n_acc, 6) if n_acc else None,
           "accepted_accuracy_ci95_low": None if low is None else round(low, 6),
           "accepted_accuracy_ci95_high": None if high is None else round(high, 6),
           "unfamiliar_rate": None if unfamiliar is None else round(float(unfamiliar.mean()), 6),
           "distance_threshold": rules.distance_threshold if np.isfinite(rules.distance_threshold) else None,
           "sets": set_report(rules, probs, y, classes)}
    return out, coverage_curve(probs.max(1), correct)


def write(out_dir, content: dict, curve: list[dict]) -> None:
    write_json(out_dir / "decisions.json", content)
    write_json(out_dir / "coverage.json", {"coverage": curve})


def headline(content: dict) -> dict:
    """The eval.json keys: accepted fraction and accuracy, unfamiliar rate, set coverage."""
    sets = content["sets"]
    return {"accepted_fraction": content["accepted_fraction"], "accepted_accuracy": content["accepted_accuracy"],
            "accepted_accuracy_ci95_low": content["accepted_accuracy_ci95_low"],
            "unfamiliar_rate": content["unfamiliar_rate"], "set_coverage_95": sets["coverage"],
            "set_mean_size_95": sets["mean_size"]}


def sentence(content: dict) -> str:
    """evaluate's printed clause."""
    acc = content["accepted_accuracy"]
    text = (f"decisions: {content['n_accepted']}/{content['n_images']} accepted (target "
            f"{content['target_accuracy']:g}), accuracy of accepted "
            + ("n/a" if acc is None else f"{acc:.4f} (95% CI {content['accepted_accuracy_ci95_low']:.4f}-"
                                         f"{content['accepted_accuracy_ci95_high']:.4f})"))
    if content["unfamiliar_rate"] is not None:
        text += f", unfamiliar {content['unfamiliar_rate']:.1%}"
    sets = content["sets"]
    if sets["coverage"] is not None:
        text += f"; {sets['level']:g} sets cover {sets['coverage']:.1%}, mean size {sets['mean_size']:.2f}"
    return text + (" (in-sample: the rules were fitted on these scores)" if content["in_sample"] else "")
