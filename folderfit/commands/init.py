"""`folderfit init DIR`: write a working pipeline project into the user's own git repository.

What it writes is folderfit.project's templates (this repository's own dvc.yaml, params.yaml,
stages/, .dvcignore, ignore files, the CI workflow and its step scripts), plus what is the
user's rather than folderfit's: an empty data/corrections.csv (kept if present, even with
--force), the ignore rules the pipeline needs appended to the root .gitignore, and
.ci/requirements.txt, the folderfit version the workflow installs. The project's stages
import the installed folderfit; its preflight stage records the library's version and
digest, so `dvc repro` reruns them when folderfit is upgraded.

It works in a repository that has files already (init's docstring): DVC's own are kept (an
existing .dvcignore gets folderfit's patterns appended), a user's file is replaced only with
--force (named in the output, the old copy kept in .folderfit-backup/), and all is checked
before anything is written. In a subfolder of a git repository the CI workflow goes to the
root's .github/workflows/pipeline-SUBFOLDER.yml, the only place GitHub runs it, with its
steps run in the subfolder.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import folderfit
from folderfit import project
from folderfit.errors import PipelineError
from folderfit.support.fileio import existing_ancestor, write_bytes

CORRECTIONS = "data/corrections.csv"
REQUIREMENTS = ".ci/requirements.txt"
# root .gitignore lines a project needs: compiled stage scripts, train's crash checkpoints
GITIGNORE = ("__pycache__/", "/checkpoints/")
BACKUP = ".folderfit-backup"  # where --force keeps the files it replaces


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


def merged_lines(path: Path, lines, header: str = "# folderfit pipeline") -> str | None:
    """`path`'s text with the `lines` it lacks appended; None when nothing is missing."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    have = {line.strip() for line in text.splitlines()}
    missing = [line for line in lines if line not in have]
    if not missing:
        return None
    if text and not text.endswith("\n"):
        text += "\n"
    return text + f"{header}\n" + "".join(f"{line}\n" for line in missing)


def merged_gitignore(path: Path) -> str | None:
    """The root .gitignore with the pipeline's lines appended; None when nothing is missing."""
    return merged_lines(path, GITIGNORE)


