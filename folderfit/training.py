"""Training (stage `train`): build the backbone, freeze it by strategy, train, save one model file.

* feature_extract: the frozen backbone's features of every training view and of the
  validation images come from folderfit.features (computed once, cached), and the head is
  solved exactly on them (folderfit.head), its regularisation chosen on val.
* fine_tune / full_tune: with `warm_start_head`, the head starts as that solved head (no
  random head's large early gradients reach the pretrained weights); then the epoch loop of
  folderfit.engine trains the unfrozen stages and the head.

Outputs: models/model.pt (self-contained: architecture name, classes, preprocessing, weights),
metrics/train.json (headline: strategy, best validation accuracy and loss), metrics/train/
(details.json with every fact of the run, and the per-step curves logged with dvclive, drawn
by `dvc plots show`), metrics/timing.json (wall time: the one output that differs between
identical reruns).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from folderfit import batches as B
from folderfit import data as D
from folderfit import datasets as DS
from folderfit import distributed as DD
from folderfit import engine as E
from folderfit import features as F
from folderfit import head as H
from folderfit import models as M
from folderfit.augment import BatchAugment
from folderfit.checkpoint import CHECKPOINT, Checkpointer, fingerprint
from folderfit.errors import PipelineError
from folderfit.fileio import staged_dir, write_json
from folderfit.params import Params
from folderfit.runtime import gpu_memory_guard, pick_runtime, prepare_model, seed_everything

PREPARED = Path("data/prepared")
MODEL_FILE = Path("models/model.pt")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_DIR = Path("metrics/train")
TIMING = Path("metrics/timing.json")


class EpochLog:
    """Per-step curves through dvclive (plots in metrics/train/plots/metrics/): epochs of the
    epoch loop, or the points of the head's regularisation path."""

    def __init__(self, directory: Path):
        from dvclive import Live
        from scmrepo.exceptions import SCMError

        try:
            self.live = Live(dir=str(directory), save_dvc_exp=False, dvcyaml=False, report=None)
        except SCMError as exc:  # dvclive reads the git HEAD, which a brand-new repo lacks
            raise PipelineError(f"git repository problem ({exc}): commit once first, e.g. "
                                f"git add -A && git commit -m 'start'") from None

    def __call__(self, step: int, row: dict) -> None:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            split, _, metric = key.partition("_")
            self.live.log_metric(f"{split}/{metric}", round(row[key], 6))
        for key in ("lr", "l2"):
            if key in row:
                self.live.log_metric(key, row[key])
        self.live.next_step()

    def close(self) -> None:
        self.live.end()


def class_weights(params: Params, samples, n_classes: int) -> torch.Tensor | None:
    """balanced: weight_c = N / (classes * N_c), scikit-learn's definition (and function)."""
    if params.class_weighting == "none":
        return None
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([label for _, label in samples])
    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def training_views(params: Params) -> list[F.View]:
    """The clean view, then `augment.feature_views - 1` augmented crops (seeded per image)."""
    a = params.augment
    return [F.CLEAN] + [F.View("augment", k, a.min_scale, a.hflip, params.seed)
                        for k in range(1, a.feature_views)]


def solve_head(built: M.BuiltModel, pre, params: Params, splits, rt, weights, log=None) -> H.HeadFit:
    """Features of every training view and of the val images (cached), then the exact head
    solve; the solved head is put into the model."""
    model, head = F.backbone_only(built.model, built.head_name)
    extractor = F.FeatureExtractor(model, pre, rt, params.evaluate.batch_size)
    train_files = [path for path, _ in splits["train"]]
    train_labels = torch.tensor([label for _, label in splits["train"]])
    views = training_views(params)
    train_x = torch.cat([extractor.features(train_files, view, "features train") for view in views])
    val_x = extractor.features([path for path, _ in splits["val"]], F.CLEAN, "features val")
    val_y = torch.tensor([label for _, label in splits["val"]])
    M.set_submodule(built.model, built.head_name, head)
    print(f"features: {len(views)} view(s) of {len(train_files)} train + {len(val_y)} val images "
          f"({extractor.computed} computed, {extractor.reused} from the cache {F.cache_root()})")
    fitted = H.fit_head(train_x, train_labels.repeat(len(views)), val_x, val_y, head.out_features,
                        weights, params.label_smoothing, log=log)
    fitted.apply_to(head)
    print(f"head: l2 {fitted.l2:.3g} chosen on val (accuracy {fitted.val_accuracy:.4f}, "
          f"loss {fitted.val_loss:.4f})")
    return fitted


def run(params: Params) -> None:
    ctx = DD.init_from_env(params.device)  # torchrun: one process per GPU; see folderfit/distributed.py
    try:
        # metrics/train is built beside its place and swapped in whole at the end, so a failed
        # run leaves the previous curves (DVC keeps them: persist: true in dvc.yaml)
        with staged_dir(TRAIN_DIR) if ctx.is_main else contextlib.nullcontext() as curves:
            _train(params, ctx, curves)
    finally:
        DD.finish(ctx)


