"""Label review (stage `review`): which labels are probably wrong, which images are copies of
each other, which do not belong; and `folderfit review`, which prints those lists.

1. Features: the train stage's backbone, weights and preprocessing (train_feature_extractor),
   one clean view of every image of every split, plus its mirror image unless `augment.hflip`
   is false (a mirrored image keeps its class); with `auto`, train's own mirror test on val
   decides, as in train (digits: clean only); all through the shared feature cache (keyed by
   weights, preprocessing, view and image content), so `train` (feature_extract) and
   `review` never compute a vector twice.
2. Out-of-sample probabilities: K-fold cross-fitting of the head (folderfit.crossfit), no
   image scored by a head that saw its label or a copy of it.
3. Neighbour votes: the labels of each image's `review.neighbours` nearest other images
   (cosine similarity of the L2-normalised features, views averaged). The probabilities used
   for the ranking are 0.75 x the head's + 0.25 x the votes (two different views of the
   evidence: a linear boundary and the local neighbourhood; together they ranked moved labels
   better than either alone, README "Label review").
4. Label issues (cleanlab): every image's label quality is cleanlab's self-confidence score
   (the probability of its given label); the flagged images are those cleanlab's
   `find_label_issues` (confident learning) flags plus those whose most probable class is
   another one, most suspect (lowest quality) first. The label-noise rates, overall and per
   class, are cleanlab's confident-joint estimates.
5. Near-duplicates: pairs whose clean-view features reach `review.duplicate_similarity`
   (cosine; crops and edits) or whose 32x32 grayscale thumbnails correlate >= 0.998 (resized
   or re-encoded copies, whatever the backbone), flagged when the two sit in different splits
   (leakage) or classes (a conflict). Copies share one cross-fitting fold.
6. Outliers: mean cosine distance to the nearest neighbours above Q3 + 1.7 x IQR (cleanlab
   Datalab's rule for the same score).

Outputs: metrics/review.json (counts and noise rates; per class as a list, so `dvc exp show`
gets no per-class columns) and metrics/review/ (built aside, swapped in whole):
  label_issues.csv       path,given,suggested,score: flagged images, most suspect first
  near_duplicates.csv    path,other,similarity,issue,class,other_class,split,other_split
  outliers.csv           path,class,split,score (mean distance to the nearest neighbours)
  scores.csv             every image: its out-of-sample probabilities and scores
  label_issues.png       gallery of the top suspects: image, given -> suggested, score
  noise_per_class.json   estimated label-noise rate per class (a DVC bar plot)
  details.json           settings and facts of the run (folds, views, l2 per fold, ...)
Every `path` is relative to data.source, exactly as the file sits there.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

from folderfit import data as D
from folderfit.errors import PipelineError
from folderfit.fileio import staged_dir, write_json

PREPARED = Path("data/prepared")
REVIEW_JSON = Path("metrics/review.json")
REVIEW_DIR = Path("metrics/review")
OUTLIER_IQR_FACTOR = 1 / 0.37037 - 1  # cleanlab Datalab's default outlier threshold, as a factor
# near-duplicates: distance at most this share of the median nearest-neighbour distance too
# (trashnet-mini: median 0.34, so review.duplicate_similarity 0.9 decides there)
DUPLICATE_SHARE_OF_MEDIAN = 0.3
GALLERY_MAX = 16
# share of the neighbours' votes in the probabilities that rank labels (the head's: the rest);
# 0.25 ranked moved labels best on three noisy copies of trashnet-mini (0.5 and 0: one or two
# files fewer in the top k; README, Label review)
VOTE_WEIGHT = 0.25
PAIR_ISSUES = ("different classes and splits", "different classes", "different splits", "")


# ------------------------------------------------------------------ inputs
def read_rows(prepared: Path = PREPARED) -> list[dict]:
    """prepare's manifest rows (file, source, class, split, sha256, ...), in manifest order."""
    path = prepared / D.MANIFEST
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run `dvc repro prepare` first")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def review_views(params) -> list:
    """The clean view, plus its mirror image unless `augment.hflip` is false: the head is
    fitted on both and scores their mean. Not train's random crops: they would multiply the
    feature cost; clean and flip are the views train computes too (shared through the cache)."""
    from folderfit import features as F

    return [F.CLEAN] if params.augment.hflip is False else [F.CLEAN, F.FLIP]  # true or auto


