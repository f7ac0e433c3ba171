"""Label review (stage `review`): which labels are probably wrong, which images are copies of
each other, which do not belong. `folderfit review` prints the lists (folderfit.commands.review).

1. Features: the train stage's backbone, weights and preprocessing (train_feature_extractor),
   one clean view of every image of every split, plus its mirror image unless `augment.hflip`
   is false (a mirrored image keeps its class); with `auto`, train's own mirror test on val
   decides, as in train (digits: clean only); all through the shared feature cache (keyed by
   weights, preprocessing, view and image content), so `train` (feature_extract) and
   `review` never compute a vector twice.
2. Out-of-sample probabilities: K-fold cross-fitting of the head (folderfit.frozen.crossfit), no
   image scored by a head that saw its label or a copy of it. K is review.folds, lowered to
   the smallest class's image count (>= 2) with a note in review.json; a class with a single
   image cannot be cross-fitted: its images are listed as `not_reviewable`, not scored.
3. Neighbour votes: the labels of each image's `review.neighbours` nearest other images
   (cosine similarity of the L2-normalised features, views averaged). The probabilities used
   for the ranking are 0.75 x the head's + 0.25 x the votes (two different views of the
   evidence: a linear boundary and the local neighbourhood; together they ranked moved labels
   better than either alone, docs/review.md).
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

`folderfit review --template` never suggests a relabel for a test image (following the model's
guess there would raise the test score by construction): test images are listed as comments
for a human look only (folderfit.artifacts.corrections: test fixes are applied but reported apart).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from folderfit.artifacts import manifest
from folderfit.frozen.extractor import train_feature_extractor
from folderfit.paths import PREPARED, REVIEW_DIR, REVIEW_JSON
from folderfit.results.pages import review_page
from folderfit.results.review_lists import print_lists
from folderfit.support.fileio import staged_dir, write_json
from folderfit.support.report import say

OUTLIER_IQR_FACTOR = 1 / 0.37037 - 1  # cleanlab Datalab's default outlier threshold, as a factor


# near-duplicates: distance at most this share of the median nearest-neighbour distance too
# (trashnet-mini: median 0.34, so review.duplicate_similarity 0.9 decides there)
DUPLICATE_SHARE_OF_MEDIAN = 0.3


GALLERY_MAX = 16


# share of the neighbours' votes in the probabilities that rank labels (the head's: the rest);
# 0.25 ranked moved labels best on three noisy copies of trashnet-mini (0.5 and 0: one or two
# files fewer in the top k; docs/review.md)
VOTE_WEIGHT = 0.25


PAIR_ISSUES = ("different classes and splits", "different classes", "different splits", "")


# ------------------------------------------------------------------ inputs
def read_rows(prepared: Path = PREPARED) -> list[dict]:
    """prepare's manifest rows (file, source, class, split, sha256, ...), in manifest order."""
    return manifest.read_manifest_rows(prepared)


def prepared_thumbnails(rows: list[dict], prepared: Path = PREPARED) -> dict:
    """Image file (manifest.image_path) -> the 32x32 thumbnail prepare stored for it, for the manifest `rows`
    (read_rows); empty when the thumbnails file is missing or does not match the manifest
    (then review reads the images)."""
    from folderfit.paths import THUMBNAILS_NAME

    try:
        pixels = np.load(prepared / THUMBNAILS_NAME, allow_pickle=False)
    except (OSError, ValueError):
        return {}
    if pixels.ndim != 2 or len(pixels) != len(rows) or pixels.dtype != np.uint8:
        return {}
    return {manifest.image_path(prepared, r).as_posix(): row for r, row in zip(rows, pixels)}


def review_views(params) -> list:
    """The clean view, plus its mirror image unless `augment.hflip` is false: the head is
    fitted on both and scores their mean. Not train's random crops: they would multiply the
    feature cost; clean and flip are the views train computes too (shared through the cache)."""
    from folderfit.frozen import feature_cache

    return [feature_cache.CLEAN] if params.augment.hflip is False else [feature_cache.CLEAN, feature_cache.FLIP]  # true or auto


