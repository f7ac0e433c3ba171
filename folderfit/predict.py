"""Classify new images with a trained model file: `folderfit predict PATH...`.

Only the model file is needed (architecture, classes and preprocessing are stored in it; no
params.yaml). Each image goes through exactly what `evaluate` does (folderfit.imageio, the one
path): decoded to RGB with its EXIF orientation applied, shrunk as prepare stores it, the model
file's eval geometry (resize of the shorter side + centre crop), normalised on the compute
device, then the model. Images over the size limits (imageio: aspect ratio, pixel count) are
reported and left out like unreadable ones.

Folders are searched recursively, links to files and folders followed (each folder once, so
link loops end); hidden files and folders (names starting with '.') and non-image extensions
are skipped. A file that cannot be read or decoded (a broken link, a truncated JPEG) is
reported on stderr and left out; the exit code is then 1 (the predictions of all other files
are still written). Any file name works: the path column holds its printable UTF-8 form
(folderfit.data.printable), so the CSV and JSON lines stay valid UTF-8.

An existing --output file is refused unless --force (it could be data/corrections.csv); it is
written atomically. Probabilities that are not finite (a model file with NaN weights) are a
one-line error, not output.

Output: CSV (default, stdout when no --output) with columns path, predicted, confidence,
top1_class, top1_prob, ... topK_class, topK_prob; or JSON lines when --output ends in
.jsonl / .ndjson: {"path", "predicted", "confidence", "top_k": [{"class", "prob"}, ...]}.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import torch

from folderfit import data as D
from folderfit import datasets as DS
from folderfit import imageio as IO
from folderfit.inference import infer, make_loader
from folderfit.errors import PipelineError
from folderfit.fileio import write_text
from folderfit.models import load_model_file
from folderfit.runtime import Setting, prepare_model, scoring_runtime

JSONL_SUFFIXES = (".jsonl", ".ndjson")


# ------------------------------------------------------------------ inputs
# what a folder search passes over without a word (as documented), and what it never misses
QUIET_REASONS = ("hidden file", "hidden folder", "not an image extension", "link loop")


def collect_images(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files in argument order, folders sorted) and [(printable path, reason)] for what
    could not be taken: a missing path, a broken link or unreadable folder, a pipe named .jpg.
    A file named explicitly is always tried; inside folders only image extensions are taken,
    links to files and folders are followed (each folder searched once: link loops end)."""
    files, problems = [], []
    for arg in paths:
        path = Path(arg)
        shown = D.printable(str(arg))
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found, skipped = D.walk_images(path, D.printable(str(path)), follow_folder_links=True)
            files.extend(f.path for f in found)
            for rel, reason in skipped:
                folder_problem = reason.startswith("cannot read folder")
                if not reason.startswith(QUIET_REASONS) and (
                        folder_problem or os.path.splitext(rel)[1].lower() in D.IMAGE_EXTENSIONS):
                    problems.append((rel, reason))
        elif path.exists():
            problems.append((shown, D.NOT_REGULAR))
        elif path.is_symlink():
            problems.append((shown, "broken symbolic link (its target does not exist)"))
        else:
            problems.append((shown, "no such file or folder"))
    return files, problems


class ImageFiles(torch.utils.data.Dataset):
    """Item i: (uint8 CHW tensor after the eval geometry, or None, index, error or None).
    The tensor comes from folderfit.imageio.network_image: the path prepare's stored copy
    takes, so evaluate's input for a prepared copy equals predict's for its original."""

    def __init__(self, files: list[Path], preprocess):
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return IO.network_image(self.files[i], self.preprocess), i, None
        except IO.BadImage as exc:
            return None, i, str(exc)


def collate(items):
    """Stack the decoded images of a batch (None if none decoded); the meta is
    (indices of the decoded files, [(index, reason)] of the unreadable ones)."""
    good = [(t, i) for t, i, err in items if err is None]
    bad = [(i, err) for t, i, err in items if err is not None]
    images = torch.stack([t for t, _ in good]) if good else None
    return images, ([i for _, i in good], bad)


# ------------------------------------------------------------------ prediction
# From this many images on, a model whose scores were computed by ONNX Runtime fp32 is run by
# it (when installed): its export costs ~1-2 s, about what it then saves per 64 lite2 images
# against torch fp32 on a 2-core CPU.
ORT_MIN_IMAGES = 64


def onnxruntime_model(model, loaded, rt):
    """`model` (fp32, CPU) as an ONNX Runtime session where the file records that engine, else
    `model` itself: torch fp32 computes the same numbers (to ~1e-6 in probability), slower.
    The exported graph passes cpu_engine's parity check against torch first."""
    from folderfit import cpu_engine as CE

    if not str(loaded.numerics).startswith("onnxruntime") or not CE.applies(rt):
        return model
    try:
        return CE.export_backbone(model.eval(), loaded.preprocess.image_size, None)
    except CE.EngineUnavailable as exc:
        print(f"note: predict runs torch fp32, not ONNX Runtime ({exc}): the same numbers", file=sys.stderr)
        return model


def predict_files(loaded, files: list[Path], batch_size: int, precision: str = "auto",
                  progress: bool | None = None, device: str = "auto", setting: Setting = Setting("api")):
    """(probabilities [n_ok, classes] float32, indices of `files` they belong to,
    [(index, reason)] of files that could not be read). The inference loop is evaluate's
    (folderfit.engine.infer); precision auto = the numerics the model file's scores used."""
    rt = scoring_runtime(precision, device, loaded.numerics, setting)
    model = prepare_model(loaded.model, rt)
    if precision == "auto" and len(files) >= ORT_MIN_IMAGES:
        model = onnxruntime_model(model, loaded, rt)
    normalizer = DS.Normalizer(loaded.preprocess.mean, loaded.preprocess.std).to(rt.device)
    loader = make_loader(ImageFiles(files, loaded.preprocess), batch_size, rt, collate_fn=collate)
    logits, metas = infer(model, loader, normalizer, rt, desc="predict", show_progress=progress)
    order = [i for indices, _ in metas for i in indices]
    failed = [bad for _, bads in metas for bad in bads]
    n_classes = len(loaded.class_names)
    probs = torch.softmax(logits, 1) if len(order) else torch.zeros(0, n_classes)
    return probs, order, failed


