"""The CI report (`folderfit ci-report --base main`): this checkout's headline results against
a base revision, as a short Markdown table, then the params that differ.

Numbers come from `dvc metrics diff --json` and `dvc params diff --json`, so the base column
is read through the base's dvc.lock from the DVC cache; when the cache lacks the base's
metrics the column is empty and one note says how to fetch them.

Then "Is the difference real?": the base's and this checkout's per-image predictions compared
on the images both scored (folderfit.results.comparison, as `folderfit compare BASE`): one
sentence with the accuracy difference, its 95% interval, McNemar's p and the flip counts. When
the two cannot be compared (no base predictions in the cache, different splits or test sets)
the section says why in one line instead; the report itself never fails on it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from folderfit.errors import PipelineError
from folderfit.paths import DATA_REPORT, EVAL_JSON, REVIEW_JSON, TIMING, TRAIN_METRICS
from folderfit.results import comparison

# the metrics files as `dvc metrics show --json` names them (paths.py owns where they are)
EVAL, TRAIN, DATA, REVIEW, TIMED = (path.as_posix() for path in
                                    (EVAL_JSON, TRAIN_METRICS, DATA_REPORT, REVIEW_JSON, TIMING))

# (metrics file, key, label) of the rows the report shows, in this order
HEADLINE = [
    (EVAL, "accuracy", "accuracy (on the scored split)"),
    (EVAL, "accuracy_ci95_low", "accuracy 95% CI low"),
    (EVAL, "accuracy_ci95_high", "accuracy 95% CI high"),
    (EVAL, "macro_f1", "macro F1"),
    (EVAL, "split", "scored split: test | cv | val_holdout"),
    (TRAIN, "strategy", "strategy"),
    (TRAIN, "best_val_accuracy", "best val accuracy"),
    (DATA, "n_images", "images"),
    (DATA, "n_classes", "classes"),
    (DATA, "n_skipped", "files skipped"),
    (DATA, "n_label_conflicts", "label conflicts"),
    (REVIEW, "n_label_issues", "likely label errors"),
    (TIMED, "train_wall_s", "train wall s"),
]


def _dvc_json(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"dvc {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout or "{}")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _change(old, new) -> str:
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        delta = new - old
        return "" if delta == 0 else f"{delta:+.4g}"
    return "" if old == new else "changed"


def verdict(base: str) -> str:
    """The paired comparison of the base's predictions with this checkout's, in a few lines."""
    try:
        result = comparison.compare(comparison.read_revision(base, base),
                                    comparison.read_revision(comparison.WORKSPACE, "this commit"))
    except PipelineError as exc:
        return f"Not compared: {exc}."
    ups, downs = result["n_wrong_to_right"], result["n_right_to_wrong"]
    return (result["sentence"][0].upper() + result["sentence"][1:] + ".\n\n"
            f"Flipped: {ups} wrong -> right, {downs} right -> wrong; `folderfit compare {base}` "
            f"lists them.")


def report(base: str) -> str:
    metrics = _dvc_json(["metrics", "diff", base, "--all"])
    params = _dvc_json(["params", "diff", base])
    lines = [f"## Results: {base} -> this commit", "",
             f"| | {base} | this commit | change |", "|---|---:|---:|---:|"]
    base_known = False
    for path, key, label in HEADLINE:
        entry = metrics.get(path, {}).get(key)
        if entry is None:
            continue
        old, new = entry.get("old"), entry.get("new")
        base_known = base_known or old is not None
        lines.append(f"| {label} | {_cell(old)} | {_cell(new)} | {_change(old, new)} |")
    if not base_known:
        lines += ["", f"Note: no metrics of {base} are in the DVC cache here, so its column is "
                      f"empty; `dvc fetch -a` (with a DVC remote holding them) brings them."]
    lines += ["", "All numbers: `dvc metrics diff " + base + "`; per class: metrics/eval/per_class.json.",
              "", "## Is the difference real?", "", verdict(base),
              "", f"## Params: {base} -> this commit", ""]
    changed = [(key, entry) for file in params.values() for key, entry in sorted(file.items())]
    if changed:
        lines += [f"| param | {base} | this commit |", "|---|---|---|"]
        lines += [f"| {key} | {_cell(e.get('old'))} | {_cell(e.get('new'))} |" for key, e in changed]
    else:
        lines.append("No param changes.")
    return "\n".join(lines) + "\n"


def command(args) -> None:
    """`folderfit ci-report` (arguments: folderfit.cli)."""
    sys.stdout.write(report(args.base))
