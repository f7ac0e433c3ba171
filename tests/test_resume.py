"""Resume after a killed training process: the final model is bitwise identical (CPU).
fine_tune resumes from its epoch checkpoint; feature_extract from the feature cache."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from folderfit.commands.repro_check import make_copy
from folderfit.tuning.checkpoint import CHECKPOINT, Checkpointer
from folderfit.tuning.epoch_loop import EarlyStopping, make_scheduler

ROOT = Path(__file__).resolve().parents[1]
# A small random-init torchvision model keeps each process short; resuming does not depend
# on the backbone.
TINY = ["model_name=mobilenet_v3_small", "weights=none", "freeze_layers=2", "precision=fp32",
        "data.image_size=32", "num_epochs=3", "patience=10", "batch_size=16", "demo.per_class=6",
        "data.test_fraction=0", "augment.feature_views=2"]


def run(args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A committed copy of the project with a tiny config and its data prepared."""
    copy = make_copy(ROOT, tmp_path_factory.mktemp("resume"), TINY)
    done = run(["dvc", "repro", "prepare"], copy)
    assert done.returncode == 0, done.stdout + done.stderr
    return copy


def set_strategy(repo: Path, strategy: str) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["strategy"] = strategy
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def outputs(repo: Path) -> dict[str, bytes]:
    files = [repo / "models/model.pt", repo / "metrics/train.json",
             *sorted((repo / "metrics/train").rglob("*.*"))]
    return {str(f.relative_to(repo)): f.read_bytes() for f in files if f.is_file()}


def kill_after_first_checkpoint(repo: Path, command: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", *command], cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = repo / CHECKPOINT
    try:
        while not checkpoint.exists():
            assert proc.poll() is None, "training ended before writing a checkpoint"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9: no cleanup code runs
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow  # dvc + killed processes
def test_killed_fine_tune_resumes_to_identical_model(repo):
    command = ["dvc", "repro", "train"]  # as a user resumes
    set_strategy(repo, "fine_tune")
    first = run(["stages.train"], repo)
    assert first.returncode == 0, first.stderr
    assert not (repo / CHECKPOINT).exists(), "the checkpoint is deleted after success"
    uninterrupted = outputs(repo)

    kill_after_first_checkpoint(repo, command)
    assert (repo / CHECKPOINT).exists()
    resumed = run(command, repo)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from checkpoints/train.pt: epoch" in resumed.stdout
    assert "epoch   1 " not in resumed.stdout, "epoch 1 was trained again"
    assert outputs(repo) == uninterrupted  # model, train.json and dvclive curves, bytes
    assert not (repo / CHECKPOINT).exists()


@pytest.mark.slow
def test_killed_feature_extraction_keeps_its_finished_features(repo, tmp_path):
    """Features are stored as each view finishes: a rerun after kill -9 computes only the
    rest, and the model is the same bytes as an uninterrupted run's."""
    set_strategy(repo, "feature_extract")
    first = run(["stages.train"], repo, env={**os.environ, "FOLDERFIT_CACHE": str(tmp_path / "a")})
    assert first.returncode == 0, first.stderr
    uninterrupted = outputs(repo)

    cache = tmp_path / "b"
    env = {**os.environ, "FOLDERFIT_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not list(cache.rglob("*.pt")):
            assert proc.poll() is None, "training ended before storing any features"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = run(["stages.train"], repo, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    computed, reused = map(int, re.search(r"(\d+) (?:vectors )?computed(?: \([\w-]+\))?, (\d+) from the cache",
                                            resumed.stdout).groups())
    assert computed > 0 and reused > 0, resumed.stdout
    assert outputs(repo) == uninterrupted


def _tiny_state(seed: int):
    torch.manual_seed(seed)
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    return module, optimizer, make_scheduler(optimizer, 2), EarlyStopping(2)


def test_checkpoint_of_other_params_or_data_is_not_resumed(tmp_path, capsys):
    path = tmp_path / "train.pt"
    module, optimizer, scheduler, stopper = _tiny_state(0)
    stopper.update(1, 0.5, 1.0, module)
    Checkpointer(path, "fingerprint-a", None).save(1, module, optimizer, scheduler, stopper,
                                                   [{"epoch": 1}], False)
    fresh = _tiny_state(1)
    assert Checkpointer(path, "fingerprint-b", None).restore(*fresh) == (0, [], False)
    assert "made with other params, data or code" in capsys.readouterr().err
    assert not torch.equal(fresh[0].weight, module.weight)
    # same fingerprint: everything comes back
    assert Checkpointer(path, "fingerprint-a", None).restore(*fresh) == (1, [{"epoch": 1}], False)
    assert torch.equal(fresh[0].weight, module.weight) and fresh[3].best_epoch == 1


def test_damaged_checkpoint_starts_afresh(tmp_path, capsys):
    path = tmp_path / "train.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    assert Checkpointer(path, "x", None).restore(*_tiny_state(0)) == (0, [], False)
    assert "unreadable checkpoint" in capsys.readouterr().err
