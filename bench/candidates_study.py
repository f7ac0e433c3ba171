"""Which frozen-feature candidates are worth their cost: the study behind the
"Frozen-feature candidates" section of docs/studies.md.

    python -m bench.candidates_study --data /path/to/ImageFolder --out /tmp/cand-trash [--views]

For one ImageFolder (one folder per class), the images get the pipeline's seeded train/val
roles (folderfit.images.image_folder.stratified_split, 15% val, no test). Each backbone is
built as train builds it (folderfit.backbone.architecture.build_model, the weights' resize/crop
ratio at the study's size) and its clean and mirrored features come from the pipeline's
extractor (folderfit.frozen.extractor, with --cpu-engine as params.yaml's cpu_engine, feature
cache in --out/cache). Each candidate is then scored by folderfit.frozen.probe.cross_validate: the
whole head procedure of params.yaml (hflip auto, l2 chosen on val, refit on train + val)
nested in K folds, copies grouped. A probability average of several backbones averages
their out-of-fold probabilities image by image (same folds). `--views`: lite2@260's clean and
mirrored vectors become means over three views (the clean view; the whole image, resized to the
crop size without cropping; a 1.15x zoom of the clean view), for training and scoring alike.

Prints (and writes to --out/table.md, with --out/results.json) out-of-fold accuracy with its
Wilson 95% interval, the paired difference to lite2@260 with a paired bootstrap 95% interval
(images resampled), and two costs: milliseconds per predicted image (one clean pass of each
backbone the candidate needs, timed in turns on the same images, best of --timing-rounds) and
the seconds per image of the first extraction (clean + mirror, decoding included). Both swing
with other jobs on a shared machine. Every backbone runs in ONNX Runtime fp32 unless
--cpu-engine says otherwise.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

# name -> (timm model, image size)
BACKBONES = {
    "lite0@224": ("tf_efficientnet_lite0", 224),
    "lite1@240": ("tf_efficientnet_lite1", 240),
    "lite2@260": ("tf_efficientnet_lite2", 260),
    "lite2@300": ("tf_efficientnet_lite2", 300),
}
REFERENCE = "lite2@260"
# test-time views of the reference (--views): resize_size factor, named
EXTRA_VIEWS = {"whole": None, "zoom1.15": 1.15}
# candidates: name -> backbones whose out-of-fold probabilities are averaged
CANDIDATES = {
    "lite0@224": ["lite0@224"],
    "lite1@240": ["lite1@240"],
    "lite2@260": ["lite2@260"],
    "lite2@300": ["lite2@300"],
    "avg lite0+lite1": ["lite0@224", "lite1@240"],
    "avg lite0+lite2": ["lite0@224", "lite2@260"],
    "avg lite1+lite2": ["lite1@240", "lite2@260"],
    "avg lite0+lite1+lite2": ["lite0@224", "lite1@240", "lite2@260"],
}


def roles(data: Path, val_fraction: float, seed: int):
    """(class names, {"train"|"val": [(path, label index)]}) with the pipeline's split."""
    from folderfit.images import image_folder
    from folderfit.support.fileio import sha256_file

    classes, _ = image_folder.read_image_folder(data)
    names = sorted(c for c, found in classes.items() if found)
    by_rel, items = {}, []
    for c in names:
        for f in classes[c]:
            by_rel[f.rel] = f.path
            items.append(image_folder.Item(f.rel, c, sha256_file(f.path)))
    split = image_folder.stratified_split(items, val_fraction, 0.0, seed)
    index = {c: k for k, c in enumerate(names)}
    return names, {s: [(by_rel[i.rel], index[i.label]) for i in split[s]] for s in ("train", "val")}


