"""The project files `folderfit init` writes into a user's repository, shipped as package data.

Single source: folderfit's own repository is one such project, and the files under files/
are byte-for-byte copies of its root files (tests/test_init.py checks it). Edit the root
files, then copy them here with

    python -m folderfit.project --sync      # --check: only compare, exit 1 on a difference

Names are stored with a leading "." of any path component spelled "dot-"
(.github -> dot-github, data/.gitignore -> data/dot-gitignore): a live .gitignore or
.dvcignore inside the package folder would act on this repository, and packaging tools skip
hidden files. dvc.yaml is stored as dvc.yaml.template: DVC reads every dvc.yaml in a
repository, so a live one here would be a second pipeline of this repository.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

TEMPLATES = Path(__file__).resolve().parent / "files"
WORKFLOW = ".github/workflows/pipeline.yml"
# Root files copied verbatim (besides stages/*.py and the .ci/steps scripts the workflow runs).
FIXED = ("dvc.yaml", "params.yaml", ".dvcignore", "data/.gitignore", "metrics/.gitignore",
         "models/.gitignore", ".dvc/plots/class_curves.json", WORKFLOW)
STEP_SCRIPT = re.compile(r"\.ci/steps/[\w.-]+\.sh")
DOT = "dot-"
RENAMED = {"dvc.yaml": "dvc.yaml.template"}  # project name -> stored name (module docstring)


def stored_name(rel: str) -> str:
    """Project path -> path below files/ ('.ci/steps/x.sh' -> 'dot-ci/steps/x.sh')."""
    parts = [DOT + part[1:] if part.startswith(".") else part for part in PurePosixPath(rel).parts]
    parts[-1] = RENAMED.get(parts[-1], parts[-1])
    return "/".join(parts)


def project_name(stored: str) -> str:
    """Inverse of stored_name."""
    parts = ["." + part[len(DOT):] if part.startswith(DOT) else part
             for part in PurePosixPath(stored).parts]
    back = {v: k for k, v in RENAMED.items()}
    parts[-1] = back.get(parts[-1], parts[-1])
    return "/".join(parts)


def repo_paths(root: Path) -> list[str]:
    """The project files of a repository root: FIXED, stages/*.py and the step scripts its
    workflow names (only those: other .ci files are this repository's own CI)."""
    paths = set(FIXED)
    paths |= {p.relative_to(root).as_posix() for p in (root / "stages").glob("*.py")}
    workflow = root / WORKFLOW
    if workflow.is_file():
        paths |= set(STEP_SCRIPT.findall(workflow.read_text(encoding="utf-8")))
    return sorted(paths)


def templates(source: Path = TEMPLATES) -> dict[str, bytes]:
    """{project path: content} of every template shipped (sorted by path)."""
    if not source.is_dir():
        return {}
    found = {project_name(p.relative_to(source).as_posix()): p.read_bytes()
             for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return dict(sorted(found.items()))


def differences(root: Path, source: Path = TEMPLATES) -> list[str]:
    """How the shipped templates differ from the files of repository `root`: one line each
    (empty when they are the same files)."""
    shipped = templates(source)
    wanted = repo_paths(root)
    out = []
    for rel in wanted:
        if not (root / rel).is_file():
            out.append(f"{rel}: missing in the repository")
        elif rel not in shipped:
            out.append(f"{rel}: not shipped in {source}")
        elif shipped[rel] != (root / rel).read_bytes():
            out.append(f"{rel}: differs from the shipped copy")
    out += [f"{rel}: shipped but no longer a project file" for rel in shipped if rel not in wanted]
    return out


def sync(root: Path, dest: Path = TEMPLATES) -> list[str]:
    """Replace the shipped templates with the files of repository `root`; returns the paths."""
    from folderfit.errors import PipelineError
    from folderfit.support.fileio import write_bytes

    paths = repo_paths(root)
    missing = [rel for rel in paths if not (root / rel).is_file()]
    if missing:
        raise PipelineError(f"{root}: no {', '.join(missing)}; run the sync from folderfit's "
                            f"repository root")
    for old in templates(dest):  # files the project no longer has
        if old not in paths:
            (dest / stored_name(old)).unlink()
    for rel in paths:
        target = dest / stored_name(rel)
        content = (root / rel).read_bytes()
        if not target.is_file() or target.read_bytes() != content:
            write_bytes(target, content)
    return paths
