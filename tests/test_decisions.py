"""Knowing what it does not know: the confidence threshold that meets a target accuracy on
fresh data, the `unfamiliar` distance, conformal prediction sets, and that predict,
folderfit.load and old model files agree on the decision (folderfit.frozen.decisions,
folderfit.compute.decisions)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tiny_project as T
import torch
from conftest import make_repo, run, run_stage, write_params
from PIL import Image

from folderfit.compute import decisions
from folderfit.frozen import decisions as fitting


def calibrated_sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Confidences uniform on [0.5, 1], each right with probability equal to it: the images
    accepted from threshold t are right with probability (1 + t) / 2."""
    confidence = rng.uniform(0.5, 1.0, n)
    return confidence, rng.uniform(size=n) < confidence


def test_threshold_meets_the_target_on_fresh_samples():
    target, met, naive_met = 0.9, 0, 0
    seeds = range(40)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        conf, right = calibrated_sample(4000, rng)
        threshold, ok, accepted, low = fitting.confidence_threshold(conf, right, target)
        assert ok and low >= target and 0 < accepted < 1
        fresh_conf, fresh_right = calibrated_sample(200_000, rng)
        met += fresh_right[fresh_conf >= threshold].mean() >= target
        # without the finite-sample correction: the lowest threshold whose calibration
        # accuracy reaches the target (the point estimate); it misses about half the time
        order = np.argsort(-conf)
        accuracy = np.cumsum(right[order]) / np.arange(1, len(conf) + 1)
        naive = conf[order][np.flatnonzero(accuracy >= target).max()]
        naive_met += fresh_right[fresh_conf >= naive].mean() >= target
    assert met >= 0.9 * len(seeds), met
    assert naive_met <= 0.75 * len(seeds), naive_met  # the correction is what makes the guarantee


def test_no_threshold_reaches_an_impossible_target():
    rng = np.random.default_rng(0)
    conf, right = calibrated_sample(300, rng)
    threshold, ok, accepted, _ = fitting.confidence_threshold(conf, right, 0.999)
    assert not ok and threshold == conf.max() and accepted == 1 / 300


def synthetic_rules(n: int = 3000, classes: int = 4, seed: int = 0, small_class: int | None = None,
                    dim: int = 16):
    """Rules fitted on calibrated synthetic probabilities (true labels drawn from them) and
    Gaussian class clusters as features, and a sampler of fresh (probs, labels, features)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * 3

    def sample(m):
        logits = rng.normal(0, 2.0, (m, classes))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        labels = np.array([rng.choice(classes, p=p) for p in probs])
        if small_class is not None:  # few calibration images of this class
            keep = (labels != small_class) | (rng.uniform(size=m) < 0.02)
            probs, labels = probs[keep], labels[keep]
        features = torch.from_numpy(centres[labels] + rng.normal(0, 1, (len(labels), dim))).float()
        return probs, labels, features

    probs, labels, features = sample(n)
    folds = np.arange(len(labels)) % 5
    rules = fitting.fit_rules(probs, labels, folds, features, 0.9, "synthetic", seed)
    return rules, sample


def test_sets_cover_the_nominal_level():
    rules, sample = synthetic_rules(small_class=3)
    probs, labels, _ = sample(20_000)
    sets = decisions.prediction_sets(rules, torch.from_numpy(probs), 0.9)
    covered = np.array([y in s for y, s in zip(labels, sets)])
    assert abs(covered.mean() - 0.9) < 0.03
    for c in range(3):  # class-conditional where the class has enough calibration images
        assert abs(covered[labels == c].mean() - 0.9) < 0.04, c
    assert len(rules.conformal_scores[3]) < rules.min_class_calibration  # pooled for class 3
    assert np.mean([len(s) for s in sets]) < 4  # informative: not every class


def test_distance_flags_unrelated_vectors_and_keeps_familiar_ones():
    rules, sample = synthetic_rules()
    _, _, familiar = sample(4000)
    unrelated = torch.randn(500, 16) * 3 + 20
    far = decisions.neighbour_distance(unrelated, rules.reference, rules.neighbours) > rules.distance_threshold
    near = decisions.neighbour_distance(familiar, rules.reference, rules.neighbours) > rules.distance_threshold
    assert far.float().mean() > 0.9
    assert near.float().mean() < 0.08


def test_rules_survive_the_model_file(tmp_path):
    from folderfit.artifacts import model_file

    path = tmp_path / "model.pt"
    built, pre = T.save_tiny_model(path)
    width = built.model.get_submodule(built.head_name).in_features
    wrong, _ = synthetic_rules(n=300, classes=3)
    model_file.save_model_file(path, built, list(T.CLASSES), pre, decisions=wrong.to_payload())
    with pytest.raises(Exception, match="the head reads"):
        model_file.load_model_file(path)
    rules, _ = synthetic_rules(n=300, classes=3, dim=width)
    model_file.save_model_file(path, built, list(T.CLASSES), pre, decisions=rules.to_payload())
    loaded = model_file.load_model_file(path).decisions
    assert loaded.confidence_threshold == rules.confidence_threshold
    assert loaded.reference.dtype == torch.float16 and loaded.reference.shape == rules.reference.shape
    payload = torch.load(path, weights_only=True)
    payload["decisions"]["neighbours"] = "five"
    torch.save(payload, path)
    with pytest.raises(Exception, match="decisions.neighbours"):
        model_file.load_model_file(path)


def test_old_model_files_never_abstain(tmp_path):
    import folderfit

    path = tmp_path / "model.pt"
    T.save_tiny_model(path)
    classifier = folderfit.load(path)
    assert classifier.loaded.decisions is None
    noise = Image.fromarray(np.full((40, 40, 3), 128, np.uint8))
    answer = classifier.classify(noise)
    assert answer.decision == answer[0][0]  # the top class, never unsure or unfamiliar
    d = decisions.decide(None, torch.tensor([[0.34, 0.33, 0.33]]), None, list(T.CLASSES))
    assert d.labels == [T.CLASSES[0]] and d.accepted.all()


def flat_noise(seed: int, size: int = 40) -> Image.Image:
    """An image of an unrelated kind: one flat colour with faint noise, no texture."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 255, 3) + rng.normal(0, 3, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("decisions")
    source = T.make_image_folder(root / "images", per_class=20, size=40, seed=5)
    write_params(root, **{"data.source": str(source), "data.image_size": 32,
                          "model_name": "tf_efficientnet_lite0", "precision": "fp32",
                          "augment.hflip": False, "data.test_fraction": 0.25, "evaluate.bootstrap": 0,
                          "predict.target_accuracy": 0.9})
    run_stage("prepare", root)
    run_stage("train", root)
    odd = root / "odd"
    odd.mkdir()
    for i in range(6):
        flat_noise(i).save(odd / f"flat{i}.png")
    T.make_image_folder(root / "fresh", per_class=4, size=40, seed=99)
    return root


