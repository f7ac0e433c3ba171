"""Evaluation (stage `evaluate`): score images the delivered model never learned from.

What is scored (eval.json `split` and `estimate`; folderfit.artifacts.learned_from explains the choice):
  test         the test split, with the model file (when prepare made one or it was given)
  cv           no test split, feature_extract: out-of-fold predictions of a K-fold
               cross-validation of the whole head procedure over train + val, made by train
  val_holdout  no test split, fine_tune / full_tune: the half of val that took no part in
               training or in choosing the best epoch, with the model file
Every scored image is checked against train's record of what the model learned from
(metrics/train/learned_from.csv): an overlap stops the stage. "Unseen" means by content: an
image whose content hash (prepare's manifest) equals a learned one's is a copy (a byte copy
of a training photo in the given test/ folder, say) and is left out of the score, whatever
its path or split; eval.json says how many (`copies_of_learned_excluded`) and the score with
them (`accuracy_with_copies`, `macro_f1_with_copies`). To stop instead, set
`data.on_leak: fail` (prepare then refuses copies across splits). With a test split,
eval.json also counts the test photos data/corrections.csv dropped or relabelled.

Outputs: metrics/eval.json (the headline numbers DVC tables show, and per-class P/R/F1 as a
list, which `dvc exp show` leaves out of its columns), metrics/classification_report.txt
(readable per-class table) and metrics/eval/:
  summary.json           every number of the evaluation (settings such as top_k included)
  per_class.json         per-class report (+ one-vs-rest ROC-AUC, average precision)
  predictions.csv        every scored image: path, true, predicted, confidence, top-k
  confusion.csv          one row per image for the DVC confusion plot
  confusion.png, confusion_normalized.png      counts and row-normalised (recall) matrices
  roc.json, pr.json      one-vs-rest curves per class for DVC plots
  reliability.png        calibration diagram;  mistakes.png  most confident mistakes
  decisions.json, coverage.json   the model file's decision rules on the split
                         (folderfit.results.decision_report), when the file has them
The directory is built beside its place and swapped in whole, then eval.json is written.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from folderfit.artifacts import corrections, learned_from, manifest
from folderfit.artifacts.model_file import load_model_file
from folderfit.backbone.views import FlipTTA
from folderfit.compute.inference import infer_labelled, make_loader
from folderfit.compute.runtime import (
    pick_runtime,
    prepare_model,
    scoring_runtime,
    seed_everything,
)
from folderfit.errors import PipelineError
from folderfit.images import datasets
from folderfit.params import Params
from folderfit.paths import EVAL_DIR, EVAL_JSON, MODEL_FILE, PREPARED, REPORT_TXT
from folderfit.results import decision_report, metrics, reports
from folderfit.results.pages import results_page
from folderfit.support.fileio import staged_dir, write_json, write_text
from folderfit.support.report import say

HEADLINE = ("split", "estimate", "n_images", "accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "macro_f1",
            "balanced_accuracy", "roc_auc_ovr_macro", "ece", "copies_of_learned_excluded",
            "accuracy_with_copies", "macro_f1_with_copies", "n_images_with_copies",
            "test_dropped_by_corrections", "test_relabelled_by_corrections",
            "accepted_fraction", "accepted_accuracy", "accepted_accuracy_ci95_low", "unfamiliar_rate",
            "set_coverage_95", "set_mean_size_95")

# A feature_extract model whose features are fp32 is scored from its backbone's cached features
# (score_checked); this many of the scored images also go through the whole model file, which
# must agree within the tolerance (ONNX Runtime and torch in fp32: ~1e-6 here).
FEATURE_CHECK_IMAGES = 8
FEATURE_CHECK_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}

ESTIMATES = {
    "test": "the test split, which took no part in training or model choice",
    "cv": "{folds}-fold cross-validation of the whole head procedure (flip choice, l2 choice, "
          "refit) over train + val; the model file is fitted on all of them",
    "val_holdout": "the half of val held out from training and epoch selection, scored with "
                   "the model file",
}


def scored_images(splits: dict, loaded, params: Params, rt) -> tuple[str, list, np.ndarray, np.ndarray, dict]:
    """(estimate name, samples, probabilities, labels, facts) of the images to score, none of
    which the delivered model learned from, by path or by content (module docstring). Copies
    of learned images are scored too, apart: facts["copies"] = (samples, probs, labels)."""
    # the record is required wherever the choice of images depends on it
    learned = learned_from.read_learned_from(required="test" not in splits)
    if learned is None:  # a model file made outside train: assume it learned from train + val
        learned = {path.as_posix() for s in ("train", "val") for path, _ in splits.get(s, [])}
    if "test" in splits:
        estimate, samples = "test", splits["test"]
    else:
        cv = learned_from.read_cv()
        if cv is not None:  # train's folds keep copies together: no fold scores a copy it fitted
            files, probs, labels, folds = cv
            samples = [(Path(f), int(y)) for f, y in zip(files, labels)]
            return "cv", samples, probs, labels, {"folds": int(folds.max()) + 1}
        samples = [s for s in splits.get("val", []) if s[0].as_posix() not in learned]
        estimate = "val_holdout"
        if not samples:
            raise PipelineError(
                f"{PREPARED}: no test split and every val image shaped the model, so nothing is "
                f"left to score honestly; set data.test_fraction > 0 or evaluate.cv_folds > 0 "
                f"(feature_extract) and rerun `dvc repro`")
    seen = sorted({path.as_posix() for path, _ in samples} & learned)
    if seen:  # by construction this cannot happen: a broken invariant must not become a score
        raise PipelineError(f"{seen[0]}: scored by evaluate but the model learned from it "
                            f"({len(seen)} such images); rerun `dvc repro` from prepare")
    fresh, copies = learned_from.split_copies(samples, learned, manifest.content_hashes(PREPARED))
    if not fresh:
        raise no_fresh_images(estimate, copies, learned)
    probs, labels, facts = score_checked(loaded, fresh + copies, params, rt)
    bad = np.flatnonzero(~np.isfinite(probs).all(1))
    if len(bad):  # NaN weights (or an fp16 overflow) would otherwise score as class 0
        raise PipelineError(f"{MODEL_FILE}: the model gave NaN/Inf for {len(bad)} of {len(probs)} "
                            f"images (first: {(fresh + copies)[bad[0]][0]}); retrain it, or try precision: fp32")
    n = len(fresh)
    facts["copies"] = (copies, probs[n:], labels[n:])
    return estimate, fresh, probs[:n], labels[:n], facts


def no_fresh_images(estimate: str, copies: list, learned: set) -> PipelineError:
    """Every image left to score is a copy of a learned one: one line naming a pair and the fix."""
    hashes = manifest.content_hashes(PREPARED)
    sources = source_paths(PREPARED)
    first = copies[0][0].as_posix()
    twin = next((f for f in sorted(learned) if hashes.get(f) == hashes.get(first)), "?")
    where = ("test images" if estimate == "test" else "held-out val images")
    fix = ("put photos that are in neither train/ nor val/ into test/" if estimate == "test" else
           "add photos to val/ that are not copies of train/ photos, or add a test/ folder")
    return PipelineError(
        f"{PREPARED}: all {len(copies)} {where} are copies (same pixels) of images the model "
        f"learned from (e.g. {sources.get(first, first)} = {sources.get(twin, twin)}), so nothing "
        f"unseen is left to score; {fix} and rerun `dvc repro`")


def copies_summary(copies, probs, labels, fresh_probs, fresh_labels, n_classes: int) -> dict:
    """eval.json's view of the copies left out: how many, and the score had they counted."""
    out = {"copies_of_learned_excluded": len(copies)}
    if copies:
        y = np.concatenate([fresh_labels, labels])
        preds = np.concatenate([fresh_probs, probs]).argmax(1)
        out["n_images_with_copies"] = len(y)
        out["accuracy_with_copies"] = round(float((preds == y).mean()), 6)
        out["macro_f1_with_copies"] = round(float(metrics.macro_f1_rows(y[None], preds[None], n_classes)[0]), 6)
    return out


