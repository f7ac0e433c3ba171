"""Label fixes as a reviewed text file: data/corrections.csv, applied by `prepare`.

    path,action
    glass/glass176.jpg,drop
    train/cats/img031.jpg,relabel:dogs
    "pets/img 7.jpg","relabel:cats, dogs"

* `path` is relative to data.source exactly as the file sits there (the `path` column of
  metrics/review/label_issues.csv), so a row can be copied from the review lists.
* `action` is `drop` (leave the image out) or `relabel:<class>` (use it as that class, which
  must be one of the source's class folders). Standard CSV quoting: a cell holding a comma or
  a quote is written in double quotes (the review's template does this).
* Splits never move: every image's split is decided from the ORIGINAL labels and paths (the
  user's train/ val/ test/ folders, or the seeded split of the uncorrected folder), and the
  fixes are applied afterwards (`apply_to_splits`). A relabel or a drop therefore changes
  only its own image, and before/after metrics score the same test photos (a dropped test
  image is the only change).
* A fix to a TEST image is a human decision about the yardstick itself: it is applied, but
  counted apart (`test_corrections` in metrics/data.json), never in n_relabelled/n_dropped.
* A relabel to the image's own class changes nothing: reported as `n_unchanged`.
* Blank lines are ignored. A line whose first character (after spaces) is `#` is a comment,
  unless it is itself a valid row (a class folder may start with `#`): comment out a row
  with `# ` in front of it (a path starting with '# ' is not taken as a row). A quoted cell
  is taken exactly as written (leading '#', outer spaces, commas, quotes, line ends); an
  unquoted one is stripped of spaces. format_row quotes every cell that needs it, so what
  the review server writes reads back as written, never as a comment.
* The file must be UTF-8 (a UTF-8 or UTF-16 byte-order mark is understood); any other
  encoding is a one-line error saying to save it as UTF-8.

The raw images are never edited: each fix is a one-line diff in git, and `dvc metrics diff`
shows what it changed. Every row is checked before any image is decoded; a malformed row, a
path that is not an image file under data.source, an unknown class or an unknown action is a
one-line error naming the row.
"""

from __future__ import annotations

import codecs
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from folderfit.errors import PipelineError
from folderfit.images import image_folder
from folderfit.paths import CORRECTIONS, TEST_CORRECTIONS_NAME

HEADER = ["path", "action"]
TEST = "test"
# the keys of metrics/data.json that report() fills (prepare copies exactly these)
REPORT_KEYS = ("n_relabelled", "n_dropped", "n_unchanged", "corrections",
               "n_test_corrections", "test_corrections")


@dataclass(frozen=True)
class Correction:
    line: int  # in the file, for messages
    path: str  # relative to data.source, posix
    action: str  # "drop" | "relabel"
    new_class: str | None = None

    def describe(self) -> str:
        return "drop" if self.action == "drop" else f"relabel:{self.new_class}"


class Applied(set):
    """The paths of the fixes prepare used (a set, as before), plus what kind of use:
    `test` (the image is in the test split) and `unchanged` (relabel to its own class)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.test: set[str] = set()
        self.unchanged: set[str] = set()


# ------------------------------------------------------------------ reading
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def decode(raw: bytes, path: Path) -> str:
    """The file's text: UTF-8, or any UTF with its byte-order mark (Notepad's "Unicode" is
    UTF-16 with one), or BOM-less UTF-16 (recognised by its zero bytes). Anything else (Latin-1,
    Windows-1252) would be guessed, and a wrong guess renames files silently: an error instead."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            break
    else:
        encoding = "utf-8"
        if len(raw) >= 2 and raw.count(0) * 3 >= len(raw):  # ASCII-range text in UTF-16
            encoding = "utf-16-le" if raw[1::2].count(0) > raw[0::2].count(0) else "utf-16-be"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PipelineError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                            f"save the file as UTF-8 (in most editors: Save as / Encoding: "
                            f"UTF-8)") from None


_CELL_END = re.compile(r"[,\r\n]|$")
_LINE_END = re.compile(r"[\r\n]|$")


class _Unclosed(Exception):
    """A quoted cell runs to the end of the text."""


