"""Speed benchmark: the recipe's loop against this pipeline, same data, backbone and epochs.

    python -m bench.benchmark --data ../shared/datasets/trashnet-mini --classes cardboard,glass
    python -m bench.benchmark --quick        # small built-in configuration (what CI runs)

Part 1: the recipe's loop (bench/recipe.py) vs the command users run, `dvc exp run` in a fresh
clone with cold caches (bench/exp_run.py), defaults of params.yaml (only data.source set), on
one shared split, with the same backbone and input size (params.yaml's): wall time and
held-out accuracy; our stages run in this process follow as a second, labelled line.
Part 2 (fine_tune): model-only training-step throughput on a synthetic batch vs our real
epoch throughput (decode-once store, batched crops on the device) per model, precision and
torch.compile — the data path must not be the limit (goal on a GPU: >= 90% of model-only).
Part 3 (--torchrun): one `torchrun --nproc_per_node=1 -m stages.train`.

The GPU section, one command (trashnet-mini, resnet50 + lite0, fp32/bf16/fp16, compile,
torchrun; about 5-8 minutes on one H100-class GPU, not yet run):

    python -m bench.benchmark --gpu --data ../shared/datasets/trashnet-mini

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
    from folderfit.pipeline.demo_data import write_digits

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
    from folderfit.params import load_params
    from folderfit.pipeline import evaluate, prepare
    from folderfit.pipeline import train as train_stage

    with contextlib.chdir(work):
        started = time.perf_counter()
        for stage in (prepare, train_stage, evaluate):
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
    """The command users run, `dvc exp run` in a fresh clone with cold caches (params.yaml's
    defaults, only data.source set, and data.image_size when given), against the recipe's loop
    with the same backbone, input size and split; then, second, our stages in this process."""
    from bench import exp_run
    from bench.recipe import run_recipe
    from folderfit.backbone import architecture

    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    model_name = defaults["model_name"]
    image_size = image_size or defaults["data"]["image_size"]
    sets = [f"data.image_size={image_size}"] if image_size != defaults["data"]["image_size"] else []
    command = exp_run.run(source, sets, keep=work / "exp")
    clone = work / "exp" / "clone"
    dvc = {"wall_s": command["wall_s"], "test_accuracy": command["eval.json"]["accuracy"],
           "train_images": command["train_details"]["n_train"]}
    data = {"source": str(source), "image_size": image_size}
    write_params(work, {"data": data})
    # a cold feature cache of its own: a run before this one must not make ours look fast
    with _env("FOLDERFIT_CACHE", str(work / "feature-cache")):
        ours = run_ours(work)
    dirs = recipe_split(clone, source)  # the split the command made (the same seed and params)
    built = architecture.build_model(model_name, len(os.listdir(dirs["train"])), "default", seed=0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    recipe = run_recipe(built.model, built.head_name, built.preprocess.with_image_size(image_size),
                        dirs["train"], dirs["val"], dirs["test"], epochs)
    torch.set_num_threads(threads)
    print(f"\n== {ours['strategy']}, {model_name}, {image_size} px, recipe {epochs} epochs, "
          f"{recipe['train_images']} training images")
    print(f"{'':<40}{'wall s':>9}{'test acc':>10}{'speed-up':>10}")
    rows = (("recipe's loop (bench/recipe.py)", recipe),
            ("`dvc exp run`, fresh clone, cold caches", dvc),
            ("in-process stages, cold feature cache", ours))
    for name, r in rows:
        print(f"{name:<40}{r['wall_s']:>9.1f}{r['test_accuracy']:>10.3f}{recipe['wall_s'] / r['wall_s']:>9.1f}x")
    print("stages of the command: " + ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in command["stages"].items()))
    print(f"(speed-up = recipe wall / wall. The command: every stage of dvc.yaml as its own process, "
          f"DVC included, demo_data and review too. In-process: prepare + train + evaluate in "
          f"this process, imports already paid: a lower bound, not what users run)")


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


def _fine_tune_setup(model_name: str, n_classes: int, freeze: int, rt):
    from folderfit.backbone import architecture
    from folderfit.compute.runtime import prepare_model
    from folderfit.tuning import freezing

    torch.manual_seed(0)
    built = architecture.build_model(model_name, n_classes, "none", seed=0)
    frozen = freezing.apply_freezing(built.model, built.stages, freeze)
    model = prepare_model(built.model, rt)
    optimizer = torch.optim.AdamW(freezing.parameter_groups(model, built.stages, built.head_name, lr=1e-3, backbone_lr=1e-4,
                                                         lr_decay=0.5, weight_decay=0))
    return built, model, optimizer, frozen


def _sync(rt) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def model_step_rate(model_name: str, image_size: int, batch: int, freeze: int, rt, steps: int,
                    compile_model: bool = False) -> float:
    """Images/s of forward+backward+step on one synthetic batch already on the device (the
    upper bound for the epoch loop: no data path at all). Like the epoch loop it reads
    nothing back per step, and uses the same fp16 gradient scaler."""
    from folderfit.compute.runtime import to_device
    from folderfit.images import datasets
    from folderfit.tuning import freezing

    _, model, optimizer, frozen = _fine_tune_setup(model_name, 10, freeze, rt)
    net = torch.compile(model, dynamic=False) if compile_model else model
    normalizer = datasets.Normalizer((0.5,) * 3, (0.5,) * 3).to(rt.device)
    images = to_device(torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8), rt)
    labels = torch.randint(0, 10, (batch,)).to(rt.device)
    scaler = rt.grad_scaler()
    freezing.set_train_mode(net, frozen)

    def step():
        with rt.autocast():
            loss = torch.nn.functional.cross_entropy(net(normalizer(images)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):  # warm-up (and compilation)
        step()
    _sync(rt)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(rt)
    return steps * batch / (time.perf_counter() - started)


def epoch_rate(work: Path, model_name: str, image_size: int, batch: int, freeze: int, rt,
               compile_model: bool = False, epochs: int = 2) -> float:
    """Images/s of the train stage's real epoch loop: decode-once store, batched crops and
    flips on the device, normalise, step (last epoch: store built, compilation done)."""
    from folderfit.artifacts import manifest
    from folderfit.images import datasets
    from folderfit.tuning import batches, epoch_loop
    from folderfit.tuning.augment import BatchAugment

    classes, splits = manifest.read_manifest(work / "data/prepared")
    built, model, optimizer, frozen = _fine_tune_setup(model_name, len(classes), freeze, rt)
    pre = built.preprocess.with_image_size(image_size)
    gen = torch.Generator().manual_seed(0)
    store = batches.ImageStore([p for p, _ in splits["train"]], rt.device)
    train = batches.TrainBatches(store, [label for _, label in splits["train"]], batch,
                           BatchAugment(image_size, 0.6, True), gen)
    val = batches.EvalBatches(splits["val"][:batch], datasets.eval_geometry(pre), batch, rt.device)
    net = torch.compile(model, dynamic=False) if compile_model else model
    result = epoch_loop.fit(net, optimizer, train, val, datasets.Normalizer(pre.mean, pre.std).to(rt.device),
                   epoch_loop.FitConfig(epochs, epochs), epoch_loop.RunContext(rt, gen), frozen)
    return len(train) * train.batch_size / result.train_seconds[-1]


def data_path_rate(work: Path, image_size: int, batch: int, rt) -> float:
    """Images/s of the training data path alone (store warm): gather, crop, flip, normalise,
    to channels_last on the device; no model. It must be well above model-only."""
    from folderfit.artifacts import manifest
    from folderfit.compute.runtime import to_device
    from folderfit.images import datasets
    from folderfit.tuning import batches
    from folderfit.tuning.augment import BatchAugment

    _, splits = manifest.read_manifest(work / "data/prepared")
    store = batches.ImageStore([p for p, _ in splits["train"]], rt.device)
    train = batches.TrainBatches(store, [label for _, label in splits["train"]], batch,
                           BatchAugment(image_size, 0.6, True), torch.Generator().manual_seed(0))
    normalizer = datasets.Normalizer((0.5,) * 3, (0.5,) * 3).to(rt.device)
    for epoch in range(2):  # the first one warms up allocators and kernels
        started = time.perf_counter()
        for images, _ in train:
            normalizer(to_device(images, rt))
        _sync(rt)
    return len(train) * train.batch_size / (time.perf_counter() - started)


def part_fine_tune(work: Path, image_size: int, batch: int, steps: int, models: list[str],
                   precisions: list[str], compile_rows: list[tuple[str, str]], device: str) -> None:
    """Model-only vs real epoch throughput per model and precision; the share is the goal
    (>= 90% on a GPU): how much of the model's speed the data path leaves."""
    from folderfit.artifacts import manifest
    from folderfit.backbone import architecture
    from folderfit.compute.runtime import pick_runtime
    from folderfit.errors import PipelineError

    batch = min(batch, len(manifest.read_manifest(work / "data/prepared")[1]["train"]))
    print(f"\n== fine_tune throughput, batch {batch}, {image_size} px, half the stages frozen; "
          f"images/s (second epoch; model-only: {steps} steps on one synthetic batch)", flush=True)
    print(f"data path alone (no model): {data_path_rate(work, image_size, batch, pick_runtime('fp32', device)):.1f}"
          f" images/s", flush=True)
    print(f"{'model':<24}{'precision':<30}{'compile':>8}{'model-only':>12}{'epoch':>10}{'share':>8}")
    rows = [(m, p, False) for m in models for p in precisions]
    rows += [(m, p, True) for m, p in compile_rows]
    for name, precision, compiled in rows:
        try:
            rt = pick_runtime(precision, device)
        except PipelineError as exc:
            print(f"{name:<24}{precision:<30}  refused: {exc}", flush=True)
            continue
        label = f"{precision} -> {rt.precision}" if precision == "auto" else precision
        stages = architecture.backbone_stages(architecture.create_architecture(*architecture.resolve_family(name)))
        freeze = len(stages) // 2
        started = time.perf_counter()
        model_only = model_step_rate(name, image_size, batch, freeze, rt, steps, compiled)
        epoch = epoch_rate(work, name, image_size, batch, freeze, rt, compiled)
        print(f"{name:<24}{label:<30}{'yes' if compiled else 'no':>8}{model_only:>12.1f}"
              f"{epoch:>10.1f}{epoch / model_only:>8.0%}   ({time.perf_counter() - started:.0f} s)",
              flush=True)