def extractor_for(params, model: str, size: int, n_classes: int, rt, resize_factor=None, whole=False):
    """The pipeline's feature extractor for `model` at `size` (optionally another resize: a
    view of the same backbone)."""
    from folderfit.backbone import architecture
    from folderfit.compute.runtime import prepare_model
    from folderfit.frozen import extractor, feature_cache

    built = architecture.build_model(model, n_classes, params.weights, params.seed)
    pre = built.preprocess.with_image_size(size)
    if whole:
        pre = dataclasses.replace(pre, resize_size=size)
    elif resize_factor:
        pre = dataclasses.replace(pre, resize_size=round(pre.resize_size * resize_factor))
    backbone, _ = feature_cache.backbone_only(prepare_model(built.model, rt), built.head_name)
    run_params = dataclasses.replace(params, model_name=model)
    ex, choice = extractor.feature_extractor(backbone, pre, run_params, rt)
    return ex, choice


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    diff = a.astype(float) - b.astype(float)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def interleaved_ms(extractors: dict, files: list, rounds: int) -> dict[str, float]:
    """Milliseconds per image of each extractor's clean view on the same `files`, the
    extractors taking turns, best of `rounds` (the first round includes ONNX export; turns
    spread the other jobs' load on a shared machine over all of them)."""
    from folderfit.frozen import feature_cache

    best: dict[str, float] = {}
    for ex in extractors.values():
        ex.root = None  # no disk cache: every round computes
    for _ in range(rounds):
        for name, ex in extractors.items():
            ex._reset()  # forget the vectors of the last round, keep the engine
            started = time.perf_counter()
            ex.features(files, feature_cache.CLEAN, f"timing {name}")
            best[name] = min(best.get(name, float("inf")), 1000 * (time.perf_counter() - started) / len(files))
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder: one folder per class")
    parser.add_argument("--out", type=Path, required=True, help="feature cache, table.md, results.json")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bootstrap", type=int, default=5000)
    parser.add_argument("--views", action="store_true", help="also lite2@260 with 3 views averaged")
    parser.add_argument("--cpu-engine", default="onnxruntime", choices=["auto", "onnxruntime", "torch"],
                        help="params.yaml cpu_engine for every backbone (auto: a timed trial per backbone, "
                             "which on a busy machine can give backbones different engines)")
    parser.add_argument("--timing-images", type=int, default=32, help="images per timing round (0: no timing)")
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="subset of " + ",".join(BACKBONES))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["FOLDERFIT_CACHE"] = str(args.out / "cache")

    from folderfit.compute.runtime import pick_runtime, seed_everything
    from folderfit.frozen import feature_cache, probe
    from folderfit.params import load_params
    from folderfit.results.metrics import accuracy_interval
    from folderfit.support.fileio import sha256_file
    from folderfit.support.report import say

    params = dataclasses.replace(load_params(REPO / "params.yaml"), seed=args.seed, cpu_engine=args.cpu_engine)
    seed_everything(args.seed)
    rt = pick_runtime(params.precision, params.device)
    names, split = roles(args.data, params.data.val_fraction, args.seed)
    files = {s: [p for p, _ in split[s]] for s in split}
    labels = {s: torch.tensor([y for _, y in split[s]]) for s in split}
    copies = [sha256_file(p) for p in files["train"] + files["val"]]
    n = len(copies)
    say(f"{args.data}: {n} images, {len(names)} classes ({len(files['train'])} train, {len(files['val'])} val roles)")

    timings_file = args.out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    procedure = {"hflip": params.augment.hflip, "n_views": params.augment.feature_views,
                 "min_scale": params.augment.min_scale, "tta": params.evaluate.tta,
                 "refit": params.refit_head, "label_smoothing": params.label_smoothing}

    def cv_of(source) -> np.ndarray:
        cv = probe.cross_validate(source, labels["train"], labels["val"], len(names), folds=args.folds,
                                  groups=copies, seed=args.seed, **procedure)
        return cv.probs.numpy()

    def all_views(ex, views, key):
        """{(split, view): features}, timed when computed."""
        started = time.perf_counter()
        before = ex.computed
        got = dict(zip([(s, v) for v in views for s in ("train", "val")],
                       ex.features_of([(files[s], v) for v in views for s in ("train", "val")], key)))
        computed = ex.computed - before
        if computed:
            timings[key] = {"seconds_per_image": (time.perf_counter() - started) / n,
                            "passes": computed, "engine": ex.numerics}
            timings_file.write_text(json.dumps(timings, indent=1))
        return got

    wanted = [b for b in args.backbones.split(",") if b]
    probs: dict[str, np.ndarray] = {}
    extractors = {}
    clean_flip = [feature_cache.CLEAN, feature_cache.FLIP]
    for name in wanted:
        model, size = BACKBONES[name]
        ex, _ = extractor_for(params, model, size, len(names), rt)
        extractors[name] = ex
        got = all_views(ex, clean_flip, name)
        probs[name] = cv_of(probe.tensor_source(got))
        say(f"{name}: {(probs[name].argmax(1) == torch.cat([labels['train'], labels['val']]).numpy()).mean():.4f}")
        if args.views and name == REFERENCE:
            per_view = [got]
            for view, factor in EXTRA_VIEWS.items():
                vex, _ = extractor_for(params, model, size, len(names), rt, resize_factor=factor,
                                       whole=factor is None)
                per_view.append(all_views(vex, clean_flip, f"{name} {view}"))
            mean = {r: feature_cache.mean_over_views([g[r] for g in per_view]) for r in got}
            probs[f"{name} 3 views"] = cv_of(probe.tensor_source(mean))

    ms = {}
    if args.timing_images and extractors:
        pick = np.random.default_rng(args.seed).choice(n, min(args.timing_images, n), replace=False)
        every = files["train"] + files["val"]
        ms = interleaved_ms(extractors, [every[i] for i in sorted(pick)], args.timing_rounds)

    y = torch.cat([labels["train"], labels["val"]]).numpy()
    rows, results = [], {}
    cands = {k: v for k, v in CANDIDATES.items() if all(b in probs for b in v)}
    cands.update({k: [REFERENCE] * (1 + len(EXTRA_VIEWS)) for k in probs if k.endswith(" views")})
    ref = probs[REFERENCE].argmax(1) == y if REFERENCE in probs else None
    for cand, parts in cands.items():
        p = probs[cand] if cand in probs else np.mean([probs[b] for b in parts], axis=0)
        correct = p.argmax(1) == y
        low, high = accuracy_interval(int(correct.sum()), n)
        entry = {"accuracy": float(correct.mean()), "wilson95": [low, high], "correct": int(correct.sum()),
                 "backbone_passes": parts}
        diff = ""
        if ref is not None and cand != REFERENCE:
            d_low, d_high = paired_bootstrap(correct, ref, args.bootstrap, args.seed)
            entry["vs_reference"] = [float(correct.mean() - ref.mean()), d_low, d_high]
            diff = f"{correct.mean() - ref.mean():+.3f} [{d_low:+.3f}, {d_high:+.3f}]"
        # cost of one prediction: one clean pass per part (a view is one more pass of lite2)
        cost = sum(ms[b] for b in parts) if all(b in ms for b in parts) else None
        extracted = [REFERENCE] + [f"{REFERENCE} {v}" for v in EXTRA_VIEWS] if cand.endswith(" views") else parts
        first = [timings.get(k, {}).get("seconds_per_image") for k in extracted]
        first_cost = sum(first) if all(f is not None for f in first) else None
        entry["ms_per_image"] = cost
        entry["first_extraction_s_per_image"] = first_cost
        results[cand] = entry
        rows.append(f"| {cand} | {correct.mean():.3f} [{low:.3f}, {high:.3f}] | {diff} | "
                    f"{'' if cost is None else f'{cost:.0f}'} | {'' if first_cost is None else f'{first_cost:.2f}'} |")
    table = "\n".join([
        f"{args.data.name}: {n} images, {len(names)} classes, {args.folds}-fold out-of-fold, seed {args.seed}",
        "", ("| candidate | accuracy [Wilson 95%] | vs lite2@260 (paired bootstrap 95%) | "
             "ms/image to predict | s/image to extract (clean + mirror) |"),
        "| --- | --- | --- | --- | --- |", *rows])
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"data": str(args.data), "images": n, "classes": names,
                                                      "folds": args.folds, "seed": args.seed,
                                                      "candidates": results, "timings": timings,
                                                      "ms_per_image": ms}, indent=1))


if __name__ == "__main__":
    main()
