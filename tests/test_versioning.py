"""Data versioning with real `dvc` commands in a temp git repo: remote round trip and switching
between two data versions. Tiny config (3 classes x 6 images of 32 px, 1 epoch)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_repo
from PIL import Image

from folderfit.params import merge_overrides

pytestmark = pytest.mark.slow  # dvc runs in temp repositories

# Everything DVC tracks in this project (stage outputs + the user's data/raw).
TRACKED = ("data/raw", "data/demo", "data/prepared", "models", "metrics")
TINY = {"num_epochs": 1, "batch_size": 8, "demo": {"per_class": 3, "size": 16},
        "data": {"source": "data/raw", "image_size": 32}, "evaluate": {"bootstrap": 200}}
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cwd: Path, *args: str) -> str:
    """Run git/dvc in cwd; returns stdout+stderr, fails the test with the output on error."""
    cmd = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out}"
    return out


def tree_hashes(repo: Path) -> dict[str, str]:
    """sha256 of every file DVC tracks in the workspace (git-ignore files left out)."""
    hashes = {}
    for top in TRACKED:
        for path in sorted((repo / top).rglob("*")):
            if path.is_file() and path.name != ".gitignore":
                hashes[path.relative_to(repo).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def write_images(folder: Path, seeds) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        pixels[..., seed % 3] = 220  # a class-coloured tint, so there is something to learn
        Image.fromarray(pixels).save(folder / f"{seed}.png")


def set_params(repo: Path, changes: dict) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(merge_overrides(yaml.safe_load(path.read_text()), changes),
                                   sort_keys=False))


def assert_up_to_date(repo: Path) -> None:
    # preflight always runs (it records the library's digest); nothing else is out of date
    assert json.loads(sh(repo, "dvc", "status", "--json")) == {"preflight": ["always changed"]}
    out = sh(repo, "dvc", "repro")
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'preflight':"], out


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """A project repo at data version 1 (tag v1): data/raw under DVC, pipeline run, committed.
    Returns (repo, hashes of every tracked file)."""
    repo = make_repo(tmp_path_factory.mktemp("v1") / "project", TINY)  # committed: dvclive needs one
    for ci, label in enumerate(("cat", "dog", "fox")):
        write_images(repo / "data/raw" / label, range(ci, 18, 3))
    sh(repo, "dvc", "add", "data/raw")
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "data v1")
    sh(repo, "git", "tag", "v1")
    return repo, tree_hashes(repo)


def test_remote_round_trip(v1, tmp_path):
    origin, hashes = v1
    assert any(k.startswith("data/raw/") for k in hashes) and "models/model.pt" in hashes
    assert "metrics/data.json" in hashes and "metrics/eval.json" in hashes
    sh(origin, "dvc", "remote", "add", "-f", "-d", "store", str(tmp_path / "remote"))
    sh(origin, "git", "commit", "-qam", "local remote")
    sh(origin, "dvc", "push")

    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "data/raw").exists() and not (clone / "models/model.pt").exists()
    sh(clone, "dvc", "pull")
    assert tree_hashes(clone) == hashes
    assert_up_to_date(clone)
    shown = json.loads(sh(clone, "dvc", "metrics", "show", "--json"))
    assert shown[""]["data"]["metrics/data.json"]["data"]["n_images"] == 18


def test_switch_data_versions(v1, tmp_path):
    origin, v1_hashes = v1
    repo = tmp_path / "repo"
    shutil.copytree(origin, repo, symlinks=True)  # own copy: the module fixture stays at v1
    raw = repo / "data/raw"
    write_images(raw / "fox", (100, 103))  # version 2: two more images ...
    os.replace(raw / "cat/0.png", raw / "dog/0.png")  # ... and one relabelled cat -> dog
    set_params(repo, {"evaluate": {"bootstrap": 300}})
    sh(repo, "dvc", "add", "data/raw")
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "data v2")
    v2_hashes = tree_hashes(repo)
    assert v2_hashes != v1_hashes

    metrics = json.loads(sh(repo, "dvc", "metrics", "diff", "v1", "HEAD", "--all", "--json"))
    data = metrics["metrics/data.json"]
    assert data["n_images"] == {"old": 18, "new": 20, "diff": 2}
    totals = {row["class"]: row["train"] + row["val"] + row["test"]
              for row in json.loads((repo / "metrics/data.json").read_text())["per_class"]}
    assert totals == {"cat": 5, "dog": 7, "fox": 8}
    assert "n_images" in metrics["metrics/eval.json"]  # the model's scores are compared too
    params = json.loads(sh(repo, "dvc", "params", "diff", "v1", "HEAD", "--json"))
    assert params["params.yaml"] == {"evaluate.bootstrap": {"old": 200, "new": 300, "diff": 100}}

    sh(repo, "git", "checkout", "-q", "v1")
    sh(repo, "dvc", "checkout")
    assert tree_hashes(repo) == v1_hashes  # data, prepared data, model and metrics of v1
    assert_up_to_date(repo)
    sh(repo, "git", "checkout", "-q", "-")
    sh(repo, "dvc", "checkout")
    assert tree_hashes(repo) == v2_hashes