def follow_mirror_test(extractor, files: list, rows: list[dict], labels: np.ndarray,
                       n_classes: int) -> tuple[list, dict | None]:
    """hflip auto: the views train will use. Its mirror test (a head on train's clean vectors
    scores val and val mirrored, folderfit.frozen.probe) keeps the mirror view only where labels
    survive mirroring: a mirrored digit is another shape, so it would blur the review."""
    import torch

    from folderfit.frozen import feature_cache, probe

    split = np.array([r["split"] for r in rows])
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(train) == 0 or len(val) == 0:
        return [feature_cache.CLEAN, feature_cache.FLIP], None
    if probe.mirror_views_pay("auto", len(train)) is False:  # the rule train follows
        say(f"review: {probe.size_note(len(train))}")
        return [feature_cache.CLEAN], None
    train_clean, val_clean, val_mirrored = extractor.features_of(
        [([files[i] for i in train], feature_cache.CLEAN), ([files[i] for i in val], feature_cache.CLEAN),
         ([files[i] for i in val], feature_cache.FLIP)], "features review (mirror test)")
    y = torch.as_tensor(labels)
    test = probe.mirror_test(train_clean, y[train], val_clean, val_mirrored, y[val], n_classes)
    say(f"review: hflip auto: val accuracy {test['val_accuracy']:.4f}, mirrored "
          f"{test['val_accuracy_mirrored']:.4f} -> {'clean + flip' if test['hflip'] else 'clean'} views")
    return ([feature_cache.CLEAN, feature_cache.FLIP] if test["hflip"] else [feature_cache.CLEAN]), test


# ------------------------------------------------------------------ the lists
def copy_groups(rows: list[dict], pairs) -> np.ndarray:
    """Group id per image: identical pixels (same sha256) or a chain of near-duplicate pairs."""
    from folderfit.frozen import similarity as feature_similarity

    first = {}
    same = [(first.setdefault(r["sha256"], i), i) for i, r in enumerate(rows)]
    return feature_similarity.groups(len(rows), [(i, j) for i, j in same if i != j] + list(pairs))


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


# ------------------------------------------------------------------ which images, how many folds
def plan_review(rows: list[dict], classes: list, labels: np.ndarray, wanted_folds: int) -> dict:
    """Which images can be cross-fitted and with how many folds. A class with one image cannot
    be scored out of sample (no head could have seen its class without its label): its images
    are 'not reviewable' (listed, not failed). The folds shrink to what the smallest
    reviewable class allows (>= 2), with a note."""
    from folderfit.frozen import crossfit

    counts = np.bincount(labels, minlength=len(classes))
    reviewable = counts[labels] >= 2
    if (counts >= 2).sum() < 2:  # one class left: no classifier to cross-fit
        reviewable[:] = False
    folds, note = crossfit.plan_folds(counts[counts >= 2], wanted_folds)
    skipped = [{"path": rows[i]["source"], "class": rows[i]["class"],
                "reason": f"class '{rows[i]['class']}' has {counts[labels[i]]} image(s); "
                          f"cross-fitting needs at least 2 per class and 2 such classes"}
               for i in np.flatnonzero(~reviewable)]
    notes = [note] if note else []
    if skipped:
        notes.append(f"{len(skipped)} image(s) not reviewable (too few images in their class): "
                     f"their labels are not scored; see not_reviewable in {REVIEW_JSON}")
    return {"reviewable": np.flatnonzero(reviewable), "folds": folds,
            "folds_requested": wanted_folds, "notes": notes, "skipped": skipped}


def plan_summary(plan: dict, folds_used: int) -> dict:
    """review.json's record of the plan: folds used (and the note when fewer than asked)."""
    return {"folds": folds_used, "folds_requested": plan["folds_requested"],
            "n_not_reviewable": len(plan["skipped"]), "notes": plan["notes"],
            "not_reviewable": plan["skipped"]}


def _share(hits: np.ndarray) -> float | None:
    return round(float(hits.mean()), 4) if len(hits) else None


def review_labels(features: list, labels: np.ndarray, n_classes: int, groups: np.ndarray,
                  index: np.ndarray, plan: dict, seed: int):
    """(cross-fit or None, probs [N, classes], issues) over the reviewable images; the rows of
    the others are NaN (probs, quality), suggested -1, never flagged."""
    from folderfit.frozen import crossfit

    n = len(labels)
    probs = np.full((n, n_classes), np.nan)
    issues = {"quality": np.full(n, np.nan), "suggested": np.full(n, -1), "order": [],
              "n_confident": 0, "noise_rate": 0.0, "per_class_noise": np.full(n_classes, np.nan)}
    sub = plan["reviewable"]
    if len(sub) == 0:
        return None, probs, issues
    kept = np.unique(labels[sub])  # the reviewable classes, remapped to 0..len(kept)-1
    local = np.searchsorted(kept, labels[sub])
    fit = crossfit.cross_fit([v[torch_index(sub)] for v in features], local, len(kept), groups[sub],
                       plan["folds"], seed)
    votes = neighbour_votes(index, labels, n_classes)[sub][:, kept]
    # votes for a class left out are dropped: the rest renormalised (uniform if none is left)
    total = votes.sum(1, keepdims=True)
    votes = np.where(total > 0, votes / np.maximum(total, 1e-12), 1.0 / len(kept))
    mixed = (1 - VOTE_WEIGHT) * fit.probs + VOTE_WEIGHT * votes
    found = label_issues(local, mixed)
    probs[np.ix_(sub, kept)] = mixed
    probs[sub] = np.nan_to_num(probs[sub], nan=0.0)  # classes not reviewable: probability 0
    issues["quality"][sub] = found["quality"]
    issues["suggested"][sub] = kept[found["suggested"]]
    issues["order"] = [int(sub[i]) for i in found["order"]]
    issues["per_class_noise"][kept] = found["per_class_noise"]
    issues.update(n_confident=found["n_confident"], noise_rate=found["noise_rate"])
    return fit, probs, issues


