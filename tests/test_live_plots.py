"""Training curves are live: after each epoch of fine_tune / full_tune the plots dvc.yaml
declares (metrics/train/plots/metrics/...) hold the rows so far, where `dvc plots show` and the
VS Code DVC extension read them during a run; each file is replaced whole, so a crash leaves
complete, parseable files, and the previous run's other outputs untouched."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_stage, write_image_folder, write_params

from folderfit.support.fileio import mirror_files
from folderfit.tuning import epoch_loop

PLOTS = Path("metrics/train/plots/metrics")
TINY_FINE_TUNE = {"model_name": "mobilenet_v3_small", "weights": "none", "strategy": "fine_tune",
                  "freeze_layers": 2, "num_epochs": 3, "patience": 10, "batch_size": 8, "precision": "fp32",
                  "data.image_size": 32, "data.test_fraction": 0, "augment.feature_views": 2}


def rows(path: Path) -> list[dict]:
    """A dvclive TSV, strictly: every row has every column, and the values are numbers."""
    with open(path, newline="") as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    for row in table:
        assert None not in row.values() and None not in row, f"{path}: a short or long row {row}"
        [float(value) for value in row.values() if value != row.get("timestamp")]
    return table


@pytest.fixture
def prepared(tmp_path) -> Path:
    source = write_image_folder(tmp_path / "src", per_class=6)
    write_params(tmp_path, **{"data.source": str(source), **TINY_FINE_TUNE})
    run_stage("prepare", tmp_path)
    return tmp_path


def at_epoch(monkeypatch, epoch: int, then) -> list:
    """Call then() just before the epoch loop logs `epoch` (earlier epochs are written)."""
    seen = []
    original = epoch_loop._log_epoch

    def spy(number, *args, **kwargs):
        if number == epoch:
            seen.append(then())
        return original(number, *args, **kwargs)

    monkeypatch.setattr(epoch_loop, "_log_epoch", spy)
    return seen


def test_curves_reach_their_final_place_after_every_epoch(prepared, monkeypatch):
    loss = prepared / PLOTS / "train/loss.tsv"
    seen = at_epoch(monkeypatch, 2, lambda: [int(r["step"]) for r in rows(loss)])
    run_stage("train", prepared)
    assert seen == [[1]], "after epoch 1 of 3 the final-location loss.tsv lacks the epoch-1 row"
    assert [int(r["step"]) for r in rows(loss)] == [1, 2, 3]
    assert [int(r["step"]) for r in rows(prepared / PLOTS / "val/loss.tsv")] == [0, 1, 2, 3]
    assert not list(prepared.glob("metrics/.train*")), "the staging folder is left behind"


def test_a_failed_run_leaves_whole_files_and_the_previous_results(prepared, monkeypatch):
    run_stage("train", prepared)
    kept = {rel: (prepared / rel).read_bytes() for rel in
            ("models/model.pt", "metrics/train.json", "metrics/train/details.json", "metrics/train/learned_from.csv")}

    def crash():
        raise RuntimeError("crashed in epoch 2")

    at_epoch(monkeypatch, 2, crash)
    with pytest.raises(RuntimeError, match="crashed in epoch 2"):
        run_stage("train", prepared)
    for rel, data in kept.items():
        assert (prepared / rel).read_bytes() == data, f"{rel} changed by a failed run"
    # the curves show the failed run up to its last finished epoch, every file whole
    assert [int(r["step"]) for r in rows(prepared / PLOTS / "train/loss.tsv")] == [1]
    assert [int(r["step"]) for r in rows(prepared / PLOTS / "val/accuracy.tsv")] == [0, 1]
    assert not [p for p in prepared.rglob("*") if p.name.endswith(".tmp")]


def test_mirror_replaces_changed_files_and_drops_stale_ones(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "metrics/train").mkdir(parents=True)
    (src / "metrics/train/loss.tsv").write_text("step\tloss\n1\t0.5\n")
    (dest / "metrics/l2").mkdir(parents=True)
    (dest / "metrics/l2/l2.tsv").write_text("an older run's\n")
    mirror_files(src, dest)
    assert (dest / "metrics/train/loss.tsv").read_text() == "step\tloss\n1\t0.5\n"
    assert not (dest / "metrics/l2").exists()
    before = (dest / "metrics/train/loss.tsv").stat().st_ino
    mirror_files(src, dest)  # unchanged: not rewritten
    assert (dest / "metrics/train/loss.tsv").stat().st_ino == before


@pytest.mark.slow  # a train process killed with SIGKILL
def test_a_killed_run_leaves_parseable_curves(prepared):
    loss = prepared / PLOTS / "train/loss.tsv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    (prepared / "params.yaml").write_text((prepared / "params.yaml").read_text().replace(
        "num_epochs: 3", "num_epochs: 50"))
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=prepared, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not loss.exists() or len(rows(loss)) < 2:  # read while it is being written
            assert proc.poll() is None, "training ended before its second epoch"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    steps = [int(r["step"]) for r in rows(loss)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
