"""How review's and train's algorithms grow with the set: 100k images on paper, by simulation.

    python -m bench.scale_sim [--sizes 10000 30000 100000] [--linear-sizes 1000000] \\
        [--budget 300] [--classes 20] [--dim 1280]

Times, on synthetic feature vectors (float32, `--dim` like lite2's 1280, clustered per class
with sub-clusters and 1% near-copies, so neighbours mean something), the library functions
the stages call: neighbour search, near-duplicate pairs and outlier scores
(folderfit.frozen.similarity, as review calls them), fold assignment
(folderfit.frozen.crossfit.assign_folds), the label-issue ranking (cleanlab, as review's
label_issues calls it), the head solve (folderfit.frozen.head.fit_head on 80% / 20% of the
vectors) and the review page (folderfit.results.pages.review_page on synthetic lists, without
thumbnails). `--linear-sizes` run only the steps that need no feature matrix (folds,
ranking). Prints a Markdown table: step, n, seconds, peak MB above the step's start
(resident memory high-water mark, reset per step through /proc/self/clear_refs), and the
growth exponent from the previous size (1 is linear, ~1.1 n log n over 3x, 2 quadratic).

Bounded in time: before each step at each size the time is predicted from the two previous
sizes (or the step's known order before that); a step predicted above `--budget` seconds is
skipped and the table says so with the prediction.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the order of growth each step is expected to have, for the first prediction
ORDER = {"neighbours (nearest, k=10)": 2.0, "near-duplicate pairs": 2.0, "outlier scores": 1.0,
         "fold assignment": 1.0, "label-issue ranking (cleanlab)": 1.0, "head solve (fit_head)": 1.0,
         "review page (no thumbnails)": 1.0}
FEATURE_STEPS = ("neighbours (nearest, k=10)", "near-duplicate pairs", "outlier scores",
                 "head solve (fit_head)", "review page (no thumbnails)")
LINEAR_STEPS = ("fold assignment", "label-issue ranking (cleanlab)")
NEIGHBOURS = 10
MMAP_THRESHOLD = 1 << 20  # bytes (see main)
MEASURABLE_S = 1.0  # shorter steps are too noisy on a shared machine to call their growth


def features(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, dim] float32 vectors and [n] labels: class centre + one of 8 sub-cluster offsets +
    noise; 1% of the rows are near-copies of another row of their class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = rng.normal(0, 1, (n_classes, dim)).astype(np.float32)
    sub = rng.normal(0, 0.6, (n_classes, 8, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # in blocks: no float64 temporaries of the whole matrix
        y = labels[start:start + 8192]
        noise = rng.standard_normal((len(y), dim), dtype=np.float32)
        x[start:start + len(y)] = centres[y] + sub[y, rng.integers(0, 8, len(y))] + 0.8 * noise
    copies = rng.choice(n, n // 100, replace=False)
    x[copies[1:]] = x[copies[:-1]] + 0.02 * rng.standard_normal((len(copies) - 1, dim), dtype=np.float32)
    labels[copies[1:]] = labels[copies[:-1]]
    return x, labels


def probabilities(labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Out-of-sample-like probabilities: mostly right, 5% of the labels wrong."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(labels), n_classes))
    logits[np.arange(len(labels)), labels] += 3.0
    flip = rng.random(len(labels)) < 0.05
    logits[flip, (labels[flip] + 1) % n_classes] += 5.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


class Peak:
    """Peak resident memory above the start of a step, in MB (Linux: VmHWM, reset by
    /proc/self/clear_refs); None where that is not available."""

    def __enter__(self):
        self.ok = _reset_peak()
        self.start = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.mb = (_status_kb("VmHWM") - self.start) / 1024 if self.ok else None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def review_page_files(folder: Path, labels: np.ndarray, classes: list, seed: int) -> Path:
    """A prepared folder's manifest and review lists as the review stage writes them, for
    `labels`: 5% label issues, 1% near-duplicate pairs, 2% outliers (synthetic scores)."""
    from folderfit.artifacts import manifest
    from folderfit.results import reports

    rng = np.random.default_rng(seed)
    n = len(labels)
    prepared, review = folder / "prepared", folder / "review"
    prepared.mkdir(parents=True, exist_ok=True)
    review.mkdir(parents=True, exist_ok=True)
    splits = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.7, 0.15, 0.15])]
    rows = [{"file": f"{splits[i]}/{classes[labels[i]]}/{i:07d}.png", "source": f"{classes[labels[i]]}/{i:07d}.jpg",
             "class": classes[labels[i]], "split": splits[i], "sha256": f"{i:064x}",
             "width": 640, "height": 480} for i in range(n)]
    manifest.write_manifest(prepared, rows)
    issues = rng.choice(n, n // 20, replace=False)
    reports.write_csv(review / "label_issues.csv", ["path", "given", "suggested", "score"],
                      [[rows[i]["source"], rows[i]["class"], classes[(labels[i] + 1) % len(classes)],
                        f"{rng.random():.4f}"] for i in issues])
    pairs = rng.choice(n, (n // 100, 2))
    reports.write_csv(review / "near_duplicates.csv",
                      ["path", "other", "similarity", "issue", "class", "other_class", "split", "other_split",
                       "pixel_correlation"],
                      [[rows[a]["source"], rows[b]["source"], "0.9500", "same class and split",
                        rows[a]["class"], rows[b]["class"], rows[a]["split"], rows[b]["split"], "0.5000"]
                       for a, b in pairs])
    reports.write_csv(review / "outliers.csv", ["path", "class", "split", "score"],
                      [[rows[i]["source"], rows[i]["class"], rows[i]["split"], "0.7000"]
                       for i in rng.choice(n, n // 50, replace=False)])
    (review / "details.json").write_text(json.dumps({"n_label_issues": len(issues), "per_class": [
        {"class": c, "n_images": int((labels == k).sum()), "n_label_issues": 0} for k, c in enumerate(classes)]}))
    (review / "noise_per_class.json").write_text(json.dumps(
        [{"class": c, "label_noise_rate": 0.05} for c in classes]))
    return folder


class Runner:
    def __init__(self, budget: float, only: list[str] | None = None):
        self.budget = budget
        self.only = only
        self.seen: dict[str, list[tuple[int, float]]] = {}
        self.rows: list[dict] = []

    def predict(self, step: str, n: int) -> float | None:
        done = self.seen.get(step, [])
        if not done:
            return None
        if len(done) >= 2:
            (n1, t1), (n2, t2) = done[-2:]
            exponent = max(1.0, math.log(max(t2, 1e-6) / max(t1, 1e-6)) / math.log(n2 / n1))
        else:
            exponent = ORDER[step]
        n_last, t_last = done[-1]
        return t_last * (n / n_last) ** exponent

    def run(self, step: str, n: int, fn) -> None:
        if self.only and not any(step.startswith(word) for word in self.only):
            return
        guess = self.predict(step, n)
        if guess is not None and guess > self.budget:
            self.rows.append({"step": step, "n": n, "seconds": None, "mb": None, "exponent": None,
                              "note": f"skipped: predicted {guess:.0f} s > budget {self.budget:g} s"})
            print(f"{step} n={n}: skipped (predicted {guess:.0f} s)", file=sys.stderr, flush=True)
            return
        with Peak() as peak:
            started = time.perf_counter()
            fn()
            seconds = time.perf_counter() - started
        done = self.seen.setdefault(step, [])
        exponent = (math.log(max(seconds, 1e-6) / max(done[-1][1], 1e-6)) / math.log(n / done[-1][0])
                    if done else None)
        done.append((n, seconds))
        note = ""
        if exponent is not None and exponent > 1.25:  # n log n from 10k to 30k: 1.10
            note = "faster than n log n" if seconds >= MEASURABLE_S else "too short to judge"
        self.rows.append({"step": step, "n": n, "seconds": seconds, "mb": peak.mb, "exponent": exponent,
                          "note": note})
        print(f"{step} n={n}: {seconds:.2f} s", file=sys.stderr, flush=True)

    def table(self) -> str:
        lines = ["| step | n | seconds | peak MB | growth exponent | note |",
                 "| --- | ---: | ---: | ---: | ---: | --- |"]
        for r in sorted(self.rows, key=lambda r: (list(ORDER).index(r["step"]), r["n"])):
            def fmt(v, spec):
                return "-" if v is None else format(v, spec)
            lines.append(f"| {r['step']} | {r['n']:,} | {fmt(r['seconds'], '.2f')} | {fmt(r['mb'], '.0f')} | "
                         f"{fmt(r['exponent'], '.2f')} | {r['note']} |")
        return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--linear-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds one step may take at one size")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", nargs="*", default=None,
                        help="only the steps whose names start with these words (e.g. neighbours)")
    args = parser.parse_args(argv)
    if argv is None and os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD):
        # a fixed threshold: every large block is its own mapping, returned when freed, so
        # each step's resident high-water mark counts its own blocks (glibc otherwise keeps
        # an earlier step's freed blocks in the heap and a later step reuses them unseen)
        os.execve(sys.executable, [sys.executable, "-m", "bench.scale_sim", *sys.argv[1:]],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)})

    import cleanlab.count
    import cleanlab.filter
    import cleanlab.rank
    import torch

    from folderfit.frozen import crossfit, head
    from folderfit.frozen import similarity as feature_similarity
    from folderfit.results.pages import review_page

    def label_issues(labels, probs):  # review.label_issues' cleanlab calls, in its order
        cleanlab.rank.get_label_quality_scores(labels, probs, method="self_confidence")
        cleanlab.filter.find_label_issues(labels, probs, n_jobs=1)
        cleanlab.count.estimate_joint(labels, probs)

    # warm-up, untimed: first calls pay one-off costs (lazy imports, thread pools)
    warm_x, warm_y = features(300, args.dim, args.classes, args.seed)
    head.fit_head(torch.from_numpy(warm_x[:200]), torch.from_numpy(warm_y[:200]), torch.from_numpy(warm_x[200:]),
                  torch.from_numpy(warm_y[200:]), args.classes)
    label_issues(warm_y, probabilities(warm_y, args.classes, args.seed))
    runner = Runner(args.budget, args.steps)
    classes = [f"class{c:03d}" for c in range(args.classes)]
    for n in sorted(args.sizes):
        x, labels = features(n, args.dim, args.classes, args.seed)
        z = feature_similarity.normalise(x)
        found = {}

        def neighbours():
            found["index"], found["similarity"] = feature_similarity.nearest(z, NEIGHBOURS)

        def duplicate_pairs():
            sims = found.get("similarity")
            if sims is None:  # the neighbour step was skipped: its threshold rule needs it
                sims = np.full((n, 1), 0.5, dtype=np.float32)
            threshold = feature_similarity.duplicate_threshold(sims[:, 0], 0.9, 0.3)
            pairs = feature_similarity.similar_pairs(z, threshold)
            feature_similarity.groups(n, pairs)

        def outliers():
            sims = found.get("similarity", np.zeros((n, NEIGHBOURS), dtype=np.float32))
            feature_similarity.outlier_flags(1.0 - sims.mean(1), 1 / 0.37037 - 1)

        def head_solve():
            cut = int(0.8 * n)
            tx, ty = torch.from_numpy(x[:cut]), torch.from_numpy(labels[:cut])
            vx, vy = torch.from_numpy(x[cut:]), torch.from_numpy(labels[cut:])
            head.fit_head(tx, ty, vx, vy, args.classes)

        def page():
            with tempfile.TemporaryDirectory() as tmp:
                folder = review_page_files(Path(tmp), labels, classes, args.seed)
                data = review_page.collect(folder / "review", folder / "prepared", thumbnails=False)
                (folder / "index.html").write_text(review_page.render(data), encoding="utf-8")

        steps = dict(zip(FEATURE_STEPS, (neighbours, duplicate_pairs, outliers, head_solve, page)))
        for step in ORDER:
            if step in steps:
                runner.run(step, n, steps[step])
        linear_steps(runner, n, labels, args, crossfit, label_issues)
        x = z = found = None  # free the matrices before the next size
    for n in sorted(args.linear_sizes):
        labels = np.random.default_rng(args.seed).integers(0, args.classes, n)
        linear_steps(runner, n, labels, args, crossfit, label_issues)
    print(f"\nscale_sim: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"dim {args.dim}, {args.classes} classes, budget {args.budget:g} s per step\n")
    print(runner.table())


def linear_steps(runner: Runner, n: int, labels: np.ndarray, args, crossfit, label_issues) -> None:
    """The steps that need labels and probabilities only (no feature matrix)."""
    groups = np.arange(n)
    groups[1::100] = groups[0::100][:len(groups[1::100])]  # 1% copies: groups of two
    probs = probabilities(labels, args.classes, args.seed)
    runner.run("fold assignment", n, lambda: crossfit.assign_folds(labels, groups, 5, args.seed))
    runner.run("label-issue ranking (cleanlab)", n, lambda: label_issues(labels, probs))


if __name__ == "__main__":
    main()
