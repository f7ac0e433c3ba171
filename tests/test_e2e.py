"""End to end: the real `dvc repro` graph in a throwaway repository, on a tiny configuration."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import run

pytestmark = pytest.mark.slow  # dvc runs in temp repositories

DECLARED_OUTPUTS = [
    "data/demo", "data/prepared/manifest.csv", "metrics/data.json", "models/model.pt",
    "metrics/train.json", "metrics/timing.json", "metrics/train/metrics.json",
    "metrics/train/details.json",
    "metrics/eval.json", "metrics/eval/confusion.csv", "metrics/eval/confusion.png",
    "metrics/eval/predictions.csv", "metrics/classification_report.txt",
    "metrics/review.json", "metrics/review/label_issues.csv", "metrics/review/near_duplicates.csv",
    "metrics/review/outliers.csv", "metrics/review/label_issues.png",
]


def read_json(path):
    return json.loads(path.read_text())


def test_repro_then_experiment(pipeline_repo):
    repo = pipeline_repo
    first = run(["dvc", "repro"], repo)
    for name in DECLARED_OUTPUTS:
        assert (repo / name).exists(), f"{name} missing after dvc repro\n{first.stdout}"

    data = read_json(repo / "metrics/data.json")
    train = read_json(repo / "metrics/train/details.json")
    assert read_json(repo / "metrics/train.json") == {k: train[k] for k in (
        "strategy", "best_val_accuracy", "best_val_loss")}  # the headline DVC tables show
    evaluation = read_json(repo / "metrics/eval.json")
    with open(repo / "data/prepared/manifest.csv") as fh:
        manifest = list(csv.DictReader(fh))
    # 10 digit classes x 6 images, three-way split, every class in every split
    assert data["n_images"] == len(manifest) == 60
    assert {r["split"] for r in manifest} == {"train", "val", "test"}
    assert evaluation["split"] == "test"
    assert evaluation["n_images"] == data["n_test"] == sum(r["split"] == "test" for r in manifest)
    assert 0.0 <= evaluation["accuracy"] <= 1.0
    assert [row["class"] for row in evaluation["per_class"]] == [str(d) for d in range(10)]
    assert sum(row["support"] for row in evaluation["per_class"]) == evaluation["n_images"]
    with open(repo / "metrics/eval/predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert abs(sum(int(r["correct"]) for r in rows) / len(rows) - evaluation["accuracy"]) < 1e-6
    # feature_extract: only the new 10-class head of lite0 (1280 features) trains
    assert train["strategy"] == "feature_extract"
    assert train["trainable_params"] == 1280 * 10 + 10
    assert train["head_l2"] in [row["l2"] for row in train["head_path"]]
    assert train["weights"]["source"] == "bundled"
    model = torch.load(repo / "models/model.pt", weights_only=True)
    assert model["class_names"] == [str(d) for d in range(10)]
    assert model["preprocess"]["image_size"] == 32
    # the defaults: hflip auto decided by the mirror test on val, head refit on train + val,
    # no test-time augmentation (stored in the model file)
    assert train["mirror_test"]["hflip"] == train["hflip"]
    assert train["head_views"][0] == "clean" and ("flip" in train["head_views"]) == train["hflip"]
    assert train["head_refit_on_train_val"] is True
    # cpu_engine auto: the engine a timed trial chose on this machine, recorded with its times;
    # review ran the backbone with the same engine (one cache entry for both)
    assert train["feature_engine"] in ("onnxruntime-fp32", "torch-fp32", "openvino-fp32", "torch-bf16")
    assert read_json(repo / "metrics/review.json")["feature_engine"] == train["feature_engine"]
    assert model["tta"] == train["tta"] == "none"
    # evaluate scored the test images from the vectors review computed (the same engine),
    # proven equal to the whole model file on a sample (fp32 features; bf16: the model file)
    summary = read_json(repo / "metrics/eval/summary.json")
    if train["feature_engine"].endswith("-fp32"):
        assert summary["scored_with"] == f"features ({train['feature_engine']}) + the model file's head"
        assert summary["checked_images"] == min(8, evaluation["n_images"])
        assert summary["check_max_difference"] <= 1e-4
    else:
        assert summary["scored_with"] == "the model file (bf16)"
    review = read_json(repo / "metrics/review.json")
    with open(repo / "metrics/review/scores.csv") as fh:
        scored = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in scored) == sorted(r["source"] for r in manifest)  # every image
    with open(repo / "metrics/review/label_issues.csv") as fh:
        assert review["n_label_issues"] == len(list(csv.DictReader(fh)))

    second = run(["dvc", "repro"], repo)
    # only preflight runs again (it records the library's digest); nothing else is out of date
    assert [line for line in second.stdout.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'preflight':"], second.stdout
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {"preflight": ["always changed"]}

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline results"], repo)
    exp = run(["dvc", "exp", "run", "-S", "strategy=full_tune"], repo)
    assert "Running stage 'train'" in exp.stdout and "head warm start" in exp.stdout
    assert "Running stage 'prepare'" not in exp.stdout  # data unchanged: cached
    assert "Running stage 'review'" not in exp.stdout  # the review does not depend on training
    full = read_json(repo / "metrics/train/details.json")
    assert full["strategy"] == "full_tune"
    assert full["trainable_params"] == full["total_params"]
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {"preflight": ["always changed"]}
    shown = run(["dvc", "exp", "show", "--csv"], repo).stdout
    assert "full_tune" in shown and "accuracy" in shown


def test_bad_param_is_one_line(pipeline_repo):
    result = run(["dvc", "exp", "run", "-S", "strategy=fine_tunes"], pipeline_repo, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and "did you mean 'fine_tune'" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
