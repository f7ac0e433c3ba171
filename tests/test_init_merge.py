"""`folderfit init` in repositories that are not empty: DVC's own files are merged, a user's
file is replaced only with --force (named, old copy kept), everything is checked before
anything is written and a failure while writing undoes it, the CI workflow of a project in a
subfolder goes to the git root, and a folder it cannot write is one `error:` line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run
from test_init import git_repo, init, install

from folderfit import project
from folderfit.commands import init as init_command
from folderfit.errors import OutputError, PipelineError


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    return install(tmp_path_factory.mktemp("site"))


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path below `folder` (outside .git) with its content (None: a folder)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*")) if ".git" not in p.relative_to(folder).parts}


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return result.stderr.splitlines()


def patterns(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_plain_git_and_dvc_init_repository_gets_the_project(tmp_path, env):
    dest = git_repo(tmp_path / "mine")
    run(["dvc", "init", "-q"], dest)
    dvc_files = {p: (dest / p).read_bytes() for p in (".dvc/config", ".dvc/.gitignore")}
    dvc_default = (dest / ".dvcignore").read_text()
    done = init(dest, env=env)
    assert done.returncode == 0, done.stderr  # was: "already has .dvcignore"
    assert {p: (dest / p).read_bytes() for p in dvc_files} == dvc_files  # DVC's own: untouched
    merged = (dest / ".dvcignore").read_text()
    assert merged.startswith(dvc_default)
    assert set(patterns((REPO / ".dvcignore").read_text())) <= set(patterns(merged))
    assert (dest / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    again = init(dest, env=env)  # everything in place: nothing to write, nothing refused
    assert again.returncode == 0 and "nothing to write" in again.stdout, again.stderr


def test_a_users_dvcignore_keeps_its_lines_and_gets_ours(tmp_path, env):
    dest = git_repo(tmp_path / "mine")
    (dest / ".dvcignore").write_text("/photos-raw\n*.tmp")
    done = init(dest, env=env)
    assert done.returncode == 0, done.stderr
    text = (dest / ".dvcignore").read_text()
    assert text.startswith("/photos-raw\n*.tmp\n")
    assert set(patterns((REPO / ".dvcignore").read_text())) <= set(patterns(text))
    assert "  .dvcignore (folderfit's patterns appended)" in done.stdout.splitlines()


def test_users_files_are_replaced_only_with_force_each_named_and_kept(tmp_path, env):
    dest = git_repo(tmp_path / "mine")
    (dest / "dvc.yaml").write_text("stages: {}\n")
    (dest / "params.yaml").write_text("lr: 0.5\n")
    (dest / "stages").mkdir()
    shutil.copy(REPO / "stages/train.py", dest / "stages/train.py")  # folderfit's own copy
    before = listing(dest)
    refused = init(dest, env=env)
    assert refused.returncode == 2 and len(errors(refused)) == 1, refused.stderr
    assert errors(refused)[0].startswith(f"error: {dest.resolve()}: already has dvc.yaml, "
                                         f"params.yaml, different from folderfit's")
    assert "--force" in refused.stderr and "stages/train.py" not in refused.stderr
    assert listing(dest) == before  # nothing written, no dvc init
    forced = init(dest, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    lines = forced.stdout.splitlines()
    assert "  dvc.yaml (replaced; old copy in .folderfit-backup/)" in lines
    assert "  params.yaml (replaced; old copy in .folderfit-backup/)" in lines
    assert "  .folderfit-backup/dvc.yaml (your old dvc.yaml, kept)" in lines
    assert not [line for line in lines if "stages/train.py" in line]  # identical: not rewritten
    assert (dest / ".folderfit-backup/dvc.yaml").read_text() == "stages: {}\n"
    assert (dest / ".folderfit-backup/params.yaml").read_text() == "lr: 0.5\n"
    assert (dest / "params.yaml").read_bytes() == (REPO / "params.yaml").read_bytes()


@pytest.mark.parametrize("blocker", ["stages", ".github", ".ci", "data"])
@pytest.mark.parametrize("force", [False, True])
def test_a_file_in_the_way_stops_init_before_it_writes(tmp_path, env, blocker, force):
    dest = git_repo(tmp_path / "mine")
    (dest / blocker).write_text("a file of mine\n")
    before = listing(dest)
    result = init(dest, *(["--force"] if force else []), env=env)
    assert result.returncode == 2 and len(errors(result)) == 1, result.stderr
    assert errors(result)[0] == (f"error: {dest.resolve()}: {blocker} is a file, not a folder, "
                                 f"where folderfit init writes; move it away, then rerun "
                                 f"(nothing was written)")
    assert listing(dest) == before  # was: dvc init done and the files before it written


def test_a_failure_while_writing_undoes_every_write(tmp_path, monkeypatch):
    dest = git_repo(tmp_path / "mine")
    (dest / ".gitignore").write_text("/secrets\n")
    before = listing(dest)
    calls = []
    real = init_command.write_bytes

    def fails_at_the_sixth(path, data):
        calls.append(path)
        if len(calls) == 6:
            raise OutputError(f"{path}: no space left on the device")
        real(path, data)

    monkeypatch.setattr(init_command, "write_bytes", fails_at_the_sixth)
    with pytest.raises(PipelineError, match="no space left.*folderfit init undid what it had written"):
        init_command.init(dest)
    assert len(calls) == 6
    assert listing(dest) == before  # the .dvc/ of its dvc init included


def test_subfolder_project_gets_its_workflow_at_the_git_root(tmp_path, env):
    root = git_repo(tmp_path / "mono")
    dest = root / "ml" / "birds"
    dest.mkdir(parents=True)
    done = init(dest, env=env)
    assert done.returncode == 0, done.stderr
    assert not (dest / ".github").exists()  # GitHub never runs a workflow there
    workflow = root / ".github/workflows/pipeline-ml-birds.yml"
    assert (f"  ../../.github/workflows/pipeline-ml-birds.yml (at the git root, where GitHub runs "
            f"workflows; its steps run in ml/birds/)") in done.stdout.splitlines()
    spec = yaml.safe_load(workflow.read_text())
    job = spec["jobs"]["reproduce"]
    assert job["defaults"]["run"]["working-directory"] == "ml/birds"
    steps = [step["run"].split()[-1] for step in job["steps"] if "run" in step]
    assert steps and all((dest / script).is_file() for script in steps)  # .ci/steps/*.sh
    setup = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python"))
    assert "ml/birds/.ci/requirements.txt" in setup["with"]["cache-dependency-path"].split()
    assert spec["concurrency"]["group"].startswith("pipeline-ml-birds-")
    assert (dest / ".dvc/config").is_file() and not (root / ".dvc").exists()  # dvc init --subdir


def test_subfolder_workflow_follows_the_shipped_template(tmp_path):
    """subfolder_workflow edits the shipped workflow's text: each edit must still apply."""
    text = project.templates()[project.WORKFLOW].decode()
    out = init_command.subfolder_workflow(text, "a b/c")
    spec = yaml.safe_load(out)
    assert spec["jobs"]["reproduce"]["defaults"]["run"]["working-directory"] == "a b/c"
    assert spec["name"] == "pipeline (a b/c)"

    pytest.importorskip("check_jsonschema", reason="pip install -e '.[test]'")
    (tmp_path / "pipeline.yml").write_text(out)
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                             "vendor.github-workflows", str(tmp_path / "pipeline.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_read_only_folder_is_one_error_line(tmp_path, env):
    """Root writes anywhere unless the file system is read-only: a read-only tmpfs in a mount
    namespace (skipped where `unshare -rm` is not allowed)."""
    dest = tmp_path / "ro"
    dest.mkdir()
    script = (f"mount -t tmpfs -o size=1m tmpfs {dest} && cd {dest} && git init -q && "
              f"mount -o remount,ro {dest} && "
              f"{sys.executable} -m folderfit init {dest}")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, env=env)
    if "mount" in result.stderr and "folderfit" not in result.stderr and result.returncode != 2:
        pytest.skip(f"no mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 2, result.stderr
    assert errors(result) == [f"error: {dest}: cannot write there (Read-only file system); "
                              f"folderfit init needs a writable folder: fix its permissions or "
                              f"choose another one"]
