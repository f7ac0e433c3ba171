"""data/corrections.csv: relabel and drop rows are applied by prepare and reported in
metrics/data.json; every bad row is a one-line error naming it, before any image is read."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from conftest import ENV, REPO, run_stage, write_image_folder, write_params


def project(tmp_path, layout="flat"):
    """A project folder with params.yaml and an ImageFolder of digits (flat or given split)."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    if layout == "flat":
        source = write_image_folder(tmp_path / "images", per_class=6)
    else:
        source = tmp_path / "images"
        for split, n in (("train", 5), ("val", 3)):
            write_image_folder(source / split, per_class=n)
    write_params(work, **{"data.source": str(source), "data.image_size": 32})
    return work, source


def corrections(work, *rows):
    (work / "data/corrections.csv").write_text("\n".join(["path,action", *rows]) + "\n")


def manifest(work):
    with open(work / "data/prepared/manifest.csv", newline="") as fh:
        return {r["source"]: r for r in csv.DictReader(fh)}


def test_relabel_and_drop_are_applied_and_reported(tmp_path):
    work, _ = project(tmp_path)
    run_stage("prepare", work)
    before = manifest(work)
    assert before["digit0/img001.png"]["class"] == "digit0"
    corrections(work, "# a note", "digit0/img001.png,relabel:digit2", "", "digit1/img002.png, drop ")
    run_stage("prepare", work)
    after = manifest(work)
    assert after["digit0/img001.png"]["class"] == "digit2"
    assert after["digit0/img001.png"]["file"].split("/")[1] == "digit2"  # stored under its new class
    assert "digit1/img002.png" not in after
    assert len(after) == len(before) - 1
    report = json.loads((work / "metrics/data.json").read_text())
    assert (report["n_relabelled"], report["n_dropped"]) == (1, 1)
    assert report["corrections"] == [{"path": "digit0/img001.png", "action": "relabel:digit2"},
                                     {"path": "digit1/img002.png", "action": "drop"}]
    assert report["n_images"] == len(before) - 1


def test_given_split_paths_keep_their_split(tmp_path):
    work, _ = project(tmp_path, layout="given")
    corrections(work, "val/digit1/img002.png,relabel:digit0")
    run_stage("prepare", work)
    row = manifest(work)["val/digit1/img002.png"]
    assert (row["split"], row["class"]) == ("val", "digit0")


def test_a_relabel_resolves_a_label_conflict(tmp_path):
    work, source = project(tmp_path)
    shutil.copy(source / "digit0/img001.png", source / "digit1/copy.png")  # same pixels, 2 classes
    run_stage("prepare", work)
    assert json.loads((work / "metrics/data.json").read_text())["n_label_conflicts"] == 1
    corrections(work, "digit1/copy.png,relabel:digit0")
    run_stage("prepare", work)
    report = json.loads((work / "metrics/data.json").read_text())
    assert report["n_label_conflicts"] == 0 and report["n_duplicate_files"] == 1


@pytest.mark.parametrize("row, message", [
    ("digit0/nope.png,drop", "corrections.csv:2: 'digit0/nope.png' is not a file under data.source"),
    ("digit0/img001.png,relabel:digit7", "corrections.csv:2: unknown class 'digit7' in 'relabel:digit7'; "
                                         "the classes of data.source are: digit0, digit1, digit2"),
    ("digit0/img001.png,delete", "corrections.csv:2: unknown action 'delete'; use drop or relabel:<class>"),
    ("digit0/img001.png", "corrections.csv:2: expected 'path,action', got 'digit0/img001.png'"),
    ("../images/digit0/img001.png,drop", "corrections.csv:2: path '../images/digit0/img001.png' must be relative"),
])
def test_a_bad_row_is_one_line_naming_it(tmp_path, row, message):
    work, _ = project(tmp_path)
    corrections(work, row)
    result = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=work, capture_output=True,
                            text=True, env={**ENV, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: data/{message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (work / "data/prepared").exists()  # checked before anything is written


def test_duplicate_rows_and_a_missing_header_are_errors(tmp_path):
    from folderfit import corrections as C
    from folderfit.errors import PipelineError

    work, source = project(tmp_path)
    corrections(work, "digit0/img001.png,drop", "digit0/img001.png,relabel:digit1")
    with pytest.raises(PipelineError, match="corrections.csv:3: 'digit0/img001.png' already has a row "
                                            r"\(line 2\)"):
        C.read(source, work / "data/corrections.csv")
    (work / "data/corrections.csv").write_text("digit0/img001.png,drop\n")
    with pytest.raises(PipelineError, match="corrections.csv:1: the first row must be the header"):
        C.read(source, work / "data/corrections.csv")


def test_the_shipped_file_is_an_empty_table(tmp_path):
    from folderfit import corrections as C

    shipped = REPO / "data/corrections.csv"
    assert shipped.read_text() == "path,action\n"
    _, source = project(tmp_path)
    assert C.read(source, shipped) == {}
