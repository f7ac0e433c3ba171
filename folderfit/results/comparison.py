"""Is the difference real? Two evaluations of the same images, compared image by image
(`folderfit compare`, and the CI report's verdict).

Each side is evaluate's metrics/eval/ of one experiment: predictions.csv (one row per scored
image: the source path, its true and predicted class) and summary.json (the scored split).
A side comes from a revision (a commit, branch, tag or `dvc exp` name, read from the DVC
cache through the revision's dvc.lock), from the workspace, or from a folder or file.

The images are paired by source path (relative to data.source, so the same on every
machine). Two runs scored on different splits, or on sets that share less than
`min_shared` of the larger one, are refused; the comparison is on the shared images. A
shared image whose true label differs between the two (a label fix in between) says nothing
about the models and is left out, and counted.

The statistics, on the images both scored (paired, so the noise of which images happen to
be in the split cancels):
* McNemar's exact test: only the images that flipped carry information; under "no
  difference" each flip is equally likely to go either way, so the count of wrong->right
  among all flips is Binomial(flips, 1/2) (scipy.stats.binomtest, two-sided).
* The 95% interval of the accuracy difference (B - A) is a seeded paired percentile
  bootstrap over images. The difference per image is -1, 0 or +1, so a resample's mean
  depends only on how many of each it drew: a multinomial draw of the three counts is the
  same bootstrap without materialising the [resamples, N] index array.
The verdict says a side is better only when both agree (p < ALPHA and the interval excludes
0); on the margin they can disagree, and then it says no detectable difference.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from folderfit.errors import PipelineError
from folderfit.paths import EVAL_DIR

WORKSPACE = "workspace"
PREDICTIONS = "predictions.csv"  # inside EVAL_DIR: written by the evaluate stage
SUMMARY = "summary.json"  # inside EVAL_DIR: its `split` is the scored split
ALPHA = 0.05
CI_LEVEL = 0.95
MIN_SHARED = 0.95  # refuse when the shared images are fewer than this share of the larger set
RESAMPLES = 10_000
SEED = 0
COLUMNS = ("path", "true", "predicted")


@dataclass
class Scored:
    """One side: where it came from, the scored split (None: not known) and path -> (true, predicted)."""
    name: str
    origin: str
    split: str | None
    rows: dict[str, tuple[str, str]] = field(default_factory=dict)


def parse_predictions(text: str, origin: str) -> dict[str, tuple[str, str]]:
    """path -> (true, predicted) from the text of a predictions.csv."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise PipelineError(f"{origin}: missing column(s) {', '.join(missing)}; expected evaluate's "
                            f"predictions.csv (path, true, predicted, ...)")
    rows: dict[str, tuple[str, str]] = {}
    for row in reader:
        path = row["path"]
        if path in rows:
            raise PipelineError(f"{origin}: image {path!r} is listed twice; expected one row per "
                                f"scored image (evaluate's predictions.csv)")
        rows[path] = (row["true"], row["predicted"])
    return rows


def _split_of(text: str | None, origin: str) -> str | None:
    if text is None:
        return None
    import json

    try:
        split = json.loads(text).get("split")
    except (ValueError, AttributeError):
        raise PipelineError(f"{origin}: not a JSON object with a `split` key; expected evaluate's "
                            f"summary.json") from None
    return str(split) if split is not None else None


def read_path(path: str | Path, name: str) -> Scored:
    """A side from a folder (evaluate's metrics/eval/, or a copy) or a predictions file; the
    split from summary.json beside it, if there is one."""
    path = Path(path)
    csv_path = path if path.suffix == ".csv" else path / PREDICTIONS
    if not csv_path.is_file():
        raise PipelineError(f"{csv_path}: not found; give evaluate's output folder (metrics/eval) "
                            f"or its {PREDICTIONS}")
    summary = csv_path.parent / SUMMARY
    try:
        text = csv_path.read_text(encoding="utf-8")
        split_text = summary.read_text(encoding="utf-8") if summary.is_file() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{csv_path}: cannot read it ({exc})") from None
    return Scored(name, str(csv_path), _split_of(split_text, str(summary)),
                  parse_predictions(text, str(csv_path)))


