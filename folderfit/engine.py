"""The epoch loop (fine_tune / full_tune) and the one inference loop (evaluate, predict,
feature extraction).

`fit` chooses the best epoch on validation accuracy (ties: lower validation loss), stops
early after `patience` epochs without improvement, lowers the learning rates on a plateau,
and ends with the best epoch's weights restored (a deep copy, not a view). The head of
feature_extract is not trained here: on frozen features it is a convex problem, solved
exactly by folderfit.head.

With fp16 autocast (Runtime.grad_scaling) the loss is scaled by a GradScaler, whose state is
checkpointed with the rest. The step's loss and accuracy are summed on the device and read
once per epoch: reading them every step would make the CPU wait for the GPU before it can
queue the next batch.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from folderfit.distributed import DistContext, unwrap
from folderfit.models import set_train_mode
from folderfit.runtime import Runtime, async_copy, to_device

EpochLogger = Callable[[int, dict], None]


class Padded(NamedTuple):
    """The meta of a batch padded to a fixed shape: only its first `n` rows are real."""

    meta: object
    n: int


@dataclass
class RunContext:
    """What every part of one training run shares: where it computes, its random stream,
    where epochs are logged and checkpointed, and the process group (if any)."""

    rt: Runtime
    generator: torch.Generator
    dist: DistContext = field(default_factory=DistContext)
    log: EpochLogger | None = None
    checkpointer: object | None = None  # folderfit.checkpoint.Checkpointer
    reduce: Callable[[list], list] | None = None  # sums numbers over processes


@dataclass
class FitConfig:
    num_epochs: int
    patience: int
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None


@dataclass
class FitResult:
    best_epoch: int  # 1-based
    epochs_run: int
    best_val_accuracy: float
    best_val_loss: float
    history: list = field(default_factory=list)
    train_seconds: list = field(default_factory=list)  # per epoch, train pass only (benchmarks)


class EarlyStopping:
    """Tracks the best epoch (val accuracy, then val loss) and keeps a deep copy of its state."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_key = (-math.inf, math.inf)
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0

    def update(self, epoch: int, accuracy: float, loss: float, module: nn.Module) -> bool:
        """Record an epoch; returns True when training should stop."""
        if accuracy > self.best_key[0] or (accuracy == self.best_key[0] and loss < self.best_key[1]):
            self.best_key = (accuracy, loss)
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(module.state_dict())
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


def make_scheduler(optimizer, patience: int):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                      patience=max(1, patience // 2))


def loader_workers(rt: Runtime) -> int:
    """On CPU the data path runs in the main process: with few cores, workers would compete
    with the model for them. On a GPU, workers decode while the GPU computes."""
    return 0 if rt.device.type == "cpu" else min(8, torch.get_num_threads())


def make_loader(dataset, batch_size: int, rt: Runtime, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False, sampler=None,
                collate_fn=None, workers: int | None = None):
    workers = loader_workers(rt) if workers is None else workers
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        generator=generator, drop_last=drop_last, collate_fn=collate_fn,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=rt.device.type == "cuda")


# ------------------------------------------------------------------ inference
@torch.inference_mode()
def infer_batches(model: nn.Module, loader, normalizer: nn.Module, rt: Runtime,
                  desc: str = "predict", progress: bool | None = None):
    """Run `model` (in eval mode) over a loader of (uint8 NCHW images or None, meta) batches,
    yielding (float32 CPU outputs or None, meta) per batch; of a batch whose meta is Padded,
    only the first n rows are yielded (with the inner meta)."""
    model.eval()
    for images, meta in tqdm(loader, desc=desc, leave=False,
                             disable=None if progress is None else not progress):
        keep = None
        if isinstance(meta, Padded):
            meta, keep = meta
        out = None
        if images is not None:
            with rt.autocast():
                out = model(normalizer(to_device(images, rt)))[:keep].float().cpu()
        yield out, meta


def infer(model: nn.Module, loader, normalizer: nn.Module, rt: Runtime, desc: str = "predict",
          progress: bool | None = None) -> tuple[torch.Tensor, list]:
    """Run `model` (in eval mode) over a loader of (uint8 NCHW images or None, meta) batches.
    Returns the float32 outputs on the CPU in loader order and the list of every batch's meta
    (labels, indices, ...); a batch whose images are None contributes only its meta, and of a
    batch whose meta is Padded only the first n rows count."""
    outputs, metas = [], []
    for out, meta in infer_batches(model, loader, normalizer, rt, desc, progress):
        if out is not None:
            outputs.append(out)
        metas.append(meta)
    width = outputs[0].shape[1:] if outputs else (0,)
    return (torch.cat(outputs) if outputs else torch.zeros(0, *width)), metas


