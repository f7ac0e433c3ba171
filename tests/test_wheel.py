"""The built wheel stands alone: installed in a fresh virtual environment it answers
`folderfit --version`, `folderfit init` writes a project in an empty repository outside this
source tree, and `dvc repro` runs that project offline on the built-in demo. An editable
install hides files that the wheel forgets (a package not listed, a template not declared as
package data); this test does not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, run

import folderfit
from folderfit.params import merge_overrides

# what setuptools reads to build the wheel (pyproject's readme, license-files and packages)
BUILD_INPUTS = ["pyproject.toml", "README.md", "LICENSE", "folderfit"]


def build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of the sources (a build in place leaves build/ and
    *.egg-info/ in the source tree) with the installed setuptools, so no network is used."""
    src = tmp_path / "src"
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist)], tmp_path)
    (wheel,) = dist.glob("folderfit-*.whl")
    return wheel


def venv_with(wheel: Path, where: Path) -> tuple[Path, dict]:
    """A virtual environment whose own folderfit is the wheel. It sees this interpreter's
    site-packages for torch, DVC and the rest (no 4 GB download); the venv's site-packages come
    first on sys.path, so its folderfit shadows the editable install of the source tree."""
    run([sys.executable, "-m", "venv", "--system-site-packages", str(where)], where.parent)
    bindir = where / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{bindir}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(where), HOME=str(where.parent / "home"),
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", PIP_NO_INDEX="1")
    Path(env["HOME"]).mkdir()
    run([bindir / "python", "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", str(wheel)],
        where.parent, env=env)
    return bindir, env


@pytest.mark.slow  # builds a wheel, makes a venv and runs dvc repro (a minute or more)
def test_the_wheel_installs_and_runs_the_pipeline_outside_the_source_tree(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licence, "the wheel carries no LICENSE"
        assert archive.read(licence[0]) == (REPO / "LICENSE").read_bytes()
        assert "folderfit/project/files/dvc.yaml.template" in names

    bindir, env = venv_with(wheel, tmp_path / "venv")
    where = run([bindir / "python", "-c", "import folderfit; print(folderfit.__file__)"], tmp_path, env=env)
    location = Path(where.stdout.strip()).resolve()
    assert location.is_relative_to((tmp_path / "venv").resolve()), location
    assert not location.is_relative_to(REPO)

    version = run([bindir / "folderfit", "--version"], tmp_path, env=env)
    assert version.stdout.strip() == f"folderfit {folderfit.__version__}"

    project = tmp_path / "mine"
    project.mkdir()
    run(["git", "init", "-q"], project, env=env)
    run(["git", "config", "user.email", "test@example.com"], project, env=env)
    run(["git", "config", "user.name", "test"], project, env=env)
    run([bindir / "folderfit", "init"], project, env=env)
    assert not (project / "folderfit").exists()  # the stages import the installed library
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(merge_overrides(params, TINY), sort_keys=False))
    run(["git", "add", "-A"], project, env=env)
    run(["git", "commit", "-qm", "folderfit pipeline"], project, env=env)

    repro = subprocess.run([bindir / "python", "-m", "dvc", "repro"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=900)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    assert "accuracy" in (project / "metrics/eval.json").read_text()
    # the stages ran the wheel's library: preflight records the one it imported
    stamp = (project / "data/preflight.ok").read_text()
    assert stamp.startswith(f"folderfit {folderfit.__version__}\n"), stamp
