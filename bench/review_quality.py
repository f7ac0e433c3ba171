"""How well the label review finds wrong labels: precision@k on a noisy copy of a photo set.

    python -m bench.review_quality --photos ../shared/datasets/trashnet-mini --out /tmp/rq \\
        [--rate 0.05 --seed 0 --classes glass,metal,plastic,trash --fix]

1. A noisy copy in OUT/images: a seeded stratified 70/15/15 split into train/ val/ test/
   folders, then `--rate` of the train+val images moved to another class folder (random,
   seeded); every file renamed img0000.jpg, ... in a seeded order, so no name tells its class.
   OUT/truth.json keeps which files were moved.
2. `prepare` and `review` run there (separate processes, as `dvc repro` runs them; params.yaml
   as the repository's, with augment.hflip true for photos; the feature cache in OUT/cache).
3. precision@k (k = number moved): the share of moved files among the k first rows of
   metrics/review/label_issues.csv, and the same for the reference ranking: the clean view
   of the same backbone's (cached) features, 5-fold logistic regression (scikit-learn
   defaults), every image ranked by its out-of-sample probability of the given label.
4. `--fix`: train + evaluate on the noisy copy, then with the k top label issues applied as
   corrections (relabel:<suggested>) and again with them dropped; test accuracy of each (the
   test labels were never moved).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SPLIT = {"train": 0.70, "val": 0.15, "test": 0.15}


def make_noisy(photos: Path, root: Path, rate: float, seed: int, classes: list[str] | None) -> dict:
    """The noisy copy (see the module docstring); returns truth.json's content."""
    rng = random.Random(seed)
    names = classes or sorted(p.name for p in photos.iterdir() if p.is_dir())
    items = []  # (split, class, file)
    for name in names:
        files = sorted((photos / name).iterdir())
        rng.shuffle(files)
        n_test, n_val = round(SPLIT["test"] * len(files)), round(SPLIT["val"] * len(files))
        for i, f in enumerate(files):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            items.append((split, name, f))
    trainval = [i for i, (split, _, _) in enumerate(items) if split != "test"]
    moved = set(rng.sample(trainval, round(rate * len(trainval))))
    order = list(range(len(items)))
    rng.shuffle(order)
    shutil.rmtree(root, ignore_errors=True)
    truth = {"moved": {}, "n_images": len(items), "classes": names, "rate": rate, "seed": seed}
    for number, i in enumerate(order):
        split, name, f = items[i]
        given = rng.choice([c for c in names if c != name]) if i in moved else name
        rel = f"{split}/{given}/img{number:04d}{f.suffix.lower()}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, root / rel)
        if i in moved:
            truth["moved"][rel] = name
    for split in SPLIT:  # every split needs every class folder, even an empty one
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    return truth


def stage(module: str, work: Path, cache: Path) -> None:
    env = {**os.environ, "FOLDERFIT_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", module], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def precision_at_k(ranked: list[str], moved: set) -> float:
    return sum(p in moved for p in ranked[:len(moved)]) / len(moved)


def reference_ranking(work: Path, cache: Path) -> list[str]:
    """Source paths, most suspect first, by the reference method (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    os.environ["FOLDERFIT_CACHE"] = str(cache)
    cwd = Path.cwd()
    os.chdir(work)
    try:
        from folderfit.artifacts import manifest
        from folderfit.compute.runtime import pick_runtime
        from folderfit.frozen import feature_cache
        from folderfit.frozen.extractor import train_feature_extractor
        from folderfit.params import load_params
        from folderfit.pipeline import review

        params = load_params()
        rows = review.read_rows()
        classes = sorted({r["class"] for r in rows})
        extractor, _ = train_feature_extractor(params, len(classes), pick_runtime(params.precision))
        files = [manifest.image_path(review.PREPARED, r) for r in rows]  # the originals
        x = extractor.features(files, feature_cache.CLEAN).numpy()
    finally:
        os.chdir(cwd)
    y = np.array([classes.index(r["class"]) for r in rows])
    probs = np.zeros((len(y), len(classes)))
    for train, held in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        head = LogisticRegression(max_iter=2000).fit(x[train], y[train])
        probs[held] = head.predict_proba(x[held])
    given = probs[np.arange(len(y)), y]
    return [rows[i]["source"] for i in np.argsort(given, kind="stable")]


def label_issues(work: Path) -> list[dict]:
    with open(work / "metrics/review/label_issues.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_accuracy(work: Path, cache: Path) -> float:
    for module in ("stages.prepare", "stages.train", "stages.evaluate"):
        stage(module, work, cache)
    return json.loads((work / "metrics/eval.json").read_text())["accuracy"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="ImageFolder of real photos")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", help="comma-separated subset of the class folders")
    parser.add_argument("--model", help="model_name (default: params.yaml's)")
    parser.add_argument("--fix", action="store_true", help="also train+evaluate before/after fixes")
    parser.add_argument("--cache", type=Path, help="feature cache (default: OUT/cache); share it "
                                                   "between noisy copies of one set")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    cache = args.cache.resolve() if args.cache else out / "cache"
    truth = make_noisy(args.photos, out / "images", args.rate, args.seed,
                       args.classes.split(",") if args.classes else None)
    (out / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True))
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    for link in ("stages", "folderfit"):
        (work / link).symlink_to(REPO / link)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(out / "images")
    params["augment"]["hflip"] = True
    if args.model:
        params["model_name"] = args.model
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stage("stages.prepare", work, cache)
    stage("stages.review", work, cache)
    moved = set(truth["moved"])
    issues = label_issues(work)
    result = {"images": truth["n_images"], "classes": len(truth["classes"]), "k": len(moved),
              "model_name": params["model_name"], "rate": args.rate, "seed": args.seed,
              "n_label_issues": len(issues),
              "precision_at_k_review": round(precision_at_k([r["path"] for r in issues], moved), 4),
              "precision_at_k_reference": round(precision_at_k(reference_ranking(work, cache), moved), 4)}
    print(json.dumps(result), flush=True)
    if args.fix:
        top = issues[:len(moved)]
        result["test_accuracy_noisy"] = test_accuracy(work, cache)
        for action in ("relabel", "drop"):
            rows = [f"{r['path']},{'drop' if action == 'drop' else 'relabel:' + r['suggested']}"
                    for r in top]
            (work / "data/corrections.csv").write_text("path,action\n" + "\n".join(rows) + "\n")
            result[f"test_accuracy_top_k_{action}"] = test_accuracy(work, cache)
        result["top_k_right_suggestion"] = sum(truth["moved"].get(r["path"]) == r["suggested"]
                                               for r in top)
        print(json.dumps(result), flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
