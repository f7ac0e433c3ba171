"""Export a trained model file for serving: `folderfit export`.

Writes into --out-dir (default models/export/):
  model.pt2             a torch.export program (dynamic batch size): torch.export.load(path)
                        .module() runs it with torch alone, no folderfit or timm code needed
  model.onnx            ONNX (opset 18, dynamic batch size), for onnxruntime and friends,
                        translated from that same program by torch's torch.export-based exporter
  preprocess.json       the preprocessing contract: what a caller does to an image before
                        the network (size, resize, crop, mean/std, interpolation, class names)
  parity.json           exported vs eager outputs on real images (max abs difference)

Both exported networks take a float32 NCHW batch, already normalised as preprocess.json says,
and return logits (apply softmax for probabilities). A model file with flip test-time
augmentation exports it inside the network (the mean of the logits of the image and its mirror
image), exactly as evaluate and predict apply it; preprocess.json says so
(`test_time_augmentation`). The parity check runs the eager model
(fp32, CPU) and each export on the same preprocessed real images and fails (exit 2, no
`parity.json`) when any logit differs by more than --tolerance x max(1, largest |logit|), or
a predicted class changes where the eager top-2 margin was clear of that bound. fp32 rounding
alone moves logits by ~1e-4..1e-3 (reported as `eager_fp32_vs_fp64`), hence the default 5e-3.
Parity images: --images (files or folders), else data/prepared (test, then val, then train).
The exports compute fp32, the numerics of evaluate and predict for a model whose features were
computed in fp32 (ONNX Runtime, OpenVINO or torch: the engine trial's usual pick); preprocess.json names
the model file's (`scores_numerics`), and for a model scored in bf16 parity.json also gives
how far its bf16 probabilities are from the exports' (`eager_bf16_vs_fp32_abs_diff_probs`).

Atomic as a whole: the files are built in a temp folder beside --out-dir (made first, so an
unwritable place fails before the model is traced) that replaces --out-dir in one swap once
the parity check passed. Killed midway or failing the check, the previous export stays
complete and untouched. An --out-dir holding other files than an export's is refused (it is
replaced whole). A negative --tolerance is refused.

ONNX needs the optional extra: pip install -e '.[export]' (onnxscript; onnx and onnxruntime are core);
without it use --formats torch_export. TorchScript is not offered: torch marks
torch.jit.trace/save deprecated in favour of torch.export.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

from folderfit.artifacts import manifest
from folderfit.artifacts.model_file import load_model_file
from folderfit.compute import classifier
from folderfit.compute.runtime import engine_precision
from folderfit.errors import PipelineError
from folderfit.images import collect, datasets, decode
from folderfit.paths import PREPARED
from folderfit.support.fileio import atomic_path, replace_dir, write_json

FORMATS = ("torch_export", "onnx")
FILES = {"torch_export": "model.pt2", "onnx": "model.onnx"}
CONTRACT_FORMAT = 2
ONNX_OPSET = 18
MAX_BATCH = 4096  # the exported programs accept any batch size from 1 to this


# ------------------------------------------------------------------ parity inputs
def parity_images(paths: list[str] | None, limit: int) -> list[Path]:
    """Up to `limit` image files, spread evenly over what is found (sorted, deterministic)."""
    if paths:
        files, missing = collect.collect_images(paths)
        if missing:
            raise PipelineError(f"--images {missing[0][0]}: {missing[0][1]}")
    elif (manifest.manifest_path(PREPARED)).is_file():
        _, splits = manifest.read_manifest(PREPARED)
        split = next(s for s in ("test", "val", "train") if s in splits)
        files = [path for path, _ in splits[split]]
    else:
        raise PipelineError(f"no parity images: {PREPARED} not found; pass --images FOLDER with a "
                            f"few real images (the check compares exported and eager outputs on them)")
    if not files:
        raise PipelineError("no parity images found; pass --images with image files or folders")
    step = max(1, len(files) // limit)
    return files[::step][:limit]


def preprocessed_batch(loaded, files: list[Path]) -> torch.Tensor:
    """Float32 NCHW batch exactly as predict/evaluate feed the network (decode, geometry,
    normalise); unreadable files are an error here (they would make the check vacuous)."""
    dataset = classifier.ImageFiles(files, loaded.preprocess)
    tensors = []
    for i in range(len(dataset)):
        tensor, _, error = dataset[i]
        if error:
            raise PipelineError(f"parity image {files[i]}: {error}; remove it or pass other --images")
        tensors.append(tensor)
    normalizer = datasets.Normalizer(loaded.preprocess.mean, loaded.preprocess.std)
    return normalizer(torch.stack(tensors)).contiguous()


# ------------------------------------------------------------------ exporters
def export_program(model: torch.nn.Module, example: torch.Tensor):
    """The model as a torch.export program whose batch dimension is dynamic."""
    from torch.export import Dim

    with torch.no_grad():
        return torch.export.export(model, (example,),
                                   dynamic_shapes=({0: Dim("batch", min=1, max=MAX_BATCH)},))


def save_program(program, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))


def export_onnx(program, example: torch.Tensor, path: Path) -> None:
    """ONNX translated from the torch.export program (torch's current exporter)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # progress lines and notices of the exporter
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=["input"], output_names=["logits"])
    with atomic_path(path) as tmp:
        onnx_program.save(str(tmp))