def read_revision(rev: str, name: str) -> Scored:
    """A side from a revision: `workspace` reads metrics/eval/ on disk; anything else (commit,
    branch, tag, `dvc exp` name) through DVC, which finds the revision's outputs in the cache."""
    if rev == WORKSPACE:
        if not (EVAL_DIR / PREDICTIONS).is_file():
            raise PipelineError(f"{(EVAL_DIR / PREDICTIONS).as_posix()}: not found in the workspace; "
                                f"`dvc repro` (its evaluate stage) writes it")
        return read_path(EVAL_DIR, name)
    import dvc.api
    from dvc.exceptions import DvcException, PathMissingError
    from dvc.scm import RevError

    where = f"{(EVAL_DIR / PREDICTIONS).as_posix()} at {rev}"
    try:
        text = dvc.api.read((EVAL_DIR / PREDICTIONS).as_posix(), rev=rev, encoding="utf-8")
    except RevError:
        raise PipelineError(f"{rev}: not a revision here; give a commit, branch, tag, `dvc exp` "
                            f"name or `{WORKSPACE}`") from None
    except PathMissingError:
        raise PipelineError(f"{where}: not found; that revision has no evaluate outputs, or the "
                            f"DVC cache here lacks them (`dvc fetch {rev}` brings them from a "
                            f"remote); or compare folders with --a/--b") from None
    except (DvcException, OSError, UnicodeDecodeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(f"{where}: not readable ({reason}); `dvc fetch {rev}` brings it from a "
                            f"remote") from None
    try:
        split_text = dvc.api.read((EVAL_DIR / SUMMARY).as_posix(), rev=rev, encoding="utf-8")
    except (DvcException, OSError, UnicodeDecodeError):
        split_text = None
    return Scored(name, where, _split_of(split_text, f"{(EVAL_DIR / SUMMARY).as_posix()} at {rev}"),
                  parse_predictions(text, where))


def mcnemar_exact(wrong_to_right: int, right_to_wrong: int) -> float:
    """Two-sided exact McNemar p-value from the two flip counts (1.0 without flips)."""
    flips = wrong_to_right + right_to_wrong
    if flips == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wrong_to_right, flips, 0.5).pvalue)