def merged_dvcignore(path: Path, template: bytes) -> bytes | None:
    """The project's .dvcignore: ours where there is none or it is DVC's own default (which
    ours begins with), else the user's with our patterns appended; None when complete."""
    if not path.is_file() or template.startswith(path.read_bytes()):
        return None if path.is_file() and path.read_bytes() == template else template
    patterns = [line.strip() for line in template.decode().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    merged = merged_lines(path, patterns)
    return None if merged is None else merged.encode()


def subfolder_workflow(text: str, sub: str) -> str:
    """The CI workflow for a project in folder `sub` of a larger git repository. GitHub runs
    only the workflows in .github/workflows at the repository root, so it is written there:
    its steps run in `sub` (defaults.run.working-directory; the step scripts and the pins are
    in `sub`), its name, concurrency group and pip cache key are the project's own."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", sub).strip("-")
    edits = [
        (r"(?m)^name: pipeline$", f"name: pipeline ({sub})"),
        (r"group: pipeline-\$", f"group: pipeline-{slug}-$"),
        (r"(?m)^(    runs-on: .*\n)",
         "\\1    defaults:\n      run:\n        working-directory: " + json.dumps(sub) + "\n"),
        (r"(?m)^(\s+)(pyproject\.toml|\.ci/requirements\.txt)$", f"\\1{sub}/\\2"),
    ]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, lambda m, r=replacement: m.expand(r), text)
        if not count:  # the shipped template changed: this function must follow it
            raise PipelineError(f"{project.WORKFLOW}: this folderfit's workflow template has no "
                                f"'{pattern}'; report it, or run folderfit init at the repository root")
    return (f"# Written by `folderfit init` for the project in {sub}/: GitHub runs only workflows "
            f"at the repository root,\n# so it is here, and its steps run in {sub}/.\n" + text)


def workflow_target(dest: Path, toplevel: Path) -> tuple[Path, str | None]:
    """Where the CI workflow goes, and the project's folder relative to the git root (None at
    the root)."""
    if dest == toplevel:
        return dest / project.WORKFLOW, None
    sub = dest.relative_to(toplevel).as_posix()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", sub).strip("-")
    return toplevel / ".github" / "workflows" / f"pipeline-{slug}.yml", sub


def shown(path: Path, dest: Path) -> str:
    return os.path.relpath(path, dest).replace(os.sep, "/")


def blocked(path: Path, dest: Path) -> str | None:
    """Why `path` can never be written (even with --force), or None."""
    if path.is_dir():
        return f"{shown(path, dest)} is a folder"
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return f"{shown(parent, dest)} is a file, not a folder"
    return None


def check_writable(folders) -> None:
    """Create and delete a file in each folder: os.access says yes to root on a read-only
    file system, and `dvc init` would fail there with a traceback hint of its own."""
    for folder in sorted(set(folders)):
        try:
            fd, probe = tempfile.mkstemp(prefix=".folderfit-init-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise PipelineError(f"{folder}: cannot write there ({exc.strerror or exc}); folderfit "
                                f"init needs a writable folder: fix its permissions or choose "
                                f"another one") from None


def backup_folder(dest: Path) -> Path:
    for n in range(1, 1000):
        folder = dest / (BACKUP if n == 1 else f"{BACKUP}-{n}")
        if not folder.exists():
            return folder
    raise PipelineError(f"{dest}: too many {BACKUP}* folders; delete the old ones")


def init(dest: Path, *, force: bool = False) -> list[str]:
    """Write the project into `dest` (a git work tree folder); returns what it did, one line
    each (a path written, with a note where it appended to or replaced a file).

    Everything is checked before anything is written: a file or folder in a path it needs,
    a file of the user's that differs from folderfit's (replaced only with --force, the old
    copy kept in .folderfit-backup/), a folder it cannot write. A failure while writing
    removes what it wrote. DVC's own files are kept: .dvc/config is never touched, and an
    existing .dvcignore gets folderfit's patterns appended. In a folder inside a larger git
    repository the CI workflow goes to the root's .github/workflows (subfolder_workflow)."""
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
    dvcignore = files.pop(".dvcignore", None)
    targets = {dest / rel: content for rel, content in files.items()}
    workflow, sub = workflow_target(dest, toplevel)
    if project.WORKFLOW in files and sub is not None:
        del targets[dest / project.WORKFLOW]
        targets[workflow] = subfolder_workflow(files[project.WORKFLOW].decode(), sub).encode()
    corrections = dest / CORRECTIONS
    needed = [*targets, dest / ".dvcignore", dest / ".gitignore", corrections, dest / ".dvc/config"]
    stuck = [why for why in (blocked(path, dest) for path in needed) if why]
    if stuck:
        raise PipelineError(f"{dest}: {'; '.join(dict.fromkeys(stuck))}, where folderfit init "
                            f"writes; move it away, then rerun (nothing was written)")
    if corrections.exists():  # the user's label fixes: never replaced
        needed.remove(corrections)
    # the user's files that differ from folderfit's; an identical one is left as it is
    theirs = [path for path, content in targets.items()
              if path.is_file() and path.read_bytes() != content]
    targets = {path: content for path, content in targets.items() if path not in theirs or force}
    targets = {path: content for path, content in targets.items()
               if not (path.is_file() and path.read_bytes() == content)}
    if theirs and not force:
        raise PipelineError(f"{dest}: already has {', '.join(shown(p, dest) for p in theirs)}, "
                            f"different from folderfit's; move them away, or pass --force to "
                            f"replace them (old copies go to {BACKUP}/); nothing was written")
    check_writable(existing_ancestor(path.parent) for path in needed)
    notes = {workflow: f" (at the git root, where GitHub runs workflows; its steps run in {sub}/)"
             } if sub is not None else {}
    return write_all(dest, toplevel, targets, theirs if force else [], dvcignore, notes)


