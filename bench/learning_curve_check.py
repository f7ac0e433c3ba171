"""Does the learning curve's forecast hold? The curve of a stratified half of an image folder,
extrapolated to the photos per class of the whole folder, against the whole folder's own
out-of-fold accuracy there.

    python -m bench.learning_curve_check --data /work/shared/datasets/trashnet-mini

Features: params.yaml's backbone and image size, the clean view of each file (through the
feature cache), as train's feature_extract computes them. One l2 for every curve, chosen as the
delivered head's is (folderfit.frozen.head.fit_head on a stratified 85/15 split) on the
half. Per subsample seed, prints per class and overall: the half's last point, the forecast
at the whole set's photos per class (folderfit.frozen.learning_curve: exponent from the
half's overall curve), and the whole set's out-of-fold accuracy there. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def stratified(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = [rows[rng.permutation(len(rows))][:round(fraction * len(rows))]
            for rows in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(keep))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3, help="half subsamples to try")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from folderfit.compute.runtime import pick_runtime
    from folderfit.frozen import extractor, feature_cache, head, learning_curve
    from folderfit.params import parse_params

    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    classes = sorted(p.name for p in args.data.iterdir() if p.is_dir())
    files, labels = [], []
    for c, name in enumerate(classes):
        for path in sorted((args.data / name).iterdir()):
            if path.suffix.lower() in SUFFIXES:
                files.append(path)
                labels.append(c)
    labels = np.array(labels)
    rt = pick_runtime(params.precision, params.device)
    started = time.perf_counter()
    ex, _ = extractor.train_feature_extractor(params, len(classes), rt)
    x = ex.features_of([(files, feature_cache.CLEAN)])[0].float()
    print(f"{len(files)} images, {len(classes)} classes, {params.model_name}: features "
          f"[{time.perf_counter() - started:.1f} s]")
    n = len(labels)

    def run(rows: np.ndarray, l2: float, seed: int):
        found = learning_curve.curve([x[rows]], [x[rows]], labels[rows], len(classes),
                                     np.arange(len(rows)), l2=l2, seed=seed)
        return found, learning_curve.describe(found, classes)

    rows_out = []
    for seed in range(args.seeds):
        half = stratified(labels, 0.5, seed)
        sel = stratified(labels[half], 0.85, seed)
        val = np.setdiff1d(np.arange(len(half)), sel)
        fit = head.fit_head(x[half][sel], torch.from_numpy(labels[half][sel]), x[half][val],
                            torch.from_numpy(labels[half][val]), len(classes))
        started = time.perf_counter()
        _, small = run(half, fit.l2, seed)
        small_s = time.perf_counter() - started
        full_raw, full = run(np.arange(n), fit.l2, seed)
        b = small["overall"]["exponent"]
        print(f"\nseed {seed}: l2 {fit.l2:.3g}, exponent {b}, half's curve {small_s:.1f} s")
        print(f"{'class':10s} {'half: acc at n':>16s} {'forecast at N':>16s} {'whole: acc at N':>16s}")
        errors, naive = [], []
        for name in classes + ["overall"]:
            if name == "overall":
                s_n, s_a = small["overall"]["photos_per_class"], small["overall"]["accuracy"]
                f_n, f_a = full["overall"]["photos_per_class"][-1], full["overall"]["accuracy"][-1]
            else:
                s_n, s_a = small["classes"][name]["photos"], small["classes"][name]["accuracy"]
                f_n, f_a = full["classes"][name]["photos"][-1], full["classes"][name]["accuracy"][-1]
            fc = learning_curve.forecast(s_n, s_a, f_n, (b,)) if b is not None else None
            predicted = fc["accuracy_now"] if fc else float("nan")
            print(f"{name:10s} {s_a[-1]:8.3f} at {s_n[-1]:4.0f} {predicted:10.3f} at {f_n:3.0f} "
                  f"{f_a:10.3f} at {f_n:3.0f}")
            rows_out.append({"seed": seed, "class": name, "half_n": s_n[-1], "half_acc": s_a[-1],
                             "forecast": predicted, "whole_n": f_n, "whole_acc": f_a})
            if name != "overall":
                errors.append(abs(predicted - f_a))
                naive.append(abs(s_a[-1] - f_a))
        print(f"mean |forecast - whole| over classes {np.mean(errors):.3f}; "
              f"flat guess (half's last point) {np.mean(naive):.3f}")
        print("half's statements:\n  " + "\n  ".join(r["statement"] for r in small["classes"].values()))
        del full_raw
    if args.out:
        args.out.write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