def part_torchrun(work: Path, source: Path, model_name: str, image_size: int, batch: int) -> None:
    """`torchrun --standalone --nproc_per_node=1 -m stages.train` (fine_tune, 2 epochs) in
    the benchmark's project, as a user launches it: wall time and the train log's last lines."""
    import subprocess

    write_params(work, {"strategy": "fine_tune", "model_name": model_name, "num_epochs": 2,
                        "patience": 2, "batch_size": batch, "warm_start_head": False,
                        "data": {"source": str(source), "image_size": image_size}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=1", "-m", "stages.train"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    print(f"\n== torchrun --nproc_per_node=1 -m stages.train ({model_name} fine_tune, 2 epochs): "
          f"exit {proc.returncode}, {wall:.1f} s wall", flush=True)
    for line in (proc.stdout + proc.stderr).strip().splitlines()[-6:]:
        print(f"  {line}")


def default_gpu_data() -> Path | None:
    """trashnet-mini where this project's machines keep it (or a copy under shared/)."""
    for candidate in (REPO / "shared/datasets/trashnet-mini", REPO.parent / "shared/datasets/trashnet-mini"):
        if candidate.is_dir():
            return candidate
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="ImageFolder to slice (default: built-in digits)")
    parser.add_argument("--classes", default="cardboard,glass", help="comma-separated class folders")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, help="default: params.yaml's data.image_size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, help="timed model-only steps (default: 5; --quick 2)")
    parser.add_argument("--models", default="tf_efficientnet_lite0", help="fine_tune rows, comma-separated")
    parser.add_argument("--precisions", default="auto", help="fine_tune rows: auto,fp32,bf16,fp16")
    parser.add_argument("--compile", default="", metavar="MODEL:PRECISION,...",
                        help="extra fine_tune rows with torch.compile, e.g. resnet50:bf16")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--torchrun", action="store_true", help="also one torchrun single-process train")
    parser.add_argument("--skip-feature-extract", action="store_true", help="only the fine_tune part")
    parser.add_argument("--quick", action="store_true", help="tiny configuration for CI")
    parser.add_argument("--skip-fine-tune", action="store_true", help="only the feature_extract part")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU section: trashnet-mini (all 6 classes), resnet50 + lite0 at "
                             "224 px, fp32/bf16/fp16, compile for resnet50 bf16, batch 64, torchrun")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_class, args.epochs, args.image_size = 20, 2, 64
    args.steps = args.steps or (2 if args.quick else 5)
    if args.gpu:
        args.data = args.data or default_gpu_data()
        args.classes = "cardboard,glass,metal,paper,plastic,trash"
        args.models, args.precisions = "resnet50,tf_efficientnet_lite0", "fp32,bf16,fp16"
        args.compile = args.compile or "resnet50:bf16"
        args.batch_size, args.torchrun = 64, True
        args.steps = max(args.steps, 20)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        if args.data:
            source = slice_folder(args.data, args.classes.split(","), args.per_class, work / "source")
        else:
            if args.gpu:
                print("note: trashnet-mini not found (pass --data): the built-in digits are used")
            source = digits_folder(work / "digits", args.per_class)
        fine_size = args.image_size or 224  # the fine_tune rows: lite0's and resnet50's native size
        if args.skip_feature_extract:  # the fine_tune part needs only the prepared split
            from folderfit.params import load_params
            from folderfit.pipeline import prepare

            write_params(work, {"data": {"source": str(source), "image_size": fine_size}})
            with contextlib.chdir(work):
                prepare.run(load_params())
        else:
            part_feature_extract(source, work, args.epochs, args.image_size)
        if args.skip_fine_tune:
            return
        compile_rows = [tuple(row.split(":")) for row in args.compile.split(",") if row]
        part_fine_tune(work, fine_size, args.batch_size, args.steps, args.models.split(","),
                       args.precisions.split(","), compile_rows, args.device)
        if args.torchrun:
            part_torchrun(work, source, args.models.split(",")[-1], fine_size, args.batch_size)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
