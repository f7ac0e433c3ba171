"""folderfit predict: same numbers as evaluate, folders with bad files, output formats."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_project as T
from conftest import run_stage

from folderfit.cli import build_parser
from folderfit.commands import predict as predict_command
from folderfit.errors import PipelineError
from folderfit.artifacts.manifest import read_manifest


def predict(*argv: str) -> None:
    """`folderfit predict ARGV` in-process, errors raised (not turned into exit codes)."""
    predict_command.command(build_parser().parse_args(["predict", *argv]))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["none", "flip"])
def project(tmp_path_factory, request) -> Path:
    """Prepared tiny data (PNG and JPEG sources) and an untrained model file, without and
    with flip test-time augmentation."""
    root = tmp_path_factory.mktemp(f"predict-tta-{request.param}")
    T.make_image_folder(root / "src", per_class=6, size=40, seed=1)
    T.make_image_folder(root / "src_jpg", per_class=3, size=44, seed=2, suffix=".jpg")
    for kind in T.CLASSES:  # JPEG and PNG sources (both stored as PNG)
        for f in (root / "src_jpg" / kind).iterdir():
            shutil.move(f, root / "src" / kind / f"j{f.name}")
    T.write_params(root, **{"data.source": "src", "data.image_size": 32, "data.test_fraction": 0.4,
                            "precision": "fp32", "evaluate.batch_size": 7})
    T.prepare(root)
    T.save_tiny_model(root / "models" / "model.pt", "tf_efficientnet_lite0", 32, "default",
                      tta=request.param)
    return root


def listed(project: Path, split: str) -> list[Path]:
    """The original files prepare listed for `split` (prepare keeps no copies)."""
    return sorted(Path(str(path)) for path, _ in read_manifest(project / "data/prepared")[1][split])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_predict_equals_evaluate(project):
    run_stage("evaluate", project)
    scored = sorted(row["prepared_file"] for row in read_csv(project / "metrics/eval/predictions.csv"))
    assert [project / f for f in scored] == listed(project, "test")  # the originals, as read
    predict(*[str(project / f) for f in scored], "--output", str(project / "preds.csv"),
            "--model", str(project / "models/model.pt"), "--precision", "fp32",
            "--batch-size", "3", "--top-k", "2")
    expected = {row["prepared_file"]: row for row in read_csv(project / "metrics/eval/predictions.csv")}
    got = {Path(row["path"]).relative_to(project).as_posix(): row
           for row in read_csv(project / "preds.csv")}
    # evaluate decodes the originals as predict does (issue 24), JPEG sources included
    assert sorted(got) == sorted(expected) and any("/j" in r["path"] for r in expected.values())
    for name, row in got.items():
        assert row["predicted"] == expected[name]["predicted"], name
        assert abs(float(row["confidence"]) - float(expected[name]["confidence"])) <= 2e-6, name
        assert row["top1_class"] == row["predicted"]
        assert float(row["top1_prob"]) >= float(row["top2_prob"])
    # the contract users rely on: predict on the ORIGINAL files gives evaluate's numbers
    predict(*[str(project / "src" / r["path"]) for r in expected.values()], "--output",
            str(project / "preds_src.csv"), "--model", str(project / "models/model.pt"),
            "--precision", "fp32", "--top-k", "2")
    by_source = {Path(r["path"]).relative_to(project / "src").as_posix(): r
                 for r in read_csv(project / "preds_src.csv")}
    for row in expected.values():
        assert by_source[row["path"]]["predicted"] == row["predicted"], row["path"]
        assert abs(float(by_source[row["path"]]["confidence"]) - float(row["confidence"])) <= 2e-6
    # an untrained net that still separates images: not every prediction is the same class
    assert len({row["predicted"] for row in got.values()}) > 1


@pytest.mark.slow  # a subprocess importing torch and building the model
def test_folder_with_bad_file_cli(project, tmp_path):
    """Recursive folder, hidden and non-image files ignored, a broken image reported and
    skipped, exit code 1, the good images still written (JSON lines)."""
    folder = tmp_path / "incoming"
    good = listed(project, "train")[:4]
    for i, f in enumerate(good):
        target = folder / ("nested" if i % 2 else "") / f"img{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / ".hidden.png").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "preds.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "folderfit", "predict", str(folder), "--model",
                           str(project / "models/model.pt"), "--output", str(out), "--top-k", "5",
                           "--batch-size", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"skipped {folder / 'broken.jpg'}:" in proc.stderr
    assert ".hidden" not in proc.stderr and "notes.txt" not in proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == [f"img{i}.png" for i in range(4)]
    for r in records:
        assert len(r["top_k"]) == 3  # clipped to the number of classes
        assert r["predicted"] == r["top_k"][0]["class"] and r["confidence"] == r["top_k"][0]["prob"]
        assert abs(sum(t["prob"] for t in r["top_k"]) - 1) < 1e-5


def test_explicit_files_and_missing_path(project, capsys):
    files = listed(project, "train")[:2]
    with pytest.raises(SystemExit) as exit_info:
        predict(*[str(f) for f in files], str(project / "nope.png"),
                "--model", str(project / "models/model.pt"), "--precision", "fp32")
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    rows = list(csv.DictReader(captured.out.splitlines()))
    assert [r["path"] for r in rows] == [str(f) for f in files]
    assert "nope.png: no such file or folder" in captured.err


def test_bad_model_file_is_a_one_line_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(PipelineError, match="model file not found"):
        predict(str(tmp_path), "--model", str(tmp_path / "missing.pt"))
    (tmp_path / "model.pt").write_text("not a model")
    with pytest.raises(PipelineError, match="not a model file"):
        predict(str(tmp_path), "--model", str(tmp_path / "model.pt"))


def test_device_and_precision_flags(project, capsys, monkeypatch):
    """--device cpu works; an absent device or fp16 on a CPU is one line naming the flag,
    and the Python API says the same in its own words."""
    import torch

    import folderfit

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only Linux machine
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    model = str(project / "models/model.pt")
    images = str(listed(project, "train")[0])
    predict(images, "--model", model, "--device", "cpu", "--precision", "fp32")
    assert capsys.readouterr().out.count("\n") == 2  # header + one row
    with pytest.raises(PipelineError, match=r"^--device cuda:3: no CUDA GPU visible .*use --device auto"):
        predict(images, "--model", model, "--device", "cuda:3")
    with pytest.raises(PipelineError, match=r"^--precision fp16: fp16 is for GPUs"):
        predict(images, "--model", model, "--device", "cpu", "--precision", "fp16")
    with pytest.raises(PipelineError, match=r"^device='mps': no Apple GPU here"):
        folderfit.load(model, device="mps")
    assert folderfit.load(model, precision="fp32", device="cpu").rt.device == torch.device("cpu")


def test_existing_output_is_refused_without_force(project, tmp_path):
    """`predict -o data/corrections.csv` used to overwrite it silently (issue 24)."""
    image = str(listed(project, "test")[0])
    model = str(project / "models/model.pt")
    target = tmp_path / "corrections.csv"
    target.write_text("file,action\nx.png,drop\n")
    with pytest.raises(PipelineError, match="the file exists; choose a new name, or add --force"):
        predict(image, "--model", model, "-o", str(target))
    assert target.read_text() == "file,action\nx.png,drop\n"
    predict(image, "--model", model, "-o", str(target), "--force")
    assert target.read_text().startswith("path,predicted,confidence")


def test_nan_model_is_a_one_line_error(project, tmp_path, capsys):
    """A model file with NaN weights used to print `nan` and exit 0."""
    import torch

    payload = torch.load(project / "models/model.pt", weights_only=True)
    for tensor in payload["state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(payload, tmp_path / "nan.pt")
    image = str(listed(project, "test")[0])
    with pytest.raises(PipelineError, match="non-finite|NaN") as exc:
        predict(image, "--model", str(tmp_path / "nan.pt"), "-o", str(tmp_path / "p.csv"))
    assert "\n" not in str(exc.value) and not (tmp_path / "p.csv").exists()


def test_extreme_aspect_ratio_is_a_reported_skip(project, tmp_path, capsys):
    """A 6000x1 PNG (~100 bytes) made predict peak at 2.4 GB; now it is skipped, with why."""
    from PIL import Image

    Image.new("RGB", (6000, 1)).save(tmp_path / "line.png")
    image = str(listed(project, "test")[0])
    with pytest.raises(SystemExit) as stop:
        predict(image, str(tmp_path / "line.png"), "--model", str(project / "models/model.pt"))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "line.png: aspect ratio 6000:1" in err and "1 image(s) classified" in err
