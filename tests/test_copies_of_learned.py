""""Unseen" means by content: a copy (same decoded pixels) of an image the delivered model
learned from is never scored as unseen, whatever its path or split; the copies left out are
counted and scored apart; test photos dropped by data/corrections.csv are counted too."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import tiny_project as T
from conftest import make_repo, run, run_stage

from folderfit.artifacts import learned_from
from folderfit.artifacts import manifest as manifest_file
from folderfit.errors import PipelineError


def manifest(project: Path) -> list[dict]:
    with open(project / "data/prepared/manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def scored_files(project: Path) -> set[str]:
    with open(project / "metrics/eval/predictions.csv", newline="", encoding="utf-8") as fh:
        return {r["path"] for r in csv.DictReader(fh)}


def given_split(root: Path, test_copies: dict[str, str], val_copies: dict[str, str] = {},
                test: bool = True) -> Path:
    """src/train (6 per class), src/val (3), src/test (3 fresh per class) and copies
    {target: source}, both relative to src."""
    src = root / "src"
    T.make_image_folder(src / "train", per_class=6, size=40, seed=0)
    T.make_image_folder(src / "val", per_class=3, size=40, seed=1)
    if test:
        T.make_image_folder(src / "test", per_class=3, size=40, seed=2)
    for target, source in {**test_copies, **val_copies}.items():
        shutil.copy(src / source, src / target)
    return src


def setup(root: Path, learned_roles=("train", "val"), **params) -> None:
    T.write_params(root, **{"data.source": "src", "data.image_size": 32, "precision": "fp32",
                            "evaluate.batch_size": 8, "evaluate.bootstrap": 200, **params})
    T.prepare(root)
    T.save_tiny_model(root / "models/model.pt", image_size=32)
    rows = manifest(root)
    learned = {role: [(manifest_file.image_path("data/prepared", r), 0) for r in rows if r["split"] == split]
               for role, split in zip(("train", "val_selection"), learned_roles) if split}
    learned_from.write_learned_from(root / "metrics/train", learned)


# ------------------------------------------------------------------ pure functions
def test_split_copies_is_by_content_not_path():
    hashes = {"p/train/a/1.png": "h1", "p/val/a/2.png": "h2", "p/test/a/x.png": "h1",
              "p/test/b/y.png": "h2", "p/test/a/z.png": "h3"}
    samples = [(Path(f), 0) for f in ("p/test/a/x.png", "p/test/b/y.png", "p/test/a/z.png",
                                      "p/test/a/unknown.png")]
    fresh, copies = learned_from.split_copies(samples, {"p/train/a/1.png", "p/val/a/2.png"}, hashes)
    assert [p.as_posix() for p, _ in copies] == ["p/test/a/x.png", "p/test/b/y.png"]
    assert [p.as_posix() for p, _ in fresh] == ["p/test/a/z.png", "p/test/a/unknown.png"]


def test_holdout_keeps_copies_in_one_half():
    val = [(Path(f"v/{i}.png"), i % 2) for i in range(20)]
    groups = [f"h{i}" for i in range(20)]
    for i in (2, 4, 6):  # three copies of image 0 (class 0)
        groups[i] = "h0"
    for seed in range(10):
        selection, holdout = learned_from.holdout_split(val, seed, groups)
        held = {p.name for p, _ in holdout}
        together = {f"{i}.png" for i in (0, 2, 4, 6)}
        assert together <= held or not together & held
        assert len(selection) + len(holdout) == 20 and not held & {p.name for p, _ in selection}
        assert {y for _, y in holdout} == {0, 1}


def test_holdout_without_copies_is_unchanged():
    val = [(Path(f"v/{i}.png"), i % 3) for i in range(17)]
    for seed in range(5):
        assert learned_from.holdout_split(val, seed, [str(p) for p, _ in val]) == learned_from.holdout_split(val, seed)


def test_content_hashes_name_files_as_read_manifest_does(tmp_path):
    given_split(tmp_path, {"test/bars/copy.png": "train/bars/000.png"})
    T.write_params(tmp_path, **{"data.source": "src", "data.image_size": 32})
    T.prepare(tmp_path)
    import contextlib

    with contextlib.chdir(tmp_path):
        _, splits = manifest_file.read_manifest("data/prepared")
        hashes = manifest_file.content_hashes("data/prepared")
    files = {p.as_posix() for s in splits.values() for p, _ in s}
    assert set(hashes) == files
    by_stem = {Path(f).with_suffix("").as_posix(): h for f, h in hashes.items()}
    twin = by_stem["src/train/bars/000"]  # the originals, relative to the project
    assert by_stem["src/test/bars/copy"] == twin != by_stem["src/train/bars/001"]


# ------------------------------------------------------------------ evaluate, in process
def test_test_copies_of_learned_images_are_not_scored(tmp_path, capsys):
    copies = {"test/bars/copy_t.png": "train/bars/000.png",
              "test/blobs/copy_t.png": "train/blobs/001.png",
              "test/checks/copy_v.png": "val/checks/002.png"}  # val chose the model too
    given_split(tmp_path, copies)
    setup(tmp_path)
    capsys.readouterr()
    run_stage("evaluate", tmp_path)
    out = capsys.readouterr().out
    headline = json.loads((tmp_path / "metrics/eval.json").read_text())
    summary = json.loads((tmp_path / "metrics/eval/summary.json").read_text())
    scored = scored_files(tmp_path)

    assert headline["split"] == "test"
    assert not scored & set(copies), scored & set(copies)
    assert len(scored) == headline["n_images"] == 9  # the fresh test photos only
    assert headline["copies_of_learned_excluded"] == 3
    assert headline["n_images_with_copies"] == 12
    right, right_with = headline["accuracy"] * 9, headline["accuracy_with_copies"] * 12
    assert right_with - right == pytest.approx(round(right_with - right), abs=1e-4)
    assert 0 <= round(right_with - right) <= 3
    assert sorted(summary["copies_of_learned"]) == sorted(copies)
    assert "3 copies of images the model learned from left out" in out
    page = (tmp_path / "metrics/eval/index.html").read_text()
    assert 'id="scored-note"' in page and "3 copies (same pixels)" in page
    assert headline["test_dropped_by_corrections"] == 0


def test_only_copies_left_is_one_line_error(tmp_path):
    src = given_split(tmp_path, {}, test=False)
    for kind in T.CLASSES:  # test/ holds nothing but copies of training photos
        (src / "test" / kind).mkdir(parents=True)
        shutil.copy(src / "train" / kind / "000.png", src / "test" / kind / "a.png")
    setup(tmp_path)
    with pytest.raises(PipelineError) as err:
        run_stage("evaluate", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "all 3 test images are copies" in message
    assert "train/" in message and "rerun `dvc repro`" in message
    assert not (tmp_path / "metrics/eval.json").exists()


def test_val_holdout_leaves_out_copies_of_learned_images(tmp_path):
    # val/ holds a copy of a training photo; the model (fine_tune) chose its epoch on the
    # first val image of each class: the rest is the holdout, the copy among it
    given_split(tmp_path, {}, {"val/bars/copy.png": "train/bars/003.png"}, test=False)
    setup(tmp_path, learned_roles=("train", None), strategy="fine_tune")
    rows = manifest(tmp_path)
    selection = [(manifest_file.image_path("data/prepared", r), 0) for r in rows
                 if r["split"] == "val" and r["source"].endswith("/000.png")]
    learned_from.write_learned_from(tmp_path / "metrics/train",
                           {"train": [(manifest_file.image_path("data/prepared", r), 0) for r in rows
                                      if r["split"] == "train"], "val_selection": selection})
    run_stage("evaluate", tmp_path)
    headline = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert headline["split"] == "val_holdout"
    assert "val/bars/copy.png" not in scored_files(tmp_path)
    assert headline["copies_of_learned_excluded"] == 1 and headline["n_images"] == 6
    assert "test_dropped_by_corrections" not in headline


def test_dropped_test_photos_are_counted(tmp_path, capsys):
    given_split(tmp_path, {})
    (tmp_path / "data").mkdir()
    (tmp_path / "data/corrections.csv").write_text(
        "path,action\ntest/bars/000.png,drop\ntest/blobs/001.png,drop\n"
        "test/checks/000.png,relabel:bars\ntrain/bars/001.png,drop\n")
    setup(tmp_path)
    err = capsys.readouterr().err
    assert "same test photos" not in err.replace("the same test photos, scored against", "")
    assert "2 fewer test photos" in err
    run_stage("evaluate", tmp_path)
    out = capsys.readouterr().out
    headline = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert headline["n_images"] == 7
    assert headline["test_dropped_by_corrections"] == 2
    assert headline["test_relabelled_by_corrections"] == 1
    assert "dropped 2 and relabelled 1 test photo(s)" in out
    page = (tmp_path / "metrics/eval/index.html").read_text()
    assert "dropped 2 test photo(s) and relabelled 1" in page


# ------------------------------------------------------------------ dvc repro, end to end
@pytest.mark.slow  # one dvc repro in a temp repository
def test_repro_never_scores_test_copies_of_training_photos(tmp_path):
    src = tmp_path / "images"
    T.make_image_folder(src / "train", per_class=10, size=40, seed=0)
    T.make_image_folder(src / "val", per_class=4, size=40, seed=1)
    T.make_image_folder(src / "test", per_class=3, size=40, seed=2)
    copied = []
    for kind in T.CLASSES:  # two byte copies of training photos per class, renamed
        for i in (0, 5):
            target = f"test/{kind}/holiday_{i}.png"
            shutil.copy(src / f"train/{kind}/{i:03d}.png", src / target)
            copied.append(target)
    repo = make_repo(tmp_path / "repo", {"data": {"source": str(src)},
                                         "augment": {"feature_views": 1},
                                         "evaluate": {"bootstrap": 200}})
    result = run(["dvc", "repro"], repo)
    assert "leakage" in result.stderr + result.stdout  # prepare still warns

    headline = json.loads((repo / "metrics/eval.json").read_text())
    scored = scored_files(repo)
    assert headline["split"] == "test"
    assert not scored & set(copied), sorted(scored & set(copied))
    assert headline["n_images"] == len(scored) == 9
    assert headline["copies_of_learned_excluded"] == len(copied) == 6
    assert headline["n_images_with_copies"] == 15 and "accuracy_with_copies" in headline
    learned = learned_from.read_learned_from(repo / "metrics/train")
    hashes = {manifest_file.image_path(Path("data/prepared"), r).as_posix(): r["sha256"]
              for r in manifest(repo)}  # the files as the stages (run in repo) name them
    learned_hashes = {hashes[f] for f in learned}
    by_source = {r["source"]: r["sha256"] for r in manifest(repo)}
    assert not {by_source[f] for f in scored} & learned_hashes
