"""How many more photos per class: the out-of-fold learning curve of the frozen-feature head
(folderfit.frozen.learning_curve), train's metrics/train/learning_curve.json and the results
page's "More photos?" table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny_project as T
import torch
from conftest import run_stage, write_params

from folderfit.artifacts import learning_curve_record
from folderfit.errors import PipelineError
from folderfit.frozen import learning_curve
from folderfit.results.pages import results_page
from folderfit.results.pages.html import esc

NAMES = ["a", "b", "c"]


def gaussians(per_class: int, dim: int, separation: float, seed: int = 0):
    """Three classes around random means: few photos overfit the noise dimensions, many do not."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    means = rng.normal(size=(3, dim)) * separation / np.sqrt(dim)
    x = means[labels] + rng.normal(size=(len(labels), dim))
    return torch.tensor(x, dtype=torch.float32), labels


def run_curve(x, labels, seed=0, l2=1.0):
    found = learning_curve.curve([x], [x], labels, 3, np.arange(len(labels)), l2=l2, seed=seed)
    return found, learning_curve.describe(found, NAMES)


def test_accuracy_rises_with_photos_and_the_forecast_points_up():
    x, labels = gaussians(60, 200, 3.0)
    found, record = run_curve(x, labels)
    assert found["folds"] == 5 and len(found["accuracy"]) == len(learning_curve.FRACTIONS)
    photos = record["overall"]["photos_per_class"]
    assert photos == sorted(photos) and photos[-1] == pytest.approx(48, abs=1)  # 4/5 of 60
    assert found["accuracy"][-1] > found["accuracy"][0] + 0.08
    rising = [row for row in record["classes"].values() if row["verdict"] == "rising"]
    assert rising, record["classes"]
    for row in rising:
        assert row["forecast"]["accuracy_doubled"] > row["forecast"]["accuracy_now"]
        assert "more photos would give ~+" in row["statement"] and row["statement"].startswith(
            next(name for name, r in record["classes"].items() if r is row))
    # the direction is right: twice the photos (fresh draws, same classes) do score higher
    bigger_x, bigger_labels = gaussians(120, 200, 3.0)
    bigger, _ = run_curve(bigger_x, bigger_labels)
    assert bigger["accuracy"][-1] > found["accuracy"][-1]


def test_a_saturated_set_reads_flat():
    x, labels = gaussians(30, 20, 40.0)
    found, record = run_curve(x, labels, l2=0.1)
    assert found["accuracy"] == [1.0] * len(learning_curve.FRACTIONS)
    for name, row in record["classes"].items():
        assert row["verdict"] == "flat"
        assert row["statement"].startswith(f"{name}: flat") and "unlikely to help" in row["statement"]


def test_same_seed_same_curve():
    x, labels = gaussians(25, 50, 3.0)
    assert run_curve(x, labels, seed=3) == run_curve(x, labels, seed=3)


def test_too_few_sizes_give_no_forecast():
    assert learning_curve.fit_power_law([2, 2, 3, 3], [0.5, 0.4, 0.3, 0.3]) is None
    verdict, text = learning_curve.statement("cat", [1, 1, 2], [0.5, 0.5, 0.6], 3, None)
    assert verdict == "unknown" and "too few photos" in text
    assert learning_curve.too_big(10, 1, 100) is None
    assert "too much" in learning_curve.too_big(100_000, 2, 1280)


def test_a_broken_record_is_a_one_line_error(tmp_path):
    (tmp_path / "learning_curve.json").write_text("{not json")
    with pytest.raises(PipelineError, match="learning_curve.json: unreadable"):
        learning_curve_record.read_learning_curve(tmp_path)
    assert learning_curve_record.read_learning_curve(tmp_path / "none") is None


def test_train_writes_the_curve_and_the_page_shows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    source = T.make_image_folder(tmp_path / "images", per_class=10, size=40, seed=4)
    write_params(tmp_path, **{"data.source": str(source), "data.image_size": 32,
                              "model_name": "tf_efficientnet_lite0", "precision": "fp32",
                              "data.test_fraction": 0, "evaluate.cv_folds": 2})
    run_stage("prepare", tmp_path)
    run_stage("train", tmp_path)
    record = json.loads((tmp_path / "metrics/train/learning_curve.json").read_text())
    assert set(record["classes"]) == set(T.CLASSES)
    for row in record["classes"].values():
        assert row["photos_now"] == 10 and len(row["accuracy"]) == len(learning_curve.FRACTIONS)
        assert row["verdict"] in ("rising", "flat", "unknown") and row["statement"]
    assert "seconds" not in record  # wall time would make identical reruns differ
    assert json.loads((tmp_path / "metrics/timing.json").read_text())["learning_curve_s"] >= 0

    # the page reads it from train's folder beside evaluate's files
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "summary.json").write_text(json.dumps({"split": "cv", "accuracy": 0.9, "n_images": 1}))
    (eval_dir / "predictions.csv").write_text("path,true,predicted,confidence\nx.png,bars,bars,0.9\n")
    html = results_page.write(eval_dir, tmp_path / "data/prepared", eval_dir / "index.html", facts={},
                              train_dir=tmp_path / "metrics/train").read_text()
    assert 'id="more-photos"' in html and "\u00b1" in html  # each class's standard error
    for row in record["classes"].values():
        assert esc(row["statement"]) in html
    bare = results_page.write(eval_dir, tmp_path / "data/prepared", eval_dir / "bare.html", facts={},
                              train_dir=None).read_text()
    assert "more-photos" not in bare