def follow_mirror_test(extractor, files: list, rows: list[dict], labels: np.ndarray,
                       n_classes: int) -> tuple[list, dict | None]:
    """hflip auto: the views train will use. Its mirror test (a head on train's clean vectors
    scores val and val mirrored, folderfit.probe) keeps the mirror view only where labels
    survive mirroring: a mirrored digit is another shape, so it would blur the review."""
    import torch

    from folderfit import features as F
    from folderfit import probe

    split = np.array([r["split"] for r in rows])
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(train) == 0 or len(val) == 0:
        return [F.CLEAN, F.FLIP], None
    train_clean, val_clean, val_mirrored = extractor.features_of(
        [([files[i] for i in train], F.CLEAN), ([files[i] for i in val], F.CLEAN),
         ([files[i] for i in val], F.FLIP)], "features review (mirror test)")
    y = torch.as_tensor(labels)
    test = probe.mirror_test(train_clean, y[train], val_clean, val_mirrored, y[val], n_classes)
    print(f"review: hflip auto: val accuracy {test['val_accuracy']:.4f}, mirrored "
          f"{test['val_accuracy_mirrored']:.4f} -> {'clean + flip' if test['hflip'] else 'clean'} views")
    return ([F.CLEAN, F.FLIP] if test["hflip"] else [F.CLEAN]), test


def train_feature_extractor(params, n_classes: int, rt):
    """The frozen backbone exactly as `train` builds it (model, weights, seed, preprocessing at
    data.image_size, device layout), so both stages hit the same cache entries."""
    from folderfit import features as F
    from folderfit import models as M
    from folderfit.runtime import prepare_model
    from folderfit.training import feature_extractor

    built = M.build_model(params.model_name, n_classes, params.weights, params.seed)
    pre = built.preprocess.with_image_size(params.data.image_size)
    backbone, _ = F.backbone_only(prepare_model(built.model, rt), built.head_name)
    return feature_extractor(backbone, pre, params, rt)


# ------------------------------------------------------------------ the lists
def copy_groups(rows: list[dict], pairs) -> np.ndarray:
    """Group id per image: identical pixels (same sha256) or a chain of near-duplicate pairs."""
    from folderfit import similarity as S

    first = {}
    same = [(first.setdefault(r["sha256"], i), i) for i, r in enumerate(rows)]
    return S.groups(len(rows), [(i, j) for i, j in same if i != j] + list(pairs))