def source_paths(prepared: Path) -> dict[str, str]:
    """Image file (manifest.image_path) -> its path relative to data.source, from prepare's manifest."""
    return {manifest.image_path(prepared, r).as_posix(): r["source"] for r in manifest.read_manifest_rows(prepared)}


def score(loaded, samples, batch_size: int, rt, show_progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities [N, classes] as float64, labels) in sample order, from the
    whole model file."""
    model = prepare_model(loaded.model, rt)
    loader = make_loader(datasets.ImageTensorDataset(samples, datasets.eval_geometry(loaded.preprocess)),
                         batch_size, rt)
    normalizer = datasets.Normalizer(loaded.preprocess.mean, loaded.preprocess.std).to(rt.device)
    logits, labels = infer_labelled(model, loader, normalizer, rt, desc="evaluate", show_progress=show_progress)
    return torch.softmax(logits, 1).numpy().astype(np.float64), labels.numpy()


def feature_route(loaded, params: Params):
    """(head, feature extractor of the backbone) that compute the model file's outputs as the
    train stage computed its features (same engine and precision, recorded in the file as
    `feature_engine`, hence the same feature-cache entries), or None when the file does not
    record them (fine_tune / full_tune models: their backbone is new to the cache)."""
    from folderfit.compute.runtime import Runtime
    from folderfit.frozen import feature_cache
    from folderfit.frozen.extractor import recorded_extractor

    record = loaded.record
    if record.strategy != "feature_extract" or record.feature_engine is None or \
            record.feature_engine.engine not in ("onnxruntime", "openvino", "torch"):
        return None
    engine, precision = record.feature_engine
    device = pick_runtime("fp32", params.device).device
    if precision != "fp32":
        # under autocast the whole model runs its head in bf16 too (predict does): features +
        # an fp32 head differ from that by ~1e-3, more than predict may differ from evaluate
        return None
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    rt = Runtime(device, dtype)
    inner = loaded.model.model if isinstance(loaded.model, FlipTTA) else loaded.model
    backbone, head = feature_cache.backbone_only(prepare_model(copy.deepcopy(inner), rt), loaded.info["head_name"])
    extractor = recorded_extractor(backbone, loaded.preprocess, params, rt, engine)
    return head.float().eval(), extractor


def score_from_features(route, samples, tta: str) -> np.ndarray:
    """Probabilities from the backbone's (cached) features and the model file's head, with
    the file's test-time augmentation done as FlipTTA does it (the mean of the logits)."""
    from folderfit.frozen import feature_cache

    head, extractor = route
    files = [path for path, _ in samples]
    views = [feature_cache.CLEAN] + ([feature_cache.FLIP] if tta == "flip" else [])
    vectors = extractor.features_of([(files, view) for view in views], "features evaluate")
    with torch.inference_mode():
        logits = feature_cache.mean_over_views([head(v.float()) for v in vectors])
    return torch.softmax(logits, 1).numpy().astype(np.float64)


