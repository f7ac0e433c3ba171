"""TODO docstring"""

from __future__ import annotations

import csv
from pathlib import Path

from folderfit.errors import PipelineError
from folderfit.images.image_folder import SPLITS
from folderfit.paths import MANIFEST_NAME as MANIFEST  # noqa: E402  (inside data/prepared)


# ------------------------------------------------------------------ manifest
def read_manifest_rows(prepared: str | Path) -> list[dict]:
    """prepare's manifest rows (file, source, class, split, sha256, ...), in manifest order:
    the one reader of the file prepare writes."""
    path = Path(prepared) / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run `dvc repro prepare` first")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_manifest(prepared: str | Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, {split: [(file, class index)]}) from prepare's manifest."""
    prepared = Path(prepared)
    rows = read_manifest_rows(prepared)
    classes = sorted({r["class"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list] = {s: [] for s in SPLITS}
    for r in rows:
        splits[r["split"]].append((prepared / r["file"], index[r["class"]]))
    return classes, {s: v for s, v in splits.items() if v}
