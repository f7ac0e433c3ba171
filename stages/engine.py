"""The fit loops: full training (fine_tune / full_tune) and head-only training on features
computed once (feature_extract). Both choose the best epoch on validation accuracy (ties: lower
validation loss), stop early after `patience` epochs without improvement, lower the learning
rates on a plateau, and end with the best epoch's weights restored (a deep copy, not a view).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from stages.data import Normalizer
from stages.distributed import unwrap
from stages.models import set_train_mode
from stages.runtime import Runtime, to_device

EpochLogger = Callable[[int, dict], None]


@dataclass
class FitConfig:
    num_epochs: int
    patience: int
    batch_size: int
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


def make_loss(cfg: FitConfig, rt: Runtime) -> nn.Module:
    weights = cfg.class_weights.to(rt.device) if cfg.class_weights is not None else None
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)


def make_scheduler(optimizer, patience: int):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                      patience=max(1, patience // 2))


def make_loader(dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                rt: Runtime, drop_last: bool = False, sampler=None):
    """On CPU the data path runs in the main process: with 2 cores, workers would compete with
    the model for them. On a GPU, persistent workers decode while the GPU computes."""
    workers = 0 if rt.device.type == "cpu" else min(8, torch.get_num_threads())
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        generator=generator, drop_last=drop_last,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=rt.device.type == "cuda")


@torch.inference_mode()
def predict_logits(model: nn.Module, loader, normalizer: Normalizer, rt: Runtime,
                   desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits, labels) for every sample of the loader, in order."""
    model.eval()
    outputs, labels = [], []
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=None):
        with rt.autocast():
            logits = model(normalizer(to_device(images, rt)))
        outputs.append(logits.float().cpu())
        labels.append(targets)
    return torch.cat(outputs), torch.cat(labels)


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(unweighted cross-entropy, accuracy) of CPU logits."""
    loss = float(nn.functional.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return loss, accuracy


def _summed_scores(logits: torch.Tensor, labels: torch.Tensor, reduce) -> tuple[float, float]:
    """_scores over the samples of all processes: each holds a shard, sums are reduced."""
    loss_sum = float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
    loss_sum, correct, n = reduce([loss_sum, int((logits.argmax(1) == labels).sum()), len(labels)])
    return loss_sum / max(n, 1), correct / max(n, 1)


def _log_epoch(epoch: int, row: dict, history: list, log: EpochLogger | None, lr: float) -> None:
    row = {"epoch": epoch, **row, "lr": lr}
    history.append(row)
    print(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
          f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}  lr {lr:.2e}", flush=True)
    if log:
        log(epoch, row)


def _resume(checkpointer, module, optimizer, scheduler, stopper, log) -> tuple[int, list, bool]:
    """(last finished epoch, history, stopped early) from a checkpoint, or a fresh start.
    Finished epochs go to the logger again: DVC deleted their curves before this rerun."""
    if checkpointer is None:
        return 0, [], False
    epoch, history, stopped = checkpointer.restore(module, optimizer, scheduler, stopper)
    if log:
        for row in history:
            log(row["epoch"], row)
    return epoch, history, stopped


# ------------------------------------------------------------------ full training
def fit(model: nn.Module, optimizer, train_loader, val_loader, normalizer: Normalizer,
        cfg: FitConfig, rt: Runtime, frozen_modules: list, log: EpochLogger | None = None,
        reduce=None, checkpointer=None) -> FitResult:
    """Train end to end; frozen modules (BatchNorm included) stay in eval mode.
    Distributed (stages.distributed): `model` is the DDP wrapper, the loaders hold this
    process's shards and `reduce` sums [loss, correct, count] over all processes.
    With a checkpointer (stages.checkpoint), resume after the last finished epoch and save
    after every epoch."""
    loss_fn = make_loss(cfg, rt)
    scheduler = make_scheduler(optimizer, cfg.patience)
    stopper = EarlyStopping(cfg.patience)
    seconds = []
    net = unwrap(model)  # validation and best-state copies use the plain module (no collectives)
    epoch, history, stopped = _resume(checkpointer, net, optimizer, scheduler, stopper, log)
    for epoch in range(epoch + 1, epoch if stopped else cfg.num_epochs + 1):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch
        set_train_mode(model, frozen_modules)
        total_loss, correct, seen = 0.0, 0, 0
        started = time.perf_counter()
        for images, targets in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=None):
            images, targets = normalizer(to_device(images, rt)), targets.to(rt.device)
            with rt.autocast():
                logits = model(images)
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
        seconds.append(time.perf_counter() - started)
        if reduce is not None:
            total_loss, correct, seen = reduce([total_loss, correct, seen])
        val_logits, val_labels = predict_logits(net, val_loader, normalizer, rt, desc="val")
        val_loss, val_acc = (_scores(val_logits, val_labels) if reduce is None
                             else _summed_scores(val_logits, val_labels, reduce))
        _log_epoch(epoch, {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                           "val_loss": val_loss, "val_accuracy": val_acc}, history, log,
                   optimizer.param_groups[0]["lr"])
        scheduler.step(val_acc)
        stop = stopper.update(epoch, val_acc, val_loss, net)
        if checkpointer:
            checkpointer.save(epoch, net, optimizer, scheduler, stopper, history, stop)
        if stop:
            print(f"early stopping: no better val accuracy for {cfg.patience} epochs")
            break
    net.load_state_dict(stopper.best_state)
    return FitResult(stopper.best_epoch, epoch, stopper.best_key[0], stopper.best_key[1], history,
                     seconds)


# ------------------------------------------------------------------ feature_extract
@torch.inference_mode()
def extract_features(backbone: nn.Module, loader, normalizer: Normalizer, rt: Runtime,
                     desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features (float32, CPU) and labels, in loader order."""
    return predict_logits(backbone, loader, normalizer, rt, desc=desc)


