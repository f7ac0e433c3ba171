"""The model registry entry: dvc.yaml declares train's model file as a DVC artifact (type
model), `folderfit init` ships the same declaration, and DVC finds and fetches it by name."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from conftest import ENV, REPO, run

NAME = "image-classifier"


def test_model_file_is_a_declared_dvc_artifact():
    from dvc.repo import Repo
    from dvc.repo.artifacts import check_name_format

    declared = Repo(str(REPO)).artifacts.read()["dvc.yaml"]  # DVC's own parser and schema
    assert list(declared) == [NAME]
    check_name_format(NAME)  # a name registry tags (name@v1.0.0) can carry
    artifact = declared[NAME]
    assert artifact.type == "model" and artifact.desc and "folderfit" in artifact.labels
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    train_outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["train"]["outs"]]
    assert artifact.path in train_outs and artifact.path in stages["evaluate"]["deps"]
    shipped = (REPO / "folderfit/project/files/dvc.yaml.template").read_text()
    assert yaml.safe_load(shipped)["artifacts"] == yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"]


@pytest.mark.slow  # runs git and dvc
def test_dvc_artifacts_get_fetches_a_registered_version(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**ENV, "DVC_NO_ANALYTICS": "1"}
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo, env=env)
    artifacts = yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": artifacts}))
    model = repo / artifacts[NAME]["path"]
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights v1")
    run(["dvc", "add", "-q", str(model.relative_to(repo))], repo, env=env)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "model v1"], repo)
    # a registered version is a Git tag NAME@vX.Y.Z (what GTO and DVC Studio write)
    run(["git", "tag", "-a", f"{NAME}@v1.0.0", "-m", f"Registering artifact {NAME} version v1.0.0"], repo)
    got = tmp_path / "got.pt"
    proc = subprocess.run([shutil.which("dvc") or "dvc", "artifacts", "get", str(repo), NAME, "-o", str(got)],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert got.read_bytes() == b"weights v1"
