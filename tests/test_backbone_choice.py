"""The backbone choice of feature_extract training (folderfit.frozen.backbone_choice): the rule,
the nested estimate, the sample, and the train stage with it (budget, fast, the model file)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conftest import run_stage, write_params
from folderfit.frozen import backbone_choice as bc

import tiny_project as T


def test_candidates_are_the_bundled_lites_at_native_size_capped_at_image_size():
    found = bc.candidates("tf_efficientnet_lite2", "default", 260)
    assert found == [bc.Candidate("tf_efficientnet_lite2", 260), bc.Candidate("tf_efficientnet_lite0", 224),
                     bc.Candidate("tf_efficientnet_lite1", 240)]
    assert bc.candidates("tf_efficientnet_lite0", "default", 200)[1:] == [
        bc.Candidate("tf_efficientnet_lite1", 200), bc.Candidate("tf_efficientnet_lite2", 200)]
    # nothing to choose: another backbone, or weights the others do not have
    assert bc.candidates("resnet50", "default", 224) == [bc.Candidate("resnet50", 224)]
    assert bc.candidates("tf_efficientnet_lite2", "my.pt", 260) == [bc.Candidate("tf_efficientnet_lite2", 260)]


def _labels(n: int, classes: int = 4) -> np.ndarray:
    return np.arange(n) % classes


def test_rule_keeps_the_default_when_the_interval_includes_zero():
    labels = _labels(200)
    default = np.zeros(200, bool)
    default[:160] = True  # 0.80
    other = default.copy()
    other[[160, 161, 162]] = True  # 0.815: three images, within noise
    other[[0]] = False
    chosen, compared = bc.select({"d": default, "c": other}, "d", labels, seed=0)
    diff, low, high = compared["c"]
    assert diff == pytest.approx(0.01) and low <= 0 < high
    assert chosen == "d"


def test_rule_takes_the_candidate_whose_lower_bound_is_above_zero():
    labels = _labels(200)
    default = np.zeros(200, bool)
    default[:140] = True  # 0.70
    better = default.copy()
    better[140:180] = True  # 0.90, never worse on any image
    slightly = default.copy()
    slightly[140:145] = True
    chosen, compared = bc.select({"d": default, "s": slightly, "b": better}, "d", labels, seed=0)
    assert compared["b"][1] > 0
    assert chosen == "b"
    # the same seed, the same answer (the interval is a seeded bootstrap)
    assert bc.select({"d": default, "s": slightly, "b": better}, "d", labels, seed=0)[1] == compared


def test_nested_estimate_never_chooses_with_the_scored_folds_outcomes():
    """Candidate c beats the default only on fold 0's images. Chosen on all images, c wins
    (and would score fold 0 perfectly); chosen without fold 0, nothing favours c, so fold 0
    must be scored by the default."""
    n, classes = 200, 2
    labels = _labels(n, classes)
    fold = np.arange(n) // 40  # 5 folds of 40
    rng = np.random.default_rng(0)
    right = np.eye(classes)[labels] * 0.9 + 0.05
    wrong = np.eye(classes)[1 - labels] * 0.9 + 0.05
    same = rng.random(n) < 0.8  # both right on the same 80% outside fold 0
    default = np.where(same[:, None], right, wrong)
    default[fold == 0] = wrong[fold == 0]
    candidate = default.copy()
    candidate[fold == 0] = right[fold == 0]
    probs = {"d": default, "c": candidate}
    correct = {k: p.argmax(1) == labels for k, p in probs.items()}
    assert bc.select(correct, "d", labels, seed=1)[0] == "c"  # leaking would pick c for fold 0
    nested, chosen = bc.nested_estimate(probs, labels, fold, "d", seed=1)
    assert chosen[0] == "d"
    assert np.array_equal(nested[fold == 0], default[fold == 0])
    assert chosen[1:] == ["c"] * 4  # fold 0's gain counts for choosing the others' backbone
    assert np.array_equal(nested[fold != 0], candidate[fold != 0])


def test_stratified_sample_keeps_class_shares_and_is_seeded():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    rows = bc.stratified_sample(labels, 100, seed=3)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)
    assert np.bincount(labels[rows]).tolist() == [60, 30, 10]
    assert np.array_equal(rows, bc.stratified_sample(labels, 100, seed=3))
    assert not np.array_equal(rows, bc.stratified_sample(labels, 100, seed=4))
    assert np.array_equal(bc.stratified_sample(labels[:50], 100, seed=3), np.arange(50))


# --- the train stage ---------------------------------------------------------------------

BASE = {"data.image_size": 32, "model_name": "tf_efficientnet_lite0", "precision": "fp32",
        "cpu_engine": "torch", "augment.hflip": False, "data.test_fraction": 0.2,
        "evaluate.bootstrap": 0, "evaluate.cv_folds": 3, "backbone_choice.mode": "auto",
        "backbone_choice.budget_s": 600}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return T.make_image_folder(tmp_path_factory.mktemp("choice-images"), per_class=10, size=40, seed=5)


def _train(root, source, **dotted):
    write_params(root, **{"data.source": str(source), **BASE, **dotted})
    run_stage("prepare", root)
    run_stage("train", root)
    return root


def _model(root):
    return torch.load(root / "models/model.pt", weights_only=False, map_location="cpu")


def _record(root):
    return json.loads((root / "metrics/train/candidates.json").read_text())


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, source):
    return _train(tmp_path_factory.mktemp("fast"), source, **{"backbone_choice.mode": "fast"})


def test_fast_tries_nothing_and_writes_no_table(fast_run):
    assert not (fast_run / "metrics/train/candidates.json").exists()
    details = json.loads((fast_run / "metrics/train/details.json").read_text())
    assert details["model_name"] == "tf_efficientnet_lite0" and "backbone_choice" not in details


def test_budget_zero_skips_every_other_candidate(tmp_path, source, fast_run):
    root = _train(tmp_path, source, **{"backbone_choice.budget_s": 0})
    rows = _record(root)["candidates"]
    assert [r["status"] for r in rows] == ["chosen", "skipped", "skipped"]
    assert all(r["reason"] == "budget_s spent" for r in rows[1:])
    assert _model(root)["model_name"] == "tf_efficientnet_lite0"
    # no sample: the choice's cross-validation is the decision rules' own (not solved twice)
    fast, auto = _model(fast_run), _model(root)
    assert fast["decisions"]["confidence_threshold"] == auto["decisions"]["confidence_threshold"]
    assert torch.equal(fast["decisions"]["reference"], auto["decisions"]["reference"])


def test_the_chosen_backbone_is_delivered_and_predict_runs(tmp_path, source, monkeypatch):
    """Every candidate tried on a sample; the rule forced to pick lite1 (which one real photos
    favour is not for a unit test): the model file must be lite1's, at its size, and
    `folderfit predict` must run on it."""
    real = bc.select

    def prefer_lite1(correct, default, labels, seed):
        _, compared = real(correct, default, labels, seed)
        return next((c for c in correct if c.model_name == "tf_efficientnet_lite1"), default), compared

    monkeypatch.setattr(bc, "select", prefer_lite1)
    root = _train(tmp_path, source, **{"data.test_fraction": 0.0, "data.image_size": 36,
                                       "backbone_choice.sample": 20})
    record = _record(root)
    assert [r["model_name"] for r in record["candidates"]] == list(bc.BUNDLED)
    assert all("accuracy" in r and r["status"] != "skipped" for r in record["candidates"])
    assert record["sampled"] and record["images"] == 20  # of 30 train + val images
    assert record["chosen"] == "tf_efficientnet_lite1"
    saved = _model(root)
    assert saved["model_name"] == "tf_efficientnet_lite1"
    assert saved["preprocess"]["image_size"] == 36  # lite1's 240 capped at data.image_size
    # no test split: the written estimate is the nested one on the sampled rows
    from folderfit.artifacts import learned_from

    files, probs, labels, _ = learned_from.read_cv(root / "metrics/train")
    assert len(files) == 30
    rows = bc.stratified_sample(labels, 20, 42)
    hits = probs[rows].argmax(1) == labels[rows]
    assert record["nested"]["accuracy"] == pytest.approx(float(np.mean(hits)), abs=1e-6)
    from folderfit import cli

    photos = sorted((source / "bars").iterdir())[:2]
    out = tmp_path / "predictions.csv"
    cli.main(["predict", *map(str, photos), "--model", str(root / "models/model.pt"), "-o", str(out)])
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["top1_class"] in T.CLASSES for r in rows)


def test_results_page_shows_the_candidates_table(tmp_path):
    from folderfit.artifacts import backbone_candidates
    from folderfit.results.pages import results_page

    record = {"chosen": "tf_efficientnet_lite2", "requested": "tf_efficientnet_lite2", "images": 510,
              "sampled": False, "nested": {"accuracy": 0.85, "accuracy_ci": [0.81, 0.88]},
              "candidates": [
                  {"model_name": "tf_efficientnet_lite2", "image_size": 260, "status": "chosen", "default": True,
                   "accuracy": 0.86, "accuracy_ci": [0.82, 0.89]},
                  {"model_name": "tf_efficientnet_lite0", "image_size": 224, "status": "tried", "default": False,
                   "accuracy": 0.84, "accuracy_ci": [0.8, 0.87], "difference": -0.02,
                   "difference_ci": [-0.05, 0.01]},
                  {"model_name": "tf_efficientnet_lite1", "image_size": 240, "status": "skipped",
                   "default": False, "reason": "estimated time over backbone_choice.budget_s"}]}
    backbone_candidates.write_candidates(tmp_path, record)
    html = results_page._backbones(backbone_candidates.read_candidates(tmp_path))
    assert 'id="backbones"' in html and "-0.020 (-0.050 to +0.010)" in html
    assert "skipped: estimated time over backbone_choice.budget_s" in html and "0.850 (0.810 to 0.880)" in html
    assert results_page._backbones(None) == ""