def infer_labelled(model: nn.Module, loader, normalizer: nn.Module, rt: Runtime,
                   desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """infer() over (images, labels) batches: (float32 outputs, labels), in order."""
    outputs, labels = infer(model, loader, normalizer, rt, desc)
    return outputs, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def scores(logits: torch.Tensor, labels: torch.Tensor, reduce=None) -> tuple[float, float]:
    """(unweighted cross-entropy, accuracy) of CPU logits; with `reduce`, over the shards of
    all processes (each holds part of the samples; the sums are reduced)."""
    loss_sum = float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
    numbers = [loss_sum, int((logits.argmax(1) == labels).sum()), len(labels)]
    loss_sum, correct, n = reduce(numbers) if reduce else numbers
    return loss_sum / max(n, 1), correct / max(n, 1)


# ------------------------------------------------------------------ training
def _log_epoch(epoch: int, row: dict, history: list, log: EpochLogger | None, lr: float) -> None:
    row = {"epoch": epoch, **row, "lr": lr}
    history.append(row)
    print(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
          f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}  lr {lr:.2e}", flush=True)
    if log:
        log(epoch, row)


def _resume(run: RunContext, module, optimizer, scheduler, stopper, scaler) -> tuple[int, list, bool]:
    """(last finished epoch, history, stopped early) from a checkpoint, or a fresh start.
    Finished epochs go to the logger again: their curves belong in this run's output."""
    if run.checkpointer is None:
        return 0, [], False
    epoch, history, stopped = run.checkpointer.restore(module, optimizer, scheduler, stopper,
                                                       scaler)
    if run.log:
        for row in history:
            run.log(row["epoch"], row)
    return epoch, history, stopped


def _set_epoch(train_loader, epoch: int) -> None:
    """A new shuffle of a DistributedSampler each epoch (batches.TrainBatches or a DataLoader)."""
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(epoch)
    elif hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
        train_loader.sampler.set_epoch(epoch)


def fit(model: nn.Module, optimizer, train_loader, val_loader, normalizer: nn.Module,
        cfg: FitConfig, run: RunContext, frozen_modules: list) -> FitResult:
    """Train end to end; frozen modules (BatchNorm included) stay in eval mode.
    Distributed (folderfit.distributed): `model` is the DDP wrapper, the loaders hold this
    process's shards and `run.reduce` sums [loss, correct, count] over all processes.
    With `run.checkpointer`, resume after the last finished epoch and save after every epoch."""
    rt = run.rt
    weights = cfg.class_weights.to(rt.device) if cfg.class_weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    scheduler = make_scheduler(optimizer, cfg.patience)
    stopper = EarlyStopping(cfg.patience)
    scaler = rt.grad_scaler()  # a pass-through unless fp16
    seconds = []
    net = unwrap(model)  # validation and best-state copies use the plain module (no collectives)
    epoch, history, stopped = _resume(run, net, optimizer, scheduler, stopper, scaler)
    for epoch in range(epoch + 1, epoch if stopped else cfg.num_epochs + 1):
        _set_epoch(train_loader, epoch)
        set_train_mode(model, frozen_modules)
        total_loss = torch.zeros((), device=rt.device)
        correct = torch.zeros((), dtype=torch.long, device=rt.device)
        seen = 0
        started = time.perf_counter()
        for images, targets in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=None):
            images = normalizer(to_device(images, rt))
            targets = async_copy(targets, rt.device)
            with rt.autocast():
                logits = model(images)
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped when fp16 gradients overflowed
            scaler.update()
            total_loss += loss.detach() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
        total_loss, correct = float(total_loss), int(correct)  # waits for the epoch's last step
        seconds.append(time.perf_counter() - started)
        if run.reduce is not None:
            total_loss, correct, seen = run.reduce([total_loss, correct, seen])
        val_logits, val_labels = infer_labelled(net, val_loader, normalizer, rt, desc="val")
        val_loss, val_acc = scores(val_logits, val_labels, run.reduce)
        _log_epoch(epoch, {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                           "val_loss": val_loss, "val_accuracy": val_acc}, history, run.log,
                   optimizer.param_groups[0]["lr"])
        scheduler.step(val_acc)
        stop = stopper.update(epoch, val_acc, val_loss, net)
        if run.checkpointer:
            run.checkpointer.save(epoch, net, optimizer, scheduler, stopper, history, stop, scaler)
        if stop:
            print(f"early stopping: no better val accuracy for {cfg.patience} epochs")
            break
    net.load_state_dict(stopper.best_state)
    return FitResult(stopper.best_epoch, epoch, stopper.best_key[0], stopper.best_key[1], history,
                     seconds)