def check_sample(n: int, seed: int) -> list[int]:
    """Indices of the scored images also run through the whole model file (seeded)."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=min(n, FEATURE_CHECK_IMAGES), replace=False).tolist())


def score_checked(loaded, samples, params: Params, rt) -> tuple[np.ndarray, np.ndarray, dict]:
    """(probabilities, labels, facts). A feature_extract model is scored from its backbone's
    features, which review and train have already computed (a cache hit), then proven equal
    to the model file: a seeded sample of the images goes through the whole model file in
    the features' precision, and every probability must agree within the tolerance, else
    every image is scored with the model file (with a note). Other models: the model file."""
    route = feature_route(loaded, params) if samples else None
    labels = np.array([y for _, y in samples], dtype=np.int64)
    if route is not None:
        started = time.perf_counter()
        probs = score_from_features(route, samples, loaded.tta)
        pick = check_sample(len(samples), params.seed)
        extractor = route[1]
        reference, _ = score(loaded, [samples[i] for i in pick], params.evaluate.batch_size,
                             extractor.rt, show_progress=False)
        gap = float(np.abs(reference - probs[pick]).max())
        tolerance = FEATURE_CHECK_TOLERANCE[extractor.rt.precision]
        engine = extractor.numerics
        if gap <= tolerance:
            say(f"evaluate: scored from the backbone's features ({engine}: "
                  f"{extractor.reused} vectors from the cache, {extractor.computed} computed) and the "
                  f"model file's head; the whole model file on {len(pick)} of the images agrees "
                  f"(largest probability difference {gap:.1e} <= {tolerance:g}) "
                  f"[{time.perf_counter() - started:.1f} s]")
            return probs, labels, {"scored_with": f"features ({engine}) + the model file's head",
                                   "checked_images": len(pick), "check_max_difference": gap}
        print(f"note: evaluate: the features route differs from the model file on {len(pick)} "
              f"images (largest probability difference {gap:.1e} > {tolerance:g}); scoring every "
              f"image with the model file instead", file=sys.stderr)
    probs, labels = score(loaded, samples, params.evaluate.batch_size, rt)
    return probs, labels, {"scored_with": f"the model file ({rt.precision})"}


def run_facts(loaded, params: Params, split: str) -> dict:
    """What the results page shows about the run: model, strategy, data version, settings."""
    from folderfit.support.fileio import sha256_file

    record = loaded.record
    return {"backbone": record.model_name or "?", "strategy": record.strategy or "?",
            "weights": record.weights_source or "?",
            "feature engine": str(record.feature_engine or "-"),
            "image size": loaded.preprocess.image_size, "test-time augmentation": loaded.tta,
            "train / val images": f"{record.n_train if record.n_train is not None else '?'} / "
                                  f"{record.n_val if record.n_val is not None else '?'}",
            "scored": ESTIMATES[split].split(";")[0].format(folds=params.evaluate.cv_folds),
            "data version (manifest sha256)": sha256_file(manifest.manifest_path(PREPARED))[:12],
            "seed": params.seed}


FEW_SHOT = 3  # a class with fewer photos in the data gets a note per class (docs/data.md)


def class_note(photos: int, support: int, interval: list, split: str) -> str | None:
    """What a class's row can claim when the class has few photos, or None."""
    if photos >= FEW_SHOT:
        return None
    if photos == 1 and split == "cv":
        return ("1 photo: no estimate for this class: cross-validation scores it with a head that "
                "never saw the class, so it counts as wrong; the delivered model learned from it, "
                "but nothing measures how well")
    if support == 0:
        return f"{photos} photo(s), none scored: no estimate for this class"
    return (f"{photos} photos, {support} scored: recall is known only within "
            f"{interval[0]:.2f}-{interval[1]:.2f} (95%)")