def neighbour_votes(index: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[N, classes]: share of each image's nearest neighbours in each class."""
    votes = np.zeros((len(labels), n_classes))
    for c in range(n_classes):
        votes[:, c] = (labels[index] == c).mean(1)
    return votes


def label_issues(labels: np.ndarray, probs: np.ndarray) -> dict:
    """cleanlab's view of the labels: quality per image, flags, noise rates."""
    import cleanlab.count
    import cleanlab.filter
    import cleanlab.rank

    quality = cleanlab.rank.get_label_quality_scores(labels, probs, method="self_confidence")
    confident = cleanlab.filter.find_label_issues(labels, probs, n_jobs=1)
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -1.0
    suggested = other.argmax(1)  # the most probable class other than the given one
    flagged = confident | (probs.argmax(1) != labels)
    order = sorted(np.flatnonzero(flagged), key=lambda i: (quality[i], i))
    joint = cleanlab.count.estimate_joint(labels, probs)  # rows: given label, columns: true
    per_class_noise = 1.0 - np.diag(joint) / np.maximum(joint.sum(1), 1e-12)
    return {"quality": quality, "suggested": suggested, "order": order,
            "n_confident": int(confident.sum()), "noise_rate": float(1.0 - np.trace(joint)),
            "per_class_noise": per_class_noise}


def pair_issue(a: dict, b: dict) -> str:
    classes, splits = a["class"] != b["class"], a["split"] != b["split"]
    return PAIR_ISSUES[0 if classes and splits else 1 if classes else 2 if splits else 3]


# ------------------------------------------------------------------ outputs
def _r(value: float) -> str:
    return f"{value:.6f}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def write_review_dir(out: Path, rows, classes, probs, issues, pairs, distance, outliers,
                     details: dict) -> dict:
    """Every file of metrics/review/ into `out`; returns review.json's content."""
    from folderfit import reports as R

    labels = np.array([classes.index(r["class"]) for r in rows])
    quality, suggested = issues["quality"], issues["suggested"]
    R.write_csv(out / "label_issues.csv", ["path", "given", "suggested", "score"],
                [[rows[i]["source"], rows[i]["class"], classes[suggested[i]], _r(quality[i])]
                 for i in issues["order"]])
    ranked_pairs = sorted(pairs, key=lambda p: (PAIR_ISSUES.index(pair_issue(rows[p[0]], rows[p[1]])),
                                                -round(max(p[2], p[3]), 6), rows[p[0]]["source"],
                                                rows[p[1]]["source"]))
    R.write_csv(out / "near_duplicates.csv",
                ["path", "other", "similarity", "issue", "class", "other_class", "split",
                 "other_split", "pixel_correlation"],
                [[rows[i]["source"], rows[j]["source"], _r(sim), pair_issue(rows[i], rows[j]),
                  rows[i]["class"], rows[j]["class"], rows[i]["split"], rows[j]["split"], _r(pix)]
                 for i, j, sim, pix in ranked_pairs])
    outlier_order = sorted(np.flatnonzero(outliers), key=lambda i: (-round(distance[i], 6), i))
    R.write_csv(out / "outliers.csv", ["path", "class", "split", "score"],
                [[rows[i]["source"], rows[i]["class"], rows[i]["split"], _r(distance[i])]
                 for i in outlier_order])
    flagged = set(issues["order"])
    R.write_csv(out / "scores.csv",
                ["path", "split", "given", "suggested", "label_quality", "label_issue",
                 "outlier_score", "outlier", *[f"p_{c}" for c in classes]],
                [[r["source"], r["split"], r["class"], classes[suggested[i]], _r(quality[i]),
                  int(i in flagged), _r(distance[i]), int(outliers[i]), *map(_r, probs[i])]
                 for i, r in enumerate(rows)])
    R.gallery(out / "label_issues.png",
              [(PREPARED / rows[i]["file"],
                f"{rows[i]['class']} -> {classes[suggested[i]]}\nscore {quality[i]:.3f}",
                _shorten(rows[i]["source"], 36)) for i in issues["order"][:GALLERY_MAX]],
              f"label review: {min(GALLERY_MAX, len(flagged))} of {len(flagged)} suspects, "
              f"most suspect first (given -> suggested)", "no label issues found")
    per_class = []
    for c, name in enumerate(classes):
        members = labels == c
        per_class.append({"class": name, "n_images": int(members.sum()),
                          "n_label_issues": int(sum(labels[i] == c for i in flagged)),
                          "label_noise_rate": round(float(issues["per_class_noise"][c]), 4)})
    R.write_rows_json(out / "noise_per_class.json",
                      [{"class": p["class"], "label_noise_rate": p["label_noise_rate"]} for p in per_class])
    issues_of = [pair_issue(rows[i], rows[j]) for i, j, *_ in pairs]
    summary = {
        "n_label_issues": len(flagged),
        "label_noise_rate": round(issues["noise_rate"], 4),
        "n_near_duplicates": len(pairs),
        "n_near_duplicates_across_splits": sum("splits" in s for s in issues_of),
        "n_near_duplicates_across_classes": sum("classes" in s for s in issues_of),
        "n_outliers": int(outliers.sum()),
        "per_class": per_class,
    }
    write_json(out / "details.json", {**summary, **details})
    return summary


