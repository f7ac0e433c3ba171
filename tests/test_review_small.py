"""Review on small or awkward sets (issue 24): fewer images per class than review.folds, a
class too small to cross-fit, and the corrections template (never a test image; CSV quoting)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tiny_project as T
import torch
from conftest import run_stage, write_params


def test_review_with_fewer_images_per_class_than_folds_reduces_the_folds(tmp_path, capsys):
    source = T.make_image_folder(tmp_path / "images", per_class=4, size=48, seed=5)
    write_params(tmp_path, **{"data.source": str(source), "data.image_size": 32,
                              "augment.feature_views": 1, "augment.hflip": False,
                              "review.folds": 5})
    run_stage("prepare", tmp_path)
    run_stage("review", tmp_path)  # sklearn: "n_splits=5 cannot be greater than ..." before
    review = json.loads((tmp_path / "metrics/review.json").read_text())
    assert (review["folds"], review["folds_requested"]) == (4, 5)
    assert "smallest class has 4 images: 4-fold" in review["notes"][0]
    assert "4-fold cross-fitting instead" in capsys.readouterr().err
    assert review["n_not_reviewable"] == 0


def test_a_class_too_small_to_cross_fit_is_reported_not_fatal():
    from folderfit.pipeline import review as review_stage

    rng = np.random.default_rng(0)
    labels = np.array([0] * 6 + [1] * 6 + [2])  # class 2: one image
    # one noise dimension: with 8 and 6 training rows per fold, chance correlations of the
    # noise could outweigh the signal, whichever way the folds fall
    centres = np.eye(3, 3) * 4
    features = [torch.tensor(centres[labels] + rng.normal(0, 0.3, (13, 3)), dtype=torch.float32)]
    rows = [{"source": f"c{c}/{i}.png", "class": f"c{c}"} for i, c in enumerate(labels)]
    plan = review_stage.plan_review(rows, ["c0", "c1", "c2"], labels, wanted_folds=5)
    assert plan["folds"] == 5 and len(plan["reviewable"]) == 12
    assert [s["path"] for s in plan["skipped"]] == ["c2/12.png"]
    index = np.array([[(i + 1) % 13, (i + 2) % 13] for i in range(13)])
    fit, probs, issues = review_stage.review_labels(features, labels, 3, np.arange(13), index, plan, seed=0)
    assert np.isnan(probs[12]).all() and issues["suggested"][12] == -1
    assert 12 not in issues["order"]
    assert np.allclose(probs[:12].sum(1), 1.0) and (probs[:12, 2] == 0).all()
    assert (probs[:12].argmax(1) == labels[:12]).all()


def write_review_folder(folder, issues, splits):
    folder.mkdir(parents=True)
    with open(folder / "label_issues.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "given", "suggested", "score"])
        w.writerows(issues)
    with open(folder / "scores.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "split"])
        w.writerows(splits.items())


def test_template_never_suggests_a_relabel_of_a_test_image_and_quotes_cells(tmp_path):
    from folderfit.artifacts import corrections
    from folderfit.commands import review as review_command

    source = tmp_path / "images"
    for cls in ("cats, dogs", "birds"):
        for i in range(3):
            (source / cls).mkdir(parents=True, exist_ok=True)
            (source / cls / f"{i}.png").write_bytes(b"")
    folder = tmp_path / "review"
    write_review_folder(folder, [["birds/0.png", "birds", "cats, dogs", "0.01"],
                                 ["birds/1.png", "birds", "cats, dogs", "0.02"],
                                 ["cats, dogs/2.png", "cats, dogs", "birds", "0.03"]],
                        {"birds/0.png": "train", "birds/1.png": "test", "cats, dogs/2.png": "val"})
    template = tmp_path / "todo.csv"
    assert review_command.write_template(folder, template, top=10) == (2, 1)
    fixes = corrections.read(source, template)
    assert {p: f.describe() for p, f in fixes.items()} == {
        "birds/0.png": "relabel:cats, dogs", "cats, dogs/2.png": "relabel:birds"}
    assert "birds/1.png" in template.read_text()  # listed for a human look, no row


@pytest.mark.parametrize("n_per_class, folds, expected", [(4, 5, 4), (10, 5, 5), (2, 5, 2)])
def test_plan_folds(n_per_class, folds, expected):
    from folderfit.frozen import crossfit

    k, note = crossfit.plan_folds([n_per_class, n_per_class + 3, 1], folds)
    assert k == expected and (note is None) == (k == folds)
