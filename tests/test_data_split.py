"""Duplicates, leakage and label conflicts in `prepare` (in-process, tiny 32 px images)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import params_with, run_stage, write_params
from PIL import Image

from folderfit.artifacts import manifest
from folderfit.cli import run_main
from folderfit.errors import PipelineError
from folderfit.images import image_folder as image_folders


def noise_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def image_folder(root: Path, classes=("a", "b", "c"), per_class: int = 6, seed: int = 0) -> Path:
    """root/<class>/<i>.png, every image different."""
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise_image(seed * 1000 + ci * 100 + i).save(root / name / f"{i}.png")
    return root


def run_prepare(workdir: Path, monkeypatch, source: Path, **data) -> dict:
    """Run the prepare stage in `workdir`; returns metrics/data.json."""
    write_params(workdir, seed=3, **{"data.source": str(source), "data.image_size": 32,
                                     **{f"data.{k}": v for k, v in data.items()}})
    monkeypatch.chdir(workdir)
    run_stage("prepare", workdir)
    return json.loads((workdir / "metrics/data.json").read_text())


def manifest_splits(workdir: Path) -> dict[str, str]:
    with open(manifest.manifest_path(workdir / "data/prepared"), newline="") as fh:
        return {row["source"]: row["split"] for row in csv.DictReader(fh)}


def test_byte_and_pixel_duplicates_share_one_split(tmp_path, monkeypatch):
    src = image_folder(tmp_path / "src")
    original = src / "a" / "0.png"
    shutil.copy(original, src / "a" / "copy.png")  # same bytes
    Image.open(original).save(src / "a" / "same.bmp")  # same pixels, another lossless format
    Image.open(original).save(src / "a" / "same.tiff")
    work = tmp_path / "work"
    work.mkdir()
    report = run_prepare(work, monkeypatch, src)

    splits = manifest_splits(work)
    group = ["a/0.png", "a/copy.png", "a/same.bmp", "a/same.tiff"]
    assert len({splits[f] for f in group}) == 1, {f: splits[f] for f in group}
    dups = report["duplicates"]
    assert len(dups["groups"]) == 1 and report["n_duplicate_files"] == 3
    assert dups["cross_split_duplicates"] == [] and dups["label_conflicts"] == []
    assert report["n_images"] == 3 * 6 + 3
    # every copy keeps its own row, naming its own original file
    rows = manifest.read_manifest_rows(work / "data/prepared")
    paths = [manifest.image_path(work / "data/prepared", r) for r in rows]
    assert len(rows) == report["n_images"] and len(set(paths)) == len(rows)
    assert all(p.is_file() and p.is_relative_to(src) for p in paths)


def test_split_keeps_every_duplicate_group_together_for_any_seed():
    items = []
    for label in ("a", "b", "c"):
        items += [image_folders.Item(f"{label}/{i}.png", label, f"{label}{i}") for i in range(20)]
    items += [image_folders.Item("a/dup.png", "a", "a3"), image_folders.Item("a/dup2.png", "a", "a3")]  # within a class
    items += [image_folders.Item("b/x.png", "b", "conflict"), image_folders.Item("c/x.png", "c", "conflict"),
              image_folders.Item("a/x.png", "a", "conflict")]  # one image filed under three classes
    for seed in range(25):
        out = image_folders.stratified_split(items, 0.2, 0.2, seed)
        where: dict[str, set] = {}
        for split, members in out.items():
            for it in members:
                where.setdefault(it.sha256, set()).add(split)
        assert all(len(s) == 1 for s in where.values()), (seed, where)
        assert sum(len(v) for v in out.values()) == len(items)


def test_label_conflict_reports_both_paths(tmp_path, monkeypatch, capsys):
    src = image_folder(tmp_path / "src")
    shutil.copy(src / "a" / "2.png", src / "b" / "looks_like_a.png")
    work = tmp_path / "work"
    work.mkdir()
    report = run_prepare(work, monkeypatch, src)

    assert report["duplicates"]["label_conflicts"] == [["a/2.png", "b/looks_like_a.png"]]
    err = capsys.readouterr().err
    assert "labelled differently: a/2.png vs b/looks_like_a.png" in err
    splits = manifest_splits(work)
    assert splits["a/2.png"] == splits["b/looks_like_a.png"]  # no leak through the conflict


def given_split_with_leak(root: Path) -> Path:
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        image_folder(root / split, classes=("a", "b"), per_class=3, seed=seed)
    shutil.copy(root / "train/a/1.png", root / "test/a/leaked.png")
    return root


def test_given_split_leak_is_a_warning_with_the_pair(tmp_path, monkeypatch, capsys):
    src = given_split_with_leak(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    report = run_prepare(work, monkeypatch, src)

    pair = ["test:test/a/leaked.png", "train:train/a/1.png"]
    assert report["split_given"] is True
    assert report["duplicates"]["cross_split_duplicates"] == [pair]
    assert f"leakage): {', '.join(pair)}" in capsys.readouterr().err
    assert {row["class"]: row["test"] for row in report["per_class"]} == {"a": 4, "b": 3}


def test_given_split_leak_fails_with_on_leak_fail(tmp_path, monkeypatch, capsys):
    src = given_split_with_leak(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    run_prepare(work, monkeypatch, src)  # a good earlier run stays in place
    before = sorted(p.relative_to(work) for p in (work / "data").rglob("*"))
    write_params(work, **{"data.source": str(src), "data.image_size": 32, "data.on_leak": "fail"})
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(lambda _argv: run_stage("prepare", work))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: data.source: 1 image(s) appear in more than one split")
    assert "test:test/a/leaked.png, train:train/a/1.png" in err and "data.on_leak: warn" in err
    assert sorted(p.relative_to(work) for p in (work / "data").rglob("*")) == before


def test_on_leak_is_validated():
    assert params_with(**{"data.on_leak": "fail"}).data.on_leak == "fail"
    with pytest.raises(PipelineError, match="data.on_leak"):
        params_with(**{"data.on_leak": "ignore"})


def test_fractions_leaving_no_training_image_name_the_cause(tmp_path, monkeypatch):
    """val 0.49 + test 0.49 of 10 images leave 0 for train: the message used to say "at least
    3 are needed" although the class has 10 (issue 24)."""
    source = image_folder(tmp_path / "src", per_class=10)
    with pytest.raises(PipelineError) as exc:
        run_prepare(tmp_path, monkeypatch, source, val_fraction=0.49, test_fraction=0.49)
    text = str(exc.value)
    assert "leave no training image for class 'a'" in text and "lower the fractions" in text
    assert "at least" not in text and "\n" not in text
    # too few images is no error (issue 33): every class of 1 photo is, as nothing is left to validate
    small = image_folder(tmp_path / "small", per_class=1)
    with pytest.raises(PipelineError, match="every class has a single distinct image"):
        run_prepare(tmp_path, monkeypatch, small, val_fraction=0.15, test_fraction=0.15)


