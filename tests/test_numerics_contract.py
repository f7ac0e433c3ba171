"""One numerics contract: the model file records the engine and precision its scores were
computed with, and evaluate, `folderfit predict` and folderfit.load use them by default, on a
CPU with native bf16 (faked where absent) and on one without. fine_tune's epoch 0 reproduces
the solved head's val scores (same numerics, same test-time augmentation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_stage, write_params
from PIL import Image

CLASSES = ("ripples", "grain", "spots")


def photo(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A textured, photo-like RGB picture: a lit gradient, several octaves of oriented
    texture (the class sets orientation and scale), blurred objects and sensor noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    light = 0.35 + 0.4 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)
    angle = {"ripples": 0.3, "grain": 1.4, "spots": 2.4}[kind] + rng.normal(0, 0.25)
    texture = np.zeros_like(xx)
    for octave in range(4):
        frequency = (4 if kind == "ripples" else 9) * 2 ** octave * rng.uniform(0.8, 1.25)
        u = np.cos(angle) * xx + np.sin(angle) * yy
        texture += np.sin(2 * np.pi * frequency * u + rng.uniform(0, 6.3)) / (octave + 1)
    if kind == "spots":
        for _ in range(rng.integers(3, 7)):
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.18)
            texture += 2.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    tint = rng.uniform(0.5, 1.0, 3)
    pixels = (light[..., None] + 0.15 * texture[..., None]) * tint + rng.normal(0, 0.05, (size, size, 3))
    return Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8), "RGB")


def photo_folder(root: Path, per_class: int, size: int = 72, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(kind, size, rng).save(root / kind / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture
def fake_cpu(monkeypatch):
    """fake_cpu(bf16): make this CPU report native bf16 (AVX-512 BF16) or not."""
    from folderfit.compute import runtime

    def fake(bf16: bool) -> None:
        monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: bf16)
    return fake


def eval_predictions(project: Path) -> dict[str, tuple[str, float, dict]]:
    """Original path -> (predicted, confidence, {class: probability}) from evaluate's file."""
    out = {}
    with open(project / "metrics/eval/predictions.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            probs = {c: float(p) for c, _, p in (t.partition("=") for t in row["top_k"].split(";"))}
            out[row["path"]] = (row["predicted"], float(row["confidence"]), probs)
    return out


def cli_predict(project: Path, files: list[str], *extra: str) -> dict[str, tuple[str, float, dict]]:
    """`folderfit predict` through the console script's main, in-process, defaults unless
    `extra`; original path (relative to data.source) -> (predicted, confidence, probabilities)."""
    from folderfit import cli

    out = project / f"predict{len(list(project.glob('predict*.csv')))}.csv"
    cli.main(["predict", *[str(project / "src" / f) for f in files], "--model",
              str(project / "models/model.pt"), "--output", str(out), "--top-k", str(len(CLASSES)),
              *extra])
    got = {}
    with open(out, newline="") as fh:
        for row in csv.DictReader(fh):
            probs = {row[f"top{j}_class"]: float(row[f"top{j}_prob"]) for j in range(1, len(CLASSES) + 1)}
            got[Path(row["path"]).relative_to(project / "src").as_posix()] = (
                row["predicted"], float(row["confidence"]), probs)
    return got


def largest_difference(a: dict, b: dict) -> float:
    """Of the confidences (6 decimals in both files) and of the top-k probabilities evaluate
    lists (4 decimals there: 5e-5 of rounding are taken off)."""
    assert sorted(a) == sorted(b)
    return max(max(abs(a[k][1] - b[k][1]),
                   *(max(0.0, abs(a[k][2][c] - b[k][2][c]) - 5e-5) for c in b[k][2]))
               for k in a)


def make_project(root: Path, **overrides) -> Path:
    photo_folder(root / "src", per_class=10, seed=5)
    write_params(root, **{"data.source": "src", "data.image_size": 64, "data.test_fraction": 0.3,
                          "model_name": "tf_efficientnet_lite0", "evaluate.batch_size": 8,
                          "evaluate.bootstrap": 0, "review.folds": 2, **overrides})
    run_stage("prepare", root)
    return root


# (native bf16, params overrides, the numerics train must record)
CASES = {
    # the finding: ONNX Runtime fp32 features on a bf16 CPU, where predict used to pick bf16
    "bf16-cpu-onnxruntime": (True, {"cpu_engine": "onnxruntime"}, "onnxruntime-fp32"),
    "bf16-cpu-openvino": (True, {"cpu_engine": "openvino"}, "openvino-fp32"),
    "bf16-cpu-bf16": (True, {"precision": "bf16"}, "torch-bf16"),
    "no-bf16-cpu": (False, {}, None),  # the engine trial's pick: fp32 either way
}


@pytest.mark.parametrize("case", list(CASES))
def test_predict_and_load_default_to_evaluates_numerics(case, tmp_path, monkeypatch, fake_cpu, capsys):
    import torch

    import folderfit

    bf16, overrides, recorded = CASES[case]
    if overrides.get("cpu_engine") == "openvino":
        pytest.importorskip("openvino")  # optional (pip install openvino)
    fake_cpu(bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    project = make_project(tmp_path, **overrides)
    run_stage("train", project)
    run_stage("evaluate", project)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("train: "))
    details = json.loads((project / "metrics/train/details.json").read_text())
    numerics = details["numerics"]
    assert numerics == (recorded or numerics) and numerics in ("onnxruntime-fp32", "torch-fp32", "openvino-fp32", "torch-bf16")
    assert numerics == details["feature_engine"]
    # train's first line names what computed the features, not the training runtime
    assert header.endswith(f"cpu, features: {numerics}"), header
    assert ("bf16" in header) == numerics.endswith("bf16")

    expected = eval_predictions(project)
    assert len(expected) >= 9
    got = cli_predict(project, sorted(expected))
    assert largest_difference(got, expected) <= 1e-4
    assert all(got[k][0] == expected[k][0] for k in got)
    if numerics.startswith("onnxruntime"):  # a folder this large runs on ONNX Runtime itself
        from folderfit.compute import classifier, cpu_engine

        exported, export = [], cpu_engine.export_backbone
        monkeypatch.setattr(classifier, "ORT_MIN_IMAGES", 1)
        monkeypatch.setattr(cpu_engine, "export_backbone", lambda *a: exported.append(export(*a)) or exported[-1])
        assert largest_difference(cli_predict(project, sorted(expected)), expected) <= 1e-4
        assert len(exported) == 1
    # folderfit.load with its defaults: the same numbers
    classifier = folderfit.load(project / "models/model.pt")
    names = sorted(expected)
    with contextlib_images([project / "src" / n for n in names]) as images:
        probs = classifier.probabilities(images)
    for name, row in zip(names, probs):
        for c, p in expected[name][2].items():
            assert abs(float(row[classifier.class_names.index(c)]) - p) <= 1.01e-4, name
    # the test can tell: the other precision moves the probabilities (an explicit flag wins)
    other = "fp32" if numerics.endswith("bf16") else "bf16"
    if bf16:
        assert largest_difference(cli_predict(project, names, "--precision", other), expected) > 1e-4


class contextlib_images:
    """Opened PIL images, closed on exit."""

    def __init__(self, paths):
        self.images = [Image.open(p) for p in paths]

    def __enter__(self):
        return self.images

    def __exit__(self, *exc):
        for image in self.images:
            image.close()


def test_onnxruntime_and_torch_fp32_agree(tmp_path):
    """Where the file records ONNX Runtime fp32 and onnxruntime is absent (core install),
    torch fp32 is the same numerics: the whole model in both agrees to 1e-4 in probability."""
    pytest.importorskip("onnxruntime")
    import torch

    from folderfit.backbone import architecture
    from folderfit.compute import cpu_engine
    from folderfit.images import datasets, decode

    photo_folder(tmp_path, per_class=4, seed=9)
    built = architecture.build_model("tf_efficientnet_lite0", len(CLASSES), "default", 0)
    pre = built.preprocess.with_image_size(64)
    model = built.model.eval()
    files = sorted(tmp_path.rglob("*.jpg"))
    batch = datasets.Normalizer(pre.mean, pre.std)(torch.stack([decode.network_image(f, pre) for f in files]))
    ort = cpu_engine.export_backbone(model, 64, len(files))(batch)
    with torch.inference_mode():
        reference = model(batch)
    gap = (torch.softmax(ort, 1) - torch.softmax(reference, 1)).abs().max().item()
    assert gap <= 1e-4


# ------------------------------------------------------------------ epoch 0 = the solved head
@pytest.mark.parametrize("bf16, overrides", [
    (True, {"cpu_engine": "onnxruntime"}),  # the demo's full_tune: fp32 features, bf16 training
    (False, {"augment.hflip": True, "evaluate.tta": "flip"}),  # the head scored with flip TTA
], ids=["bf16-cpu-onnxruntime", "flip-tta"])
def test_epoch_zero_reproduces_the_solved_head(bf16, overrides, tmp_path, monkeypatch, fake_cpu):
    import torch

    from folderfit.frozen import probe
    from folderfit.tuning import epoch_loop

    fake_cpu(bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    project = make_project(tmp_path, **{"strategy": "fine_tune", "num_epochs": 1, "freeze_layers": 6,
                                        "batch_size": 8, **overrides})
    heads, fits = [], []
    solve, fit = probe.solve, epoch_loop.fit
    monkeypatch.setattr(probe, "solve", lambda *a, **k: heads.append(solve(*a, **k)) or heads[-1])
    monkeypatch.setattr(epoch_loop, "fit", lambda *a, **k: fits.append(fit(*a, **k)) or fits[-1])
    run_stage("train", project)
    start = fits[0].history[0]
    assert start["epoch"] == 0 and "train_loss" not in start
    head = heads[0].fit
    assert start["val_accuracy"] == pytest.approx(head.val_accuracy, abs=1e-9)
    assert start["val_loss"] == pytest.approx(head.val_loss, abs=1e-4)
    details = json.loads((project / "metrics/train/details.json").read_text())
    assert details["numerics"] == "torch-fp32"  # validated as the head's features were computed


@pytest.mark.parametrize("numerics", ["onnxruntime-fp32", "torch-bf16"])
def test_export_names_the_scores_numerics(numerics, tmp_path, capsys):
    """The exports compute fp32: preprocess.json names the model's numerics, and a model
    scored in bf16 gets the size of the difference in parity.json and a note."""
    import tiny_project as T

    from folderfit.commands import export as export_command

    images = photo_folder(tmp_path / "images", per_class=2, seed=11)
    model_file = tmp_path / "model.pt"
    T.save_tiny_model(model_file, "tf_efficientnet_lite0", 40, "default", classes=CLASSES,
                      extra={"strategy": "feature_extract", "numerics": numerics})
    report = export_command.export(model_file, tmp_path / "export", ["torch_export"], [str(images)], 6, 5e-3)
    contract = json.loads((tmp_path / "export/preprocess.json").read_text())
    assert contract["scores_numerics"] == numerics
    err = capsys.readouterr().err
    if numerics.endswith("bf16"):
        assert 0 < report["eager_bf16_vs_fp32_abs_diff_probs"] < 0.5
        assert "scored in bf16" in err and "--precision fp32" in err
    else:
        assert not any(k.startswith("eager_bf16") for k in report) and "scored in" not in err