# ------------------------------------------------------------------ the stage
def run(params) -> None:
    import torch

    from folderfit import crossfit as CF
    from folderfit import similarity as S
    from folderfit.runtime import pick_runtime, seed_everything

    started = time.perf_counter()
    seed_everything(params.seed)
    rt = pick_runtime(params.precision, params.device)
    rows = read_rows()
    classes = sorted({r["class"] for r in rows})
    labels = np.array([classes.index(r["class"]) for r in rows])
    r = params.review
    if len(rows) < 2 * r.folds:
        raise PipelineError(f"review: {len(rows)} images are too few for {r.folds}-fold "
                            f"cross-fitting; lower review.folds or add images")
    extractor = train_feature_extractor(params, len(classes), rt)
    views = review_views(params)
    files = [PREPARED / row["file"] for row in rows]
    mirror = None
    if params.augment.hflip == "auto":  # train's own mirror test decides, on the same vectors
        views, mirror = follow_mirror_test(extractor, files, rows, labels, len(classes))
    features = extractor.features_of([(files, view) for view in views], "features review")
    print(f"review: {len(rows)} images, {len(views)} view(s) ({', '.join(v.name for v in views)}): "
          f"{extractor.computed} computed ({extractor.engine}), {extractor.reused} from the cache {extractor.root}")
    z = S.normalise(torch.stack(features).mean(0).numpy())  # votes, outliers: all views
    clean = S.normalise(features[0].numpy())  # copies: the clean view

    index, similarity = S.nearest(z, r.neighbours)
    # with the clean view alone z is `clean`, so its nearest neighbour is already known
    nearest_clean = similarity[:, 0] if len(views) == 1 else S.nearest(clean, 1)[1][:, 0]
    threshold = S.duplicate_threshold(nearest_clean, r.duplicate_similarity,
                                      DUPLICATE_SHARE_OF_MEDIAN)
    thumbs = S.thumbnails(files)
    pairs = [(i, j, float(clean[i] @ clean[j]), float(thumbs[i] @ thumbs[j]))
             for i, j in sorted({(i, j) for i, j, _ in S.similar_pairs(clean, threshold)} |
                                {(i, j) for i, j, _ in S.pairs_above(thumbs, S.THUMBNAIL_CORRELATION)})]
    fit = CF.cross_fit(features, labels, len(classes), copy_groups(rows, pairs), r.folds, params.seed)
    probs = (1 - VOTE_WEIGHT) * fit.probs + VOTE_WEIGHT * neighbour_votes(index, labels, len(classes))
    issues = label_issues(labels, probs)
    distance = 1.0 - similarity.mean(1)
    outliers, outlier_threshold = S.outlier_flags(distance, OUTLIER_IQR_FACTOR)

    details = {"folds": int(fit.fold.max()) + 1, "views": [v.name for v in views],
               "mirror_test": mirror,
               "l2_per_fold": fit.l2, "neighbours": int(index.shape[1]),
               "head_accuracy_out_of_sample": round(float((fit.probs.argmax(1) == labels).mean()), 4),
               "accuracy_out_of_sample": round(float((probs.argmax(1) == labels).mean()), 4),
               "n_flagged_by_cleanlab": issues["n_confident"],
               "duplicate_similarity": round(threshold, 6),
               "outlier_threshold": round(outlier_threshold, 6)}
    with staged_dir(REVIEW_DIR) as staging:  # built aside, swapped in whole when done
        summary = write_review_dir(staging, rows, classes, probs, issues, pairs, distance,
                                   outliers, details)
        write_json(REVIEW_JSON, summary)
    print(f"review: out-of-sample accuracy {details['accuracy_out_of_sample']:.4f} "
          f"({details['folds']}-fold); {summary['n_label_issues']} label issues (estimated "
          f"label noise {summary['label_noise_rate']:.1%}), {summary['n_near_duplicates']} "
          f"near-duplicate pairs ({summary['n_near_duplicates_across_classes']} across classes, "
          f"{summary['n_near_duplicates_across_splits']} across splits), {summary['n_outliers']} "
          f"outliers -> {REVIEW_DIR}/ [{time.perf_counter() - started:.1f} s]")
    print_lists(REVIEW_DIR, top=5, out=sys.stdout)
    print("see them all: folderfit review; fix labels in data/corrections.csv (README, Label review)")


# ------------------------------------------------------------------ `folderfit review`
def _read_csv(path: Path) -> list[dict]:
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
    issues = _read_csv(folder / "label_issues.csv")
    pairs = _read_csv(folder / "near_duplicates.csv")
    outliers = _read_csv(folder / "outliers.csv")
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


def write_template(folder: Path, path: Path, top: int) -> int:
    """A corrections file of the `top` label issues as `relabel:<suggested>` rows, for a person
    to check (delete the rows that are right, change drop/relabel where needed)."""
    from folderfit import corrections as C
    from folderfit.fileio import write_text

    if path.exists():
        raise PipelineError(f"{path}: exists; give a new file name (the template never "
                            f"overwrites, and {C.CORRECTIONS} is yours to edit)")
    issues = _read_csv(folder / "label_issues.csv")[:top]
    lines = ["path,action",
             "# label issues from metrics/review/label_issues.csv, most suspect first: keep the",
             "# rows you agree with (or change them to drop), then copy them into data/corrections.csv"]
    for r in issues:
        lines.append(f"{_csv_cell(r['path'])},relabel:{r['suggested']}")
    write_text(path, "\n".join(lines) + "\n")
    return len(issues)


def _csv_cell(text: str) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([text])
    return buf.getvalue()


def command(args) -> None:
    """`folderfit review` (arguments: folderfit.cli)."""
    folder = Path(args.dir)
    print_lists(folder, args.top, sys.stdout)
    if args.template:
        n = write_template(folder, Path(args.template), args.top)
        print(f"wrote {n} row(s) to {args.template}: check each image, then copy the rows you "
              f"agree with into data/corrections.csv and run dvc repro")
