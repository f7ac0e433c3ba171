"""The classifier head on frozen features: multinomial logistic regression, solved exactly.

With the backbone frozen and its features computed once, training the head is a convex
problem, so it is solved to convergence instead of run for SGD epochs with early stopping:

* Features are standardised with the training rows' mean and standard deviation (this makes
  one regularisation grid fit every backbone); the scaling is folded back into the weights at
  the end, so the result is a plain nn.Linear on raw features.
* Loss: cross-entropy (class weights and label smoothing as in params.yaml, averaged over the
  training rows: every view of every image is one row) + l2 / 2 * ||W||^2 (bias not penalised).
* Solver: full-batch L-BFGS with a strong-Wolfe line search, in float32. Small problems run
  on one thread: their matrix products are too small to share, and several busy-waiting
  threads on a loaded CPU made each step many times slower (docs/speed.md).
* The l2 strength is chosen on the validation images from `L2_GRID`, solved from the
  strongest to the weakest, each solve starting from the previous solution (warm start).
  Best: highest val accuracy, then lowest val loss, then the stronger regularisation.
* Calibration (`temperature`): the l2 chosen for accuracy on a small val set is often the
  strongest, whose probabilities are far too flat (a test ECE of 0.37 at 90% accuracy,
  measured on 400 photos). One temperature, fitted on val by minimising its cross-entropy,
  rescales the logits (none when val has no mistake to learn it from); the predicted class
  never changes, only how sure the model says it is.
* Everything is deterministic: same features, same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

L2_GRID = tuple(float(v) for v in np.logspace(1, -4, 11))  # strongest first (warm starts)
MAX_ITER = 200
TOLERANCE_GRAD = 1e-6
DTYPE = torch.float32
# feature values in the problem (rows x features) from which the solve uses every thread:
# below it, more threads gained nothing measurable (docs/speed.md)
ONE_THREAD_BELOW = 20_000_000


@dataclass
class HeadFit:
    weight: torch.Tensor  # [classes, features] on raw (unstandardised) features, float32
    bias: torch.Tensor  # [classes]
    l2: float
    val_accuracy: float
    val_loss: float
    path: list = field(default_factory=list)  # one row per grid point: l2, losses, accuracies

    def apply_to(self, head: nn.Linear) -> None:
        with torch.no_grad():
            head.weight.copy_(self.weight)
            head.bias.copy_(self.bias)


class _Problem:
    """Standardised training rows and the regularised loss on them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int,
                 class_weights: torch.Tensor | None, label_smoothing: float):
        x = x.to(DTYPE)
        self.mean = x.mean(0)
        std = x.std(0, unbiased=False)
        # near-constant features: a floor keeps 1/std (folded into the raw weights) from
        # blowing up logits on images where such a feature does vary
        self.std = std.clamp_min(1e-3 * float(std.mean()) + 1e-12)
        self.z = (x - self.mean) / self.std
        self.y = y
        self.n_classes = n_classes
        weights = None if class_weights is None else class_weights.to(DTYPE)
        self.loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(DTYPE) - self.mean) / self.std

    def solve(self, l2: float, w: torch.Tensor, b: torch.Tensor) -> float:
        """Minimise in place from (w, b); returns the final training loss (without penalty)."""
        w.requires_grad_(True)
        b.requires_grad_(True)
        optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=MAX_ITER, history_size=20,
                                      tolerance_grad=TOLERANCE_GRAD, tolerance_change=1e-9,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = self.loss_fn(self.z @ w.T + b, self.y) + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        w.requires_grad_(False)
        b.requires_grad_(False)
        with torch.no_grad():
            return float(self.loss_fn(self.z @ w.T + b, self.y))

    def raw(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) on raw features: z = (x - mean) / std folded into the layer."""
        weight = w / self.std
        return weight.float(), (b - weight @ self.mean).float()


def _evaluate(problem: _Problem, w, b, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(unweighted cross-entropy, accuracy) of a solution on other rows."""
    with torch.no_grad():
        logits = problem.standardise(x) @ w.T + b
        return (float(nn.functional.cross_entropy(logits, y)),
                float((logits.argmax(1) == y).double().mean()))


