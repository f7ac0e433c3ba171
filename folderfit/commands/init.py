"""`folderfit init DIR`: write a working pipeline project into the user's own git repository.

What it writes is folderfit.project's templates (this repository's own dvc.yaml, params.yaml,
stages/, .dvcignore, ignore files, the CI workflow and its step scripts), plus what is the
user's rather than folderfit's: an empty data/corrections.csv (kept if present, even with
--force), the ignore rules the pipeline needs appended to the root .gitignore, and
.ci/requirements.txt, the folderfit version the workflow installs. The project's stages
import the installed folderfit; its preflight stage records the library's version and
digest, so `dvc repro` reruns them when folderfit is upgraded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import folderfit
from folderfit import project
from folderfit.errors import PipelineError
from folderfit.support.fileio import write_bytes, write_text

CORRECTIONS = "data/corrections.csv"
REQUIREMENTS = ".ci/requirements.txt"
# root .gitignore lines a project needs: compiled stage scripts, train's crash checkpoints
GITIGNORE = ("__pycache__/", "/checkpoints/")


def git_toplevel(dest: Path) -> Path | None:
    try:
        found = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=dest,
                               capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return Path(found.stdout.strip()).resolve() if found.returncode == 0 else None


def requirements_text() -> str:
    """.ci/requirements.txt: torch and torchvision as folderfit requires them (so the
    workflow's install step can take them from PyTorch's CPU index first), then folderfit."""
    try:
        needs = importlib.metadata.requires("folderfit") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        needs = []
    torch = [r for r in needs if re.match(r"(torch|torchvision)\b(?![-\w])", r) and ";" not in r]
    return ("# written by `folderfit init`: the folderfit release this project runs (CI installs it)\n"
            + "".join(f"{r}\n" for r in torch) + f"folderfit[pipeline]=={folderfit.__version__}\n")


def dvc_init(dest: Path, toplevel: Path) -> None:
    if importlib.util.find_spec("dvc") is None:
        raise PipelineError(f"{dest}: no .dvc/ and DVC is not installed: pip install "
                            f"'folderfit[pipeline]' (or run `dvc init` there yourself), then rerun")
    cmd = [sys.executable, "-m", "dvc", "init", "-q"]
    if dest != toplevel:  # a folder inside a larger git repository
        cmd.append("--subdir")
    done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise PipelineError(f"{dest}: `dvc init` failed ({last[0]}); run it there yourself, then "
                            f"rerun folderfit init")


def merged_gitignore(path: Path) -> str | None:
    """The root .gitignore with the pipeline's lines appended; None when nothing is missing."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    have = {line.strip() for line in text.splitlines()}
    missing = [line for line in GITIGNORE if line not in have]
    if not missing:
        return None
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "# folderfit pipeline\n" + "".join(f"{line}\n" for line in missing)


def init(dest: Path, *, force: bool = False) -> list[str]:
    """Write the project into `dest` (a git work tree folder); returns the paths written."""
    dest = Path(dest)
    if not dest.is_dir():
        raise PipelineError(f"{dest}: no such folder; create it as a git repository first "
                            f"(git init {dest})")
    dest = dest.resolve()
    toplevel = git_toplevel(dest)
    if toplevel is None:
        raise PipelineError(f"{dest}: not inside a git repository (DVC versions data next to "
                            f"git): run `git init` there first")
    files = project.templates()
    if "dvc.yaml" not in files or "params.yaml" not in files:
        raise PipelineError(f"this folderfit installation ships no project templates "
                            f"({project.TEMPLATES}); reinstall folderfit (in its source "
                            f"repository: python -m folderfit.project --sync)")
    files[REQUIREMENTS] = requirements_text().encode()
    exists = [rel for rel in files if (dest / rel).exists()]
    if exists and not force:
        raise PipelineError(f"{dest}: already has {', '.join(exists)}; move them away, or pass "
                            f"--force to replace them")
    if not (dest / ".dvc").is_dir():
        dvc_init(dest, toplevel)  # first: dvc init refuses a .dvc/ folder (we add .dvc/plots)
    written = []
    for rel, content in files.items():
        write_bytes(dest / rel, content)
        if rel.endswith(".sh"):
            (dest / rel).chmod(0o755)
        written.append(rel)
    if not (dest / CORRECTIONS).exists():  # the user's label fixes: never replaced
        from folderfit.artifacts.corrections import HEADER

        write_text(dest / CORRECTIONS, ",".join(HEADER) + "\n")
        written.append(CORRECTIONS)
    gitignore = merged_gitignore(dest / ".gitignore")
    if gitignore is not None:
        write_text(dest / ".gitignore", gitignore)
        written.append(".gitignore")
    return written


def command(args) -> None:
    """`folderfit init` (arguments: folderfit.cli)."""
    dest = Path(args.dir)
    written = init(dest, force=args.force)
    print(f"folderfit {folderfit.__version__}: wrote {len(written)} files into {dest}:")
    for rel in written:
        print(f"  {rel}")
    print("next: git add -A && git commit -m 'folderfit pipeline'; then `dvc repro` trains on "
          "the demo digits; set data.source in params.yaml to your image folder (one sub-folder "
          "per class) and run `dvc repro` again")
