"""Label fixes as a reviewed text file: data/corrections.csv, applied by `prepare`.

    path,action
    glass/glass176.jpg,drop
    train/cats/img031.jpg,relabel:dogs

* `path` is relative to data.source exactly as the file sits there (the `path` column of
  metrics/review/label_issues.csv), so a row can be copied from the review lists.
* `action` is `drop` (leave the image out) or `relabel:<class>` (use it as that class, which
  must be one of the source's class folders). With a given train/ val/ [test/] split a
  relabelled image stays in its split; otherwise the seeded split is made after relabelling.
* Blank lines and lines starting with `#` are ignored (notes, rows not yet decided).

The raw images are never edited: each fix is a one-line diff in git, and `dvc metrics diff`
shows what it changed. Every row is checked before any image is decoded; a malformed row, a
path that is not an image file under data.source, an unknown class or an unknown action is a
one-line error naming the row.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from folderfit import data as D
from folderfit.errors import PipelineError

CORRECTIONS = Path("data/corrections.csv")
HEADER = ["path", "action"]


@dataclass(frozen=True)
class Correction:
    line: int  # in the file, for messages
    path: str  # relative to data.source, posix
    action: str  # "drop" | "relabel"
    new_class: str | None = None

    def describe(self) -> str:
        return "drop" if self.action == "drop" else f"relabel:{self.new_class}"


def _rows(text: str, path: Path):
    """(line number, fields) of the non-blank, non-comment lines after the header."""
    lines = text.splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        return
    n, header = numbered[0]
    if [h.strip() for h in next(csv.reader([header]))] != HEADER:
        raise PipelineError(f"{path}:{n}: the first row must be the header "
                            f"'path,action', got '{header}'")
    for n, line in numbered[1:]:
        yield n, [field.strip() for field in next(csv.reader(io.StringIO(line)))]


def _class_folders(source: Path) -> list[str]:
    """The class names prepare will see: the class folders of train/ with a given split (any
    split-folder spelling prepare accepts), else of data.source."""
    splits = D.detect_layout(source).splits
    root = splits["train"] if splits else source
    return sorted(D.printable(p.name) for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith("."))


def read(source: Path, path: Path = CORRECTIONS) -> dict[str, Correction]:
    """{source-relative path: Correction}, every row checked against data.source; {} when
    the file does not exist."""
    if not path.is_file():
        return {}
    classes = _class_folders(source)
    fixes: dict[str, Correction] = {}
    for n, fields in _rows(path.read_text(encoding="utf-8-sig"), path):
        where = f"{path}:{n}"
        if len(fields) != 2 or not fields[0]:
            raise PipelineError(f"{where}: expected 'path,action', got {','.join(fields)!r}")
        rel, action = fields
        posix = PurePosixPath(rel.replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts:
            raise PipelineError(f"{where}: path '{rel}' must be relative to data.source "
                                f"({source}), as in metrics/review/*.csv")
        file = source / posix
        if not file.is_file():
            raise PipelineError(f"{where}: '{rel}' is not a file under data.source ({source}); "
                                f"copy the path from metrics/review/*.csv or delete the row")
        if file.suffix.lower() not in D.IMAGE_EXTENSIONS:
            raise PipelineError(f"{where}: '{rel}' is not an image file ({file.suffix or 'no extension'})")
        if action == "drop":
            fix = Correction(n, posix.as_posix(), "drop")
        elif action.startswith("relabel:"):
            new_class = action.removeprefix("relabel:").strip()
            if new_class not in classes:
                raise PipelineError(f"{where}: unknown class '{new_class}' in '{action}'; the "
                                    f"classes of data.source are: {', '.join(classes)}")
            fix = Correction(n, posix.as_posix(), "relabel", new_class)
        else:
            raise PipelineError(f"{where}: unknown action '{action}'; use drop or "
                                f"relabel:<class> (one of: {', '.join(classes)})")
        if fix.path in fixes:
            raise PipelineError(f"{where}: '{rel}' already has a row (line "
                                f"{fixes[fix.path].line}); keep one action per image")
        fixes[fix.path] = fix
    return fixes


def apply(records: dict, fixes: dict[str, Correction], applied: set) -> dict:
    """{class: [record]} (records as prepare loads them, keyed "rel" and "label") with the
    fixes applied; the paths of the fixes used are added to `applied`."""
    out = defaultdict(list)
    for label in records:
        for record in records[label]:
            fix = fixes.get(record["rel"])
            if fix is None:
                out[label].append(record)
                continue
            applied.add(fix.path)
            if fix.action == "relabel":
                if fix.new_class == label:
                    print(f"note: {CORRECTIONS}:{fix.line}: '{fix.path}' is already in "
                          f"class '{label}'; the row changes nothing", file=sys.stderr)
                out[fix.new_class].append({**record, "label": fix.new_class})
    return out


def report(fixes: dict[str, Correction], applied: set) -> dict:
    """The data report's part: counts (headline scalars) and every row used."""
    used = [fixes[p] for p in sorted(applied)]
    unused = sorted(set(fixes) - applied)
    for p in unused:  # a hidden or unreadable file: prepare skips it anyway
        print(f"note: {CORRECTIONS}:{fixes[p].line}: '{p}' is not used by prepare "
              f"(see `skipped` in metrics/data.json); the row changes nothing", file=sys.stderr)
    return {"n_relabelled": sum(f.action == "relabel" for f in used),
            "n_dropped": sum(f.action == "drop" for f in used),
            "corrections": [{"path": f.path, "action": f.describe()} for f in used]}