def paired_bootstrap_ci(wrong_to_right: int, right_to_wrong: int, n: int, resamples: int = RESAMPLES,
                        seed: int = SEED, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of the accuracy difference (B - A) over `n` paired images, of which
    `wrong_to_right` count +1 and `right_to_wrong` -1: a resample of images with replacement
    is a multinomial draw of those counts."""
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    shares = [wrong_to_right / n, right_to_wrong / n]
    draws = rng.multinomial(n, [*shares, max(0.0, 1.0 - sum(shares))], size=resamples)
    diffs = (draws[:, 0] - draws[:, 1]) / n
    low, high = np.percentile(diffs, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(low), float(high)


def _pvalue(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2f}" if p >= 0.01 else f"p = {p:.3f}"


def compare(a: Scored, b: Scored, *, min_shared: float = MIN_SHARED, resamples: int = RESAMPLES,
            seed: int = SEED) -> dict:
    """The comparison of B against A on the images both scored (module docstring); a
    PipelineError when they were scored on different splits or share too few images."""
    if a.split and b.split and a.split != b.split:
        raise PipelineError(f"A ({a.name}) was scored on the {a.split} split and B ({b.name}) on the "
                            f"{b.split} split: their scores are not comparable image by image")
    shared = sorted(a.rows.keys() & b.rows.keys())
    larger = max(len(a.rows), len(b.rows))
    if not shared or len(shared) < min_shared * larger:
        raise PipelineError(f"A ({a.name}, {len(a.rows)} images) and B ({b.name}, {len(b.rows)} images) "
                            f"share only {len(shared)} scored images, fewer than {min_shared:.0%} of "
                            f"the larger set: different test sets (another seed or data.source?); "
                            f"`folderfit compare --min-shared 0.5` (say) compares the shared ones anyway")
    relabelled = [p for p in shared if a.rows[p][0] != b.rows[p][0]]
    paired = [p for p in shared if a.rows[p][0] == b.rows[p][0]]
    right_a = {p: a.rows[p][0] == a.rows[p][1] for p in paired}
    right_b = {p: b.rows[p][0] == b.rows[p][1] for p in paired}

    def flip(p):
        return {"path": p, "true": a.rows[p][0], "a_predicted": a.rows[p][1], "b_predicted": b.rows[p][1]}

    up = [flip(p) for p in paired if right_b[p] and not right_a[p]]
    down = [flip(p) for p in paired if right_a[p] and not right_b[p]]
    n = len(paired)
    acc_a = sum(right_a.values()) / n if n else None
    acc_b = sum(right_b.values()) / n if n else None
    p = mcnemar_exact(len(up), len(down))
    low, high = paired_bootstrap_ci(len(up), len(down), n, resamples, seed)
    diff = (len(up) - len(down)) / n if n else 0.0
    real = p < ALPHA and (low > 0 or high < 0)
    verdict = ("b_better" if diff > 0 else "a_better") if real else "no_difference"
    out = {
        "a": {"name": a.name, "from": a.origin, "split": a.split, "n_images": len(a.rows)},
        "b": {"name": b.name, "from": b.origin, "split": b.split, "n_images": len(b.rows)},
        "n_shared": len(shared), "n_only_in_a": len(a.rows) - len(shared),
        "n_only_in_b": len(b.rows) - len(shared), "n_compared": n,
        "label_differs": relabelled,
        "accuracy_a": acc_a, "accuracy_b": acc_b, "difference": diff,
        "difference_ci95_low": low, "difference_ci95_high": high,
        "mcnemar_p": p, "n_wrong_to_right": len(up), "n_right_to_wrong": len(down),
        "verdict": verdict, "alpha": ALPHA, "bootstrap": {"resamples": resamples, "seed": seed},
        "wrong_to_right": up, "right_to_wrong": down,
    }
    out["sentence"] = sentence(out)
    return out


def sentence(result: dict) -> str:
    """The verdict in one plain sentence."""
    a, b, n = result["a"]["name"], result["b"]["name"], result["n_compared"]
    split = result["b"]["split"] or result["a"]["split"]
    images = f"{n} shared {split + ' ' if split else ''}images"
    up, down = result["n_wrong_to_right"], result["n_right_to_wrong"]
    if up + down == 0:
        return f"no detectable difference: A ({a}) and B ({b}) are right and wrong on the same {images} (0 flipped)"
    points = 100 * result["difference"]
    low, high = 100 * result["difference_ci95_low"], 100 * result["difference_ci95_high"]
    detail = (f"95% CI {low:+.1f} to {high:+.1f}; McNemar {_pvalue(result['mcnemar_p'])}, "
              f"{up} wrong->right vs {down} right->wrong")
    if result["verdict"] == "b_better":
        return f"B ({b}) is better than A ({a}) by {points:.1f} points on {images} ({detail})"
    if result["verdict"] == "a_better":
        return f"B ({b}) is worse than A ({a}) by {-points:.1f} points on {images} ({detail})"
    return f"no detectable difference between A ({a}) and B ({b}) on {images} (B - A {points:+.1f} points, {detail})"


def as_text(result: dict, show: int = 20) -> str:
    """The comparison for a terminal: the two sides, the verdict, then the flipped images
    (`show` per direction at most; all are in the JSON)."""
    a, b = result["a"], result["b"]
    lines = [f"A: {a['name']} ({a['from']}): {a['split'] or 'split not known'}, {a['n_images']} images",
             f"B: {b['name']} ({b['from']}): {b['split'] or 'split not known'}, {b['n_images']} images"]
    extra = [f"{result['n_only_in_a']} only in A" if result["n_only_in_a"] else "",
             f"{result['n_only_in_b']} only in B" if result["n_only_in_b"] else "",
             f"{len(result['label_differs'])} left out: their true label differs between A and B"
             if result["label_differs"] else ""]
    extra = [e for e in extra if e]
    lines.append(f"compared: {result['n_compared']} images scored by both"
                 + (f" ({'; '.join(extra)})" if extra else ""))
    if result["n_compared"]:
        lines.append(f"accuracy on them: A {result['accuracy_a']:.4f}, B {result['accuracy_b']:.4f}")
    lines += ["", result["sentence"]]
    for key, title in (("wrong_to_right", "wrong in A, right in B"), ("right_to_wrong", "right in A, wrong in B")):
        flips = result[key]
        if not flips:
            continue
        lines += ["", f"{title} ({len(flips)}): path, true class, A's prediction, B's prediction"]
        lines += [f"  {f['path']}  {f['true']}  A:{f['a_predicted']}  B:{f['b_predicted']}" for f in flips[:show]]
        if len(flips) > show:
            lines.append(f"  ... and {len(flips) - show} more (--show N, or --json for all)")
    if result["label_differs"]:
        lines += ["", "left out, true label differs (a label fix?): "
                  + ", ".join(result["label_differs"][:show])
                  + (" ..." if len(result["label_differs"]) > show else "")]
    return "\n".join(lines) + "\n"
