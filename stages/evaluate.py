"""Stage `evaluate`: score the held-out split with the trained model file.

The scored split is `test` when prepare made one (it took no part in training or in choosing
the best epoch); otherwise `val`, and eval.json then says `selection_split_scored: true`
because that number is optimistic.

Outputs in metrics/: eval.json (summary, per-class scores), classification_report.txt,
eval/confusion.csv (DVC confusion plot), eval/confusion.png (counts), eval/predictions.csv.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch

from stages import data as D
from stages import metrics as S
from stages.engine import make_loader, predict_logits
from stages.errors import PipelineError, run_main
from stages.fileio import atomic_path, write_json, write_text
from stages.models import load_model_file
from stages.params import load_params
from stages.runtime import pick_runtime, prepare_model, seed_everything

PREPARED = Path("data/prepared")
MODEL_FILE = Path("models/model.pt")
EVAL_JSON = Path("metrics/eval.json")
REPORT_TXT = Path("metrics/classification_report.txt")
EVAL_DIR = Path("metrics/eval")


def scored_split(splits: dict) -> str:
    return "test" if "test" in splits else "val"


def write_csv(path: Path, header: list, rows: list) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def confusion_png(path: Path, matrix: np.ndarray, class_names: list, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            value = matrix[i, j]
            ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=8,
                    color="white" if value > top / 2 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv=None) -> None:
    started = time.perf_counter()
    params = load_params()
    seed_everything(params.seed)
    rt = pick_runtime(params.precision)
    loaded = load_model_file(MODEL_FILE)
    classes, splits = D.read_manifest(PREPARED)
    if classes != loaded.class_names:
        raise PipelineError(f"{MODEL_FILE}: trained on classes {loaded.class_names}, the prepared "
                            f"data has {classes}; rerun `dvc repro`")
    split = scored_split(splits)
    samples = splits[split]
    if split == "val":
        print("note: no test split; scoring val, which also chose the best epoch (optimistic)")
    model = prepare_model(loaded.model, rt)
    loader = make_loader(D.ImageTensorDataset(samples, D.eval_geometry(loaded.preprocess)),
                         params.evaluate.batch_size, False, None, rt)
    normalizer = D.Normalizer(loaded.preprocess.mean, loaded.preprocess.std).to(rt.device)
    logits, labels = predict_logits(model, loader, normalizer, rt, desc=f"evaluate {split}")
    probs = torch.softmax(logits, 1).numpy().astype(np.float64)
    y = labels.numpy()
    preds = probs.argmax(1)

    summary = {"split": split, "selection_split_scored": split == "val", "n_images": len(y),
               **S.summary(probs, y)}
    per_class = S.per_class(y, preds, classes)
    write_json(EVAL_JSON, {**summary, "per_class": per_class})

    from sklearn.metrics import classification_report

    write_text(REPORT_TXT, f"split: {split} ({len(y)} images)\n" + classification_report(
        y, preds, labels=list(range(len(classes))), target_names=classes, digits=4, zero_division=0))
    matrix = S.confusion(y, preds, len(classes))
    write_csv(EVAL_DIR / "confusion.csv", ["actual", "predicted"],
              [[classes[a], classes[b]] for a, b in zip(y, preds)])
    confusion_png(EVAL_DIR / "confusion.png", matrix, classes, f"{split}: {len(y)} images")
    rel = [str(Path(p).relative_to(PREPARED)) for p, _ in samples]
    write_csv(EVAL_DIR / "predictions.csv", ["file", "true", "predicted", "confidence", "correct"],
              [[f, classes[a], classes[b], f"{probs[i, b]:.6f}", int(a == b)]
               for i, (f, a, b) in enumerate(zip(rel, y, preds))])
    print(f"evaluate: {split} accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f} "
          f"on {len(y)} images ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    run_main(main)