def run_program(path: Path, batch: torch.Tensor) -> torch.Tensor:
    module = torch.export.load(str(path)).module()
    with torch.inference_mode():
        return module(batch).float()


def run_onnx(path: Path, batch: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"input": batch.numpy()})[0]).float()


def check_onnx_available() -> None:
    try:
        import onnx  # noqa: F401  (the exporter serialises with it)
        import onnxruntime  # noqa: F401  (the parity check runs with it)
        import onnxscript  # noqa: F401  (the torch.export-based exporter translates with it)
    except ImportError as exc:
        raise PipelineError(f"ONNX export needs the optional packages onnx, onnxscript and "
                            f"onnxruntime ({exc.name} is missing): pip install -e '.[export]', "
                            f"or pass --formats torch_export") from None


# ------------------------------------------------------------------ contract
def contract(loaded, model_file: Path, formats: list[str]) -> dict:
    pre = loaded.preprocess
    return {
        "format": CONTRACT_FORMAT,
        "model_file": str(model_file),
        "model_name": loaded.info["model_name"],
        "files": {f: FILES[f] for f in formats},
        "class_names": list(loaded.class_names),
        "image_size": pre.image_size,
        "resize_size": pre.resize_size,
        "interpolation": pre.interpolation,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "input": {"name": "input", "dtype": "float32", "layout": "NCHW (RGB)",
                  "shape": ["batch", 3, pre.image_size, pre.image_size]},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(loaded.class_names)],
                   "meaning": "unnormalised class scores in class_names order; softmax gives probabilities"},
        "test_time_augmentation": loaded.tta,
        # evaluate's and predict's default numerics (the model file's record); the exports are fp32
        "scores_numerics": loaded.numerics,
        "reference_implementation": "folderfit.images.decode.network_image (bit-exact with predict and evaluate)",
        "max_aspect_ratio": decode.MAX_ASPECT,
        "steps": [
            f"JPEG files only: decode at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling, PIL "
            f"Image.draft) by the largest factor keeping the shorter side >= {decode.DRAFT_GAP:g} x "
            f"{decode.store_side(pre.image_size)} px",
            "decode to 8-bit RGB, EXIF orientation applied, transparency composited on white "
            "(16-bit grey scaled by its bit depth: folderfit.images.decode.to_rgb)",
            f"refuse images whose longer side is over {decode.MAX_ASPECT:g} x the shorter",
            f"if the shorter side is over {decode.store_side(pre.image_size)} px: resize it to "
            f"{decode.store_side(pre.image_size)} px, PIL bicubic, reducing_gap 3 (the copy prepare "
            f"stores, losslessly)",
            f"resize so the shorter side is resize_size ({pre.resize_size} px), {pre.interpolation}, "
            f"antialiased (torchvision on the uint8 tensor)",
            f"centre crop image_size x image_size ({pre.image_size} px)",
            "x = (pixel / 255 - mean) / std, per channel",
        ] + ([
            "(inside the exported network, nothing for the caller to do) logits = mean of the "
            "network's logits for x and for x mirrored left-right (test_time_augmentation: flip)"
        ] if loaded.tta == "flip" else []),
    }


# ------------------------------------------------------------------ the output folder
EXPORT_NAMES = {*FILES.values(), "preprocess.json", "parity.json"}


