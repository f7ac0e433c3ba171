"""Few-shot classes (issue 33): classes of 1-2 photos are trained on, the set has no test
split, and the estimate is a cross-validation whose folds a one-photo class does not shrink."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch

from folderfit.frozen import crossfit, feature_cache, probe
from folderfit.images import image_folder


def items(per_class: dict) -> list[image_folder.Item]:
    return [image_folder.Item(f"{label}/{i}.png", label, f"{label}-{i}")
            for label, n in per_class.items() for i in range(n)]


def where(split: dict) -> dict:
    return {it.rel: s for s, members in split.items() for it in members}


def test_few_shot_classes_train_and_the_set_has_no_test_split():
    source = items({"a": 20, "b": 9, "c": 2, "d": 1})
    assert image_folder.few_shot_classes(source, 0.15, 0.15) == {"c": 2, "d": 1}
    out = image_folder.stratified_split(source, 0.15, 0.15, seed=3)
    assert out["test"] == []
    counts = {label: Counter(s for rel, s in where(out).items() if rel.startswith(f"{label}/"))
              for label in "abcd"}
    assert counts["d"] == {"train": 1}
    assert counts["c"] == {"train": 1, "val": 1}
    # the others are split as with data.test_fraction 0: every image placed once
    assert counts["a"] == {"train": 17, "val": 3} and counts["b"] == {"train": 8, "val": 1}
    assert out == image_folder.stratified_split(source, 0.15, 0.15, seed=3)  # seeded


def test_ordinary_sets_split_exactly_as_before():
    """No few-shot class: the split is the one made without the few-shot rule (test included)."""
    source = items({"a": 40, "b": 20, "c": 3})
    assert image_folder.few_shot_classes(source, 0.15, 0.15) == {}
    out = image_folder.stratified_split(source, 0.15, 0.15, seed=7)
    assert {s for s in where(out).values()} == {"train", "val", "test"}
    assert Counter(where(out)[f"c/{i}.png"] for i in range(3)) == {"train": 1, "val": 1, "test": 1}


def test_without_test_fraction_a_single_image_class_trains():
    out = image_folder.stratified_split(items({"a": 10, "b": 1}), 0.0, 0.0, seed=0)
    assert where(out)["b/0.png"] == "train" and len(out["val"]) == 1 and not out["test"]


def test_fold_cap_ignores_one_image_classes():
    assert crossfit.fold_cap([10, 3, 1]) == 3
    assert crossfit.fold_cap([10, 1]) == 10
    assert crossfit.fold_cap([1, 1]) == 2
    labels = np.array([0] * 10 + [1] * 10 + [2])  # class 2: one photo
    fold = crossfit.assign_folds(labels, np.arange(21), 5, seed=0)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]  # used to collapse to 2 folds
    for c in (0, 1):
        assert Counter(fold[labels == c].tolist()) == {f: 2 for f in range(5)}
    # a two-photo class: its photos in different folds, each scored by a head that saw the other
    labels = np.array([0] * 10 + [1] * 2)
    fold = crossfit.assign_folds(labels, np.arange(12), 5, seed=0)
    assert len(set(fold.tolist())) == 2 and fold[10] != fold[11]


def test_cross_validation_with_one_photo_classes_is_not_inflated():
    """Separable blobs; classes 3 and 4 have one photo each: the folds stay 3, the others are
    scored right, and the one-photo classes are scored by heads that never saw them (wrong)."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(5, 8) * 6
    train_y = torch.tensor([0, 1, 2] * 6 + [3])
    val_y = torch.tensor([0, 1, 2] * 2 + [4])
    vectors = {}
    for split, y in (("train", train_y), ("val", val_y)):
        vectors[split, feature_cache.CLEAN] = centres[y] + 0.3 * torch.randn(len(y), 8, generator=gen)
    cv = probe.cross_validate(probe.tensor_source(vectors), train_y, val_y, 5, folds=3,
                              groups=list(range(26)), seed=0, hflip=False, n_views=1, min_scale=0.6,
                              tta="none", refit=True)
    assert cv.folds == 3
    right = cv.probs.argmax(1) == cv.labels
    assert bool(right[cv.labels < 3].all())
    assert not bool(right[cv.labels >= 3].any())


@pytest.mark.slow
def test_few_shot_set_runs_end_to_end(tmp_path):
    """12 classes of 1-4 photos through `dvc repro`: prepare makes no test split, evaluate
    scores by cross-validation, and eval.json and the results page say per class how little
    is known."""
    from conftest import make_repo, run
    from tiny_project import picture

    source = tmp_path / "photos"
    rng = np.random.default_rng(0)
    sizes = [1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4]
    kinds = ("bars", "blobs", "checks")
    for c, n in enumerate(sizes):
        (source / f"class{c:02d}").mkdir(parents=True)
        for i in range(n):
            picture(kinds[c % 3], 40, rng).save(source / f"class{c:02d}" / f"{i}.png")
    repo = make_repo(tmp_path / "repo", {"data": {"source": str(source)}})
    result = run(["dvc", "repro"], repo)
    assert "no test split" in result.stdout + result.stderr
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["n_images"] == sum(sizes) and "n_test" not in data
    assert [f["images"] for f in data["few_shot_classes"]] == [1, 1, 2, 2, 2]
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert evaluation["split"] == "cv" and evaluation["n_images"] == sum(sizes)
    per_class = {row["class"]: row for row in evaluation["per_class"]}
    assert [per_class[f"class{c:02d}"]["support"] for c in range(12)] == sizes
    for c in (0, 1):  # one photo: no estimate, said so
        row = per_class[f"class{c:02d}"]
        assert row["recall"] == 0.0 and "1 photo: no estimate" in row["note"]
    low, high = per_class["class02"]["recall_ci95"]
    assert high - low > 0.5 and "2 photos" in per_class["class02"]["note"]
    assert "note" not in per_class["class11"]
    page = (repo / "metrics/eval/index.html").read_text()
    assert "1 photo: no estimate" in page
    with open(repo / "metrics/eval/predictions.csv") as fh:
        assert len(list(csv.DictReader(fh))) == sum(sizes)


def test_class_notes_say_how_little_is_known():
    from folderfit.pipeline import evaluate

    assert evaluate.class_note(5, 5, [0.5, 1.0], "cv") is None
    assert evaluate.class_note(1, 1, [0.0, 0.79], "cv").startswith("1 photo: no estimate for this class")
    assert evaluate.class_note(1, 0, [0.0, 1.0], "val_holdout").endswith("none scored: no estimate for this class")
    assert evaluate.class_note(2, 2, [0.34, 1.0], "cv") == \
        "2 photos, 2 scored: recall is known only within 0.34-1.00 (95%)"