def fit_head(head: nn.Linear, train_features: torch.Tensor, train_labels: torch.Tensor,
             val_features: torch.Tensor, val_labels: torch.Tensor, optimizer, cfg: FitConfig,
             generator: torch.Generator, log: EpochLogger | None = None,
             checkpointer=None) -> FitResult:
    """Train the head on cached features. train_features is [views, N, D]: each epoch every
    image contributes all its views (view 0 is the un-augmented one), shuffled together."""
    device = next(head.parameters()).device
    train_features, train_labels = train_features.to(device), train_labels.to(device)
    val_features, val_labels = val_features.to(device), val_labels.to(device)
    views, n = train_features.shape[:2]
    loss_fn = nn.CrossEntropyLoss(
        weight=cfg.class_weights.to(device) if cfg.class_weights is not None else None,
        label_smoothing=cfg.label_smoothing)
    scheduler = make_scheduler(optimizer, cfg.patience)
    stopper = EarlyStopping(cfg.patience)
    epoch, history, stopped = _resume(checkpointer, head, optimizer, scheduler, stopper, log)
    for epoch in range(epoch + 1, epoch if stopped else cfg.num_epochs + 1):
        head.train()
        order = torch.randperm(views * n, generator=generator)  # every view of every image
        total_loss, correct = 0.0, 0
        for start in range(0, views * n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            x = train_features[idx // n, idx % n]
            y = train_labels[idx % n]
            logits = head(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        head.eval()
        with torch.inference_mode():
            val_loss, val_acc = _scores(head(val_features).cpu(), val_labels.cpu())
        _log_epoch(epoch, {"train_loss": total_loss / (views * n), "train_accuracy": correct / (views * n),
                           "val_loss": val_loss, "val_accuracy": val_acc}, history, log,
                   optimizer.param_groups[0]["lr"])
        scheduler.step(val_acc)
        stop = stopper.update(epoch, val_acc, val_loss, head)
        if checkpointer:
            checkpointer.save(epoch, head, optimizer, scheduler, stopper, history, stop)
        if stop:
            print(f"early stopping: no better val accuracy for {cfg.patience} epochs")
            break
    head.load_state_dict(stopper.best_state)
    return FitResult(stopper.best_epoch, epoch, stopper.best_key[0], stopper.best_key[1], history)
