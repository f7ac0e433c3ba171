"""`folderfit release VERSION [--stage STAGE]`: the Git Tag Ops tags of the dvc.yaml artifact
(NAME@vX.Y.Z, NAME#STAGE#N), written only for a committed model; and another repository gets
that model by name with `dvc artifacts get` from a DVC remote and predicts with it exactly as
the first one does."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ENV, REPO, make_repo, run

from folderfit.commands import release
from folderfit.errors import PipelineError

NAME = "image-classifier"


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


def tags(repo: Path) -> list[str]:
    return git(repo, "tag", "--list").split()


def lock_for(model: bytes) -> str:
    """A dvc.lock whose train stage records `model` as models/model.pt (as dvc repro writes it)."""
    out = {"path": "models/model.pt", "hash": "md5", "md5": hashlib.md5(model).hexdigest(), "size": len(model)}
    return yaml.safe_dump({"schema": "2.0", "stages": {"train": {"cmd": "python -m stages.train", "outs": [out]}}})


@pytest.fixture
def committed(tmp_path) -> Path:
    """A git repository whose last commit holds this repository's dvc.yaml and a dvc.lock
    recording the model file in the working tree (no DVC run needed to check the tags)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    shutil.copy2(REPO / "dvc.yaml", repo / "dvc.yaml")
    (repo / "models").mkdir()
    shutil.copy2(REPO / "models/.gitignore", repo / "models/.gitignore")
    (repo / "models/model.pt").write_bytes(b"weights v1")
    (repo / "dvc.lock").write_text(lock_for(b"weights v1"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "model v1")
    return repo


def release_in(repo: Path, version: str, stage: str | None = None, message: str | None = None) -> None:
    with contextlib.chdir(repo):
        release.command(argparse.Namespace(version=version, stage=stage, message=message))


def test_release_writes_gto_version_and_stage_tags(committed):
    release_in(committed, "1.0.0", stage="prod")
    assert sorted(tags(committed)) == [f"{NAME}#prod#1", f"{NAME}@v1.0.0"]
    head = git(committed, "rev-parse", "HEAD").strip()
    for tag in tags(committed):  # annotated tags on the commit that holds dvc.lock
        assert git(committed, "cat-file", "-t", tag).strip() == "tag"
        assert git(committed, "rev-list", "-n1", tag).strip() == head
    from gto import api  # GTO reads back what it wrote: the registry state

    shown = api.show(str(committed), NAME)
    assert [v["version"] for v in shown] == ["v1.0.0"]
    assert [s["stage"] for s in shown[0]["stages"]] == ["prod"]
    # a new model, committed, becomes the next version; the stage moves to it
    (committed / "models/model.pt").write_bytes(b"weights v2")
    (committed / "dvc.lock").write_text(lock_for(b"weights v2"))
    git(committed, "commit", "-qam", "model v2")
    release_in(committed, "v1.1.0", stage="prod", message="better")
    assert {f"{NAME}@v1.1.0", f"{NAME}#prod#2"} <= set(tags(committed))
    assert git(committed, "tag", "-l", "--format=%(contents:subject)", f"{NAME}@v1.1.0").strip() == "better"


@pytest.mark.parametrize("version", ["1.0", "v1.0.0.1", "1.0.0-beta", "01.0.0", "latest"])
def test_release_refuses_a_version_that_is_not_semver(committed, version):
    with pytest.raises(PipelineError, match="not semantic"):
        release_in(committed, version)
    assert tags(committed) == []


def test_release_refuses_an_existing_version(committed):
    release_in(committed, "1.0.0")
    (committed / "models/model.pt").write_bytes(b"weights v2")
    (committed / "dvc.lock").write_text(lock_for(b"weights v2"))
    git(committed, "commit", "-qam", "model v2")
    with pytest.raises(PipelineError, match="exists already"):
        release_in(committed, "v1.0.0", stage="prod")
    assert tags(committed) == [f"{NAME}@v1.0.0"]


def test_release_refuses_what_is_not_committed(committed):
    (committed / "dvc.lock").write_text(lock_for(b"weights v2"))  # dvc repro ran, not committed
    (committed / "models/model.pt").write_bytes(b"weights v2")
    with pytest.raises(PipelineError, match=r"uncommitted changes \(dvc.lock\)"):
        release_in(committed, "1.0.0")
    git(committed, "checkout", "dvc.lock")  # the lock committed, the model file another one
    with pytest.raises(PipelineError, match="models/model.pt is not the model the committed dvc.lock records"):
        release_in(committed, "1.0.0")
    (committed / "models/model.pt").write_bytes(b"weights v1")
    (committed / "models/.gitignore").write_text("/model.pt\n/other.pt\n")
    with pytest.raises(PipelineError, match=r"uncommitted changes \(models/.gitignore\)"):
        release_in(committed, "1.0.0")
    git(committed, "checkout", "models/.gitignore")
    git(committed, "rm", "-q", "--cached", "dvc.lock")
    git(committed, "commit", "-qm", "lock untracked")
    with pytest.raises(PipelineError, match="dvc.lock is not committed"):
        release_in(committed, "1.0.0")
    assert tags(committed) == []


def test_release_refuses_a_bad_stage_before_writing_any_tag(committed):
    with pytest.raises(PipelineError, match="--stage: Invalid value"):
        release_in(committed, "1.0.0", stage="no good")
    assert tags(committed) == []


def test_release_is_one_error_line_from_the_command_line(committed):
    done = subprocess.run([sys.executable, "-m", "folderfit", "release", "1.0"], cwd=committed,
                          capture_output=True, text=True, env={**ENV, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: version '1.0' is not semantic (X.Y.Z, e.g. 1.0.0 or v1.0.0)"]


def folderfit_cli(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "folderfit", *args], cwd, env={**ENV, "PYTHONPATH": str(REPO)}).stdout


@pytest.mark.slow  # dvc repro, dvc push, dvc artifacts get
def test_another_repository_gets_the_released_model_and_predicts_the_same(tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = {**ENV, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    run(["dvc", "repro"], repo, env=env)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], repo, env=env)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "trained, with a remote"], repo)
    folderfit_cli("release", "1.0.0", "--stage", "prod", cwd=repo)
    run(["dvc", "push", "-q"], repo, env=env)
    images = repo / "data/demo"
    expected = folderfit_cli("predict", str(images), "--model", "models/model.pt", cwd=repo)
    shutil.rmtree(repo / ".dvc/cache")  # what the other side gets comes from the remote

    other = tmp_path / "other"
    other.mkdir()
    run(["git", "init", "-q"], other)
    for how, out in ((["--rev", "v1.0.0"], "by_version.pt"), (["--stage", "prod"], "by_stage.pt")):
        run(["dvc", "artifacts", "get", str(repo), NAME, *how, "-o", out], other, env=env)
        assert (other / out).read_bytes() == (repo / "models/model.pt").read_bytes()
        assert folderfit_cli("predict", str(images), "--model", out, cwd=other) == expected