def photos_per_class(classes: list) -> dict:
    """Prepared photos of each class, in all splits (the manifest's rows)."""
    photos = {name: 0 for name in classes}
    for row in manifest.read_manifest_rows(PREPARED):
        if row["class"] in photos:
            photos[row["class"]] += 1
    return photos


def add_class_notes(per_class: dict, split: str, photos: dict) -> None:
    """A `photos` count (every split) and, for few-shot classes, a `note` on each row."""
    for name, row in per_class.items():
        row["photos"] = photos[name]
        note = class_note(photos[name], row["support"], row["recall_ci95"], split)
        if note:
            row["note"] = note


def write_eval_dir(out: Path, probs, y, classes: list, samples, summary: dict,
                   photos: dict | None = None) -> dict:
    """Every file of metrics/eval/ into `out`; returns the per-class report. `photos`: the
    prepared photos per class (photos_per_class), for the per-class counts and notes."""
    split, n = summary["split"], len(y)
    preds, confidence = probs.argmax(1), probs.max(1)
    per_class = metrics.per_class_report(probs, y, classes)
    if photos is not None:
        add_class_notes(per_class, split, photos)
    write_json(out / "summary.json", summary)
    write_json(out / "per_class.json", per_class)

    files = [path.as_posix() for path, _ in samples]
    sources = source_paths(PREPARED)
    top = metrics.top_k_indices(probs, summary["top_k"])
    reports.write_csv(out / "predictions.csv",
                ["path", "prepared_file", "true", "predicted", "confidence", "correct", "top_k"],
                [[sources.get(f, f), f, classes[y[i]], classes[preds[i]], f"{confidence[i]:.6f}",
                  int(y[i] == preds[i]), ";".join(f"{classes[c]}={probs[i, c]:.4f}" for c in top[i])]
                 for i, f in enumerate(files)])
    reports.write_csv(out / "confusion.csv", ["actual", "predicted"],
                [[classes[a], classes[b]] for a, b in zip(y, preds)])
    matrix = metrics.confusion(y, preds, len(classes))
    reports.confusion_png(out / "confusion.png", matrix, classes, f"{split}: {n} images\ncounts")
    reports.confusion_png(out / "confusion_normalized.png", metrics.row_normalized(matrix), classes,
                    f"{split}: {n} images\nrow-normalised (recall on the diagonal)", normalized=True)
    roc, pr = metrics.class_curves(probs, y, classes)
    reports.write_rows_json(out / "roc.json", roc)
    reports.write_rows_json(out / "pr.json", pr)
    reports.reliability_png(out / "reliability.png", metrics.reliability_bins(confidence, preds == y),
                      summary["ece"], f"{split}: {n} images")
    wrong = sorted((i for i in range(n) if preds[i] != y[i]), key=lambda i: (-confidence[i], i))
    reports.mistakes_gallery(out / "mistakes.png",
                       [(files[i], classes[y[i]], classes[preds[i]], confidence[i]) for i in wrong],
                       f"{split}")
    return per_class


