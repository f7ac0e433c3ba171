"""Evaluation: unit checks of the scores, and consistency checks on a small real `dvc repro`
(3 classes of drawn shapes, 32 px, one epoch) in a throwaway git + DVC repository."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_repo, run
from PIL import Image, ImageDraw

from folderfit.results import metrics, reports

SHAPES = ("circle", "square", "triangle")


def draw_shapes(root: Path, per_class: int = 12, size: int = 32) -> Path:
    """An ImageFolder of one shape per class, with seeded colour, size and position."""
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
            r = int(rng.integers(7, 12))
            cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
            colour = tuple(int(v) for v in rng.integers(120, 256, 3))
            draw = ImageDraw.Draw(img)
            if shape == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif shape == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            img.save(root / shape / f"{shape}{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A repository copy after `dvc repro` on the shapes (9 test images): every stage, so every
    declared plot (the review's too) exists."""
    base = tmp_path_factory.mktemp("eval")
    images = draw_shapes(base / "shapes")
    repo = make_repo(base / "repo", {
        "strategy": "feature_extract",
        "data": {"source": str(images), "image_size": 32, "val_fraction": 0.25, "test_fraction": 0.25},
        "augment": {"feature_views": 1}, "evaluate": {"bootstrap": 200}})  # the minimum
    run(["dvc", "repro"], repo)
    return repo


def load(repo: Path):
    """(every number of the evaluation with eval.json's per-class list as a dict by class,
    per_class.json, predictions.csv rows)."""
    summary = json.loads((repo / "metrics/eval/summary.json").read_text())
    headline = json.loads((repo / "metrics/eval.json").read_text())
    assert all(summary[k] == v for k, v in headline.items() if k != "per_class")
    summary["per_class"] = {row["class"]: row for row in headline["per_class"]}
    per_class = json.loads((repo / "metrics/eval/per_class.json").read_text())
    with open(repo / "metrics/eval/predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return summary, per_class, rows


def confusion_from_plot_csv(repo: Path, classes: list) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    with open(repo / "metrics/eval/confusion.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            matrix[index[row["actual"]], index[row["predicted"]]] += 1
    return matrix


# ------------------------------------------------------------------ real run
@pytest.mark.slow  # dvc repro in a temp repository
def test_confusion_matrix_sums_to_n_images_and_diagonal_is_recall(run_dir):
    summary, per_class, rows = load(run_dir)
    classes = list(per_class)
    assert classes == sorted(SHAPES) and summary["split"] == "test"
    assert summary["n_images"] == 9 and summary["estimate"].startswith("the test split")
    matrix = confusion_from_plot_csv(run_dir, classes)
    assert matrix.sum() == summary["n_images"] == len(rows)
    recall = np.diag(matrix) / matrix.sum(1)
    for i, name in enumerate(classes):
        assert per_class[name]["recall"] == pytest.approx(recall[i], abs=1e-6)
        assert summary["per_class"][name]["recall"] == pytest.approx(recall[i], abs=1e-6)
        assert per_class[name]["support"] == matrix[i].sum()


@pytest.mark.slow  # dvc repro in a temp repository
def test_accuracy_is_the_mean_correctness_of_the_predictions_csv(run_dir):
    summary, per_class, rows = load(run_dir)
    correct = [r["true"] == r["predicted"] for r in rows]
    assert [int(c) for c in correct] == [int(r["correct"]) for r in rows]
    assert summary["accuracy"] == pytest.approx(np.mean(correct), abs=1e-6)
    k = summary["top_k"]
    assert k == 2
    for r in rows:
        top = [item.split("=")[0] for item in r["top_k"].split(";")]
        assert len(top) == k and top[0] == r["predicted"]
        assert (r["path"].split("/")[0]) == r["true"]  # path relative to data.source
    hits = np.mean([r["true"] in [t.split("=")[0] for t in r["top_k"].split(";")] for r in rows])
    assert summary["top_k_accuracy"] == pytest.approx(hits, abs=1e-6)


@pytest.mark.slow  # dvc repro in a temp repository
def test_bootstrap_interval_contains_the_estimate(run_dir):
    summary, _, _ = load(run_dir)
    assert summary["bootstrap_resamples"] == 200
    assert summary["accuracy_ci95_low"] <= summary["accuracy"] <= summary["accuracy_ci95_high"]
    assert summary["accuracy_ci95_low"] < summary["accuracy_ci95_high"]  # Wilson: never 0 wide
    if "macro_f1_ci95_low" in summary:  # left out when every resample agreed (zero width)
        assert summary["macro_f1_ci95_low"] <= summary["macro_f1"] <= summary["macro_f1_ci95_high"]


@pytest.mark.slow  # dvc repro in a temp repository
def test_declared_plots_exist_render_and_rerun_is_byte_identical(run_dir):
    declared = []
    for entry in yaml.safe_load((run_dir / "dvc.yaml").read_text())["plots"]:
        if isinstance(entry, str):
            declared.append(entry)
        else:
            (spec,) = entry.values()
            declared.extend(spec["y"])
    expected = ["confusion.csv", "roc.json", "pr.json", "confusion.png", "confusion_normalized.png",
                "reliability.png", "mistakes.png"]
    assert {f"metrics/eval/{name}" for name in expected} <= set(declared)
    for path in declared:
        assert (run_dir / path).is_file(), f"declared plot {path} missing"
    for curve in ("roc.json", "pr.json"):
        points = json.loads((run_dir / "metrics/eval" / curve).read_text())
        assert {p["class"] for p in points} <= set(SHAPES) and points
    shown = run(["dvc", "plots", "show", "-o", "plots_html"], run_dir)
    html = (run_dir / "plots_html/index.html").read_text()
    assert "ROC curves" in html and "mistakes.png" in html, shown.stdout

    def digests():
        files = sorted((run_dir / "metrics/eval").iterdir()) + [run_dir / "metrics/eval.json"]
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    before = digests()
    run(["python", "-m", "stages.evaluate"], run_dir)  # as dvc runs it
    assert digests() == before


# ------------------------------------------------------------------ pure functions
def test_bootstrap_is_reproducible_for_a_seed():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 4, 200))
    first = metrics.bootstrap_ci(labels, preds, 4, 300, seed=7)
    assert first == metrics.bootstrap_ci(labels, preds, 4, 300, seed=7)
    assert first != metrics.bootstrap_ci(labels, preds, 4, 300, seed=8)
    accuracy = float(np.mean(labels == preds))
    low, high = first["accuracy"]
    assert low < accuracy < high and 0.05 < high - low < 0.2  # ~ +-1.96 sqrt(p(1-p)/n)


