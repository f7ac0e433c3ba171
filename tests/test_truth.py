"""No scored image was ever learned from, in every layout and strategy, through `dvc repro`.

For each layout the files the delivered model learned from (train's record,
metrics/train/learned_from.csv, checked here against prepare's manifest) are compared with
the files evaluate scored (metrics/eval/predictions.csv). Without a test split the
feature_extract score is a cross-validation: its rows are out-of-fold predictions, which
tests/test_probe.py shows cannot come from a fit that saw them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import make_repo, run
from tiny_project import make_image_folder

from folderfit.artifacts import learned_from
from folderfit.artifacts.manifest import image_path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def class_folders(root: Path) -> Path:
    return make_image_folder(root, per_class=12, size=40, seed=0)


def given(*splits: str):
    def build(root: Path) -> Path:
        for i, split in enumerate(splits):
            make_image_folder(root / split, per_class=12 if split == "train" else 5, size=40, seed=i)
        return root
    return build


LAYOUTS = {  # name: (builder, data params, strategy, expected estimate)
    "class folders": (class_folders, {"val_fraction": 0.25, "test_fraction": 0.25},
                      "feature_extract", "test"),
    "class folders, test_fraction 0": (class_folders, {"val_fraction": 0.25, "test_fraction": 0},
                                       "feature_extract", "cv"),
    "train+val": (given("train", "val"), {}, "feature_extract", "cv"),
    "train+test": (given("train", "test"), {"val_fraction": 0.25}, "feature_extract", "test"),
    "train+val+test": (given("train", "val", "test"), {}, "feature_extract", "test"),
    "train+val, fine_tune": (given("train", "val"), {}, "fine_tune", "val_holdout"),
    "class folders, full_tune": (class_folders, {"val_fraction": 0.25, "test_fraction": 0.25},
                                 "full_tune", "test"),
}


@pytest.mark.slow  # one dvc repro per layout in a temp repository
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_no_scored_image_was_learned_from(tmp_path, layout):
    build, data, strategy, expected = LAYOUTS[layout]
    images = build(tmp_path / "images")
    if layout == "class folders":  # a copy across classes and a human's relabel on top
        shutil.copy(images / "bars" / "000.png", images / "blobs" / "copy_of_bars_000.png")
    repo = make_repo(tmp_path / "repo", {
        "strategy": strategy, "num_epochs": 1, "freeze_layers": 8,
        "data": {"source": str(images), **data}, "augment": {"feature_views": 1},
        "evaluate": {"bootstrap": 200, "cv_folds": 3}})
    if layout == "class folders":
        (repo / "data/corrections.csv").write_text("path,action\nchecks/001.png,relabel:bars\n")
        run(["git", "commit", "-qam", "a correction"], repo)
    run(["dvc", "repro"], repo)

    manifest = _rows(repo / "data/prepared/manifest.csv")
    by_split = {}
    for row in manifest:
        # the file as the stages name it (run in the repository)
        by_split.setdefault(row["split"], set()).add(image_path(Path("data/prepared"), row).as_posix())
    learned = learned_from.read_learned_from(repo / "metrics/train")
    scored = {row["prepared_file"] for row in _rows(repo / "metrics/eval/predictions.csv")}
    headline = json.loads((repo / "metrics/eval.json").read_text())

    assert headline["split"] == expected, headline
    assert by_split["train"] <= learned  # the record covers at least what the model trained on
    assert scored and headline["n_images"] == len(scored)
    assert headline["accuracy_ci95_low"] < headline["accuracy_ci95_high"]
    if expected == "cv":
        assert "test" not in by_split
        assert scored == by_split["train"] | by_split["val"]  # every image, each out of fold
        assert "cross-validation" in headline["estimate"]
        folds = {row["fold"] for row in _rows(repo / "metrics/train" / learned_from.CV_PREDICTIONS)}
        assert len(folds) == 3
    else:
        assert not scored & learned, sorted(scored & learned)[:3]
        if expected == "test":
            assert scored == by_split["test"]
        else:  # val_holdout: part of val, never used to choose the best epoch
            assert scored < by_split["val"] and by_split["val"] - scored <= learned
