"""The model file's decision rules applied (folderfit.artifacts.model_file.DecisionRules, fitted
by folderfit.frozen.decisions): every caller (`folderfit predict`, `folderfit.load(...).classify`,
`folderfit serve`, evaluate) turns probabilities and backbone features into the same decision:

* `unfamiliar`: the image's backbone feature vector (the head's input; for a FlipTTA model
  the mean of the clean and mirrored vectors, as the model averages) is farther, in mean
  cosine distance to its nearest training vectors, than the stored threshold;
* `unsure`: else, its top probability is below the confidence threshold;
* else the predicted class.

A file without rules never abstains. Prediction sets (split conformal): class c is in an
image's set at level L when 1 - p_c is at most the L-quantile (finite-sample corrected) of
the calibration scores 1 - p(true class) of class c, or of all classes pooled where class c
has fewer than `min_class_calibration` of them; the top class is always in.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

UNSURE = "unsure"
UNFAMILIAR = "unfamiliar"


def normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def neighbour_distance(queries: torch.Tensor, reference: torch.Tensor, k: int,
                       chunk: int = 1024) -> torch.Tensor:
    """[queries] mean cosine distance of each query to its k nearest rows of `reference`
    (both L2-normalised here); +inf when the reference is empty."""
    if len(reference) == 0:
        return torch.full((len(queries),), math.inf)
    q, r = normalise(queries), normalise(reference)
    k = min(k, len(r))
    out = [(1 - q[i:i + chunk] @ r.T).topk(k, dim=1, largest=False).values.mean(1)
           for i in range(0, len(q), chunk)]
    return torch.cat(out) if out else torch.zeros(0)


def conformal_quantile(sorted_scores: torch.Tensor, level: float) -> float:
    """The ceil((n+1) level)-th smallest score: with n exchangeable calibration scores, a new
    score is at most this with probability >= level. +inf when n is too small for the level."""
    n = len(sorted_scores)
    rank = math.ceil((n + 1) * level)
    return math.inf if rank > n or n == 0 else float(sorted_scores[rank - 1])


def set_thresholds(rules, level: float) -> list[float]:
    """Per class, the score quantile its set membership is tested against (module docstring)."""
    pooled = torch.sort(torch.cat([s.float() for s in rules.conformal_scores])).values
    marginal = conformal_quantile(pooled, level)
    return [conformal_quantile(s.float(), level) if len(s) >= rules.min_class_calibration else marginal
            for s in rules.conformal_scores]


def prediction_sets(rules, probs: torch.Tensor, level: float) -> list[list[int]]:
    """Per image, the classes of its level-L prediction set, most probable first; never empty
    (the top class always belongs: an empty set would say nothing, and it only adds coverage)."""
    q = torch.tensor(set_thresholds(rules, level), dtype=torch.float64)
    inside = (1 - probs.double()) <= q + 1e-12
    order = probs.argsort(dim=1, descending=True, stable=True)
    return [[int(c) for j, c in enumerate(row) if j == 0 or inside[i, c]] for i, row in enumerate(order)]


@dataclass
class Decisions:
    """What the rules say about each image of a batch (in its order)."""
    labels: list  # class name, UNSURE or UNFAMILIAR
    accepted: np.ndarray  # bool: the label is a class
    unfamiliar: np.ndarray  # bool
    distance: np.ndarray  # float, NaN without rules


def decide(rules, probs: torch.Tensor, features: torch.Tensor | None, class_names: list) -> Decisions:
    """Decisions for `probs` [N, classes] and the images' backbone `features` [N, D]
    (module docstring). Without rules (None): every image gets its top class."""
    n = len(probs)
    top = probs.argmax(1) if n else torch.zeros(0, dtype=torch.long)
    names = [class_names[int(c)] for c in top]
    if rules is None or n == 0 or features is None:  # no rules, or nothing to measure
        sure = np.ones(n, bool) if rules is None or n == 0 else \
            probs.max(1).values.double().numpy() >= rules.confidence_threshold
        return Decisions([name if ok else UNSURE for name, ok in zip(names, sure)], sure,
                         np.zeros(n, bool), np.full(n, np.nan))
    distance = neighbour_distance(features, rules.reference, rules.neighbours).numpy().astype(np.float64)
    unfamiliar = distance > rules.distance_threshold
    sure = probs.max(1).values.double().numpy() >= rules.confidence_threshold
    labels = [UNFAMILIAR if far else name if ok else UNSURE
              for name, far, ok in zip(names, unfamiliar, sure)]
    return Decisions(labels, ~unfamiliar & sure, unfamiliar, distance)


def head_module(model: nn.Module, head_name: str) -> nn.Module:
    """The classifier head inside a loaded model (FlipTTA wraps the network as `.model`)."""
    from folderfit.backbone.views import FlipTTA

    inner = model.model if isinstance(model, FlipTTA) else model
    return inner.get_submodule(head_name)


@contextlib.contextmanager
def capture_features(model: nn.Module, head_name: str, tta: str):
    """Collects the head's input (the backbone's feature vector) of every forward pass of
    `model` into the yielded list; `features(list)` turns it into one [N, D] tensor, averaged
    over the clean and mirrored passes of a FlipTTA model."""
    seen: list = []

    def hook(module, inputs):
        seen.append(inputs[0].detach().flatten(1).float().cpu())

    handle = head_module(model, head_name).register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
    if tta == "flip":  # FlipTTA calls the network twice per batch: clean, then mirrored
        seen[:] = [(a + b) / 2 for a, b in zip(seen[0::2], seen[1::2])]


def features(seen: list) -> torch.Tensor | None:
    return torch.cat(seen) if seen else None