def run(params: Params) -> None:
    started = time.perf_counter()
    seed_everything(params.seed)
    loaded = load_model_file(MODEL_FILE)
    # the numerics the model's scores were computed with in train (recorded in the file), as
    # predict and folderfit.load use them by default
    rt = scoring_runtime(params.precision, params.device, loaded.numerics)
    classes, splits = manifest.read_manifest(PREPARED)
    if classes != loaded.class_names:
        raise PipelineError(f"{MODEL_FILE}: trained on classes {loaded.class_names}, the prepared "
                            f"data has {classes}; rerun `dvc repro`")
    split, samples, probs, y, facts = scored_images(splits, loaded, params, rt)
    estimate = ESTIMATES[split].format(**facts)
    scoring = {k: facts[k] for k in ("scored_with", "checked_images", "check_max_difference") if k in facts}
    summary = {"split": split, "estimate": estimate, "n_images": len(y), "n_classes": len(classes),
               **scoring, **metrics.summary(probs, y, params.seed, params.evaluate.bootstrap)}
    copies, copy_probs, copy_labels = facts.get("copies", ([], None, None))
    summary.update(copies_summary(copies, copy_probs, copy_labels, probs, y, len(classes)))
    if copies:
        sources = source_paths(PREPARED)
        summary["copies_of_learned"] = [sources.get(p.as_posix(), p.as_posix()) for p, _ in copies]
    if split == "test":
        fixed = corrections.read_test_record(PREPARED)
        summary["test_dropped_by_corrections"] = fixed["dropped"]
        summary["test_relabelled_by_corrections"] = fixed["relabelled"]

    decided = None
    if loaded.decisions is not None and len(y):
        vectors = None if split == "cv" else decision_report.scored_features(
            loaded, samples, params.evaluate.batch_size, rt, feature_route(loaded, params))
        decided, curve = decision_report.report(loaded.decisions, probs, y, vectors, classes, split)
        summary.update(decision_report.headline(decided))
    with staged_dir(EVAL_DIR) as staging:  # swapped in whole; a failure leaves the old one
        if decided is not None:
            decision_report.write(staging, decided, curve)
        per_class = write_eval_dir(staging, probs, y, classes, samples, summary,
                                   photos_per_class(classes))
        results_page.write(staging, PREPARED, staging / "index.html",
                           facts={**run_facts(loaded, params, split),
                                  "scored with": facts.get("scored_with", "train's cross-validation")})
    write_text(REPORT_TXT, reports.per_class_table(split, len(y), per_class, summary))
    headline = {key: summary[key] for key in HEADLINE if key in summary}
    write_json(EVAL_JSON, {**headline, "per_class": [
        {"class": name, **{k: row[k] for k in ("precision", "recall", "f1", "support", "recall_ci95",
                                                "photos", "note") if k in row}}
        for name, row in per_class.items()]})

    def with_ci(name):
        ci = (f" (95% CI {summary[f'{name}_ci95_low']:.4f}-{summary[f'{name}_ci95_high']:.4f})"
              if f"{name}_ci95_low" in summary else "")
        return f"{name} {summary[name]:.4f}{ci}"

    auc = summary["roc_auc_ovr_macro"]
    say(f"evaluate: {split} ({estimate}), {len(y)} images: {with_ci('accuracy')}, {with_ci('macro_f1')}, "
          f"balanced accuracy {summary['balanced_accuracy']:.4f}, top-{summary['top_k']} "
          f"{summary['top_k_accuracy']:.4f}, ROC-AUC {'n/a' if auc is None else f'{auc:.4f}'} "
          f"({summary['roc_auc_classes']}/{len(classes)} classes), ECE {summary['ece']:.4f}"
          + (f"; scored with {summary['scored_with']}" if "scored_with" in summary else "")
          + "".join(f"; {note}" for note in scored_set_notes(summary))
          + (f"; {decision_report.sentence(decided)}" if decided is not None else "")
          + f" [{time.perf_counter() - started:.1f} s]")


def scored_set_notes(summary: dict) -> list[str]:
    """Sentences on what the scored set leaves out (copies of learned images) and how it
    differs from before data/corrections.csv (test photos dropped or relabelled)."""
    notes = []
    n = summary.get("copies_of_learned_excluded", 0)
    if n:
        notes.append(f"{n} cop{'y' if n == 1 else 'ies'} of images the model learned from left out "
                     f"(same pixels; with them accuracy {summary['accuracy_with_copies']:.4f} on "
                     f"{summary['n_images_with_copies']} images)")
    dropped = summary.get("test_dropped_by_corrections", 0)
    relabelled = summary.get("test_relabelled_by_corrections", 0)
    if dropped or relabelled:
        notes.append(f"{corrections.CORRECTIONS} dropped {dropped} and relabelled {relabelled} test "
                     f"photo(s)" + (f": scored on {dropped} fewer test photos than without it"
                                    if dropped else ""))
    return notes