class Classifier:
    """A trained model file, ready to classify PIL images in memory (the Python API:
    folderfit.load). Each image gets exactly predict's and evaluate's preprocessing.
    `device` and `precision` as in params.yaml (folderfit.runtime); precision auto = the
    numerics the model file's scores were computed with (runtime.scoring_runtime)."""

    def __init__(self, loaded, precision: str = "auto", device: str = "auto"):
        self.loaded = loaded
        self.rt = scoring_runtime(precision, device, loaded.numerics, Setting("api"))
        self.model = prepare_model(loaded.model, self.rt).eval()
        self.normalizer = DS.Normalizer(loaded.preprocess.mean, loaded.preprocess.std).to(self.rt.device)

    @classmethod
    def from_file(cls, path, precision: str = "auto", device: str = "auto") -> "Classifier":
        return cls(load_model_file(path), precision, device)

    @property
    def class_names(self) -> list[str]:
        return list(self.loaded.class_names)

    def probabilities(self, images) -> torch.Tensor:
        """[len(images), classes] float32 softmax probabilities for a list of PIL images."""
        try:  # an opened, not yet loaded JPEG is drafted exactly as predict drafts its file
            batch = torch.stack([IO.network_image(img, self.loaded.preprocess) for img in images])
        except IO.BadImage as exc:
            raise PipelineError(f"image refused: {exc}") from None
        logits, _ = infer(self.model, [(batch, None)], self.normalizer, self.rt, show_progress=False)
        probs = torch.softmax(logits, 1)
        if not bool(torch.isfinite(probs).all()):
            raise PipelineError("the model gives non-finite probabilities (NaN/inf); the model "
                                "file is broken (NaN weights?): retrain it or use another one")
        return probs

    def classify(self, image, top_k: int = 3) -> list[tuple[str, float]]:
        """[(class, probability)] for one PIL image, most probable first."""
        probs = self.probabilities([image])[0]
        top = probs.topk(min(top_k, len(probs)))
        return [(self.class_names[int(i)], float(p)) for p, i in zip(top.values, top.indices)]


def rows(files: list[Path], probs: torch.Tensor, order: list[int], class_names: list, k: int):
    """One dict per predicted file: path, predicted, confidence, top_k [(class, prob)]."""
    k = min(k, len(class_names))
    top_p, top_i = probs.topk(k, dim=1)  # ties: lower class index first, like argmax
    out = []
    for row, index in enumerate(order):
        top = [(class_names[int(c)], float(p)) for p, c in zip(top_p[row], top_i[row])]
        out.append({"path": D.printable(str(files[index])), "predicted": top[0][0],
                    "confidence": top[0][1],
                    "top_k": top})
    return out


def format_csv(records: list[dict], k: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["path", "predicted", "confidence"]
    for j in range(1, k + 1):
        header += [f"top{j}_class", f"top{j}_prob"]
    writer.writerow(header)
    for r in records:
        line = [r["path"], r["predicted"], f"{r['confidence']:.6f}"]
        for name, p in r["top_k"]:
            line += [name, f"{p:.6f}"]
        writer.writerow(line)
    return buf.getvalue()


def format_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps({"path": r["path"], "predicted": r["predicted"],
                               "confidence": round(r["confidence"], 6),
                               "top_k": [{"class": c, "prob": round(p, 6)} for c, p in r["top_k"]]})
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
        first = D.printable(str(files[order[int(bad.nonzero()[0, 0])]]))
        raise PipelineError(f"{model}: the model gives non-finite probabilities (NaN/inf) for "
                            f"{int(bad.sum())} of {len(probs)} image(s), e.g. {first}; the model "
                            f"file is broken (NaN weights?): retrain it or use another one")


def command(args) -> None:
    """`folderfit predict` (arguments: folderfit.cli)."""
    if args.output and not args.output.lower().endswith((".csv",) + JSONL_SUFFIXES):
        raise PipelineError(f"--output {args.output}: use a .csv, .jsonl or .ndjson file name")
    check_output(args.output, getattr(args, "force", False))
    loaded = load_model_file(args.model)
    files, missing = collect_images(args.paths)
    for path, reason in missing:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not files:
        raise PipelineError(f"no image files found in {D.printable(' '.join(args.paths))} (extensions: "
                            f"{', '.join(sorted(D.IMAGE_EXTENSIONS))}); pass image files or folders")
    probs, order, failed = predict_files(loaded, files, args.batch_size, args.precision,
                                         device=args.device, setting=Setting("cli"))
    for index, reason in failed:
        print(f"skipped {D.printable(str(files[index]))}: {reason}", file=sys.stderr)
    check_finite(probs, order, files, args.model)
    records = rows(files, probs, order, loaded.class_names, args.top_k)
    k = min(args.top_k, len(loaded.class_names))
    jsonl = bool(args.output) and args.output.lower().endswith(JSONL_SUFFIXES)
    text = format_jsonl(records) if jsonl else format_csv(records, k)
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    n_failed = len(failed) + len(missing)
    print(f"predict: {len(records)} image(s) classified"
          + (f" -> {args.output}" if args.output else "")
          + (f"; {n_failed} skipped (see above)" if n_failed else ""), file=sys.stderr)
    if n_failed:
        sys.exit(1)

