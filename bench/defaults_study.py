"""The defaults of params.yaml against the previous ones and against each new default
reverted alone, end to end on one image folder: the study behind docs/studies.md.

    python -m bench.defaults_study --data ../shared/datasets/trashnet-mini

Each variant is params.yaml + `data.source` + its changes, run as `dvc repro` runs it (the
prepare, train and evaluate stages, each its own process) in a fresh folder. A "cold" variant
starts with an empty feature cache (its wall time is what a first run costs); the others reuse
the first cold variant's cache, so their wall time leaves out the backbone passes already made.
Prints held-out test accuracy with its bootstrap 95% CI (from metrics/eval.json) and wall time;
writes the rows as JSON with --out. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

OLD_DEFAULTS = {"model_name": "tf_efficientnet_lite0", "data": {"image_size": 224},
                "augment": {"hflip": False, "feature_views": 4}, "refit_head": False,
                "evaluate": {"tta": "none"}}

# name -> (changes to params.yaml, cold feature cache?)
VARIANTS = {
    "defaults": ({}, True),
    "before: previous defaults": (OLD_DEFAULTS, True),
    "model tf_efficientnet_lite0 @ 224": ({"model_name": "tf_efficientnet_lite0",
                                           "data": {"image_size": 224}}, False),
    "augment.hflip false": ({"augment": {"hflip": False}}, False),
    "augment.hflip true": ({"augment": {"hflip": True}}, False),
    "refit_head false": ({"refit_head": False}, False),
    "evaluate.tta none": ({"evaluate": {"tta": "none"}}, False),
    "evaluate.tta flip": ({"evaluate": {"tta": "flip"}}, False),
    "augment.feature_views 3": ({"augment": {"feature_views": 3}}, False),
    "cpu_engine torch": ({"cpu_engine": "torch"}, True),  # cold: the engine is in the cache key
}


def run_variant(source: Path, changes: dict, work: Path, cache: Path) -> dict:
    from folderfit.params import merge_overrides

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merge_overrides(merge_overrides(base, {"data": {"source": str(source)}}), changes)
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "FOLDERFIT_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    for stage in ("prepare", "train", "evaluate"):
        subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    scores = json.loads((work / "metrics/eval.json").read_text())
    details = json.loads((work / "metrics/train/details.json").read_text())
    return {"accuracy": scores["accuracy"], "ci95": [scores["accuracy_ci95_low"],
                                                     scores["accuracy_ci95_high"]],
            "n_test": scores["n_images"], "wall_s": round(wall, 1), "hflip": details["hflip"],
            "tta": details["tta"], "views": details.get("head_views")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--variants", help="comma-separated names (default: all)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", type=Path, help="use this feature cache for every variant "
                        "(none cold): e.g. one an earlier study filled")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="defaults-study-") as tmp:
        shared = None  # the first cold variant's cache, reused by the others
        for i, name in enumerate(names):
            changes, cold = VARIANTS[name]
            cache = Path(tmp) / f"cache-{i}" if cold or shared is None else shared
            if args.cache:
                cache, cold = args.cache, False
            shared = shared or cache
            rows[name] = {**run_variant(args.data.resolve(), changes, Path(tmp) / f"run-{i}", cache),
                          "cache": "cold" if cold else "shared"}
            r = rows[name]
            print(f"{name:<36} acc {r['accuracy']:.4f} [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}] "
                  f"n={r['n_test']}  {r['wall_s']:>6.1f} s ({r['cache']} cache)  hflip {r['hflip']} "
                  f"tta {r['tta']} views {','.join(r['views'] or [])}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
