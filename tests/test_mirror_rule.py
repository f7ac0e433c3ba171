"""hflip auto above MIRROR_VIEWS_UP_TO training images: clean views only, in review and train
alike, without the mirror test's extra vectors; hflip true keeps mirror images at any size."""

from __future__ import annotations

import json

import pytest
import tiny_project as T
from conftest import run_stage, write_params

from folderfit.frozen import probe


def test_rule():
    limit = probe.MIRROR_VIEWS_UP_TO
    assert probe.mirror_views_pay("auto", limit) == "auto"
    assert probe.mirror_views_pay("auto", limit + 1) is False
    assert probe.mirror_views_pay(True, 10 * limit) is True
    assert probe.mirror_views_pay(False, 1) is False


@pytest.mark.parametrize("hflip, limit, mirrored", [("auto", 5, False), (True, 5, True), ("auto", 10_000, None)])
def test_review_and_train_follow_the_rule(tmp_path, monkeypatch, capsys, hflip, limit, mirrored):
    monkeypatch.setattr(probe, "MIRROR_VIEWS_UP_TO", limit)
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))  # count what is computed
    source = T.make_image_folder(tmp_path / "images", per_class=8, size=40, seed=4)
    write_params(tmp_path, **{"data.source": str(source), "data.image_size": 32,
                              "model_name": "tf_efficientnet_lite0", "precision": "fp32",
                              "augment.hflip": hflip, "review.folds": 2})
    run_stage("prepare", tmp_path)
    n_images = 24
    run_stage("review", tmp_path)
    out = capsys.readouterr().out
    run_stage("train", tmp_path)
    details = json.loads((tmp_path / "metrics/train/details.json").read_text())
    train_out = capsys.readouterr().out
    if mirrored is None:  # below the limit: the mirror test decides, as before
        assert details["mirror_test"]["hflip"] == details["hflip"] and "skipped" not in details["mirror_test"]
        return
    assert details["hflip"] is mirrored
    assert ("flip" in details["head_views"]) is mirrored
    if not mirrored:
        assert "clean views only" in out and "clean views only" in train_out
        assert details["mirror_test"]["skipped"].startswith("hflip auto:")
        assert f"{n_images} computed" in out  # one clean vector per image, no mirrored ones
        assert "0 vectors computed" in train_out  # train found every vector review made
