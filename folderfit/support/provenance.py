"""What counts as "the code" of a stage: its entry script in stages/ plus the library's .py
files. dvc.yaml declares the entry script as a dep and the library through data/preflight.ok
(preflight records a digest of library_files there, folderfit.pipeline.preflight), and the train
checkpoint's fingerprint hashes the same files, so a code change can never leave a result
that `dvc repro` or a resumed run calls up to date.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1]  # the folderfit package
NOT_CODE = ("project/files/",)  # templates `folderfit init` copies: no stage runs them


def library_files(library: Path = LIBRARY) -> list[Path]:
    """The library's .py files: the code the stages import (compiled files and the project
    templates excluded), sorted."""
    return sorted(p for p in library.rglob("*.py")
                  if "__pycache__" not in p.relative_to(library).parts
                  and not p.relative_to(library).as_posix().startswith(NOT_CODE))


def stage_code_files(stage: str, repo: Path | None = None) -> list[Path]:
    """The entry script of `stage` (stages/<stage>.py below `repo`, default: the library's
    parent folder) and every library file."""
    repo = repo or LIBRARY.parent
    return [repo / "stages" / f"{stage}.py", *library_files()]


def code_digest(stage: str, repo: Path | None = None) -> str:
    digest = hashlib.sha256()
    base = (repo or LIBRARY.parent)
    for path in stage_code_files(stage, repo):
        name = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()
