"""The epoch loop of fine_tune / full_tune (inference lives in folderfit.compute.inference).

`fit` scores the starting weights on val first (epoch 0: with a warm-started head that is the
solved linear probe), then chooses the best epoch among epoch 0 and the trained ones: the
lowest validation loss among the epochs whose validation accuracy is at least epoch 0's
(EarlyStopping says why). It stops early after `patience` epochs without improvement, lowers
the learning rates when the validation loss plateaus, and ends with the best epoch's weights
restored (a deep copy, not a view): a run never delivers weights that score worse on val, in
loss or accuracy, than where it started. The first epoch warms the learning rates up linearly from
zero: Adam's first steps move every weight by about its full learning rate, whatever its
gradient, which knocks a pretrained network off its optimum before the moments settle. The head of
feature_extract is not trained here: on frozen features it is a convex problem, solved
exactly by folderfit.frozen.head.

Validation scores the model as evaluate will score the delivered file: with its test-time
augmentation and in the numerics recorded with it (RunContext.val_rt: the precision of the
warm start's features), so epoch 0 reproduces the solved head's val loss and accuracy. The
demo's full_tune validated under bf16 autocast a head solved on ONNX Runtime fp32 features:
val loss 0.2727 at epoch 0 against the head's 0.1035, the start judged on other numbers.

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
from typing import Callable

import torch
from torch import nn

from folderfit.backbone.views import with_tta
from folderfit.compute.inference import infer_labelled, scores
from folderfit.compute.runtime import Runtime, async_copy, to_device
from folderfit.support.progress import progress
from folderfit.support.report import say
from folderfit.tuning.distributed import DistContext, unwrap
from folderfit.tuning.freezing import set_train_mode

EpochLogger = Callable[[int, dict], None]


@dataclass
class RunContext:
    """What every part of one training run shares: where it computes, its random stream,
    where epochs are logged and checkpointed, and the process group (if any)."""

    rt: Runtime
    generator: torch.Generator
    dist: DistContext = field(default_factory=DistContext)
    log: EpochLogger | None = None
    checkpointer: object | None = None  # folderfit.tuning.checkpoint.Checkpointer
    reduce: Callable[[list], list] | None = None  # sums numbers over processes
    # validation's numerics: those the warm start's head was scored with (its features'
    # precision), so that epoch 0 reproduces that head's val scores; None = `rt`
    val_rt: Runtime | None = None


@dataclass
class FitConfig:
    num_epochs: int
    patience: int
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None
    warmup_epochs: int = 1  # linear learning-rate warm-up over the first epoch's steps
    score_start: bool = True  # the starting weights (epoch 0) are a candidate for the best
    val_tta: str = "none"  # the delivered model's test-time augmentation, applied in validation


@dataclass
class FitResult:
    best_epoch: int  # 1-based; 0 = the starting weights were never beaten on val
    epochs_run: int
    best_val_accuracy: float
    best_val_loss: float
    history: list = field(default_factory=list)
    train_seconds: list = field(default_factory=list)  # per epoch, train pass only (benchmarks)


class EarlyStopping:
    """Tracks the best epoch and keeps a deep copy of its state. Best: the lowest val loss among
    the epochs whose val accuracy is at least the first recorded one's (epoch 0, the start).
    On a small val set accuracy moves in steps of one image and the best of several noisy
    epochs is an optimistic pick (trashnet-mini, 90 val images: full_tune's best-accuracy
    epoch scored 0.878 on val and 0.822 on test, below the start); the cross-entropy uses every
    probability and is far less noisy, and the accuracy floor keeps "never worse than the
    start" true for the accuracy as well."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_key = (-math.inf, math.inf)  # (accuracy, loss) of the best epoch
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.floor: float | None = None  # the first recorded epoch's val accuracy

    def update(self, epoch: int, accuracy: float, loss: float, module: nn.Module) -> bool:
        """Record an epoch; returns True when training should stop."""
        if self.floor is None:
            self.floor = accuracy
        if self.best_state is None or (accuracy >= self.floor and loss < self.best_key[1]):
            self.best_key = (accuracy, loss)
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(module.state_dict())
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


