"""Speed benchmark: the recipe's loop against this pipeline, same data, backbone and epochs.

    python -m bench.benchmark --data ../shared/datasets/trashnet-mini --classes cardboard,glass
    python -m bench.benchmark --quick        # small built-in configuration (what CI runs)

Part 1: the recipe's loop (bench/recipe.py) vs our prepare -> train -> evaluate with the
defaults of params.yaml (only data.source set), end to end, on one shared split, with the same
backbone and input size (params.yaml's): wall time, training images/s, held-out accuracy.
Part 2 (fine_tune): model-only training-step throughput on a synthetic batch vs our real
epoch throughput (data path included, decode cache warm) — the data path must not be the limit.
On a GPU, part 2 also runs resnet50 and tf_efficientnet_lite0 at 224 px.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def slice_folder(source: Path, classes: list[str], per_class: int, dest: Path) -> Path:
    """An ImageFolder of symlinks: the first `per_class` files (by name) of each class."""
    for name in classes:
        files = sorted(p for p in (source / name).iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            sys.exit(f"error: {source / name}: no images; pick classes with --classes")
        (dest / name).mkdir(parents=True)
        for f in files[:per_class]:
            (dest / name / f.name).symlink_to(f.resolve())
    return dest


def digits_folder(dest: Path, per_class: int, size: int = 64) -> Path:
    """Two classes of real digit scans, for --quick."""
    sys.path.insert(0, str(REPO))
    from folderfit.demo import write_digits

    write_digits(dest / "all", per_class, size)
    for digit in ("0", "1"):
        (dest / "two" / digit).parent.mkdir(parents=True, exist_ok=True)
        (dest / "all" / digit).rename(dest / "two" / digit)
    return dest / "two"


def write_params(work: Path, changes: dict) -> None:
    from folderfit.params import merge_overrides

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(merge_overrides(base, changes), sort_keys=False))


def run_ours(work: Path) -> dict:
    """prepare + train + evaluate in-process, as `dvc repro` runs them."""
    from folderfit import evaluation, prepare, training
    from folderfit.params import load_params

    with contextlib.chdir(work):
        started = time.perf_counter()
        for stage in (prepare, training, evaluation):
            stage.run(load_params())
        wall = time.perf_counter() - started
        result = json.loads(Path("metrics/eval.json").read_text())
        trained = json.loads(Path("metrics/train/details.json").read_text())
    return {"wall_s": wall, "test_accuracy": result["accuracy"], "train_images": trained["n_train"],
            "strategy": trained["strategy"]}


def recipe_split(work: Path, source: Path) -> dict[str, Path]:
    """The originals behind our split, as train/val/test ImageFolders for the recipe."""
    import csv

    root = work / "recipe"
    with open(work / "data/prepared/manifest.csv") as fh:
        for row in csv.DictReader(fh):
            target = root / row["split"] / row["class"] / Path(row["source"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((source / row["source"]).resolve())
    return {s: root / s for s in ("train", "val", "test")}


def part_feature_extract(source: Path, work: Path, epochs: int, image_size: int | None) -> None:
    """Our default path (params.yaml with only data.source, and data.image_size when given)
    against the recipe's loop with the same backbone, input size and split."""
    from bench.recipe import run_recipe
    from folderfit import models as M

    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    model_name = defaults["model_name"]
    image_size = image_size or defaults["data"]["image_size"]
    data = {"source": str(source), "image_size": image_size}
    write_params(work, {"data": data})
    # a cold feature cache of its own: a run before this one must not make ours look fast
    with _env("FOLDERFIT_CACHE", str(work / "feature-cache")):
        ours = run_ours(work)
    dirs = recipe_split(work, source)
    built = M.build_model(model_name, len(os.listdir(dirs["train"])), "default", seed=0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    recipe = run_recipe(built.model, built.head_name, built.preprocess.with_image_size(image_size),
                        dirs["train"], dirs["val"], dirs["test"], epochs)
    torch.set_num_threads(threads)
    print(f"\n== {ours['strategy']}, {model_name}, {image_size} px, recipe {epochs} epochs, "
          f"{recipe['train_images']} training images")
    print(f"{'':<16}{'wall s':>9}{'train img/s':>13}{'test acc':>10}{'speed-up':>10}")
    for name, r in (("recipe", recipe), ("ours, defaults", ours)):
        rate = r["train_images"] * epochs / r["wall_s"]
        print(f"{name:<16}{r['wall_s']:>9.1f}{rate:>13.1f}{r['test_accuracy']:>10.3f}"
              f"{recipe['wall_s'] / r['wall_s']:>9.1f}x")
    print(f"(speed-up = recipe wall / wall; ours = prepare + train + evaluate in this process with "
          f"params.yaml's defaults, model building and a cold feature cache included; ours' train "
          f"img/s counts {epochs} epochs' worth of images like the recipe's)")


@contextlib.contextmanager
def _env(key: str, value: str):
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def model_step_rate(model_name: str, image_size: int, batch: int, freeze: int, rt, steps: int) -> float:
    """Images/s of forward+backward+step on a synthetic batch already on the device."""
    from folderfit import datasets as DS
    from folderfit import models as M
    from folderfit.runtime import prepare_model, to_device

    built = M.build_model(model_name, 10, "none", seed=0)
    frozen = M.apply_freezing(built.model, built.stages, freeze)
    model = prepare_model(built.model, rt)
    optimizer = torch.optim.AdamW(M.parameter_groups(model, built.stages, built.head_name, 1e-3, 0.5, 0))
    normalizer = DS.Normalizer((0.5,) * 3, (0.5,) * 3).to(rt.device)
    images = to_device(torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8), rt)
    labels = torch.randint(0, 10, (batch,)).to(rt.device)
    M.set_train_mode(model, frozen)

    def step():
        with rt.autocast():
            loss = torch.nn.functional.cross_entropy(model(normalizer(images)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())  # synchronises like the real loop does

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def epoch_rate(work: Path, model_name: str, image_size: int, batch: int, freeze: int, rt) -> float:
    """Images/s of our real training epoch (second epoch: decode cache warm)."""
    from folderfit import data as D
    from folderfit import datasets as DS
    from folderfit import engine as E
    from folderfit import models as M
    from folderfit.runtime import prepare_model

    classes, splits = D.read_manifest(work / "data/prepared")
    built = M.build_model(model_name, len(classes), "none", seed=0)
    pre = built.preprocess.with_image_size(image_size)
    frozen = M.apply_freezing(built.model, built.stages, freeze)
    model = prepare_model(built.model, rt)
    optimizer = torch.optim.AdamW(M.parameter_groups(model, built.stages, built.head_name, 1e-3, 0.5, 0))
    gen = torch.Generator().manual_seed(0)
    train = DS.ImageTensorDataset(splits["train"], DS.train_geometry(pre, True, 0.6))
    loader = E.make_loader(train, batch, rt, shuffle=True, generator=gen, drop_last=True)
    val = E.make_loader(DS.ImageTensorDataset(splits["val"][:batch], DS.eval_geometry(pre), cache_output=True),
                        batch, rt)
    result = E.fit(model, optimizer, loader, val, DS.Normalizer(pre.mean, pre.std).to(rt.device),
                   E.FitConfig(2, 2), E.RunContext(rt, gen), frozen)
    images = len(loader) * batch
    return images / result.train_seconds[-1]


def part_fine_tune(work: Path, image_size: int, batch: int, steps: int, models: list[str]) -> None:
    from folderfit import data as D
    from folderfit import models as M
    from folderfit.runtime import pick_runtime

    rt = pick_runtime("auto")
    batch = min(batch, len(D.read_manifest(work / "data/prepared")[1]["train"]))
    print(f"\n== fine_tune throughput, {rt.describe()}, batch {batch}, {image_size} px")
    print(f"{'model':<24}{'model-only img/s':>18}{'epoch img/s':>13}{'ratio':>8}")
    for name in models:
        stages = M.backbone_stages(M.create_architecture(*M.resolve_family(name)))
        freeze = len(stages) // 2
        model_only = model_step_rate(name, image_size, batch, freeze, rt, steps)
        epoch = epoch_rate(work, name, image_size, batch, freeze, rt)
        print(f"{name:<24}{model_only:>18.1f}{epoch:>13.1f}{epoch / model_only:>8.0%}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="ImageFolder to slice (default: built-in digits)")
    parser.add_argument("--classes", default="cardboard,glass", help="comma-separated class folders")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, help="default: params.yaml's data.image_size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed model-only steps")
    parser.add_argument("--quick", action="store_true", help="tiny configuration for CI")
    parser.add_argument("--skip-fine-tune", action="store_true", help="part 1 only")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_class, args.epochs, args.image_size, args.steps = 20, 2, 64, 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        if args.data:
            source = slice_folder(args.data, args.classes.split(","), args.per_class, work / "source")
        else:
            source = digits_folder(work / "digits", args.per_class)
        part_feature_extract(source, work, args.epochs, args.image_size)
        if args.skip_fine_tune:
            return
        models = ["tf_efficientnet_lite0"]
        if torch.cuda.is_available():
            models.append("resnet50")
        part_fine_tune(work, args.image_size or 224, args.batch_size, args.steps, models)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
