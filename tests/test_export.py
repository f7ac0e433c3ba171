"""folderfit export: torch.export + ONNX files, the preprocessing contract, a loud parity check."""

from __future__ import annotations

import json

import pytest
import tiny_project as T
import torch

from folderfit.artifacts.model_file import load_model_file
from folderfit.cli import build_parser
from folderfit.commands import export as export_command
from folderfit.compute import classifier
from folderfit.errors import PipelineError

pytestmark = pytest.mark.slow  # torch.export + ONNX translation take a while


def export(*argv: str) -> None:
    """`folderfit export ARGV` in-process, errors raised."""
    export_command.command(build_parser().parse_args(["export", *argv]))


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    images = T.make_image_folder(root / "images", per_class=4, size=48, seed=3)
    model_file = root / "model.pt"
    # flip test-time augmentation: the exports must hold it, as evaluate and predict apply it
    T.save_tiny_model(model_file, "tf_efficientnet_lite0", 40, "default", tta="flip")
    return model_file, images


def test_export_parity_and_contract(model_and_images, tmp_path, capsys):
    model_file, images = model_and_images
    out = tmp_path / "export"
    export("--model", str(model_file), "--out-dir", str(out), "--images", str(images),
           "--n-images", "8")
    print(capsys.readouterr().out)  # the parity lines, for the log
    parity = json.loads((out / "parity.json").read_text())
    assert parity["n_images"] == 8
    for fmt in ("torch_export", "onnx"):
        assert parity["formats"][fmt]["max_abs_diff_logits"] <= parity["allowed_abs_diff_logits"] <= 5e-3 * 10
        assert parity["formats"][fmt]["same_predicted_class"] == "8/8"
    loaded = load_model_file(model_file)
    contract = json.loads((out / "preprocess.json").read_text())
    assert contract["class_names"] == list(T.CLASSES)
    assert (contract["image_size"], contract["resize_size"]) == (40, loaded.preprocess.resize_size)
    assert contract["mean"] == list(loaded.preprocess.mean) and contract["interpolation"] == loaded.preprocess.interpolation
    assert contract["test_time_augmentation"] == "flip" and "mirrored" in contract["steps"][-1]

    # a consumer following the contract gets predict's probabilities, at another batch size
    files = sorted(images.rglob("*.png"))[:3]
    batch = export_command.preprocessed_batch(loaded, files)
    probs, order, failed = classifier.predict_files(loaded, files, batch_size=3, precision="fp32")
    assert order == [0, 1, 2] and not failed
    program = torch.export.load(str(out / contract["files"]["torch_export"])).module()
    assert torch.allclose(program(batch).softmax(1), probs, atol=1e-5)
    assert torch.allclose(export_command.run_onnx(out / contract["files"]["onnx"], batch[:1]).softmax(1),
                          probs[:1], atol=1e-3)  # onnxruntime kernels: fp32 rounding differs


def test_parity_failure_is_loud(model_and_images, tmp_path, monkeypatch):
    model_file, images = model_and_images
    real = export_command.run_program
    monkeypatch.setattr(export_command, "run_program", lambda path, batch: real(path, batch) + 0.01)
    with pytest.raises(PipelineError, match=r"parity check FAILED .*torch_export: max abs logit difference 0\.01 \(allowed"):
        export("--model", str(model_file), "--out-dir", str(tmp_path), "--images", str(images),
               "--n-images", "2", "--formats", "torch_export")
    assert not (tmp_path / "parity.json").exists() and not (tmp_path / "preprocess.json").exists()


def test_missing_onnxruntime_names_the_extra(model_and_images, tmp_path, monkeypatch):
    import sys

    model_file, images = model_and_images
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(PipelineError, match=r"pip install -e '\.\[export\]'"):
        export("--model", str(model_file), "--out-dir", str(tmp_path), "--images", str(images))
    assert not any(tmp_path.iterdir())