class _Threads:
    """torch's intra-op threads set for the duration of a block, then restored."""

    def __init__(self, n: int | None):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def _threads(x: torch.Tensor) -> _Threads:
    return _Threads(1 if x.numel() < ONE_THREAD_BELOW else None)


def fit_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
             val_y: torch.Tensor, n_classes: int, *, class_weights: torch.Tensor | None = None,
             label_smoothing: float = 0.0, grid=L2_GRID, log=None) -> HeadFit:
    """Solve the head for every l2 in `grid` (warm-started) and keep the best on val.

    train_x: [rows, features] (every view of every training image is a row), train_y: [rows];
    val_x/val_y: the validation images (one row each). `log(step, row)` gets the path."""
    with _threads(train_x):
        return _fit_head(train_x, train_y, val_x, val_y, n_classes, class_weights=class_weights,
                         label_smoothing=label_smoothing, grid=grid, log=log)


def _fit_head(train_x, train_y, val_x, val_y, n_classes, *, class_weights, label_smoothing,
              grid, log) -> HeadFit:
    problem = _Problem(train_x, train_y, n_classes, class_weights, label_smoothing)
    w = torch.zeros(n_classes, train_x.shape[1], dtype=DTYPE)
    b = torch.zeros(n_classes, dtype=DTYPE)
    path, best = [], None
    for step, l2 in enumerate(grid, start=1):
        train_loss = problem.solve(l2, w, b)
        _, train_acc = _evaluate(problem, w, b, train_x, train_y)
        val_loss, val_acc = _evaluate(problem, w, b, val_x, val_y)
        row = {"l2": l2, "train_loss": train_loss, "train_accuracy": train_acc,
               "val_loss": val_loss, "val_accuracy": val_acc}
        path.append(row)
        if log:
            log(step, row)
        if best is None or (val_acc, -val_loss) > (best[0], -best[1]):
            best = (val_acc, val_loss, l2, w.clone(), b.clone())
    val_acc, val_loss, l2, w, b = best
    weight, bias = problem.raw(w, b)
    return HeadFit(weight, bias, l2, val_acc, val_loss, path)


TEMPERATURE_BOUNDS = (0.05, 20.0)  # 0.21 and 1.41 were the extremes seen on real runs


def temperature(logits: torch.Tensor, y: torch.Tensor, bounds=TEMPERATURE_BOUNDS) -> float:
    """T minimising the mean cross-entropy of softmax(logits / T) on (logits, y), within
    `bounds`; 1.0 when every row is already right. Then the loss only falls as T shrinks, so
    the data cannot say how sure the head should be (a small, easy val set would make it
    claim certainty). The loss is convex in 1/T, so a golden-section search on log T finds
    it (deterministic, no step sizes to tune)."""
    z, y = logits.detach().double(), y.long()
    if len(y) == 0 or bool((z.argmax(1) == y).all()):
        return 1.0

    def loss(log_t: float) -> float:
        return float(nn.functional.cross_entropy(z / np.exp(log_t), y))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):  # the bracket shrinks to 0.618^60 of its width: far below any use
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    best = min((loss(np.log(t)), t) for t in (*bounds, float(np.exp((lo + hi) / 2))))
    return float(best[1])


def refit(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, *,
          class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
          start: tuple | None = None) -> tuple:
    """One solve at a fixed l2 (e.g. on train + val once l2 is chosen): (weight, bias).
    `start`: a (weight, bias) on raw features of a similar problem (the previous fold of a
    cross-fit) to start from, instead of the warm-start path from the strongest l2."""
    with _threads(x):
        problem = _Problem(x, y, n_classes, class_weights, label_smoothing)
        if start is None:
            w = torch.zeros(n_classes, x.shape[1], dtype=DTYPE)
            b = torch.zeros(n_classes, dtype=DTYPE)
            for strength in [s for s in L2_GRID if s > l2] + [l2]:  # the same warm-start path
                problem.solve(strength, w, b)
        else:  # the same linear function, in this problem's standardised coordinates
            weight, bias = (t.to(DTYPE) for t in start)
            w, b = (weight * problem.std).contiguous(), bias + weight @ problem.mean
            problem.solve(l2, w, b)
        return problem.raw(w, b)
