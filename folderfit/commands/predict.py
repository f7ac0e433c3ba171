"""Classify new images with a trained model file: `folderfit predict PATH...`.

Only the model file is needed (architecture, classes and preprocessing are stored in it; no
params.yaml). Each image goes through exactly what `evaluate` does (folderfit.images.decode, the one
path): decoded to RGB with its EXIF orientation applied, shrunk as prepare stores it, the model
file's eval geometry (resize of the shorter side + centre crop), normalised on the compute
device, then the model. Images over the size limits (imageio: aspect ratio, pixel count) are
reported and left out like unreadable ones.

Folders are searched recursively, links to files and folders followed (each folder once, so
link loops end); hidden files and folders (names starting with '.') and non-image extensions
are skipped. A file that cannot be read or decoded (a broken link, a truncated JPEG) is
reported on stderr and left out; the exit code is then 1 (the predictions of all other files
are still written). Any file name works: the path column holds its printable UTF-8 form
(folderfit.images.image_folder.printable), so the CSV and JSON lines stay valid UTF-8.

An existing --output file is refused unless --force (it could be data/corrections.csv); it is
written atomically. Probabilities that are not finite (a model file with NaN weights) are a
one-line error, not output.

Output: CSV (default, stdout when no --output) with columns path, predicted, confidence,
top1_class, top1_prob, ... topK_class, topK_prob, decision (and `set` with --sets: the
classes joined by ';'); or JSON lines when --output ends in .jsonl / .ndjson: {"path",
"predicted", "decision", "confidence", "top_k": [{"class", "prob"}, ...] (, "set")}.
`decision` is the model file's (folderfit.compute.decisions): the class, `unsure` or
`unfamiliar`; a model file without decision rules always gives the class.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import torch

from folderfit.artifacts.model_file import load_model_file
from folderfit.compute import decisions
from folderfit.compute.classifier import classify_files
from folderfit.compute.runtime import Setting
from folderfit.errors import PipelineError
from folderfit.support.report import say
from folderfit.images import image_folder
from folderfit.images.collect import collect_images
from folderfit.support.fileio import write_text

JSONL_SUFFIXES = (".jsonl", ".ndjson")


def rows(files: list[Path], probs: torch.Tensor, order: list[int], class_names: list, k: int,
         decided=None, sets=None):
    """One dict per predicted file: path, predicted, decision, confidence, top_k
    [(class, prob)] (and set [class] when `sets`)."""
    k = min(k, len(class_names))
    top_p, top_i = probs.topk(k, dim=1)  # ties: lower class index first, like argmax
    out = []
    for row, index in enumerate(order):
        top = [(class_names[int(c)], float(p)) for p, c in zip(top_p[row], top_i[row])]
        out.append({"path": image_folder.printable(str(files[index])), "predicted": top[0][0],
                    "decision": decided.labels[row] if decided else top[0][0],
                    "confidence": top[0][1],
                    "top_k": top})
        if sets is not None:
            out[-1]["set"] = [class_names[c] for c in sets[row]]
    return out


def format_csv(records: list[dict], k: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["path", "predicted", "confidence"]
    for j in range(1, k + 1):
        header += [f"top{j}_class", f"top{j}_prob"]
    with_sets = bool(records) and "set" in records[0]
    writer.writerow(header + ["decision"] + (["set"] if with_sets else []))
    for r in records:
        line = [r["path"], r["predicted"], f"{r['confidence']:.6f}"]
        for name, p in r["top_k"]:
            line += [name, f"{p:.6f}"]
        writer.writerow(line + [r["decision"]] + ([";".join(r["set"])] if with_sets else []))
    return buf.getvalue()


def format_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps({"path": r["path"], "predicted": r["predicted"], "decision": r["decision"],
                               "confidence": round(r["confidence"], 6),
                               "top_k": [{"class": c, "prob": round(p, 6)} for c, p in r["top_k"]],
                               **({"set": r["set"]} if "set" in r else {})})
                   + "\n" for r in records)


# ------------------------------------------------------------------ command
def check_output(output: str | None, force: bool) -> None:
    """An existing --output is never overwritten silently (it may be data/corrections.csv)."""
    if not output:
        return
    path = Path(output)
    if path.is_dir():
        raise PipelineError(f"--output {output}: is a folder; give a file name (.csv, .jsonl, .ndjson)")
    if (path.exists() or path.is_symlink()) and not force:
        raise PipelineError(f"--output {output}: the file exists; choose a new name, or add "
                            f"--force to replace it")


def check_finite(probs: torch.Tensor, order: list[int], files: list[Path], model: str) -> None:
    """NaN or infinite probabilities (a model file with NaN weights) are an error, not output."""
    bad = ~torch.isfinite(probs).all(1) if len(probs) else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        first = image_folder.printable(str(files[order[int(bad.nonzero()[0, 0])]]))
        raise PipelineError(f"{model}: the model gives non-finite probabilities (NaN/inf) for "
                            f"{int(bad.sum())} of {len(probs)} image(s), e.g. {first}; the model "
                            f"file is broken (NaN weights?): retrain it or use another one")


def command(args) -> None:
    """`folderfit predict` (arguments: folderfit.cli)."""
    if args.output and not args.output.lower().endswith((".csv",) + JSONL_SUFFIXES):
        raise PipelineError(f"--output {args.output}: use a .csv, .jsonl or .ndjson file name")
    check_output(args.output, getattr(args, "force", False))
    loaded = load_model_file(args.model)
    level = getattr(args, "sets", None)
    if level is not None and not 0 < level < 1:
        raise PipelineError(f"--sets {level}: give a coverage level between 0 and 1, e.g. 0.95")
    if level is not None and loaded.decisions is None:
        raise PipelineError(f"{args.model}: has no decision rules for --sets (a file from before "
                            f"them, or not from a feature_extract train); retrain with `dvc repro train`")
    files, missing = collect_images(args.paths)
    for path, reason in missing:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not files:
        raise PipelineError(f"no image files found in {image_folder.printable(' '.join(args.paths))} (extensions: "
                            f"{', '.join(sorted(image_folder.IMAGE_EXTENSIONS))}); pass image files or folders")
    probs, order, failed, decided = classify_files(loaded, files, args.batch_size, args.precision,
                                                   device=args.device, setting=Setting("cli"))
    for index, reason in failed:
        print(f"skipped {image_folder.printable(str(files[index]))}: {reason}", file=sys.stderr)
    check_finite(probs, order, files, args.model)
    sets = None if level is None else decisions.prediction_sets(loaded.decisions, probs, level)
    records = rows(files, probs, order, loaded.class_names, args.top_k, decided, sets)
    k = min(args.top_k, len(loaded.class_names))
    jsonl = bool(args.output) and args.output.lower().endswith(JSONL_SUFFIXES)
    text = format_jsonl(records) if jsonl else format_csv(records, k)
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    n_failed = len(failed) + len(missing)
    say(f"predict: {len(records)} image(s) classified"
          + (f" -> {args.output}" if args.output else "")
          + (f"; {n_failed} skipped (see above)" if n_failed else ""), file=sys.stderr)
    if n_failed:
        sys.exit(1)
