"""Head settings over many splits on precomputed features: the study behind the head rows of
docs/studies.md.

    python -m bench.head_study --features /work/research/features --splits 8

--features holds one .npy matrix per backbone and view (`lite2_s260_clean.npy`,
`lite2_s260_flip.npy`, `lite2_s260_rrc0.35_0.npy`, ...; one row per image) and `labels.npy`.
For each random stratified 70/15/15 split, every setting is solved with the pipeline's head
(folderfit.frozen.head: l2 chosen on val, optional refit on train + val) and scored on the clean test
view (with flip TTA: the mean of the clean and mirrored features). Prints test accuracy with a
bootstrap 95% CI and the paired difference to the first setting. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

# name -> (features prefix, training views, refit on train + val, flip TTA)
SETTINGS = {
    "probe: lite2@260 clean+mirror, train only": ("lite2_s260", ["clean", "flip"], False, False),
    "lite2@260 clean+mirror, refit": ("lite2_s260", ["clean", "flip"], True, False),
    "lite2@260 clean, refit": ("lite2_s260", ["clean"], True, False),
    "lite2@260 clean+mirror, refit, tta": ("lite2_s260", ["clean", "flip"], True, True),
    "lite2@260 clean+mirror, train only, tta": ("lite2_s260", ["clean", "flip"], False, True),
    "lite2@260 clean+crop0.35, refit": ("lite2_s260", ["clean", "rrc0.35_0"], True, False),
    "lite2@260 clean+crop0.6, refit": ("lite2_s260", ["clean", "rrc0.6_0"], True, False),
    "lite2@260 clean+2 crops0.35, refit": ("lite2_s260", ["clean", "rrc0.35_0", "rrc0.35_1"], True, False),
    "lite2@260 clean+mirror+2 crops0.35, refit": ("lite2_s260", ["clean", "flip", "rrc0.35_0", "rrc0.35_1"],
                                                  True, False),
    "lite2@300 clean+mirror, refit": ("lite2_s300", ["clean", "flip"], True, False),
    "lite0@224 clean+mirror, refit": ("lite0_s224", ["clean", "flip"], True, False),
    "lite0@224 clean, train only": ("lite0_s224", ["clean"], False, False),
}


def stratified_split(labels: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = n_test = round(0.15 * len(idx))
        test += list(idx[:n_test])
        val += list(idx[n_test:n_test + n_val])
        train += list(idx[n_test + n_val:])
    return torch.tensor(train), torch.tensor(val), torch.tensor(test)


def score(features, labels: torch.Tensor, split, views: list[str], refit: bool, tta: bool,
          n_classes: int) -> np.ndarray:
    """Correct (1) / wrong (0) per test image for one setting on one split."""
    from folderfit.frozen import head

    train, val, test = split

    def mean_view(rows):
        return (features("clean")[rows] + features("flip")[rows]) / 2 if tta else features("clean")[rows]

    x = torch.cat([features(v)[train] for v in views])
    fit = head.fit_head(x, labels[train].repeat(len(views)), mean_view(val), labels[val], n_classes)
    weight, bias = fit.weight, fit.bias
    if refit:
        rows = torch.cat([train, val])
        weight, bias = head.refit(torch.cat([features(v)[rows] for v in views]),
                               labels[rows].repeat(len(views)), n_classes, fit.l2)
    return ((mean_view(test) @ weight.T + bias).argmax(1) == labels[test]).numpy()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--splits", type=int, default=8)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    labels = torch.tensor(np.load(args.features / "labels.npy"))
    n_classes = int(labels.max()) + 1
    loaded = {}

    def view_of(prefix):
        def features(view):
            key = f"{prefix}_{view}"
            if key not in loaded:
                loaded[key] = torch.tensor(np.load(args.features / f"{key}.npy")).float()
            return loaded[key]
        return features

    results = {name: [] for name in SETTINGS}
    for seed in range(args.splits):
        split = stratified_split(labels.numpy(), seed)
        for name, (prefix, views, refit, tta) in SETTINGS.items():
            correct = score(view_of(prefix), labels, split, views, refit, tta, n_classes)
            results[name].append(correct)
            print(f"split {seed} {name:<44} {correct.mean():.3f}", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    first = np.concatenate(results[next(iter(SETTINGS))]).astype(float)
    print(f"{args.splits} splits, {len(first)} test predictions per setting")
    for name, per_split in results.items():
        correct = np.concatenate(per_split).astype(float)
        diff = correct - first
        boot = lambda v: [v[rng.integers(0, len(v), len(v))].mean() for _ in range(2000)]  # noqa: E731
        acc_ci, diff_ci = np.percentile(boot(correct), [2.5, 97.5]), np.percentile(boot(diff), [2.5, 97.5])
        print(f"{name:<44} {correct.mean():.3f} [{acc_ci[0]:.3f}, {acc_ci[1]:.3f}]  "
              f"{diff.mean():+.3f} [{diff_ci[0]:+.3f}, {diff_ci[1]:+.3f}]")


if __name__ == "__main__":
    main()