def test_unrelated_images_are_unfamiliar_and_every_route_agrees(trained, capsys):
    import folderfit
    from folderfit import cli

    model = trained / "models/model.pt"
    rules = folderfit.load(model).loaded.decisions
    assert rules is not None and rules.n_calibration > 0
    out = trained / "out.csv"
    cli.main(["predict", str(trained / "odd"), str(trained / "fresh"), "--model", str(model),
              "-o", str(out), "--sets", "0.9"])
    with open(out, newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    classifier = folderfit.load(model)
    for path, row in rows.items():
        with Image.open(path) as img:
            answer = classifier.classify(img)
        assert answer.decision == row["decision"], path
        assert row["set"] and row["top1_class"]
    from folderfit.commands import serve

    service = serve.Service(model, precision="auto", device="cpu")  # the server's answer too
    uploads = [(path, open(path, "rb").read()) for path in rows]
    served = service.classify(uploads, top_k=2)["predictions"]
    assert [p["decision"] for p in served] == [r["decision"] for r in rows.values()]
    odd = [r["decision"] for p, r in rows.items() if "/odd/" in p]
    fresh = [r["decision"] for p, r in rows.items() if "/fresh/" in p]
    assert odd.count("unfamiliar") >= 5, odd
    assert fresh.count("unfamiliar") <= 2, fresh


def test_evaluate_reports_the_decisions(trained):
    run_stage("evaluate", trained)
    ev = json.loads((trained / "metrics/eval.json").read_text())
    for key in ("accepted_fraction", "accepted_accuracy", "unfamiliar_rate", "set_coverage_95"):
        assert key in ev, key
    details = json.loads((trained / "metrics/eval/decisions.json").read_text())
    assert details["sets"]["per_class"].keys() == set(T.CLASSES)
    curve = json.loads((trained / "metrics/eval/coverage.json").read_text())["coverage"]
    assert curve[-1]["coverage"] == 1.0
    assert 'id="decisions"' in (trained / "metrics/eval/index.html").read_text()


@pytest.mark.slow  # a dvc repro in a temporary repository
def test_dvc_repro_writes_the_decision_keys(tmp_path):
    repo = make_repo(tmp_path / "repo", {"model_name": "tf_efficientnet_lite0",
                                         "strategy": "feature_extract"})
    run(["dvc", "repro"], repo)
    ev = json.loads((repo / "metrics/eval.json").read_text())
    for key in ("accepted_fraction", "accepted_accuracy", "unfamiliar_rate", "set_coverage_95",
                "set_mean_size_95"):
        assert key in ev, key


def test_no_images_or_no_features_still_decide():
    rules, _ = synthetic_rules(n=300)
    names = ["a", "b", "c", "d"]
    assert decisions.decide(rules, torch.zeros(0, 4), None, names).labels == []
    sure = decisions.decide(rules, torch.tensor([[0.97, 0.01, 0.01, 0.01], [0.4, 0.3, 0.2, 0.1]]), None, names)
    assert sure.labels[1] == decisions.UNSURE and not sure.unfamiliar.any()


def test_onnxruntime_route_gives_the_same_decisions(trained, monkeypatch):
    """From 64 images on, predict runs the exported backbone and the torch head: the same
    decisions and distances as torch alone."""
    from folderfit.artifacts.model_file import load_model_file
    from folderfit.compute import classifier

    loaded = load_model_file(trained / "models/model.pt")
    assert str(loaded.numerics).startswith("onnxruntime")
    files = sorted((trained / "odd").glob("*.png")) + sorted((trained / "fresh").rglob("*.png"))
    _, _, _, torch_route = classifier.classify_files(loaded, files, 8)
    monkeypatch.setattr(classifier, "ORT_MIN_IMAGES", 1)
    routes = []
    real = classifier.onnxruntime_model
    monkeypatch.setattr(classifier, "onnxruntime_model", lambda *a: routes.append(real(*a)) or routes[-1])
    _, _, _, ort_route = classifier.classify_files(loaded, files, 8)
    assert isinstance(routes[0], classifier.FeaturesThenHead)
    assert ort_route.labels == torch_route.labels
    assert np.allclose(ort_route.distance, torch_route.distance, atol=1e-4)
