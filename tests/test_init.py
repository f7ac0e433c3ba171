"""`folderfit init DIR`: the project it writes is this repository's own (byte for byte), it
refuses to overwrite, and an init'd project runs offline and follows the installed library:
an unchanged library reruns nothing, an upgraded one reruns the stages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ENV, REPO, TINY, run

from folderfit import project
from folderfit.params import merge_overrides
from folderfit.pipeline import preflight

SYNC = "run `python -m folderfit.project --sync` after editing the repository's project files"


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    run(["git", "init", "-q"], path)
    run(["git", "config", "user.email", "test@example.com"], path)
    run(["git", "config", "user.name", "test"], path)
    return path


def install(site: Path) -> dict:
    """An "installed" folderfit: a copy of the package in `site` whose templates are this
    repository's current root files (what `--sync` ships); returns the environment that
    imports it (stages of an init'd project included)."""
    shutil.copytree(REPO / "folderfit", site / "folderfit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(site / "folderfit/project/files", ignore_errors=True)
    project.sync(REPO, site / "folderfit/project/files")
    return {**ENV, "PYTHONPATH": str(site), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def env(tmp_path) -> dict:
    return install(tmp_path / "site")


def init(dest: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "folderfit", "init", str(dest), *args], dest.parent,
               check=False, env=env)


def test_shipped_templates_are_this_repositorys_files():
    """This repository is an init'd project: what init writes is its own files."""
    diffs = project.differences(REPO)
    assert not diffs, f"{SYNC}:\n" + "\n".join(diffs)
    paths = project.repo_paths(REPO)
    for expected in ("dvc.yaml", "params.yaml", ".dvcignore", "stages/train.py",
                     ".github/workflows/pipeline.yml", ".ci/steps/repro.sh", "data/.gitignore"):
        assert expected in paths


def test_stored_names_hide_no_dotfile_in_the_package():
    assert project.stored_name(".github/workflows/pipeline.yml") == "dot-github/workflows/pipeline.yml"
    assert project.project_name("data/dot-gitignore") == "data/.gitignore"
    shipped = [p for p in project.TEMPLATES.rglob("*") if "__pycache__" not in p.parts]
    assert not [p for p in shipped if p.name.startswith(".")]


def test_project_stages_follow_the_installed_library_not_a_source_folder():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["preflight"].get("always_changed") is True, \
        "dvc.yaml: preflight needs `always_changed: true` (it records the installed library)"
    assert stages["preflight"]["outs"] == ["data/preflight.ok"]
    for name, stage in stages.items():
        assert "folderfit" not in stage["deps"], f"{name} depends on a folderfit source folder"
        if name != "preflight":
            assert "data/preflight.ok" in stage["deps"], name


def test_library_digest_follows_code_only(tmp_path):
    lib = tmp_path / "folderfit"
    shutil.copytree(preflight.LIBRARY, lib, ignore=shutil.ignore_patterns("__pycache__"))
    before = preflight.library_digest(lib)
    (lib / "__pycache__").mkdir(exist_ok=True)
    (lib / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"compiled")
    (lib / "project" / "files" / "stages" / "train.py").write_text("# a template, not code\n")
    assert preflight.library_digest(lib) == before
    with open(lib / "pipeline" / "train.py", "a") as f:
        f.write("# changed\n")
    assert preflight.library_digest(lib) != before
    stamp = preflight.stamp(lib, "9.9.9")
    assert stamp.startswith("folderfit 9.9.9\nlibrary sha256 ") and preflight.library_digest(lib) in stamp


def test_init_reproduces_this_repositorys_project_files(tmp_path, env):
    dest = git_repo(tmp_path / "mine")
    (dest / ".gitignore").write_text("/secrets")  # the user's: kept, pipeline lines appended
    done = init(dest, env=env)
    assert done.returncode == 0, done.stderr
    assert (dest / ".dvc" / "config").is_file()  # dvc init ran
    for rel in project.repo_paths(REPO):
        assert (dest / rel).read_bytes() == (REPO / rel).read_bytes(), rel
        if rel.endswith(".sh"):
            assert os.access(dest / rel, os.X_OK), rel
    assert (dest / "data/corrections.csv").read_text() == "path,action\n"
    assert (dest / ".gitignore").read_text().splitlines()[0] == "/secrets"
    assert {"__pycache__/", "/checkpoints/"} <= set((dest / ".gitignore").read_text().splitlines())
    requirements = (dest / ".ci/requirements.txt").read_text()
    import folderfit

    assert f"folderfit[pipeline]=={folderfit.__version__}" in requirements


def test_init_refuses_existing_files_unless_forced(tmp_path, env):
    dest = git_repo(tmp_path / "mine")
    (dest / "dvc.yaml").write_text("stages: {}\n")
    (dest / "stages").mkdir()
    (dest / "stages" / "train.py").write_text("mine\n")
    (dest / "data").mkdir()
    (dest / "data" / "corrections.csv").write_text("path,action\ndigit0/a.png,drop\n")
    refused = init(dest, env=env)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "dvc.yaml" in refused.stderr and "stages/train.py" in refused.stderr
    assert "--force" in refused.stderr and "params.yaml" not in refused.stderr
    assert not (dest / "params.yaml").exists() and not (dest / ".dvc").exists()  # nothing done
    forced = init(dest, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert (dest / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    # the user's label fixes are data, never replaced
    assert (dest / "data" / "corrections.csv").read_text() == "path,action\ndigit0/a.png,drop\n"


def test_init_outside_a_git_repository_says_what_to_do(tmp_path, env):
    dest = tmp_path / "plain"
    dest.mkdir()
    refused = init(dest, env={**env, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert refused.returncode == 2 and "git init" in refused.stderr, refused.stderr
    assert list(dest.iterdir()) == []


def ran(result: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", result.stdout + result.stderr)


LEGACY_STAGES = Path(__file__).parent / "legacy_stages"


@pytest.mark.parametrize("script", sorted(p.name for p in LEGACY_STAGES.glob("*.py")))
def test_stage_scripts_of_the_previous_release_reach_the_moved_stage(script, monkeypatch):
    """A project made by an earlier `folderfit init` passes the old module path
    ("folderfit.pipeline.train:run"); the stage's name must still find its module."""
    from folderfit import cli

    code = (LEGACY_STAGES / script).read_text()
    name, target = re.search(r'stage_main\("(\w+)", __doc__, "([^"]+)"\)', code).groups()
    assert target.split(":")[0] not in sys.modules and not Path(cli.__file__).with_name(
        target.split(":")[0].split(".")[-1] + ".py").exists()  # the old module is gone
    ran = []
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda module: type("Stage", (), {"run": staticmethod(lambda params: ran.append(module))}))
    monkeypatch.setattr("folderfit.params.load_params", lambda: "params")
    cli.stage_main(name, "doc", target, argv=[])
    assert ran == [cli.STAGES[name]] and cli.STAGES[name].endswith("." + name)


@pytest.mark.slow
def test_init_then_dvc_repro_offline_and_upgrades_rerun(tmp_path):
    site = tmp_path / "site"
    env = install(site)  # a copy, so that the test can upgrade it
    dest = git_repo(tmp_path / "mine")
    done = init(dest, env=env)
    assert done.returncode == 0, done.stderr
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(merge_overrides(params, TINY), sort_keys=False))
    # the stage scripts an earlier release wrote (they name module paths that moved) still run
    for legacy in LEGACY_STAGES.glob("*.py"):
        shutil.copyfile(legacy, dest / "stages" / legacy.name)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "folderfit pipeline"], dest)
    assert not (dest / "folderfit").exists()  # nothing but the installed library to import

    first = run(["dvc", "repro"], dest, env=env)
    assert set(ran(first)) == {"preflight", "demo_data", "prepare", "review", "train", "evaluate"}
    assert "accuracy" in (dest / "metrics/eval.json").read_text()
    lock = (dest / "dvc.lock").read_bytes()
    assert "library sha256 " + preflight.library_digest(site / "folderfit") in \
        (dest / "data/preflight.ok").read_text()

    second = run(["dvc", "repro"], dest, env=env)
    assert ran(second) == ["preflight"], second.stdout  # always_changed: it checks, nothing else runs
    assert (dest / "dvc.lock").read_bytes() == lock

    # an upgrade: a new version with changed code reruns the stages that import it
    init_py = site / "folderfit" / "__init__.py"
    init_py.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "99.0.0"', init_py.read_text()))
    upgraded = run(["dvc", "repro", "demo_data"], dest, env=env)
    assert ran(upgraded) == ["preflight", "demo_data"], upgraded.stdout
    assert (dest / "data/preflight.ok").read_text().startswith("folderfit 99.0.0\n")
    status = run(["dvc", "status"], dest, env=env).stdout
    for stage in ("prepare", "review", "train", "evaluate"):
        assert re.search(rf"^{stage}:\n(\t.*\n)*?\t\tmodified:\s+data/preflight.ok", status, re.M), status
