"""Every bad input of the robustness issue: a one-line message naming the file or key and what
to do, or a counted skip in metrics/data.json — never a traceback, never a half-written output.
All files are generated here."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import repo_params, run_stage
from PIL import Image

from folderfit.errors import PipelineError
from folderfit.images import decode
from folderfit.params import parse_params

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


def manifest(tmp: Path) -> list[dict]:
    """data/prepared/manifest.csv, read as strict UTF-8 (a bad byte fails the test)."""
    with open(tmp / "data/prepared/manifest.csv", newline="", encoding="utf-8", errors="strict") as fh:
        return list(csv.DictReader(fh))


def stored(tmp: Path, source_rel: str) -> Image.Image:
    """The stored copy the later stages read for a source file (decode.read_prepared)."""
    from folderfit.artifacts.manifest import image_path

    for row in manifest(tmp):
        if row["source"] == source_rel:
            return decode.read_prepared(image_path(tmp / "data/prepared", row))
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


def test_every_class_with_one_image(tmp_path, monkeypatch):  # one such class trains (issue 33)
    good_class(tmp_path / "src", "a", n=1)
    good_class(tmp_path / "src", "b", n=1)
    expect_error(tmp_path, monkeypatch, tmp_path / "src", "every class has a single distinct image",
                 "add a second photo to some classes")


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
    from folderfit.backbone.architecture import resolve_family

    with pytest.raises(PipelineError, match=r"unknown model_name 'resnet5'; close matches: .*resnet50"):
        resolve_family("resnet5")


def test_freeze_layers_out_of_range():
    from folderfit.tuning.freezing import frozen_stage_count

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
    from folderfit.tuning import epoch_loop

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(epoch_loop, "set_train_mode", out_of_memory)  # first call inside the loop
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


# ------------------------------------------------------------------ layout: split folders
def split_source(root: Path, splits, classes=("a", "b"), n: int = 4) -> Path:
    """root/<split>/<class>/img<i>.png, every image different."""
    for si, split in enumerate(splits):
        for ci, name in enumerate(classes):
            good_class(root / split, name, n=n, seed=10 * si + ci + 1)
    return root


def counts(report: dict) -> dict:
    return {row["class"]: {s: row.get(s, 0) for s in ("train", "val", "test")}
            for row in report["per_class"]}


def test_train_and_test_without_val_carves_val_from_train(tmp_path, monkeypatch, capsys):
    src = split_source(tmp_path / "src", ["train", "test"], n=6)
    (src / "notes.txt").write_text("how the split was made")
    report = run_prepare(tmp_path, monkeypatch, src)
    assert "prepare: val drawn from your train/ folder (stratified, seed 42)" in capsys.readouterr().out
    assert report["skipped"] == [{"file": "notes.txt", "reason": "not inside a split folder"}]
    assert report["split_given"] is True and report["made_splits"] == ["val"]
    assert report["n_classes"] == 2  # not the classes "train" and "test"
    rows = manifest(tmp_path)
    assert {r["source"] for r in rows if r["split"] == "test"} == {
        f"test/{c}/img{i}.png" for c in "ab" for i in range(6)}  # the given test, untouched
    assert all(r["source"].startswith("train/") for r in rows if r["split"] == "val")
    assert all(c["val"] >= 1 and c["train"] >= 1 and c["test"] == 6 for c in counts(report).values())


def test_split_folder_names_in_any_case_are_a_given_split(tmp_path, monkeypatch):
    src = split_source(tmp_path / "src", ["Train", "VALID", "Test"], n=3)
    report = run_prepare(tmp_path, monkeypatch, src)
    assert report["made_splits"] == [] and report["n_classes"] == 2
    assert counts(report) == {c: {"train": 3, "val": 3, "test": 3} for c in "ab"}
    assert {r["source"].split("/")[0] for r in manifest(tmp_path)} == {"Train", "VALID", "Test"}


def test_train_folder_alone_gets_val_and_test_drawn(tmp_path, monkeypatch):
    src = split_source(tmp_path / "src", ["train"], n=8)
    report = run_prepare(tmp_path, monkeypatch, src)
    assert report["made_splits"] == ["val", "test"]
    assert all(min(c.values()) >= 1 for c in counts(report).values())


def test_split_folders_next_to_class_folders_are_refused(tmp_path, monkeypatch):
    src = split_source(tmp_path / "src", ["train", "test"])
    good_class(src, "cats", seed=9)
    expect_error(tmp_path, monkeypatch, src, "split folders (test, train) next to other folders "
                 "(cats); use either one folder per class, or only train/ [val/] [test/]")


def test_two_folders_for_one_split_are_refused(tmp_path, monkeypatch):
    src = split_source(tmp_path / "src", ["train", "val", "validation"])
    expect_error(tmp_path, monkeypatch, src, "val and validation are all val folders; keep one")


def test_split_folders_without_train_are_refused(tmp_path, monkeypatch):
    src = split_source(tmp_path / "src", ["val", "test"])
    expect_error(tmp_path, monkeypatch, src, "split folders (test, val) but no train/ folder")


# ------------------------------------------------------------------ splits never silently empty
def test_label_conflicts_never_leave_a_class_without_a_split_silently():
    """b's images are all copies of a's: a places them, b counts them; for every seed b either
    gets every split or the error names the class and the split it would miss."""
    from folderfit.images import image_folder

    items = [image_folder.Item(f"a/{i}.png", "a", f"h{i:02d}") for i in range(20)]
    items += [image_folder.Item(f"b/{i}.png", "b", f"h{i:02d}") for i in (3, 7, 11)]
    items += [image_folder.Item(f"c/{i}.png", "c", f"c{i}") for i in range(10)]
    failures = 0
    for seed in range(40):
        try:
            out = image_folder.stratified_split(items, 0.15, 0.15, seed)
        except PipelineError as exc:
            failures += 1
            assert re.search(r"class 'b' gets no image in (train|val|test): 3 of its 3 distinct "
                             r"images are identical to images filed under other classes", str(exc))
            assert "b/3.png = a/3.png" in str(exc) and "\n" not in str(exc)
            continue
        for label in "abc":
            assert all(any(it.label == label for it in out[s]) for s in ("train", "val", "test"))
    assert 0 < failures < 40  # both outcomes occur


def test_label_conflict_that_empties_a_split_stops_prepare(tmp_path, monkeypatch):
    src = tmp_path / "src"
    good_class(src, "a", n=6, seed=1)
    good_class(src, "c", n=6, seed=3)
    for i in (0, 1, 2):  # b holds nothing but copies of a's images
        (src / "b").mkdir(exist_ok=True)
        (src / "b" / f"copy{i}.png").write_bytes((src / "a" / f"img{i}.png").read_bytes())
    for seed in range(30):
        try:
            run_prepare(tmp_path, monkeypatch, src, seed=seed)
        except PipelineError as exc:
            assert "class 'b' gets no image in" in str(exc) and "b/copy" in str(exc)
            return
    raise AssertionError("no seed made b miss a split; the test data no longer tests it")


def test_empty_class_folders_of_a_given_split_are_listed(tmp_path, monkeypatch, capsys):
    src = split_source(tmp_path / "src", ["train", "val"])
    (src / "train" / "birds").mkdir()
    (src / "val" / "birds").mkdir()
    (src / "val" / "birds" / "notes.txt").write_text("no images here")
    report = run_prepare(tmp_path, monkeypatch, src)
    assert report["empty_classes"] == [
        {"folder": "train/birds", "reason": "no image file in the folder"},
        {"folder": "val/birds", "reason": "no image file in the folder"}]
    assert {"file": "val/birds/notes.txt", "reason": "not an image extension"} in report["skipped"]
    assert "warning: class folder 'val/birds' has no usable images" in capsys.readouterr().err


def test_class_empty_in_one_given_split_is_named(tmp_path, monkeypatch):
    src = split_source(tmp_path / "src", ["train", "val"])
    (src / "val" / "b" / "img0.png").write_bytes(b"")  # the only kind of file left in val/b
    for i in range(1, 4):
        (src / "val" / "b" / f"img{i}.png").unlink()
    expect_error(tmp_path, monkeypatch, src, "val/b: no usable image here (none of its 1 image "
                 "file(s) could be used (see skipped)), but the class has images in train/")


# ------------------------------------------------------------------ any file name
def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    photo(seed=seed).save(buf, format="PNG")
    return buf.getvalue()


def put(root: Path, rel: bytes, data: bytes) -> None:
    """Write data at root/rel, where rel is raw bytes (any name Linux allows)."""
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def deeper_than_path_max(base: Path, data: bytes) -> None:
    """base/00ddd.../01ddd.../.../deep.png, a path of over 4,500 bytes (Linux PATH_MAX is
    4,096), built with folder handles because no single path call can reach it."""
    fd = os.open(base, os.O_RDONLY)
    for level in range(18):
        name = f"{level:02d}" + "d" * 248
        os.mkdir(name, dir_fd=fd)
        inner = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    out = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, data)
    os.close(out)
    os.close(fd)


LONG_NAME = b"x" * 251 + b".png"  # 255 bytes, the most a Linux name may have
NESTED_A = b"/".join([b"n" * 200] * 2) + b"/" + b"y" * 200 + b"A.png"
NESTED_B = b"/".join([b"n" * 200] * 2) + b"/" + b"y" * 200 + b"B.png"


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory):
    """One ImageFolder with every kind of name and link, prepared once."""
    tmp = tmp_path_factory.mktemp("names")
    src = tmp / "src"
    good_class(src, "cats", seed=31)
    good_class(src, "dogs", seed=32)
    for i in range(3):
        put(src, b"caf\xe9/img%d.png" % i, png_bytes(330 + i))  # class folder: latin-1 byte
    put(src, b"cats/n\xff\xfe.png", png_bytes(340))
    put(src, b"cats/new\nline.png", png_bytes(341))
    put(src, b"cats/" + LONG_NAME, png_bytes(342))
    put(src, b"dogs/" + NESTED_A, png_bytes(343))
    put(src, b"dogs/" + NESTED_B, png_bytes(344))
    put(tmp, b"elsewhere/linked_folder/x.png", png_bytes(345))
    put(tmp, b"elsewhere/target.png", png_bytes(346))
    os.symlink(tmp / "elsewhere/target.png", src / "dogs/linked_file.png")
    os.symlink(tmp / "elsewhere/linked_folder", src / "dogs/linked_folder")
    os.symlink("..", src / "dogs/loop")
    os.symlink("gone.png", src / "dogs/broken.png")
    os.mkfifo(src / "dogs/pipe.jpg")
    put(src, b"dogs/.thumbnails/t.png", png_bytes(347))
    (src / "README.txt").write_text("class folders below\n")
    deeper_than_path_max(src / "cats", png_bytes(348))
    with pytest.MonkeyPatch.context() as mp:
        return tmp, run_prepare(tmp, mp, src)


def sources(tmp: Path) -> dict[str, dict]:
    return {row["source"]: row for row in manifest(tmp)}


@pytest.mark.parametrize("source_rel,case", [
    ("cats/n\\xff\\xfe.png", "file name that is not UTF-8"),
    ("caf\\xe9/img0.png", "class folder name that is not UTF-8"),
    ("cats/new\\x0aline.png", "newline in a file name"),
    ("cats/" + LONG_NAME.decode(), "name of 255 bytes"),
    ("dogs/linked_file.png", "link to a file"),
])
def test_odd_name_is_used_under_a_printable_name(odd_names, source_rel, case):
    from folderfit.artifacts.manifest import image_path
    from folderfit.images import image_folder

    tmp, report = odd_names
    row = sources(tmp).get(source_rel)
    assert row is not None, f"{case}: {source_rel} missing from the manifest"
    # the manifest leads back to the very file, whatever bytes its name holds, and it reads
    path = image_path(tmp / "data/prepared", row)
    assert image_folder.printable(os.path.relpath(path, Path(tmp, row["root"]))) == source_rel
    assert os.path.lexists(path) and decode.read_prepared(path).mode == "RGB"


def test_class_folder_name_that_is_not_utf8_becomes_a_printable_class(odd_names):
    _, report = odd_names
    assert [row["class"] for row in report["per_class"]] == ["caf\\xe9", "cats", "dogs"]


def test_nested_names_past_255_bytes_stay_distinct(odd_names):
    """Deep paths are kept whole (no copy is stored under a flattened name)."""
    from folderfit.artifacts.manifest import image_path

    tmp, _ = odd_names
    rows = sources(tmp)
    paths = [image_path(tmp / "data/prepared", rows[f"dogs/{n.decode()}"]) for n in (NESTED_A, NESTED_B)]
    assert paths[0] != paths[1] and all(p.is_file() for p in paths)
    assert all(len(p.as_posix().encode()) > 255 for p in paths)


@pytest.mark.parametrize("rel,reason", [
    ("dogs/linked_folder", "link to a folder, not read: DVC does not track what a linked "
                           "folder holds"),
    ("dogs/loop", "link to a folder, not read"),
    ("dogs/broken.png", "broken symbolic link (its target does not exist)"),
    ("dogs/pipe.jpg", "not a regular file (a pipe, socket or device)"),
    ("dogs/.thumbnails", "hidden folder"),
    ("README.txt", "not inside a class folder"),
    ("cats/00" + "d" * 248, "cannot read folder (File name too long)"),
])
def test_what_cannot_be_read_is_listed_with_its_reason(odd_names, rel, reason):
    _, report = odd_names
    listed = {s["file"]: s["reason"] for s in report["skipped"]}
    found = [r for f, r in listed.items() if f == rel or f.startswith(rel + "/")]
    assert found and reason in found[0], (rel, listed)


def test_reports_stay_valid_utf8_whatever_the_names(odd_names):
    tmp, report = odd_names
    json.loads((tmp / "metrics/data.json").read_bytes().decode("utf-8", errors="strict"))
    for path in (tmp / "data/prepared").rglob("*"):
        os.fsencode(path.relative_to(tmp)).decode("utf-8", errors="strict")
    assert report["n_images"] == len(manifest(tmp)) == 4 + 4 + 3 + 3 + 2 + 1  # no image lost


@pytest.mark.parametrize("layout", ["class folders", "train/ + val/"])
def test_class_folders_that_are_links_are_named_in_the_error(tmp_path, monkeypatch, layout):
    elsewhere, src = tmp_path / "elsewhere", tmp_path / "src"
    good_class(elsewhere, "cats", seed=37)
    good_class(elsewhere, "dogs", seed=38)
    inner = src if layout == "class folders" else src / "train"
    inner.mkdir(parents=True)
    for name in ("cats", "dogs"):
        os.symlink(elsewhere / name, inner / name)
    if layout != "class folders":
        good_class(src / "val", "cats", seed=39)
    expect_error(tmp_path, monkeypatch, src, "0 class folder(s) with images",
                 "2 linked folder(s) were not read", "cats", "dogs", "copy the folders in")


def test_class_folders_that_print_the_same_are_refused(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for folder in (b"caf\xe9", b"caf\\xe9"):  # the byte 0xe9, and the text backslash-x-e-9
        for i in range(3):
            put(src, folder + b"/img%d.png" % i, png_bytes(360 + i + len(folder)))
    good_class(src, "dogs", seed=36)
    expect_error(tmp_path, monkeypatch, src, "two class folders are both named 'caf\\xe9' once "
                 "written as UTF-8 text; rename one of them")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read every file")
def test_unreadable_file_and_folder_are_listed(tmp_path, monkeypatch):
    src = tmp_path / "src"
    good_class(src, "cats", seed=37)
    good_class(src, "dogs", seed=38)
    save(photo(seed=39), src / "cats" / "locked.png", "PNG")
    save(photo(seed=40), src / "dogs" / "locked" / "x.png", "PNG")
    os.chmod(src / "cats" / "locked.png", 0)
    os.chmod(src / "dogs" / "locked", 0)
    try:
        report = run_prepare(tmp_path, monkeypatch, src)
    finally:
        os.chmod(src / "dogs" / "locked", 0o755)
    listed = {s["file"]: s["reason"] for s in report["skipped"]}
    assert listed["cats/locked.png"] == "cannot read (Permission denied)"
    assert listed["dogs/locked"] == "cannot read folder (Permission denied)"


# ------------------------------------------------------------------ params.yaml: numbers
def test_scientific_notation_is_a_float(tmp_path):
    from folderfit.params import load_params

    text = (ROOT / "params.yaml").read_text().replace("lr: 0.003", "lr: 1e-3")
    text = text.replace("weight_decay: 0.0001", "weight_decay: 1.0E-4")
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.lr == 0.001 and params.weight_decay == 0.0001


@pytest.mark.parametrize("key,value,message", [
    ("seed", -1, "'seed' must be in 0..4294967295, got -1"),
    ("seed", 2**40, "'seed' must be in 0..4294967295, got 1099511627776"),
    ("lr", float("nan"), "'lr' must be a finite number, got nan"),
    ("lr", float("inf"), "'lr' must be a finite number, got inf"),
    ("lr", 5, "'lr' must be in (0, 1], got 5.0"),
    ("num_epochs", 10**9, "'num_epochs' must be <= 1000000"),
    ("batch_size", 10**12, "'batch_size' must be <= 1000000"),
    ("patience", 0, "'patience' must be > 0"),
    ("weight_decay", -0.1, "'weight_decay' must be in [0, 1]"),
    ("freeze_layers", 5000, "'freeze_layers' must be <= 1000"),
    ("label_smoothing", 1.0, "'label_smoothing' must be in [0, 1)"),
    ("augment.feature_views", 0, "'augment.feature_views' must be in 1..64"),
    ("augment.min_scale", 0, "'augment.min_scale' must be in (0, 1]"),
    ("data.image_size", 100000, "'data.image_size' must be in 16..4096"),
    ("data.val_fraction", 0, "'data.val_fraction' must be in (0, 1)"),
    ("demo.per_class", 500, "'demo.per_class' must be in 3..174"),
    ("demo.size", 4, "'demo.size' must be in 8..1024"),
    ("evaluate.batch_size", 0, "'evaluate.batch_size' must be in 1..1000000"),
    ("evaluate.bootstrap", -1, "'evaluate.bootstrap' must be 0 (off) or in 200..100000"),
    ("num_epochs", "1e2", "'num_epochs' must be int, got '1e2'"),
])
def test_every_number_is_range_checked(key, value, message):
    with pytest.raises(PipelineError) as info:
        parse_params(params_with(**{key: value}))
    assert message in str(info.value) and str(info.value).startswith("params.yaml: ")


def test_largest_seed_runs_every_seeded_step():
    from folderfit.compute.runtime import seed_everything
    from folderfit.images import image_folder

    seed = 2**32 - 1
    assert parse_params(params_with(seed=seed)).seed == seed
    seed_everything(seed)
    items = [image_folder.Item(f"{c}/{i}", c, f"{c}{i}") for c in "ab" for i in range(6)]
    assert sum(map(len, image_folder.stratified_split(items, 0.2, 0.2, seed).values())) == 12


def test_tilde_in_data_source_is_refused_with_the_full_path():
    with pytest.raises(PipelineError) as info:
        parse_params(params_with(**{"data.source": "~/photos"}))
    expanded = os.path.expanduser("~/photos")
    assert str(info.value) == (f"params.yaml: 'data.source' is '~/photos', but DVC does not "
                               f"expand '~' in paths; write the full path: data.source: {expanded}")


# ------------------------------------------------------------------ unwritable outputs
def test_output_below_a_regular_file_is_one_line(tmp_path):
    from folderfit.support.fileio import write_json

    (tmp_path / "metrics").write_text("a file where a folder should be")
    with pytest.raises(PipelineError) as info:
        write_json(tmp_path / "metrics" / "eval.json", {"x": 1})
    assert str(info.value) == (f"{tmp_path}/metrics/eval.json: cannot be written because "
                               f"{tmp_path}/metrics is a file, not a folder; move or delete "
                               f"{tmp_path}/metrics")


@pytest.mark.parametrize("code,message", [
    (errno.EDQUOT, "out/model.pt: disk quota exceeded (about 2.0 MB needed, "),
    (errno.EACCES, "out/model.pt: permission denied; make "),
    (errno.EROFS, "out/model.pt: the file system is read-only; write the outputs to a writable folder"),
])
def test_write_error_messages_name_the_output_and_the_fix(code, message):
    """The errors a test machine cannot make on demand (a quota, a permission for root) go
    through the same function as the full disk and read-only cases tested with DVC."""
    from folderfit.support.fileio import output_error

    error = output_error(OSError(code, os.strerror(code)), Path("out/model.pt"), 2_000_000)
    assert str(error).startswith(message) and isinstance(error, PipelineError)


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    from folderfit.support.fileio import write_json

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f".eval.json.{dead}-abc123.tmp").write_text("half written")
    (tmp_path / f".eval.json.{os.getppid()}-def456.tmp").write_text("a live writer's")
    write_json(tmp_path / "eval.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".eval.json.{os.getppid()}-def456.tmp", "eval.json"]


def test_unwritable_checkpoint_is_one_warning_and_training_goes_on(prepared_tiny, capsys):
    (prepared_tiny / "checkpoints").write_text("a file where the checkpoint folder should be")
    run_stage("train", prepared_tiny)
    err = capsys.readouterr().err
    warnings_ = [line for line in err.splitlines() if line.startswith("warning: no resume checkpoint")]
    assert len(warnings_) == 1, err
    assert "checkpoints/train.pt: cannot be written because checkpoints is a file" in warnings_[0]
    assert (prepared_tiny / "models/model.pt").is_file()


# ------------------------------------------------------------------ the model file
@pytest.fixture(scope="module")
def model_payload(tmp_path_factory):
    import tiny_project as T

    path = tmp_path_factory.mktemp("model") / "model.pt"
    T.save_tiny_model(path, "mobilenet_v3_small", 32, "none", classes=("a", "b", "c"))
    return torch.load(path, weights_only=True)


def corrupt(payload: dict, change: str) -> dict:
    bad = dict(payload)
    if change == "more class names":
        bad["class_names"] = ["a", "b", "c", "d"]
    elif change == "no model_name":
        del bad["model_name"]
    elif change == "other architecture":
        bad["model_name"] = "resnet18"
    elif change == "unknown architecture":
        bad["model_name"] = "no_such_net"
    elif change == "class_names not a list":
        bad["class_names"] = "abc"
    elif change == "other format":
        bad["format"] = 2
    elif change == "state_dict not tensors":
        bad["state_dict"] = {"w": [1, 2]}
    elif change == "preprocess without mean":
        bad["preprocess"] = {k: v for k, v in bad["preprocess"].items() if k != "mean"}
    elif change == "head moved":
        bad["head_name"] = "features.0.0"
    elif change == "tensor of another shape":
        bad["state_dict"] = {**bad["state_dict"], "features.0.0.weight": torch.zeros(1, 1, 1, 1)}
    return bad


MODEL_FILE_CASES = [
    ("more class names", "the head has 3 outputs but the file lists 4 class names"),
    ("no model_name", "not a usable model file of this pipeline (no 'model_name')"),
    ("other architecture", "weights do not fit resnet18 (its classifier is 'fc', the file's is "
                           "'classifier.3')"),
    ("unknown architecture", "made for model_name 'no_such_net', which neither torchvision nor timm"),
    ("class_names not a list", "('class_names' is a str, not a list)"),
    ("other format", "(format 2, this version reads format 1)"),
    ("state_dict not tensors", "('state_dict' must map names to tensors)"),
    ("preprocess without mean", "('preprocess.mean' is missing or not a list)"),
    ("head moved", "weights do not fit mobilenet_v3_small (its classifier is 'classifier.3', "
                   "the file's is 'features.0.0')"),
    ("tensor of another shape", "weights do not fit mobilenet_v3_small (shape of features.0.0.weight)"),
]


@pytest.mark.parametrize("change,message", MODEL_FILE_CASES)
def test_model_file_is_checked_against_its_schema(model_payload, tmp_path, change, message):
    from folderfit.artifacts.model_file import load_model_file

    path = tmp_path / "model.pt"
    torch.save(corrupt(model_payload, change), path)
    with pytest.raises(PipelineError) as info:
        load_model_file(path)
    assert message in str(info.value) and str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_a_file_that_is_no_model_file_is_one_line(tmp_path):
    from folderfit.artifacts.model_file import load_model_file

    (tmp_path / "model.pt").write_bytes(b"not a zip archive at all")
    with pytest.raises(PipelineError) as info:
        load_model_file(tmp_path / "model.pt")
    assert str(info.value) == (f"{tmp_path}/model.pt: not a model file of this pipeline "
                               f"(UnpicklingError); retrain with `dvc repro train` or pass the right --model")


@pytest.mark.slow  # a python process per command and model file
@pytest.mark.parametrize("command", ["predict", "export", "evaluate"])
def test_every_command_reports_a_bad_model_file_in_one_line(model_payload, tmp_path, command):
    (tmp_path / "models").mkdir()
    torch.save(corrupt(model_payload, "more class names"), tmp_path / "models/model.pt")
    save(photo(), tmp_path / "x.png", "PNG")
    write_params(tmp_path)
    argv = {"predict": ["-m", "folderfit", "predict", "x.png"],
            "export": ["-m", "folderfit", "export", "--images", "x.png", "--formats", "torch_export"],
            "evaluate": ["-m", "stages.evaluate"]}[command]
    result = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: models/model.pt: the head has 3 outputs but the file lists 4 class names; the "
        "file is damaged or edited, retrain it with `dvc repro train`"]


def test_predict_writes_a_row_for_every_readable_image_whatever_its_name(odd_names, model_payload,
                                                                         capsys):
    from folderfit.cli import build_parser
    from folderfit.commands import predict

    tmp, _ = odd_names
    model = tmp / "model.pt"
    torch.save(model_payload, model)
    src = tmp / "src"
    for out in ("preds.csv", "preds.jsonl"):
        with pytest.raises(SystemExit) as stop:  # exit code 1: some files were skipped
            predict.command(build_parser().parse_args(
                ["predict", str(src), "--model", str(model), "--output", str(tmp / out)]))
        assert stop.value.code == 1
    with open(tmp / "preds.csv", newline="", encoding="utf-8", errors="strict") as fh:
        paths = {row["path"].removeprefix(f"{src}/") for row in csv.DictReader(fh)}
    readable = {r["source"] for r in manifest(tmp)} | {"dogs/linked_folder/x.png"}
    assert paths == readable  # links to folders are followed by predict, the loop ends
    lines = (tmp / "preds.jsonl").read_bytes().decode("utf-8", errors="strict").splitlines()
    assert {json.loads(line)["path"].removeprefix(f"{src}/") for line in lines} == readable
    err = capsys.readouterr().err
    assert f"skipped {src}/dogs/broken.png: broken symbolic link" in err
    assert f"skipped {src}/dogs/pipe.jpg: not a regular file" in err
    assert "cannot read folder (File name too long)" in err
    assert "README.txt" not in err and ".thumbnails" not in err and "loop" not in err


# ------------------------------------------------------------------ issue 24: sizes and bit depths
def test_extreme_aspect_ratio_and_bomb_are_reported_skips(tmp_path, monkeypatch):
    """A 6000x1 PNG of ~100 bytes would become a 1.5 GB tensor at every later stage: prepare
    leaves it out with the reason in metrics/data.json (as it does a decompression bomb)."""
    src = tmp_path / "src"
    good_class(src, "cats")
    good_class(src, "dogs", seed=1)
    save(Image.new("RGB", (6000, 1), (50, 60, 70)), src / "cats" / "line.png", "PNG")
    save(Image.new("RGB", (1, 400)), src / "dogs" / "column.png", "PNG")
    png_bomb(src / "dogs" / "bomb.png")
    report = run_prepare(tmp_path, monkeypatch, src, **{"data.test_fraction": 0.0})
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert reasons["cats/line.png"].startswith("aspect ratio 6000:1 (6000x1 px) is over the limit of 20:1")
    assert reasons["dogs/column.png"].startswith("aspect ratio 400:1")
    assert "decompression bomb" in reasons["dogs/bomb.png"] and "limit is" in reasons["dogs/bomb.png"]
    assert report["n_images"] == 8


def test_12_bit_png_is_scaled_by_its_bit_depth(tmp_path, monkeypatch):
    """Samples 0..4095 in a 16-bit PNG came out almost black (scaled by 65535)."""
    src = tmp_path / "src"
    good_class(src, "cats")
    good_class(src, "dogs", seed=1)
    save(Image.fromarray(np.full((16, 16), 4095, dtype=np.uint16)), src / "cats" / "twelve.png", "PNG")
    save(Image.fromarray(np.full((16, 16), 2048, dtype=np.uint16)), src / "cats" / "mid12.png", "PNG")
    run_prepare(tmp_path, monkeypatch, src, **{"data.test_fraction": 0.0})
    assert stored(tmp_path, "cats/twelve.png").getpixel((0, 0)) == (255, 255, 255)
    assert stored(tmp_path, "cats/mid12.png").getpixel((0, 0)) == (128, 128, 128)