def write_all(dest, toplevel, targets, replaced, dvcignore, notes) -> list[str]:
    """Run `dvc init` where needed, then write; on any failure undo every step, then raise."""
    undo = []  # (path, its old bytes or None), in the order written
    made = []  # folders created, parents first
    ran_dvc_init = False
    done = []
    backups = backup_folder(dest) if replaced else None

    def put(path: Path, content: bytes, note: str = "") -> None:
        for folder in reversed([path.parent, *path.parent.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        undo.append((path, path.read_bytes() if path.is_file() else None))
        write_bytes(path, content)
        if path.suffix == ".sh":
            path.chmod(0o755)
        done.append(shown(path, dest) + note)

    try:
        if not (dest / ".dvc").is_dir():
            had_dvcignore = (dest / ".dvcignore").exists()
            dvc_init(dest, toplevel)  # first: dvc init refuses a .dvc/ folder (we add .dvc/plots)
            ran_dvc_init = True
            if not had_dvcignore:
                undo.append((dest / ".dvcignore", None))
        for path in replaced:  # a workflow at the git root: under git-root/ there
            inside = path.is_relative_to(dest)
            put(backups / (path.relative_to(dest) if inside
                           else Path("git-root") / path.relative_to(toplevel)), path.read_bytes(),
                f" (your old {shown(path, dest)}, kept)")
        for path, content in targets.items():
            put(path, content, notes.get(path, "") + (f" (replaced; old copy in "
                f"{shown(backups, dest)}/)" if path in replaced else ""))
        if dvcignore is not None:
            merged = merged_dvcignore(dest / ".dvcignore", dvcignore)
            if merged is not None:
                appended = (dest / ".dvcignore").is_file() and not dvcignore.startswith(
                    (dest / ".dvcignore").read_bytes())
                put(dest / ".dvcignore", merged, " (folderfit's patterns appended)" if appended else "")
        if not (dest / CORRECTIONS).exists():  # the user's label fixes: never replaced
            from folderfit.artifacts.corrections import HEADER

            put(dest / CORRECTIONS, (",".join(HEADER) + "\n").encode())
        gitignore = merged_gitignore(dest / ".gitignore")
        if gitignore is not None:
            put(dest / ".gitignore", gitignore.encode(),
                " (lines appended)" if (dest / ".gitignore").exists() else "")
    except BaseException as exc:
        for path, old in reversed(undo):
            with contextlib.suppress(OSError):
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(old)
        if ran_dvc_init:
            shutil.rmtree(dest / ".dvc", ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError) and not isinstance(exc, PipelineError):
            raise PipelineError(f"{getattr(exc, 'filename', None) or dest}: cannot write "
                                f"({exc.strerror or exc}); folderfit init undid what it had "
                                f"written") from None
        if isinstance(exc, PipelineError) and (undo or made or ran_dvc_init):
            raise PipelineError(f"{exc}; folderfit init undid what it had written") from None
        raise
    return done


def command(args) -> None:
    """`folderfit init` (arguments: folderfit.cli)."""
    dest = Path(args.dir)
    written = init(dest, force=args.force)
    if not written:
        print(f"folderfit {folderfit.__version__}: {dest} has the project files already; "
              f"nothing to write")
    else:
        print(f"folderfit {folderfit.__version__}: wrote {len(written)} files into {dest}:")
    for rel in written:
        print(f"  {rel}")
    print("next: git add -A && git commit -m 'folderfit pipeline'; then `dvc repro` trains on "
          "the demo digits; set data.source in params.yaml to your image folder (one sub-folder "
          "per class) and run `dvc repro` again")
