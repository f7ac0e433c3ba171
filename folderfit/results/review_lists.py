"""The label review's lists (metrics/review/*.csv) as plain-text tables, printed by the review
stage and by `folderfit review`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from folderfit.errors import PipelineError


# ------------------------------------------------------------------ `folderfit review`
def read_list(path: Path) -> list[dict]:
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run `dvc repro review` first")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _table(rows: list[list[str]], out) -> None:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip(), file=out)


def print_lists(folder: Path, top: int, out) -> None:
    """The three lists, `top` rows each, as aligned text."""
    issues = read_list(folder / "label_issues.csv")
    pairs = read_list(folder / "near_duplicates.csv")
    outliers = read_list(folder / "outliers.csv")
    print(f"label issues: {len(issues)} (most suspect first; score = probability of the given "
          f"label, out of sample)", file=out)
    if issues:
        _table([["#", "score", "given -> suggested", "path"]] +
               [[str(n), f"{float(r['score']):.3f}", f"{r['given']} -> {r['suggested']}", r["path"]]
                for n, r in enumerate(issues[:top], start=1)], out)
    flagged = [p for p in pairs if p["issue"]]
    print(f"near-duplicates: {len(pairs)} pairs, {len(flagged)} across classes or splits", file=out)
    if pairs:
        _table([["similarity", "issue", "path", "other"]] +
               [[f"{float(p['similarity']):.3f}", p["issue"] or "-", p["path"], p["other"]]
                for p in pairs[:top]], out)
    print(f"outliers: {len(outliers)} (score = mean cosine distance to the nearest images)", file=out)
    if outliers:
        _table([["score", "class", "path"]] +
               [[f"{float(o['score']):.3f}", o["class"], o["path"]] for o in outliers[:top]], out)
