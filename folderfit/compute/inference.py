"""The one inference loop (evaluate, predict, feature extraction, validation in training):
batches of uint8 images normalised on the compute device, run in eval mode, outputs back on
the CPU as float32 in loader order."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from folderfit.compute.runtime import Runtime, to_device
from folderfit.support.progress import progress


class Padded(NamedTuple):
    """The meta of a batch padded to a fixed shape: only its first `n` rows are real."""

    meta: object
    n: int


def pad_batch(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`images` grown to `batch_size` rows with copies of its first image: every batch of a
    run has one shape (kernels chosen once; an image's output does not depend on its batch)."""
    n = len(images)
    return images if n >= batch_size else torch.cat([images, images[:1].expand(batch_size - n, *images.shape[1:])])


def loader_workers(rt: Runtime) -> int:
    """On CPU the data path runs in the main process: with few cores, workers would compete
    with the model for them. On a GPU, workers decode while the GPU computes."""
    return 0 if rt.device.type == "cpu" else min(8, torch.get_num_threads())


def make_loader(dataset, batch_size: int, rt: Runtime, *, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False, sampler=None,
                collate_fn=None, workers: int | None = None):
    workers = loader_workers(rt) if workers is None else workers
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        generator=generator, drop_last=drop_last, collate_fn=collate_fn,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=rt.device.type == "cuda")


@torch.inference_mode()
def infer_batches(model: nn.Module, loader, normalizer: nn.Module, rt: Runtime, *,
                  desc: str = "predict", show_progress: bool | None = None):
    """Run `model` (in eval mode) over a loader of (uint8 NCHW images or None, meta) batches,
    yielding (float32 CPU outputs or None, meta) per batch; of a batch whose meta is Padded,
    only the first n rows are yielded (with the inner meta)."""
    model.eval()
    for images, meta in progress(loader, desc=desc, unit="batches", enabled=show_progress):
        keep = None
        if isinstance(meta, Padded):
            meta, keep = meta
        out = None
        if images is not None:
            with rt.autocast():
                out = model(normalizer(to_device(images, rt)))[:keep].float().cpu()
        yield out, meta


def infer(model: nn.Module, loader, normalizer: nn.Module, rt: Runtime, *, desc: str = "predict",
          show_progress: bool | None = None) -> tuple[torch.Tensor, list]:
    """Run `model` (in eval mode) over a loader of (uint8 NCHW images or None, meta) batches.
    Returns the float32 outputs on the CPU in loader order and the list of every batch's meta
    (labels, indices, ...); a batch whose images are None contributes only its meta, and of a
    batch whose meta is Padded only the first n rows count."""
    outputs, metas = [], []
    for out, meta in infer_batches(model, loader, normalizer, rt, desc=desc, show_progress=show_progress):
        if out is not None:
            outputs.append(out)
        metas.append(meta)
    width = outputs[0].shape[1:] if outputs else (0,)
    return (torch.cat(outputs) if outputs else torch.zeros(0, *width)), metas


def infer_labelled(model: nn.Module, loader, normalizer: nn.Module, rt: Runtime,
                   desc: str = "predict", show_progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """infer() over (images, labels) batches: (float32 outputs, labels), in order."""
    outputs, labels = infer(model, loader, normalizer, rt, desc=desc, show_progress=show_progress)
    return outputs, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def scores(logits: torch.Tensor, labels: torch.Tensor, reduce=None) -> tuple[float, float]:
    """(unweighted cross-entropy, accuracy) of CPU logits; with `reduce`, over the shards of
    all processes (each holds part of the samples; the sums are reduced)."""
    loss_sum = float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
    numbers = [loss_sum, int((logits.argmax(1) == labels).sum()), len(labels)]
    loss_sum, correct, n = reduce(numbers) if reduce else numbers
    return loss_sum / max(n, 1), correct / max(n, 1)
