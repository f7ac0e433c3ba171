"""data/prepared/manifest.csv: one row per prepared image (file, source, class, split, sha256,
width, height, root, image_size), written by the prepare stage and read by every later stage
through this module.

prepare keeps no copy of the pixels: a row names the ORIGINAL file, `file` below `root`
(data.source as prepare read it: relative to the project when data.source is relative, so it
holds in the copies of the project `dvc exp run` works in; absolute when absolute). `file` is
the real path, '/'-separated, percent-encoded only when the name is not plain printable text
(or holds a '%'); `source` is its printable form, what reports and data/corrections.csv use.
image_path is the one place a row becomes a file: readers decode it with
folderfit.images.decode.read_prepared, which checks its pixels against `sha256`.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

from folderfit.errors import PipelineError
from folderfit.images import decode
from folderfit.images.image_folder import SPLITS, printable
from folderfit.paths import MANIFEST_NAME


def manifest_path(prepared: str | Path) -> Path:
    """Where the manifest of the prepared folder `prepared` lives."""
    return Path(prepared) / MANIFEST_NAME


def file_entry(rel: str) -> str:
    """A path below the source root as the manifest's `file` column (see the docstring)."""
    if printable(rel) == rel and "%" not in rel:
        return rel
    return quote(os.fsencode(rel), safe="/ ")


def source_root(source: str | Path) -> str:
    """data.source as the manifest's `root` column ('/'-separated; relative stays relative)."""
    return Path(os.path.normpath(source)).as_posix()


def image_path(prepared: str | Path, row: dict) -> decode.SourceImage:
    """The original image file of a manifest row, carrying its pixel hash and image_size for
    decode.read_prepared. A relative root is relative to the project, the folder that holds
    data/prepared (paths.PREPARED)."""
    if not row.get("root"):
        raise PipelineError(f"{manifest_path(prepared)}: written by an older prepare (no `root` "
                            f"column); run `dvc repro prepare`")
    name = row["file"]
    rel = os.fsdecode(unquote_to_bytes(name)) if "%" in name else name
    project = Path(prepared).parent.parent
    return decode.source_image(project / row["root"] / rel, row["sha256"], int(row["image_size"]))


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
        splits[r["split"]].append((image_path(prepared, r), index[r["class"]]))
    return classes, {s: v for s, v in splits.items() if v}


def content_hashes(prepared: str | Path) -> dict[str, str]:
    """Image file ('/'-separated, as read_manifest names it) -> its content hash (sha256 of
    the decoded pixels): a byte copy, or the same picture in another lossless format, has the
    same hash whatever its path or split."""
    prepared = Path(prepared)
    return {image_path(prepared, r).as_posix(): r["sha256"] for r in read_manifest_rows(prepared)}
