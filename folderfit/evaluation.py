"""Evaluation (stage `evaluate`): score the held-out split with the trained model file.

The scored split is `test` when prepare made one (it took no part in training or in choosing
the best epoch); otherwise `val`, and eval.json and the console then say
`selection_split_scored: true` because that number is optimistic.

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
The directory is built beside its place and swapped in whole, then eval.json is written.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from folderfit import data as D
from folderfit import datasets as DS
from folderfit import metrics as S
from folderfit import reports as R
from folderfit.engine import infer_labelled, make_loader
from folderfit.errors import PipelineError
from folderfit.fileio import staged_dir, write_json, write_text
from folderfit.models import load_model_file
from folderfit.params import Params
from folderfit.runtime import pick_runtime, prepare_model, seed_everything

PREPARED = Path("data/prepared")
MODEL_FILE = Path("models/model.pt")
EVAL_JSON = Path("metrics/eval.json")
EVAL_DIR = Path("metrics/eval")
REPORT_TXT = Path("metrics/classification_report.txt")
HEADLINE = ("split", "n_images", "accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "macro_f1",
            "balanced_accuracy", "roc_auc_ovr_macro", "ece")


def scored_split(splits: dict) -> str:
    if "test" in splits:
        return "test"
    if "val" in splits:
        return "val"
    raise PipelineError(f"{PREPARED}: no test or val images to score; rerun `dvc repro prepare` "
                        f"with data.test_fraction > 0")


def source_paths(prepared: Path) -> dict[str, str]:
    """Prepared file -> its path relative to data.source, from prepare's manifest."""
    with open(prepared / D.MANIFEST, newline="", encoding="utf-8") as fh:
        return {(prepared / r["file"]).as_posix(): r["source"] for r in csv.DictReader(fh)}


def score(loaded, samples, batch_size: int, rt) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities [N, classes] as float64, labels) in sample order."""
    model = prepare_model(loaded.model, rt)
    loader = make_loader(DS.ImageTensorDataset(samples, DS.eval_geometry(loaded.preprocess)),
                         batch_size, rt)
    normalizer = DS.Normalizer(loaded.preprocess.mean, loaded.preprocess.std).to(rt.device)
    logits, labels = infer_labelled(model, loader, normalizer, rt, desc="evaluate")
    return torch.softmax(logits, 1).numpy().astype(np.float64), labels.numpy()


def write_eval_dir(out: Path, probs, y, classes: list, samples, summary: dict) -> dict:
    """Every file of metrics/eval/ into `out`; returns the per-class report."""
    split, n = summary["split"], len(y)
    preds, confidence = probs.argmax(1), probs.max(1)
    per_class = S.per_class_report(probs, y, classes)
    write_json(out / "summary.json", summary)
    write_json(out / "per_class.json", per_class)

    files = [path.as_posix() for path, _ in samples]
    sources = source_paths(PREPARED)
    top = S.top_k_indices(probs, summary["top_k"])
    R.write_csv(out / "predictions.csv",
                ["path", "prepared_file", "true", "predicted", "confidence", "correct", "top_k"],
                [[sources.get(f, f), f, classes[y[i]], classes[preds[i]], f"{confidence[i]:.6f}",
                  int(y[i] == preds[i]), ";".join(f"{classes[c]}={probs[i, c]:.4f}" for c in top[i])]
                 for i, f in enumerate(files)])
    R.write_csv(out / "confusion.csv", ["actual", "predicted"],
                [[classes[a], classes[b]] for a, b in zip(y, preds)])
    matrix = S.confusion(y, preds, len(classes))
    R.confusion_png(out / "confusion.png", matrix, classes, f"{split}: {n} images\ncounts")
    R.confusion_png(out / "confusion_normalized.png", S.row_normalized(matrix), classes,
                    f"{split}: {n} images\nrow-normalised (recall on the diagonal)", normalized=True)
    roc, pr = S.class_curves(probs, y, classes)
    R.write_rows_json(out / "roc.json", roc)
    R.write_rows_json(out / "pr.json", pr)
    R.reliability_png(out / "reliability.png", S.reliability_bins(confidence, preds == y),
                      summary["ece"], f"{split}: {n} images")
    wrong = sorted((i for i in range(n) if preds[i] != y[i]), key=lambda i: (-confidence[i], i))
    R.mistakes_gallery(out / "mistakes.png",
                       [(files[i], classes[y[i]], classes[preds[i]], confidence[i]) for i in wrong],
                       f"{split}")
    return per_class


def run(params: Params) -> None:
    started = time.perf_counter()
    seed_everything(params.seed)
    rt = pick_runtime(params.precision, params.device)
    loaded = load_model_file(MODEL_FILE)
    classes, splits = D.read_manifest(PREPARED)
    if classes != loaded.class_names:
        raise PipelineError(f"{MODEL_FILE}: trained on classes {loaded.class_names}, the prepared "
                            f"data has {classes}; rerun `dvc repro`")
    split = scored_split(splits)
    samples = splits[split]
    if split == "val":
        print("note: no test split, so the scored split (val) is the one that chose the best "
              "epoch; these numbers are optimistic (eval.json: selection_split_scored: true)")
    probs, y = score(loaded, samples, params.evaluate.batch_size, rt)
    summary = {"split": split, "selection_split_scored": split == "val", "n_images": len(y),
               "n_classes": len(classes),
               **S.summary(probs, y, params.seed, params.evaluate.bootstrap)}

    with staged_dir(EVAL_DIR) as staging:  # swapped in whole; a failure leaves the old one
        per_class = write_eval_dir(staging, probs, y, classes, samples, summary)
    write_text(REPORT_TXT, R.per_class_table(split, len(y), per_class, summary))
    headline = {key: summary[key] for key in HEADLINE if key in summary}
    write_json(EVAL_JSON, {**headline, "per_class": [
        {"class": name, **{k: row[k] for k in ("precision", "recall", "f1", "support")}}
        for name, row in per_class.items()]})

    def with_ci(name):
        ci = (f" (95% CI {summary[f'{name}_ci95_low']:.4f}-{summary[f'{name}_ci95_high']:.4f})"
              if f"{name}_ci95_low" in summary else "")
        return f"{name} {summary[name]:.4f}{ci}"

    auc = summary["roc_auc_ovr_macro"]
    print(f"evaluate: {split}, {len(y)} images: {with_ci('accuracy')}, {with_ci('macro_f1')}, "
          f"balanced accuracy {summary['balanced_accuracy']:.4f}, top-{summary['top_k']} "
          f"{summary['top_k_accuracy']:.4f}, ROC-AUC {'n/a' if auc is None else f'{auc:.4f}'} "
          f"({summary['roc_auc_classes']}/{len(classes)} classes), ECE {summary['ece']:.4f} "
          f"[{time.perf_counter() - started:.1f} s]")

