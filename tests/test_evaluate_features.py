"""evaluate of a feature_extract model: scored from the backbone's features (the vectors
review and train computed) and the model file's head, proven equal to the whole model file on
a sample; a disagreement falls back to the model file for every image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tiny_project as T
from conftest import run_stage

FEATURE_EXTRACT = {"strategy": "feature_extract", "feature_engine": "onnxruntime-fp32"}


def predictions(project: Path) -> dict[str, list[float]]:
    with open(project / "metrics/eval/predictions.csv", newline="") as fh:
        return {r["prepared_file"]: [float(r["confidence"])] + [float(t.split("=")[1]) for t in r["top_k"].split(";")]
                for r in csv.DictReader(fh)}


def summary(project: Path) -> dict:
    return json.loads((project / "metrics/eval/summary.json").read_text())


@pytest.fixture(scope="module", params=["none", "flip"])
def project(tmp_path_factory, request) -> Path:
    root = tmp_path_factory.mktemp(f"eval-features-{request.param}")
    T.make_image_folder(root / "src", per_class=8, size=40, seed=3)
    T.write_params(root, **{"data.source": "src", "data.image_size": 32, "data.test_fraction": 0.5,
                            "precision": "fp32", "evaluate.batch_size": 8})
    T.prepare(root)
    root.joinpath("tta").write_text(request.param)
    return root


def save_model(project: Path, extra: dict | None) -> None:
    """lite0's pretrained backbone (as train keeps it) with a seeded 3-class head."""
    from folderfit.artifacts import model_file
    from folderfit.backbone import architecture

    built = architecture.build_model("tf_efficientnet_lite0", len(T.CLASSES), "default", 0)
    model_file.save_model_file(project / "models/model.pt", built, list(T.CLASSES),
                      built.preprocess.with_image_size(32), extra=extra,
                      tta=(project / "tta").read_text())


def test_features_route_equals_model_file(project, capsys):
    save_model(project, None)  # no feature engine recorded: the whole model file scores
    run_stage("evaluate", project)
    assert summary(project)["scored_with"] == "the model file (fp32)"
    reference = predictions(project)

    save_model(project, FEATURE_EXTRACT)  # same weights, recorded as train records them
    capsys.readouterr()
    run_stage("evaluate", project)
    got = summary(project)
    assert got["scored_with"] == "features (onnxruntime-fp32) + the model file's head"
    n_test = got["n_images"]
    assert n_test == len(reference) >= 8
    assert got["checked_images"] == 8 and 0 <= got["check_max_difference"] <= 1e-4
    assert "agrees" in capsys.readouterr().out
    routed = predictions(project)
    assert sorted(routed) == sorted(reference)
    for name, probs in routed.items():
        # confidence has 6 decimals in the CSV, the top-k probabilities 4
        assert abs(probs[0] - reference[name][0]) <= 2e-6, name
        assert np.allclose(probs[1:], reference[name][1:], atol=1.01e-4, rtol=0), name

    # a second evaluate finds every vector in the cache (nothing computed again)
    run_stage("evaluate", project)
    assert f"{(2 if (project / 'tta').read_text() == 'flip' else 1) * n_test} vectors from the cache, 0 computed" \
        in capsys.readouterr().out


def test_disagreement_falls_back_to_the_model_file(project, monkeypatch, capsys):
    """Features that do not belong to the model file (here: rows shuffled) are caught by the
    sample check, and every image is scored with the model file instead."""
    from folderfit.pipeline import evaluate

    save_model(project, None)
    run_stage("evaluate", project)
    reference = predictions(project)
    save_model(project, FEATURE_EXTRACT)
    real = evaluate.score_from_features
    monkeypatch.setattr(evaluate, "score_from_features", lambda *a: real(*a)[::-1].copy())
    run_stage("evaluate", project)
    assert "scoring every image with the model file instead" in capsys.readouterr().err
    assert summary(project)["scored_with"] == "the model file (fp32)"
    assert predictions(project) == reference


def test_other_strategies_use_the_model_file(project):
    save_model(project, {"strategy": "fine_tune", "feature_engine": "onnxruntime-fp32"})
    run_stage("evaluate", project)
    assert summary(project)["scored_with"] == "the model file (fp32)"


def test_bf16_features_from_another_machine_use_the_model_file(project, monkeypatch):
    """Features recorded in bf16 on a CPU where bf16 is not native would be emulated (slow):
    the model file scores instead."""
    from folderfit.compute import runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    save_model(project, {"strategy": "feature_extract", "feature_engine": "torch-bf16"})
    run_stage("evaluate", project)
    assert summary(project)["scored_with"] == "the model file (fp32)"
