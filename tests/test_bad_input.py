"""Every bad input of the robustness issue: a one-line message naming the file or key and what
to do, or a counted skip in metrics/data.json — never a traceback, never a half-written output.
All files are generated here."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from folderfit.errors import PipelineError
from folderfit.params import parse_params

from conftest import repo_params, run_stage

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ file makers
def photo(size=(24, 16), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def png_bomb(path: Path, side: int = 40000) -> Path:
    """A valid PNG header claiming side x side pixels (1.6 gigapixels) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return path


def good_class(root: Path, name: str, n: int = 4, seed: int = 0) -> None:
    for i in range(n):
        save(photo(seed=seed * 100 + i), root / name / f"img{i}.png", "PNG")


def params_with(**changes) -> dict:
    from conftest import nested

    return repo_params(nested(changes))


def write_params(tmp: Path, **changes) -> None:
    (tmp / "params.yaml").write_text(yaml.safe_dump(params_with(**changes), sort_keys=False))


def run_prepare(tmp: Path, monkeypatch, source: Path, **changes) -> dict:
    """prepare's main() in tmp (as `dvc repro` runs it); returns metrics/data.json."""
    monkeypatch.chdir(tmp)
    write_params(tmp, **{"data.source": str(source), "data.image_size": 16, **changes})
    run_stage("prepare", tmp)
    return json.loads((tmp / "metrics/data.json").read_text())


def stored(tmp: Path, source_rel: str) -> Image.Image:
    report_rows = (tmp / "data/prepared/manifest.csv").read_text(encoding="utf-8").splitlines()
    header = report_rows[0].split(",")
    for line in report_rows[1:]:
        row = dict(zip(header, line.split(",")))
        if row["source"] == source_rel:
            return Image.open(tmp / "data/prepared" / row["file"])
    raise AssertionError(f"{source_rel} is not in the manifest")