def _parse(text: str, pos: int) -> tuple[list[str], int]:
    """(cells, end) of the CSV record starting at `pos`; `end` is where its line ends. A cell
    that starts with '"' (after spaces) is quoted: taken exactly as written ('""' is a quote),
    across line ends too; an unquoted cell is stripped of spaces, as always."""
    cells, n = [], len(text)
    while True:
        i = pos
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            parts, i = [], i + 1
            while True:
                j = text.find('"', i)
                if j < 0:
                    raise _Unclosed
                parts.append(text[i:j])
                if text.startswith('"', j + 1):
                    parts.append('"')
                    i = j + 2
                else:
                    i = j + 1
                    break
            k = _CELL_END.search(text, i).start()
            cell = "".join(parts) + text[i:k].strip()  # text after the quote: kept, as csv does
        else:
            k = _CELL_END.search(text, i).start()
            cell = text[pos:k].strip()
        cells.append(cell)
        if k < n and text[k] == ",":
            pos = k + 1
            continue
        return cells, k


def records(text: str, path: Path, is_row=lambda fields: False) -> list[tuple[int, str, list | None]]:
    """Every record of the file as (first line number, its text, its cells or None for a blank
    line or a comment), in order; a quoted cell may hold line ends. A line whose first
    character (after spaces) is '#' is a comment unless `is_row` accepts its cells (a real
    correction of an image whose class folder starts with '#'); format_row quotes such cells,
    so what the server writes is never read back as a comment."""
    out, pos, line, n = [], 0, 1, len(text)
    while pos < n:
        end = _LINE_END.search(text, pos).start()
        physical, cells = text[pos:end], None
        if physical.lstrip().startswith("#"):
            try:
                candidate = _parse(physical, 0)[0]
            except _Unclosed:
                candidate = None
            cells = candidate if candidate is not None and is_row(candidate) else None
        elif physical.strip():
            try:
                cells, end = _parse(text, pos)
            except _Unclosed:
                raise PipelineError(f"{path}:{line}: a quoted cell starts here and is never "
                                    f"closed; end it with '\"' (write a quote inside a cell "
                                    f"as '\"\"')") from None
        raw = text[pos:end]
        out.append((line, raw, cells))
        line += raw.count("\n") + raw.count("\r") - raw.count("\r\n") + 1
        pos = end + (2 if text.startswith("\r\n", end) else 1)
    return out


def _rows(text: str, path: Path, is_row=lambda fields: False):
    """(line number, fields) of the non-blank, non-comment records after the header."""
    numbered = [r for r in records(text, path, is_row) if r[2] is not None]
    if not numbered:
        return
    n, header, fields = numbered[0]
    if fields != HEADER:
        raise PipelineError(f"{path}:{n}: the first row must be the header "
                            f"'path,action', got '{header}'")
    for n, _, fields in numbered[1:]:
        yield n, fields


def _class_folders(source: Path) -> list[str]:
    """The class names prepare will see: the class folders of train/ with a given split (any
    split-folder spelling prepare accepts), else of data.source."""
    splits = image_folder.detect_layout(source).splits
    root = splits["train"] if splits else source
    return sorted(image_folder.printable(p.name) for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith("."))