def torch_index(rows: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(rows, dtype=np.int64))


# ------------------------------------------------------------------ outputs
def _r(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.6f}"  # empty: not reviewable


def _rate(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def write_review_dir(out: Path, rows, classes, probs, issues, pairs, distance, outliers,
                     details: dict) -> dict:
    """Every file of metrics/review/ into `out`; returns review.json's content."""
    from folderfit.results import reports

    labels = np.array([classes.index(r["class"]) for r in rows])
    quality, suggested = issues["quality"], issues["suggested"]
    reports.write_csv(out / "label_issues.csv", ["path", "given", "suggested", "score"],
                [[rows[i]["source"], rows[i]["class"], classes[suggested[i]], _r(quality[i])]
                 for i in issues["order"]])
    ranked_pairs = sorted(pairs, key=lambda p: (PAIR_ISSUES.index(pair_issue(rows[p[0]], rows[p[1]])),
                                                -round(max(p[2], p[3]), 6), rows[p[0]]["source"],
                                                rows[p[1]]["source"]))
    reports.write_csv(out / "near_duplicates.csv",
                ["path", "other", "similarity", "issue", "class", "other_class", "split",
                 "other_split", "pixel_correlation"],
                [[rows[i]["source"], rows[j]["source"], _r(sim), pair_issue(rows[i], rows[j]),
                  rows[i]["class"], rows[j]["class"], rows[i]["split"], rows[j]["split"], _r(pix)]
                 for i, j, sim, pix in ranked_pairs])
    outlier_order = sorted(np.flatnonzero(outliers), key=lambda i: (-round(distance[i], 6), i))
    reports.write_csv(out / "outliers.csv", ["path", "class", "split", "score"],
                [[rows[i]["source"], rows[i]["class"], rows[i]["split"], _r(distance[i])]
                 for i in outlier_order])
    flagged = set(issues["order"])
    reports.write_csv(out / "scores.csv",
                ["path", "split", "given", "suggested", "label_quality", "label_issue",
                 "outlier_score", "outlier", *[f"p_{c}" for c in classes]],
                [[r["source"], r["split"], r["class"],
                  classes[suggested[i]] if suggested[i] >= 0 else "", _r(quality[i]),
                  int(i in flagged) if suggested[i] >= 0 else "", _r(distance[i]),
                  int(outliers[i]), *map(_r, probs[i])]
                 for i, r in enumerate(rows)])
    reports.gallery(out / "label_issues.png",
              [(manifest.image_path(PREPARED, rows[i]),
                f"{rows[i]['class']} -> {classes[suggested[i]]}\nscore {quality[i]:.3f}",
                _shorten(rows[i]["source"], 36)) for i in issues["order"][:GALLERY_MAX]],
              f"label review: {min(GALLERY_MAX, len(flagged))} of {len(flagged)} suspects, "
              f"most suspect first (given -> suggested)", "no label issues found")
    per_class = []
    for c, name in enumerate(classes):
        members = labels == c
        per_class.append({"class": name, "n_images": int(members.sum()),
                          "n_label_issues": int(sum(labels[i] == c for i in flagged)),
                          "label_noise_rate": _rate(issues["per_class_noise"][c])})
    reports.write_rows_json(out / "noise_per_class.json",
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
    from folderfit.compute.runtime import pick_runtime, seed_everything
    from folderfit.frozen import feature_cache
    from folderfit.frozen import similarity as feature_similarity

    started = time.perf_counter()
    seed_everything(params.seed)
    rt = pick_runtime(params.precision, params.device)
    rows = read_rows()
    classes = sorted({r["class"] for r in rows})
    labels = np.array([classes.index(r["class"]) for r in rows])
    r = params.review
    plan = plan_review(rows, classes, labels, r.folds)
    for line in plan["notes"]:
        print(f"note: review: {line}", file=sys.stderr)
    extractor, engine_choice = train_feature_extractor(params, len(classes), rt)
    views = review_views(params)
    files = [manifest.image_path(PREPARED, row) for row in rows]
    mirror = None
    if params.augment.hflip == "auto":  # train's own mirror test decides, on the same vectors
        views, mirror = follow_mirror_test(extractor, files, rows, labels, len(classes))
    features = extractor.features_of([(files, view) for view in views], "features review")
    say(f"review: {len(rows)} images, {len(views)} view(s) ({', '.join(v.name for v in views)}): "
          f"{extractor.computed} computed ({extractor.numerics}), {extractor.reused} from the cache {extractor.root}")
    say(f"review: engine {engine_choice.describe()}")
    z = feature_similarity.normalise(feature_cache.mean_over_views(features).numpy())  # votes, outliers: all views
    clean = feature_similarity.normalise(features[0].numpy())  # copies: the clean view

    index, similarity = feature_similarity.nearest(z, r.neighbours)
    # with the clean view alone z is `clean`, so its nearest neighbour is already known
    nearest_clean = similarity[:, 0] if len(views) == 1 else feature_similarity.nearest(clean, 1)[1][:, 0]
    threshold = feature_similarity.duplicate_threshold(nearest_clean, r.duplicate_similarity,
                                      DUPLICATE_SHARE_OF_MEDIAN)
    thumbs = feature_similarity.thumbnails(files, prepared_thumbnails(rows))
    pairs = [(i, j, float(clean[i] @ clean[j]), float(thumbs[i] @ thumbs[j]))
             for i, j in sorted({(i, j) for i, j, _ in feature_similarity.similar_pairs(clean, threshold)} |
                                {(i, j) for i, j, _ in feature_similarity.pairs_above(thumbs, feature_similarity.THUMBNAIL_CORRELATION)})]
    fit, probs, issues = review_labels(features, labels, len(classes), copy_groups(rows, pairs),
                                       index, plan, params.seed)
    distance = 1.0 - similarity.mean(1)
    outliers, outlier_threshold = feature_similarity.outlier_flags(distance, OUTLIER_IQR_FACTOR)

    scored = plan["reviewable"]
    details = {"folds": int(fit.fold.max()) + 1 if fit else 0, "views": [v.name for v in views],
               "mirror_test": mirror,
               "l2_per_fold": fit.l2 if fit else [], "neighbours": int(index.shape[1]),
               "head_accuracy_out_of_sample": _share(np.unique(labels[scored])[fit.probs.argmax(1)] ==
                                                     labels[scored]) if fit else None,
               "accuracy_out_of_sample": _share(probs[scored].argmax(1) == labels[scored]),
               "n_flagged_by_cleanlab": issues["n_confident"],
               "duplicate_similarity": round(threshold, 6),
               "outlier_threshold": round(outlier_threshold, 6)}
    with staged_dir(REVIEW_DIR) as staging:  # built aside, swapped in whole when done
        summary = write_review_dir(staging, rows, classes, probs, issues, pairs, distance,
                                   outliers, details)
        summary = {**summary, **plan_summary(plan, details["folds"])}
        summary["feature_engine"] = extractor.numerics
        page_started = time.perf_counter()
        review_page.write(staging, PREPARED, staging / "index.html")  # the page of the lists
        page_seconds = time.perf_counter() - page_started
        write_json(REVIEW_JSON, summary)
    accuracy = details["accuracy_out_of_sample"]
    say(f"review: out-of-sample accuracy "
          f"{'-' if accuracy is None else f'{accuracy:.4f}'} ({details['folds']}-fold); "
          f"{summary['n_label_issues']} label issues (estimated label noise "
          f"{summary['label_noise_rate']:.1%}), {summary['n_near_duplicates']} "
          f"near-duplicate pairs ({summary['n_near_duplicates_across_classes']} across classes, "
          f"{summary['n_near_duplicates_across_splits']} across splits), {summary['n_outliers']} "
          f"outliers -> {REVIEW_DIR}/ [{time.perf_counter() - started:.1f} s]")
    print_lists(REVIEW_DIR, top=5, out=sys.stdout)
    say(f"see them all: open {REVIEW_DIR}/index.html ({page_seconds:.1f} s to write), or "
          f"`folderfit review --serve` to save decisions into data/corrections.csv (docs: review)")
