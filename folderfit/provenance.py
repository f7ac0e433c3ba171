"""What counts as "the code" of a stage: its entry script in stages/ plus every file of this
library package. dvc.yaml declares exactly these as each stage's code deps (a test checks
it), and the train checkpoint's fingerprint hashes the same files, so a code change can never
leave a result that `dvc repro` or a resumed run calls up to date.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent
IGNORED = ("__pycache__",)  # also in .dvcignore: compiled files must not count as changes


def library_files() -> list[Path]:
    return sorted(p for p in LIBRARY.rglob("*")
                  if p.is_file() and not any(part in IGNORED for part in p.relative_to(LIBRARY).parts))


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