def test_batched_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    labels, preds = rng.integers(0, 5, (6, 40)), rng.integers(0, 5, (6, 40))
    preds[0] = labels[0]
    labels[1][labels[1] == 3] = 0  # class 3 absent from the truth of one row
    expected = [f1_score(y, p, average="macro", labels=range(5), zero_division=0)
                for y, p in zip(labels, preds)]
    assert metrics.macro_f1_rows(labels, preds, 5) == pytest.approx(expected, abs=1e-12)


def test_ece_of_a_perfectly_calibrated_input_is_zero():
    confidence, correct = [], []
    for level in (0.55, 0.65, 0.75, 0.85, 0.95):  # 100 images per level, level x 100 right
        confidence += [level] * 100
        correct += [True] * round(level * 100) + [False] * round((1 - level) * 100)
    confidence, correct = np.array(confidence), np.array(correct)
    assert metrics.expected_calibration_error(confidence, correct) == pytest.approx(0.0, abs=1e-12)
    # always 90% sure, right half the time: off by 0.4
    assert metrics.expected_calibration_error(np.full(10, 0.9), np.arange(10) < 5) == pytest.approx(0.4)


def test_roc_auc_skips_classes_absent_from_the_scored_split():
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    labels = np.array([0, 1, 0, 1])  # class 2 never occurs
    summary = metrics.summary(probs, labels, seed=0, resamples=0)
    assert summary["roc_auc_ovr_macro"] == 1.0 and summary["roc_auc_classes"] == 2
    report = metrics.per_class_report(probs, labels, ["a", "b", "c"])
    assert report["c"]["roc_auc"] is None and report["c"]["support"] == 0
    roc, pr = metrics.class_curves(probs, labels, ["a", "b", "c"])
    assert {p["class"] for p in roc} == {p["class"] for p in pr} == {"a", "b"}


def test_gallery_without_mistakes_is_a_clean_png(tmp_path):
    reports.mistakes_gallery(tmp_path / "mistakes.png", [], "test")
    with Image.open(tmp_path / "mistakes.png") as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["mistakes.png"]  # no temp file left