# ------------------------------------------------------------------ image files
@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """One messy ImageFolder with every image-level case, prepared once."""
    tmp = tmp_path_factory.mktemp("messy")
    src = tmp / "src"
    good_class(src, "cats", seed=1)
    good_class(src, "dogs", seed=2)
    c = src / "cats"
    full = io.BytesIO()
    photo((64, 48)).save(full, format="JPEG")
    (c / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (c / "notes.jpg").write_text("this is not an image\n")
    (c / "empty.jpg").write_bytes(b"")
    (c / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (c / "._img0.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    png_bomb(c / "bomb.png")
    save(photo(seed=5), c / "really_png.jpg", "PNG")
    save(photo(seed=6).convert("P"), c / "really_gif.jpg", "GIF")
    save(photo(seed=7).convert("CMYK"), c / "cmyk.jpg", "JPEG")
    save(Image.fromarray(np.full((12, 12), 65535, dtype=np.uint16)), c / "sixteen_bit.png", "PNG")
    rgba = Image.new("RGBA", (12, 12), (255, 0, 0, 0))  # fully transparent red
    save(rgba, c / "rgba.png", "PNG")
    save(photo(seed=8).convert("P"), c / "palette.png", "PNG")
    save(photo(seed=9).convert("LA"), c / "grey_alpha.png", "PNG")
    save(photo(seed=10).convert("L"), c / "grey.png", "PNG")
    save(Image.fromarray(np.full((12, 12), 1000, dtype=np.uint16)).convert("I;16"), c / "i16.png", "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    save(photo((40, 20), seed=11), c / "rotated.jpg", "JPEG", exif=exif.tobytes())
    save(photo(seed=12), src / "dogs" / "mañana chien été.png", "PNG")
    save(photo(seed=13), src / "dogs" / "photo with spaces.jpg", "JPEG")
    (src / "birds").mkdir()  # empty class folder
    with pytest.MonkeyPatch.context() as mp:
        return tmp, run_prepare(tmp, mp, src)


def skipped(report: dict) -> dict[str, str]:
    return {s["file"]: s["reason"] for s in report["skipped"]}


@pytest.mark.parametrize("name,reason", [
    ("cats/truncated.jpg", "cannot decode"),
    ("cats/notes.jpg", "not an image file"),
    ("cats/empty.jpg", "empty file (0 bytes)"),
    ("cats/bomb.png", "decompression bomb"),
    ("cats/.DS_Store", "hidden file"),
    ("cats/._img0.jpg", "hidden file"),
])
def test_unusable_file_is_a_counted_skip_with_reason(messy, name, reason):
    _, report = messy
    assert reason in skipped(report)[name]
    assert report["n_skipped"] == len(report["skipped"]) == 6


@pytest.mark.parametrize("name,mode", [
    ("cats/really_png.jpg", "PNG named .jpg"), ("cats/really_gif.jpg", "GIF named .jpg"),
    ("cats/cmyk.jpg", "CMYK"), ("cats/sixteen_bit.png", "16-bit"), ("cats/rgba.png", "RGBA"),
    ("cats/palette.png", "P"), ("cats/grey_alpha.png", "LA"), ("cats/grey.png", "L"),
    ("cats/i16.png", "I;16"), ("dogs/mañana chien été.png", "non-ASCII name"),
    ("dogs/photo with spaces.jpg", "spaces in name"),
])
def test_odd_but_valid_image_is_kept_as_rgb(messy, name, mode):
    tmp, report = messy
    assert name not in skipped(report)
    assert stored(tmp, name).mode == "RGB", mode


def test_pixel_conversions(messy):
    tmp, _ = messy
    assert stored(tmp, "cats/sixteen_bit.png").getpixel((0, 0)) == (255, 255, 255)  # 65535 -> 255
    assert stored(tmp, "cats/rgba.png").getpixel((0, 0)) == (255, 255, 255)  # transparent -> white


def test_exif_rotated_photo_is_stored_upright(messy):
    tmp, _ = messy
    assert stored(tmp, "cats/rotated.jpg").size == (20, 40)  # 40x20 landscape, orientation 6


def test_empty_class_folder_is_left_out_with_a_warning(messy):
    _, report = messy
    assert report["empty_classes"] == [{"folder": "birds", "reason": "no image file in the folder"}]
    assert report["n_classes"] == 2


# ------------------------------------------------------------------ folder structure
def expect_error(tmp, monkeypatch, source, *fragments, **changes) -> str:
    (tmp / "data/prepared").mkdir(parents=True, exist_ok=True)
    (tmp / "data/prepared/keep.txt").write_text("previous output")
    with pytest.raises(PipelineError) as info:
        run_prepare(tmp, monkeypatch, source, **changes)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    # nothing half-written: the previous output is untouched, no report, no temp dir left
    assert (tmp / "data/prepared/keep.txt").read_text() == "previous output"
    assert not (tmp / "metrics/data.json").exists()
    assert not (tmp / "data/.prepared.tmp").exists()
    return message


def test_class_with_one_image(tmp_path, monkeypatch):
    good_class(tmp_path / "src", "a")
    good_class(tmp_path / "src", "b", n=1)
    expect_error(tmp_path, monkeypatch, tmp_path / "src", "class 'b' has 1 distinct image",
                 "add images or remove the class")


def test_only_one_class(tmp_path, monkeypatch):
    good_class(tmp_path / "src", "a")
    expect_error(tmp_path, monkeypatch, tmp_path / "src", "1 class folder(s) with images (a)",
                 "needs at least 2")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_source_missing_or_not_a_directory(tmp_path, monkeypatch, kind):
    source = tmp_path / "nowhere"
    if kind == "file":
        source.write_text("x")
    expect_error(tmp_path, monkeypatch, source, str(source),
                 "does not exist" if kind == "missing" else "is not a directory")


def test_given_split_with_different_classes(tmp_path, monkeypatch):
    src = tmp_path / "src"
    good_class(src / "train", "a")
    good_class(src / "train", "b")
    good_class(src / "val", "a")
    good_class(src / "val", "c")
    expect_error(tmp_path, monkeypatch, src, "val: classes differ from train/ (b, c)")


# ------------------------------------------------------------------ params.yaml
@pytest.mark.parametrize("changes,fragments", [
    ({"num_epoch": 3}, ["unknown key 'num_epoch'", "did you mean 'num_epochs'"]),
    ({"data.image_sise": 64}, ["unknown key 'data.image_sise'", "did you mean 'image_size'"]),
    ({"batch_size": "32"}, ["'batch_size' must be int, got '32'"]),
    ({"lr": "fast"}, ["'lr' must be float"]),
    ({"strategy": "finetune"}, ["'strategy' is 'finetune'", "did you mean 'fine_tune'",
                                "feature_extract, fine_tune, full_tune, auto"]),
    ({"num_epochs": 0}, ["'num_epochs' must be > 0, got 0"]),
    ({"num_epochs": -2}, ["'num_epochs' must be > 0, got -2"]),
])
def test_bad_params(changes, fragments):
    with pytest.raises(PipelineError) as info:
        parse_params(params_with(**changes))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_model_name_lists_close_choices():
    from folderfit.models import resolve_family

    with pytest.raises(PipelineError, match=r"unknown model_name 'resnet5'; close matches: .*resnet50"):
        resolve_family("resnet5")


def test_freeze_layers_out_of_range():
    from folderfit.models import frozen_stage_count

    with pytest.raises(PipelineError, match=r"'freeze_layers' is 9 but this backbone has 9 stages "
                                            r"\(0..8 allowed for fine_tune\)"):
        frozen_stage_count("fine_tune", 9, 9)
    with pytest.raises(PipelineError, match="'freeze_layers' must be >= 0"):
        parse_params(params_with(freeze_layers=-1))


# ------------------------------------------------------------------ train: batch size and OOM
@pytest.fixture
def prepared_tiny(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for i, name in enumerate("abc"):
        good_class(src, name, n=4, seed=i)
    run_prepare(tmp_path, monkeypatch, src, model_name="mobilenet_v3_small", weights="none",
                strategy="full_tune", batch_size=1000, num_epochs=1, precision="fp32",
                **{"data.test_fraction": 0})
    return tmp_path


def test_batch_size_larger_than_training_set_trains_one_batch(prepared_tiny, capsys):
    run_stage("train", prepared_tiny)
    out = capsys.readouterr().out
    assert "note: batch_size 1000 > 9 training images: each epoch is a single batch of 9" in out
    assert json.loads((prepared_tiny / "metrics/train/details.json").read_text())["epochs_run"] == 1


def test_gpu_out_of_memory_suggests_a_smaller_batch(prepared_tiny, monkeypatch):
    from folderfit import engine

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "set_train_mode", out_of_memory)  # first call inside the loop
    with pytest.raises(PipelineError) as info:
        run_stage("train", prepared_tiny)
    assert str(info.value).startswith("out of GPU memory with batch_size: 1000; lower it")
    assert "dvc exp run -S batch_size=500" in str(info.value)
    assert not (prepared_tiny / "models/model.pt").exists()


# ------------------------------------------------------------------ as a user sees it
@pytest.mark.parametrize("stage,changes,fragment", [
    ("stages.prepare", {"data.source": "no/such/folder"}, "data.source no/such/folder: does not exist"),
    ("stages.train", {"stratgy": "full_tune"}, "unknown key 'stratgy' (did you mean 'strategy'?)"),
])
def test_cli_prints_one_error_line_without_traceback(tmp_path, stage, changes, fragment):
    write_params(tmp_path, **changes)
    result = subprocess.run([sys.executable, "-m", stage], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
