"""Scanning, decoding and splitting images."""

from __future__ import annotations

from collections import Counter

import pytest
from PIL import Image

from folderfit.errors import PipelineError
from folderfit.images import datasets, decode, image_folder


def items(per_class: dict) -> list[image_folder.Item]:
    return [image_folder.Item(f"{label}/{i}.png", label, f"{label}-{i}") for label, n in per_class.items()
            for i in range(n)]


def test_split_is_stratified_deterministic_and_disjoint():
    source = items({"a": 40, "b": 20, "c": 11})
    first = image_folder.stratified_split(source, 0.15, 0.15, seed=7)
    again = image_folder.stratified_split(source, 0.15, 0.15, seed=7)
    other = image_folder.stratified_split(source, 0.15, 0.15, seed=8)
    assert first == again
    assert first != other
    files = [it.rel for split in first.values() for it in split]
    assert sorted(files) == sorted(it.rel for it in source)  # each file in exactly one split
    for label, n in {"a": 40, "b": 20, "c": 11}.items():
        counts = Counter(s for s, v in first.items() for it in v if it.label == label)
        assert counts["val"] == max(1, round(n * 0.15)) and counts["test"] == max(1, round(n * 0.15))
        assert counts["train"] == n - counts["val"] - counts["test"]


def test_identical_images_stay_in_one_split():
    source = items({"a": 30, "b": 30})
    twins = [image_folder.Item(f"a/copy{i}.png", "a", "a-3") for i in range(4)]  # same content as a/3.png
    split = image_folder.stratified_split(source + twins, 0.2, 0.2, seed=0)
    where = {s for s, v in split.items() for it in v if it.sha256 == "a-3"}
    assert len(where) == 1


def test_too_small_class_trains_and_the_set_loses_its_test_split():  # issue 33: was refused
    out = image_folder.stratified_split(items({"a": 10, "b": 2}), 0.2, 0.2, seed=0)
    assert not out["test"] and sum(it.label == "b" for it in out["train"] + out["val"]) == 2


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    assert decode.decode_upright(path, None)[0].size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "CMYK"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.new(mode, (8, 8))
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    assert decode.decode_upright(path, None)[0].mode == "RGB"


def test_non_image_raises_bad_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(decode.BadImage, match="not an image"):
        decode.decode_upright(path, None)[0]


def test_bounded_never_enlarges():
    assert decode.shrink(Image.new("RGB", (1000, 500)), 224).size == (560, 280)
    assert decode.shrink(Image.new("RGB", (64, 48)), 224).size == (64, 48)


@pytest.mark.parametrize("folders,splits", [
    (["cats", "dogs"], None),
    (["train", "val"], {"train": "train", "val": "val"}),
    (["Train", "VALID", "Test"], {"train": "Train", "val": "VALID", "test": "Test"}),
    (["train", "validation"], {"train": "train", "val": "validation"}),
    (["train", "test"], {"train": "train", "test": "test"}),
    (["train", ".git"], {"train": "train"}),
])
def test_layout_is_detected_from_split_folder_names(tmp_path, folders, splits):
    for name in folders:
        (tmp_path / name / "a").mkdir(parents=True)
    layout = image_folder.detect_layout(tmp_path)
    found = None if layout.splits is None else {s: p.name for s, p in layout.splits.items()}
    assert found == splits


@pytest.mark.parametrize("folders,message", [
    (["train", "test", "cats"], "split folders (test, train) next to other folders (cats); use "
                                "either one folder per class, or only train/ [val/] [test/]"),
    (["train", "val", "valid"], "val and valid are all val folders; keep one"),
    (["val", "test"], "split folders (test, val) but no train/ folder"),
])
def test_ambiguous_layouts_are_refused_in_one_line(tmp_path, folders, message):
    for name in folders:
        (tmp_path / name / "a").mkdir(parents=True)
    with pytest.raises(PipelineError) as info:
        image_folder.detect_layout(tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_views_share_one_decode_per_image(tmp_path, monkeypatch):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(paths[-1])
    calls = []
    real = datasets.decode_file
    monkeypatch.setattr(datasets, "decode_file", lambda p: calls.append(p) or real(p))
    from folderfit.backbone.weights import Preprocess

    pre = Preprocess(16, 18, (0.5,) * 3, (0.5,) * 3, "bicubic")
    clean = datasets.ImageTensorDataset([(p, 0) for p in paths], datasets.eval_geometry(pre))
    augmented = clean.with_geometry(datasets.train_geometry(pre, hflip=True, min_scale=0.5))
    for dataset in (clean, augmented, augmented):
        shapes = {tuple(dataset[i][0].shape) for i in range(len(dataset))}
        assert shapes == {(3, 16, 16)}
    assert len(calls) == len(paths)