def _valid_row(source: Path):
    """Does a '#' line hold a usable row: a relative path of an existing image, an action?"""
    def check(fields: list[str]) -> bool:
        if len(fields) != 2 or not fields[0] or fields[0].startswith("# "):
            return False
        posix = PurePosixPath(fields[0].replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts:
            return False
        file = source / posix
        return (file.is_file() and file.suffix.lower() in image_folder.IMAGE_EXTENSIONS
                and (fields[1] == "drop" or fields[1].startswith("relabel:")))
    return check


def read(source: Path, path: Path = CORRECTIONS) -> dict[str, Correction]:
    """{source-relative path: Correction}, every row checked against data.source; {} when
    the file does not exist."""
    if not path.is_file():
        return {}
    classes = _class_folders(source)
    fixes: dict[str, Correction] = {}
    for n, fields in _rows(decode(path.read_bytes(), path), path, _valid_row(source)):
        where = f"{path}:{n}"
        if len(fields) != 2 or not fields[0]:
            raise PipelineError(f"{where}: expected 'path,action', got {','.join(fields)!r}"
                                f" (quote a cell holding a comma: \"a, b\")")
        rel, action = fields
        posix = PurePosixPath(rel.replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts:
            raise PipelineError(f"{where}: path '{rel}' must be relative to data.source "
                                f"({source}), as in metrics/review/*.csv")
        file = source / posix
        if not file.is_file():
            raise PipelineError(f"{where}: '{rel}' is not a file under data.source ({source}); "
                                f"copy the path from metrics/review/*.csv or delete the row")
        if file.suffix.lower() not in image_folder.IMAGE_EXTENSIONS:
            raise PipelineError(f"{where}: '{rel}' is not an image file ({file.suffix or 'no extension'})")
        if action == "drop":
            fix = Correction(n, posix.as_posix(), "drop")
        elif action.startswith("relabel:"):
            new_class = action.removeprefix("relabel:")
            if new_class not in classes:  # 'relabel: cats' as written by hand
                new_class = new_class.strip()
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


def _cell(value: str) -> str:
    """A CSV cell that `records` reads back as exactly `value`: quoted when it holds a comma,
    a quote or a line end, starts with '#' (else the line is a comment), or has spaces at
    either end (unquoted cells are stripped)."""
    if value and (value[0] == "#" or value != value.strip() or any(c in value for c in ',"\r\n')):
        return '"' + value.replace('"', '""') + '"'
    return value


def format_row(path: str, action: str) -> str:
    """One CSV line (no newline), quoted where needed: a class 'cats, dogs', a folder '# a'
    or ' a' survives the round trip."""
    return f"{_cell(path)},{_cell(action)}"


def original_class(rel: str, given_splits: bool) -> str:
    """The class an image has without any fix: its class folder, the first folder of its
    path (the second when data.source holds train/ val/ test/: `given_splits`)."""
    parts = rel.split("/")
    return parts[1 if given_splits and len(parts) > 2 else 0]


# ------------------------------------------------------------------ applying
def _fixed(record: dict, fix: Correction | None, applied: set, in_test: bool) -> dict | None:
    """The record after its fix (None: dropped); notes what kind of use it was."""
    if fix is None:
        return record
    applied.add(fix.path)
    if in_test and isinstance(applied, Applied):
        applied.test.add(fix.path)
    if fix.action == "drop":
        return None
    if fix.new_class == record["label"]:
        if isinstance(applied, Applied):
            applied.unchanged.add(fix.path)
        print(f"note: {CORRECTIONS}:{fix.line}: '{fix.path}' is already in class "
              f"'{record['label']}'; the row changes nothing", file=sys.stderr)
        return record
    return {**record, "label": fix.new_class}


def apply_to_splits(per_split: dict, fixes: dict[str, Correction], applied: set) -> dict:
    """{split: [record]} -> the same with the fixes applied, AFTER the split was made from the
    uncorrected records: no record changes split, a dropped one is removed, a relabelled one
    keeps its place. `applied` (use an `Applied`) collects the paths of the fixes used, which of
    them touched the test split and which changed nothing."""
    out = {}
    for split, records in per_split.items():
        kept = [_fixed(r, fixes.get(r["rel"]), applied, split == TEST) for r in records]
        out[split] = [r for r in kept if r is not None]
    return out


def classes_of(per_split: dict, classes: list) -> list:
    """The classes (in `classes` order) that still have images after the fixes: a class whose
    every image was relabelled or dropped is left out with a note; fewer than 2 is an error."""
    present = {r["label"] for records in per_split.values() for r in records}
    kept = [c for c in classes if c in present]
    kept += sorted(present - set(kept))  # relabelled into a class that had no usable image
    for c in classes:
        if c not in present:
            print(f"note: {CORRECTIONS}: every image of class '{c}' is relabelled or dropped; "
                  f"the class is left out", file=sys.stderr)
    if len(kept) < 2:
        raise PipelineError(f"{CORRECTIONS}: after the corrections {len(kept)} class(es) have "
                            f"images ({', '.join(kept) or 'none'}); a classifier needs at "
                            f"least 2: delete some drop/relabel rows")
    return kept


def apply(records: dict, fixes: dict[str, Correction], applied: set) -> dict:
    """{class: [record]} (records as prepare loads them, keyed "rel" and "label") with the
    fixes applied; the paths of the fixes used are added to `applied`. Applied before a split
    is made, a fix moves other images between splits: prefer apply_to_splits."""
    out: dict[str, list] = {}
    for label in records:
        for record in records[label]:
            fixed = _fixed(record, fixes.get(record["rel"]), applied, False)
            if fixed is not None:
                out.setdefault(fixed["label"], []).append(fixed)
    return out


def report(fixes: dict[str, Correction], applied: set) -> dict:
    """The data report's part (keys: REPORT_KEYS): counts (headline scalars) and every row
    used. Fixes of test images are counted apart (`test_corrections`): they change the
    yardstick, not the training data. A relabel to the image's own class is `n_unchanged`."""
    test = getattr(applied, "test", set())
    unchanged = getattr(applied, "unchanged", set())
    used = [fixes[p] for p in sorted(applied) if p not in test]
    effective = [f for f in used if f.path not in unchanged]
    in_test = [fixes[p] for p in sorted(test)]
    unused = sorted(set(fixes) - set(applied))
    for p in unused:  # a hidden or unreadable file: prepare skips it anyway
        print(f"note: {CORRECTIONS}:{fixes[p].line}: '{p}' is not used by prepare "
              f"(see `skipped` in metrics/data.json); the row changes nothing", file=sys.stderr)
    if in_test:
        dropped = sum(f.action == "drop" for f in in_test)
        relabelled = sum(f.action == "relabel" and f.path not in unchanged for f in in_test)
        print(f"note: {CORRECTIONS}: {len(in_test)} row(s) change test images (your decision, "
              f"applied; listed as test_corrections in metrics/data.json): "
              + test_change_sentence(dropped, relabelled), file=sys.stderr)
    return {"n_relabelled": sum(f.action == "relabel" for f in effective),
            "n_dropped": sum(f.action == "drop" for f in effective),
            "n_unchanged": sum(f.path in unchanged for f in used),
            "corrections": [{"path": f.path, "action": f.describe()} for f in effective],
            "n_test_corrections": sum(f.path not in unchanged for f in in_test),
            "test_corrections": [{"path": f.path, "action": f.describe(),
                                  **({"unchanged": True} if f.path in unchanged else {})}
                                 for f in in_test]}


# ------------------------------------------------------------------ what evaluate is told
def test_change_sentence(dropped: int, relabelled: int) -> str:
    """What the fixes to test images do to a before/after comparison, in words."""
    parts = []
    if relabelled:
        parts.append(f"{relabelled} relabelled (the same test photos, scored against the new labels)")
    if dropped:
        parts.append(f"{dropped} dropped (the scores after are on {dropped} fewer test photos "
                     f"than before, so they are not on the same photos; metrics/eval.json "
                     f"records test_dropped_by_corrections)")
    return "; ".join(parts) or "no change to the scored photos"


def write_test_record(folder: Path, fixes_report: dict) -> None:
    """data/prepared/test_corrections.json: the fixes applied to test images (report()'s
    test_corrections), for evaluate, which reads data/prepared and not metrics/data.json.
    Written only when there are some: no file means no test image was corrected."""
    from folderfit.support.fileio import write_json

    if fixes_report.get("test_corrections"):
        write_json(Path(folder) / TEST_CORRECTIONS_NAME,
                   {"test_corrections": fixes_report["test_corrections"]})


def read_test_record(prepared: Path) -> dict:
    """{"dropped": n, "relabelled": n} test images, from write_test_record's file (both 0
    without the file: no test image was corrected)."""
    import json

    path = Path(prepared) / TEST_CORRECTIONS_NAME
    rows = json.loads(path.read_text(encoding="utf-8"))["test_corrections"] if path.is_file() else []
    return {"dropped": sum(r["action"] == "drop" for r in rows),
            "relabelled": sum(r["action"].startswith("relabel") and not r.get("unchanged") for r in rows)}
