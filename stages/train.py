"""Stage `train`: build the backbone, freeze by strategy, fine-tune, save one model file.

Outputs: models/model.pt (self-contained: architecture name, classes, preprocessing, weights),
metrics/train.json (deterministic facts of the run), metrics/timing.json (wall time, which
is the one output that differs between identical reruns), metrics/train_live/ (per-epoch
curves logged with dvclive, drawn by `dvc plots show`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch

from stages import data as D
from stages import distributed as DD
from stages import engine as E
from stages import models as M
from stages.checkpoint import CHECKPOINT, Checkpointer, fingerprint
from stages.errors import PipelineError, run_main
from stages.fileio import write_json
from stages.params import Params, load_params
from stages.runtime import gpu_memory_guard, pick_runtime, prepare_model, seed_everything

PREPARED = Path("data/prepared")
MODEL_FILE = Path("models/model.pt")
TRAIN_METRICS = Path("metrics/train.json")
TIMING = Path("metrics/timing.json")
LIVE_DIR = Path("metrics/train_live")


class EpochLog:
    """Per-epoch curves through dvclive (plots in metrics/train_live/plots/metrics/)."""

    def __init__(self, directory: Path):
        from dvclive import Live
        from scmrepo.exceptions import SCMError

        try:
            self.live = Live(dir=str(directory), save_dvc_exp=False, dvcyaml=False, report=None)
        except SCMError as exc:  # dvclive reads the git HEAD, which a brand-new repo lacks
            raise PipelineError(f"git repository problem ({exc}): commit once first, e.g. "
                                f"git add -A && git commit -m 'start'") from None

    def __call__(self, epoch: int, row: dict) -> None:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            split, _, metric = key.partition("_")
            self.live.log_metric(f"{split}/{metric}", round(row[key], 6))
        self.live.log_metric("lr", row["lr"])
        self.live.next_step()

    def close(self) -> None:
        self.live.end()


def class_weights(params: Params, samples, n_classes: int) -> torch.Tensor | None:
    """balanced: weight_c = N / (classes * N_c), as scikit-learn defines it."""
    if params.class_weighting == "none":
        return None
    counts = torch.tensor(D.class_counts(samples, n_classes), dtype=torch.float32)
    return counts.sum() / (n_classes * counts.clamp(min=1))


def feature_extract(built: M.BuiltModel, pre, params: Params, splits, rt, optimizer, cfg,
                    generator, log, checkpointer=None) -> E.FitResult:
    """Run the frozen backbone once per image and view, then train only the head."""
    model = built.model
    head = model.get_submodule(built.head_name)
    M.set_submodule(model, built.head_name, torch.nn.Identity())  # model(x) -> pooled features
    normalizer = D.Normalizer(pre.mean, pre.std).to(rt.device)
    views = params.augment.feature_views
    clean = D.ImageTensorDataset(splits["train"], D.eval_geometry(pre))
    augmented = clean.with_geometry(D.train_geometry(pre, params.augment.hflip, params.augment.min_scale))
    train_views = []
    for view in range(views):
        dataset = clean if view == 0 else augmented
        loader = E.make_loader(dataset, params.evaluate.batch_size, False, None, rt)
        features, train_labels = E.extract_features(model, loader, normalizer, rt,
                                                     desc=f"features train view {view + 1}/{views}")
        train_views.append(features)
    val_loader = E.make_loader(D.ImageTensorDataset(splits["val"], D.eval_geometry(pre)),
                               params.evaluate.batch_size, False, None, rt)
    val_features, val_labels = E.extract_features(model, val_loader, normalizer, rt, desc="features val")
    M.set_submodule(model, built.head_name, head)
    return E.fit_head(head, torch.stack(train_views), train_labels, val_features, val_labels,
                      optimizer, cfg, generator, log, checkpointer)


def main(argv=None) -> None:
    ctx = DD.init_from_env()  # torchrun: one process per GPU; see stages/distributed.py
    try:
        _train(ctx)
    finally:
        DD.finish(ctx)


def _train(ctx: DD.DistContext) -> None:
    started = time.perf_counter()
    params = load_params()
    generator = seed_everything(params.seed)
    rt = pick_runtime(params.precision)
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
    model = prepare_model(built.model, rt)
    built.model = model
    groups = M.parameter_groups(model, built.stages, built.head_name, params.lr, params.lr_decay,
                                params.weight_decay)
    if params.batch_size > n_train:
        print(f"note: batch_size {params.batch_size} > {n_train} training images: "
              f"each epoch is a single batch of {n_train}")
    cfg = E.FitConfig(params.num_epochs, params.patience, params.batch_size,
                      params.label_smoothing, class_weights(params, splits["train"], len(classes)))
    print(f"train: {params.model_name} (weights: {built.weights.source}), {strategy}, "
          f"{n_frozen}/{len(built.stages)} stages frozen, {M.count_trainable(model):,d} trainable "
          f"parameters, {n_train} train / {len(splits['val'])} val images, {rt.describe()}")
    log = EpochLog(LIVE_DIR) if ctx.is_main else None
    # Resume state after each epoch (stages/checkpoint.py); features are recomputed on resume.
    # Single-process runs only: under torchrun every rank would write the same file.
    checkpointer = (Checkpointer(CHECKPOINT, fingerprint(params, PREPARED / D.MANIFEST), generator)
                    if ctx.world_size == 1 else None)
    # On a GPU the heavy batches are evaluate.batch_size for feature_extract, batch_size otherwise.
    batch_key, batch = (("evaluate.batch_size", params.evaluate.batch_size)
                        if strategy == "feature_extract" else ("batch_size", params.batch_size))
    # closing(): the curves are flushed however training ends.
    with gpu_memory_guard(batch_key, batch), (contextlib.closing(log) if log else contextlib.nullcontext()):
        if strategy == "feature_extract":
            optimizer = torch.optim.AdamW([g for g in groups if g["name"] == "head"])
            result = feature_extract(built, pre, params, splits, rt, optimizer, cfg, generator, log,
                                     checkpointer)
        else:
            if params.warmup_epochs:
                # fastai-style head warm-up: a trained head before the backbone unfreezes keeps
                # the random head's large early gradients out of the pretrained weights
                print(f"head warm-up: {params.warmup_epochs} epoch(s) on frozen-backbone features")
                warm = dataclasses.replace(cfg, num_epochs=params.warmup_epochs,
                                           patience=params.warmup_epochs)
                head_only = torch.optim.AdamW([{"params": groups[0]["params"], "lr": params.lr,
                                                "weight_decay": params.weight_decay}])
                feature_extract(built, pre, params, splits, rt, head_only, warm, generator, None, None)
            optimizer = torch.optim.AdamW(groups)
            train_ds = D.ImageTensorDataset(splits["train"], D.train_geometry(
                pre, params.augment.hflip, params.augment.min_scale))
            val_ds = D.ImageTensorDataset(splits["val"], D.eval_geometry(pre), cache_output=True)
            sampler = DD.train_sampler(train_ds, ctx, params.seed)
            batch_size = DD.per_rank_batch(params.batch_size, ctx)
            n_local = len(sampler) if sampler is not None else n_train
            drop_last = n_local % batch_size == 1 and n_local > batch_size
            train_loader = E.make_loader(train_ds, batch_size, True, generator, rt, drop_last, sampler)
            val_loader = E.make_loader(DD.shard(val_ds, ctx), params.evaluate.batch_size, False, None, rt)
            normalizer = D.Normalizer(pre.mean, pre.std).to(rt.device)
            result = E.fit(DD.wrap(model, ctx), optimizer, train_loader, val_loader, normalizer, cfg,
                           rt, frozen, log, reduce=DD.reducer(ctx, rt.device), checkpointer=checkpointer)
    DD.report_sync(model, ctx)
    if not ctx.is_main:
        return
    summary = {
        "model_name": params.model_name,
        "strategy": strategy,
        "strategy_requested": params.strategy,
        "weights": built.weights.to_dict(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_val_accuracy": round(result.best_val_accuracy, 6),
        "best_val_loss": round(result.best_val_loss, 6),
        "trainable_params": M.count_trainable(model),
        "total_params": sum(p.numel() for p in model.parameters()),
        "frozen_stages": n_frozen,
        "backbone_stages": len(built.stages),
        "n_train": n_train,
        "n_val": len(splits["val"]),
        "image_size": pre.image_size,
        "precision": "bf16" if rt.dtype else "fp32",
        "processes": ctx.world_size,
    }
    M.save_model_file(MODEL_FILE, built, classes, pre, extra=summary)
    write_json(TRAIN_METRICS, summary)
    wall = time.perf_counter() - started
    write_json(TIMING, {"train_wall_s": round(wall, 2), "device": rt.describe()})
    if checkpointer:
        checkpointer.finish()
    print(f"train: best epoch {result.best_epoch}/{result.epochs_run}, val accuracy "
          f"{result.best_val_accuracy:.4f}, {wall:.1f} s -> {MODEL_FILE}")


if __name__ == "__main__":
    run_main(main)
