"""data/prepared/manifest.csv: one row per prepared image (file, source, class, split, sha256,
width, height), written by the prepare stage and read by every later stage through this module.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from folderfit.errors import PipelineError
from folderfit.images.image_folder import SPLITS
from folderfit.paths import MANIFEST_NAME


def manifest_path(prepared: str | Path) -> Path:
    """Where the manifest of the prepared folder `prepared` lives."""
    return Path(prepared) / MANIFEST_NAME


def write_manifest(prepared: str | Path, rows: list[dict]) -> None:
    """Write the manifest rows (one dict per image, the same keys in every row) into the
    prepared folder being built (prepare writes the folder aside and swaps it in whole)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest_path(prepared).write_text(buf.getvalue(), encoding="utf-8")


def read_manifest_rows(prepared: str | Path) -> list[dict]:
    """prepare's manifest rows (file, source, class, split, sha256, ...), in manifest order:
    the one reader of the file prepare writes."""
    path = manifest_path(prepared)
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


def content_hashes(prepared: str | Path) -> dict[str, str]:
    """Prepared file ('/'-separated, as read_manifest names it) -> its content hash (sha256 of
    the decoded pixels): a byte copy, or the same picture in another lossless format, has the
    same hash whatever its path or split."""
    prepared = Path(prepared)
    return {(prepared / r["file"]).as_posix(): r["sha256"] for r in read_manifest_rows(prepared)}