def _aside(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.export-{os.getpid()}.tmp"


def begin_output(out_dir: Path) -> Path:
    """The empty temp folder beside `out_dir` that the export is built in (made before any
    tracing, so an unwritable place fails at once). Folders left by killed exports are
    removed; an existing `out_dir` holding anything but an export's files is refused, since
    it is replaced whole."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineError(f"--out-dir {out_dir}: is a file; give a folder for the export")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_NAMES)
        if foreign:
            raise PipelineError(
                f"--out-dir {out_dir}: holds files that are not an export's ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); the export replaces that folder whole, "
                f"so give a new or empty folder (or one holding only an earlier export)")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.glob(f".{glob_escape(out_dir.name)}.export-*.tmp"):
            pid = old.name.rsplit("-", 1)[-1].removesuffix(".tmp")
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        tmp = _aside(out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        probe = tmp / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PipelineError(f"--out-dir {out_dir}: cannot write there ({exc.strerror or exc}); "
                            f"choose a folder you can write to, before anything is exported") from None
    return tmp


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------ main
def check_tolerance(tolerance: float) -> None:
    if not (tolerance >= 0 and math.isfinite(tolerance)):  # also refuses NaN
        raise PipelineError(f"--tolerance {tolerance}: must be a finite number >= 0 (the allowed "
                            f"|logit difference| is tolerance x max(1, largest |logit|); "
                            f"default 5e-3)")


def export(model_file: Path, out_dir: Path, formats: list[str], images: list[str] | None,
           n_images: int, tolerance: float) -> dict:
    """Write the exports and the contract; returns the parity report (raises above tolerance).
    Atomic as a whole: every file is built in a temp folder beside `out_dir` and the folder
    replaces `out_dir` in one swap after the parity check passed; a failure, a failed check
    or a kill leaves the previous export complete and untouched."""
    check_tolerance(tolerance)
    if "onnx" in formats:
        check_onnx_available()
    out_dir = Path(out_dir)
    tmp = begin_output(out_dir)
    try:
        report = _export_into(tmp, model_file, out_dir, formats, images, n_images, tolerance)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _export_into(tmp: Path, model_file: Path, out_dir: Path, formats: list[str],
                 images: list[str] | None, n_images: int, tolerance: float) -> dict:
    loaded = load_model_file(model_file)
    model = loaded.model.float().eval()
    files = parity_images(images, n_images)
    batch = preprocessed_batch(loaded, files)
    with torch.no_grad():
        eager = model(batch).float()
        # fp32 rounding alone, as a yardstick for the export differences
        fp64 = copy.deepcopy(model).double()(batch.double()).float()
    fp64_noise = float((fp64 - eager).abs().max())
    bound = tolerance * max(1.0, float(eager.abs().max()))
    top2 = eager.topk(min(2, eager.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > 2 * bound  # a near-tie may flip within tolerance
    # trace with a batch of 2: the parity batch then also checks a different batch size
    example = batch[:2] if len(batch) >= 2 else torch.cat([batch, batch])
    report = {"n_images": len(files), "tolerance": tolerance, "allowed_abs_diff_logits": bound,
              "eager_fp32_vs_fp64_abs_diff_logits": fp64_noise, "formats": {}}
    print(f"export: {len(files)} parity images, allowed |logit diff| {bound:.3g}; "
          f"eager fp32 vs fp64 (rounding alone): {fp64_noise:.3g}")
    precision = engine_precision(loaded.numerics)
    if precision in ("bf16", "fp16"):  # what serving the fp32 exports moves against evaluate's scores
        with torch.no_grad(), torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision]):
            scored = copy.deepcopy(model)(batch).float()
        gap = float((scored.softmax(1) - eager.softmax(1)).abs().max())
        report[f"eager_{precision}_vs_fp32_abs_diff_probs"] = gap
        print(f"note: export: this model was scored in {precision} (evaluate; predict by default); the "
              f"exports compute fp32: probabilities differ by up to {gap:.3g} on the parity images "
              f"(predict --precision fp32 gives the exports' numbers)", file=sys.stderr)
    failures = []
    program = export_program(model, example)
    for fmt in formats:
        path = tmp / FILES[fmt]
        if fmt == "torch_export":
            save_program(program, path)
            out = run_program(path, batch)
        else:
            export_onnx(program, example, path)
            out = run_onnx(path, batch)
        diff = float((out - eager).abs().max())
        prob_diff = float((out.softmax(1) - eager.softmax(1)).abs().max())
        same = out.argmax(1) == eager.argmax(1)
        flipped = int((~same & clear).sum())
        report["formats"][fmt] = {"file": FILES[fmt], "max_abs_diff_logits": diff,
                                  "max_abs_diff_probs": prob_diff,
                                  "same_predicted_class": f"{int(same.sum())}/{len(files)}"}
        print(f"export: {fmt:<11} {out_dir / FILES[fmt]}  max |logit diff| {diff:.3g}, max |prob diff| "
              f"{prob_diff:.3g}, same class {int(same.sum())}/{len(files)}")
        if not diff <= bound or flipped:  # `not <=` also catches NaN
            failures.append(f"{fmt}: max abs logit difference {diff:.3g} (allowed {bound:.3g}), "
                            f"{flipped} clear prediction(s) changed")
    if failures:
        kept = "the previous export there is kept" if out_dir.exists() else "nothing was written"
        raise PipelineError(f"parity check FAILED on {len(files)} images: {'; '.join(failures)}; "
                            f"the exports do not reproduce {model_file}, so {out_dir} is not "
                            f"replaced ({kept})")
    write_json(tmp / "preprocess.json", contract(loaded, model_file, formats))
    write_json(tmp / "parity.json", report)
    return report


def command(args) -> None:
    """`folderfit export` (arguments: folderfit.cli)."""
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise PipelineError(f"--formats: unknown {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(FORMATS)}")
    check_tolerance(args.tolerance)
    torch.manual_seed(0)
    export(Path(args.model), Path(args.out_dir), formats, args.images, args.n_images, args.tolerance)
    print(f"export: parity OK -> {args.out_dir}/preprocess.json, parity.json", file=sys.stderr)