def test_two_prepares_at_once_the_second_stops_clearly(tmp_path, monkeypatch):
    """Two prepares outside DVC used to clear each other's staging folder (FileNotFoundError)."""
    import fcntl
    import os

    from folderfit.pipeline import prepare

    source = image_folder(tmp_path / "src", per_class=4)
    (tmp_path / "data").mkdir()
    fd = os.open(tmp_path / "data", os.O_RDONLY)  # stands for the first prepare, still running
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(PipelineError, match="another prepare is writing data/prepared"):
            run_prepare(tmp_path, monkeypatch, source, test_fraction=0.0)
        assert not (tmp_path / "data/prepared").exists()
    finally:
        os.close(fd)
    report = run_prepare(tmp_path, monkeypatch, source, test_fraction=0.0)  # free again: runs
    assert report["n_images"] == 12
    assert prepare.workers(1000) >= 1 and prepare.workers(3) == 1


def test_parallel_decoding_gives_the_same_output(tmp_path, monkeypatch):
    """A pool of decoding processes gives byte-identical prepared files (manifest, thumbnails)."""
    from folderfit.pipeline import prepare

    source = image_folder(tmp_path / "src", per_class=8)
    outputs = {}
    for pool in (False, True):
        monkeypatch.setattr(prepare, "MIN_POOL_JOBS", 1 if pool else 10**9)
        monkeypatch.setattr(prepare, "workers", lambda n, pool=pool: 2 if pool else 1)
        work = tmp_path / f"run{pool}"
        work.mkdir()
        run_prepare(work, monkeypatch, source)
        root = work / "data/prepared"
        outputs[pool] = {p.relative_to(root).as_posix(): p.read_bytes()
                         for p in sorted(root.rglob("*")) if p.is_file()}
    assert outputs[True] == outputs[False] and sorted(outputs[True]) == ["manifest.csv", "thumbnails.npy"]