def _train(params: Params, ctx: DD.DistContext, curves: Path | None) -> None:
    started = time.perf_counter()
    generator = seed_everything(params.seed)
    rt = pick_runtime(params.precision, params.device)
    classes, splits = D.read_manifest(PREPARED)
    if "val" not in splits:
        raise PipelineError(f"{PREPARED}: no validation images; rerun prepare with data.val_fraction > 0")
    n_train = len(splits["train"])
    strategy = M.auto_strategy(n_train) if params.strategy == "auto" else params.strategy
    if params.strategy == "auto":
        print(f"strategy auto: {n_train} training images -> {strategy}")
    built = M.build_model(params.model_name, len(classes), params.weights, params.seed)
    DD.reseed_augmentation(ctx, params.seed)
    pre = built.preprocess.with_image_size(params.data.image_size)
    n_frozen = M.frozen_stage_count(strategy, params.freeze_layers, len(built.stages))
    frozen = M.apply_freezing(built.model, built.stages, n_frozen)
    built.model = model = prepare_model(built.model, rt)
    weights = class_weights(params, splits["train"], len(classes))
    print(f"train: {params.model_name} (weights: {built.weights.source}), {strategy}, "
          f"{n_frozen}/{len(built.stages)} stages frozen, {M.count_trainable(model):,d} trainable "
          f"parameters, {n_train} train / {len(splits['val'])} val images, {rt.describe()}")
    log = EpochLog(curves) if ctx.is_main else None
    checkpointer = None
    # On a GPU the heavy batches are evaluate.batch_size for feature_extract, batch_size otherwise.
    batch_key, batch = (("evaluate.batch_size", params.evaluate.batch_size)
                        if strategy == "feature_extract" else ("batch_size", params.batch_size))
    # closing(): the curves are flushed however training ends.
    with gpu_memory_guard(batch_key, batch), (contextlib.closing(log) if log else contextlib.nullcontext()):
        if strategy == "feature_extract":
            fitted = solve_head(built, pre, params, splits, rt, weights, log)
            outcome = {"best_val_accuracy": fitted.val_accuracy, "best_val_loss": fitted.val_loss}
            details = {"head_l2": fitted.l2, "head_path": fitted.path}
        else:
            if params.warm_start_head and built.weights.source != "none":
                print("head warm start: solving the head on frozen-backbone features first")
                solve_head(built, pre, params, splits, rt, weights)
            elif params.warm_start_head:  # a random backbone's features say nothing yet
                print("head warm start skipped: the backbone is randomly initialised (weights: none)")
            result, checkpointer = _fit(params, built, pre, splits, rt, frozen, weights, generator,
                                        ctx, log)
            outcome = {"best_val_accuracy": result.best_val_accuracy, "best_val_loss": result.best_val_loss}
            details = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    DD.report_sync(model, ctx)
    if not ctx.is_main:
        return
    headline = {"strategy": strategy, **{k: round(v, 6) for k, v in outcome.items()}}
    details = {
        "model_name": params.model_name,
        **headline,
        "strategy_requested": params.strategy,
        "weights": built.weights.to_dict(),
        **details,
        "trainable_params": M.count_trainable(model),
        "total_params": sum(p.numel() for p in model.parameters()),
        "frozen_stages": n_frozen,
        "backbone_stages": len(built.stages),
        "n_train": n_train,
        "n_val": len(splits["val"]),
        "image_size": pre.image_size,
        "precision": rt.precision,
        "device": rt.describe(),
        "processes": ctx.world_size,
    }
    M.save_model_file(MODEL_FILE, built, classes, pre, extra=details)
    write_json(curves / "details.json", details)
    write_json(TRAIN_METRICS, headline)
    wall = time.perf_counter() - started
    write_json(TIMING, {"train_wall_s": round(wall, 2)})
    if checkpointer:
        checkpointer.finish()  # only now: the outputs it could have recovered are written
    print(f"train: val accuracy {headline['best_val_accuracy']:.4f}, {wall:.1f} s -> {MODEL_FILE}")


def _fit(params: Params, built: M.BuiltModel, pre, splits, rt, frozen, weights, generator,
         ctx: DD.DistContext, log) -> tuple[E.FitResult, Checkpointer | None]:
    """The epoch loop for fine_tune / full_tune, with resume (single process only: under
    torchrun every rank would write the same checkpoint)."""
    n_train = len(splits["train"])
    if params.batch_size > n_train:
        print(f"note: batch_size {params.batch_size} > {n_train} training images: "
              f"each epoch is a single batch of {n_train}")
    checkpointer = (Checkpointer(CHECKPOINT, fingerprint(params, PREPARED / D.MANIFEST), generator)
                    if ctx.world_size == 1 else None)
    run_ctx = E.RunContext(rt, generator, ctx, log, checkpointer, DD.reducer(ctx, rt.device))
    groups = M.parameter_groups(built.model, built.stages, built.head_name, params.lr,
                                params.lr_decay, params.weight_decay)
    optimizer = torch.optim.AdamW(groups)
    store = B.ImageStore([path for path, _ in splits["train"]], rt.device)
    print(f"data: {store.describe()}")
    sampler = DD.train_sampler(store, ctx, params.seed)
    augment = BatchAugment(pre.image_size, params.augment.min_scale, params.augment.hflip)
    train_batches = B.TrainBatches(store, [label for _, label in splits["train"]],
                                   DD.per_rank_batch(params.batch_size, ctx), augment,
                                   DD.augmentation_generator(ctx, generator, params.seed), sampler)
    val_batches = B.EvalBatches(list(DD.shard(splits["val"], ctx)), DS.eval_geometry(pre),
                                params.evaluate.batch_size, rt.device)
    normalizer = DS.Normalizer(pre.mean, pre.std).to(rt.device)
    cfg = E.FitConfig(params.num_epochs, params.patience, params.label_smoothing, weights)
    model = DD.wrap(built.model, ctx)
    if params.compile:  # fixed batch shapes: one graph for training (validation runs eagerly)
        print("compile: torch.compile of the training step; the first epoch includes compiling")
        model = torch.compile(model, dynamic=False)
    result = E.fit(model, optimizer, train_batches, val_batches, normalizer, cfg, run_ctx, frozen)
    return result, checkpointer
