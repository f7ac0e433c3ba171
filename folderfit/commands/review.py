"""`folderfit review`: print the label review's ranked lists, or write the top label issues as a
corrections template (`--template`); `--serve` is folderfit.commands.review_server.
"""

from __future__ import annotations

import sys
from pathlib import Path

from folderfit.errors import PipelineError
from folderfit.results.review_lists import read_list, print_lists


def write_template(folder: Path, path: Path, top: int) -> tuple[int, int]:
    """A corrections file of the `top` label issues as `relabel:<suggested>` rows, for a person
    to check (delete the rows that are right, change drop/relabel where needed). Returns
    (rows written, test images listed).

    Test images never get a row: relabelling the yardstick to the model's own guess would
    raise the test score by construction. They are listed as comments ('needs a human look',
    no suggestion); a fix a person writes for one is applied but reported apart
    (corrections.report: test_corrections). Cells are CSV-quoted: a class 'cats, dogs'
    survives the round trip."""
    from folderfit.artifacts import corrections
    from folderfit.support.fileio import write_text

    if path.exists():
        raise PipelineError(f"{path}: exists; give a new file name (the template never "
                            f"overwrites, and {corrections.CORRECTIONS} is yours to edit)")
    issues = read_list(folder / "label_issues.csv")[:top]
    split_of = {r["path"]: r["split"] for r in read_list(folder / "scores.csv")}
    rows = [r for r in issues if split_of.get(r["path"]) != corrections.TEST]
    tests = [r for r in issues if split_of.get(r["path"]) == corrections.TEST]
    lines = ["path,action",
             "# label issues from metrics/review/label_issues.csv, most suspect first: keep the",
             "# rows you agree with (or change them to drop), then copy them into data/corrections.csv"]
    lines += [corrections.format_row(r["path"], f"relabel:{r['suggested']}") for r in rows]
    if tests:
        lines += ["# test images among them, for a human look only (no suggestion: a test label",
                  "# follows what the photo shows, never the model; a fix you write for one is",
                  "# applied and reported apart as test_corrections in metrics/data.json):"]
        lines += [f"#   {r['path']!r} (given: {r['given']})" for r in tests]
    write_text(path, "\n".join(lines) + "\n")
    return len(rows), len(tests)


def command(args) -> None:
    """`folderfit review` (arguments: folderfit.cli)."""
    folder = Path(args.dir)
    print_lists(folder, args.top, sys.stdout)
    if args.template:
        n, tests = write_template(folder, Path(args.template), args.top)
        also = (f" ({tests} test image(s) listed as comments for a human look, without a "
                f"suggestion)" if tests else "")
        print(f"wrote {n} row(s) to {args.template}{also}: check each image, then copy the rows "
              f"you agree with into data/corrections.csv and run dvc repro")