def make_scheduler(optimizer, patience: int):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                      patience=max(1, patience // 2))


# ------------------------------------------------------------------ training
def _log_epoch(epoch: int, row: dict, history: list, log: EpochLogger | None, lr: float,
               seconds: float | None = None) -> None:
    """One epoch's line (the wall time is printed only: outputs must not depend on it)."""
    row = {"epoch": epoch, **row, "lr": lr}
    history.append(row)
    train = (f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
             if "train_loss" in row else "start (no training yet)        ")
    say(f"epoch {epoch:3d}  {train}  val loss {row['val_loss']:.4f} acc "
          f"{row['val_accuracy']:.3f}  lr {lr:.2e}"
          + (f"  {seconds:.0f} s" if seconds is not None else ""), flush=True)
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


def _validate(net: nn.Module, val_loader, normalizer, rt: Runtime, reduce,
              tta: str = "none") -> tuple[float, float]:
    """(loss, accuracy) on the validation images, over every process's shard, scored as
    evaluate scores the delivered model: with its test-time augmentation, in `rt`."""
    val_logits, val_labels = infer_labelled(with_tta(net, tta), val_loader, normalizer, rt, desc="val")
    return scores(val_logits, val_labels, reduce)


def _steps_per_epoch(train_loader) -> int:
    try:
        return max(1, len(train_loader))
    except TypeError:  # a loader without a length: warm up over 10 steps
        return 10


class _Warmup:
    """Linear learning-rate warm-up over the first `steps` optimizer steps of a fresh run (a
    resumed run has finished at least one epoch, so its warm-up is over)."""

    def __init__(self, optimizer, steps: int, done: int):
        self.optimizer, self.steps = optimizer, steps if done == 0 else 0
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.taken = 0

    def step(self) -> None:
        if self.taken >= self.steps:
            return
        self.taken += 1
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * self.taken / self.steps


def fit(model: nn.Module, optimizer, train_loader, val_loader, normalizer: nn.Module,
        cfg: FitConfig, run: RunContext, frozen_modules: list) -> FitResult:
    """Train end to end; frozen modules (BatchNorm included) stay in eval mode.
    Distributed (folderfit.tuning.distributed): `model` is the DDP wrapper, the loaders hold this
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
    val_rt = run.val_rt or rt
    epoch, history, stopped = _resume(run, net, optimizer, scheduler, stopper, scaler)
    if epoch == 0 and not stopped and cfg.score_start:
        val_loss, val_acc = _validate(net, val_loader, normalizer, val_rt, run.reduce, cfg.val_tta)
        _log_epoch(0, {"val_loss": val_loss, "val_accuracy": val_acc}, history, run.log, 0.0)
        stopper.update(0, val_acc, val_loss, net)
    warmup = _Warmup(optimizer, cfg.warmup_epochs * _steps_per_epoch(train_loader), done=epoch)
    for epoch in range(epoch + 1, epoch if stopped else cfg.num_epochs + 1):
        _set_epoch(train_loader, epoch)
        set_train_mode(model, frozen_modules)
        total_loss = torch.zeros((), device=rt.device)
        correct = torch.zeros((), dtype=torch.long, device=rt.device)
        seen = 0
        started = time.perf_counter()
        for images, targets in progress(train_loader, desc=f"epoch {epoch}", unit="batches"):
            warmup.step()
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
        val_loss, val_acc = _validate(net, val_loader, normalizer, val_rt, run.reduce, cfg.val_tta)
        _log_epoch(epoch, {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                           "val_loss": val_loss, "val_accuracy": val_acc}, history, run.log,
                   optimizer.param_groups[0]["lr"], time.perf_counter() - started)
        scheduler.step(val_loss)  # the same criterion as the best epoch
        stop = stopper.update(epoch, val_acc, val_loss, net)
        if run.checkpointer:
            run.checkpointer.save(epoch, net, optimizer, scheduler, stopper, history, stop, scaler)
        if stop:
            say(f"early stopping: no better epoch on val for {cfg.patience} epochs")
            break
    net.load_state_dict(stopper.best_state)
    return FitResult(stopper.best_epoch, epoch, stopper.best_key[0], stopper.best_key[1], history,
                     seconds)
