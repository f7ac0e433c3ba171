"""The epoch loop's data path: images decoded once into a uint8 store, batches assembled,
cropped and flipped on the compute device, and every batch of one shape.

* ImageStore: each training image is decoded once (up to DECODE_CACHE_BYTES of pixels; the
  rest is decoded when its batch needs it) and kept as a uint8 tensor: in GPU memory when
  the whole store takes at most GPU_SHARE of the free GPU memory, else in pinned host memory
  (fast, asynchronous copies); on a CPU, in ordinary memory. Under torchrun every rank keeps
  the whole set: its shard changes every epoch.
* TrainBatches: an epoch is a seeded shuffle (or this rank's DistributedSampler shard) cut
  into batches of batch_size; the last one is topped up with the epoch's first images (fresh
  crops of them), so every image is seen each epoch and every batch has one shape (no
  recompilation under torch.compile, no odd kernel choice, no BatchNorm batch of one). A batch
  is gathered into one zero-padded canvas and cropped/flipped by folderfit.tuning.augment in a
  few tensor ops.
* EvalBatches: validation images after the eval geometry (exactly evaluate's resize + centre
  crop), computed once, kept on the device; the last batch is padded and its extra rows are
  dropped by engine.infer (engine.Padded).

CPU and GPU run this same code; only where the tensors live differs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from folderfit.compute.inference import Padded, pad_batch
from folderfit.images import datasets
from folderfit.tuning.augment import BatchAugment

GPU_SHARE = 0.25  # of the free GPU memory a store may take; the rest is for training


def with_border(image: torch.Tensor) -> torch.Tensor:
    """uint8 [C, H, W] -> [C, H+1, W+1], the last row and column repeated: a crop reaching the
    image's bottom or right edge then interpolates with the image's own border, not with the
    canvas's zero padding."""
    image = torch.cat([image, image[:, -1:]], 1)
    return torch.cat([image, image[:, :, -1:]], 2)


def placement(device: torch.device, nbytes: int) -> str:
    """Where a store of `nbytes` lives for computing on `device`: "device", "pinned" or "host"."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return "device" if nbytes <= GPU_SHARE * free else "pinned"
    if device.type == "mps":  # unified memory: the GPU reads it where it is
        return "device"
    return "host"


class ImageStore:
    """The images of `files`, decoded once (see the module docstring)."""

    def __init__(self, files: list[Path], device: torch.device,
                 budget: int = datasets.DECODE_CACHE_BYTES):
        self.files, self.device = list(files), device
        images, used = [], 0
        for path in self.files:
            image = None
            if used < budget:
                image = with_border(datasets.decode_file(path))
                if used + image.numel() > budget:  # full: the rest is decoded per batch
                    image, used = None, budget
                else:
                    used += image.numel()
            images.append(image)
        self.nbytes = sum(i.numel() for i in images if i is not None)
        self.resident = sum(i is not None for i in images)
        self.where = placement(device, self.nbytes)
        if self.where == "device":
            images = [i.to(device) if i is not None else None for i in images]
        elif self.where == "pinned":
            images = self._pinned(images)
        self.images = images

    @staticmethod
    def _pinned(images: list) -> list:
        """The images as views of one pinned buffer (one allocation: pinning each tensor
        would round every one up to a power of two)."""
        flat = torch.empty(sum(i.numel() for i in images if i is not None), dtype=torch.uint8,
                           pin_memory=True)
        out, start = [], 0
        for image in images:
            if image is None:
                out.append(None)
                continue
            view = flat[start:start + image.numel()].view(image.shape)
            view.copy_(image)
            out.append(view)
            start += image.numel()
        return out

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        where = {"device": f"on {self.device}", "pinned": "in pinned host memory (too large for "
                 f"{GPU_SHARE:.0%} of free GPU memory)", "host": "in memory"}[self.where]
        text = f"{self.resident} images decoded once, {self.nbytes / 2**20:.1f} MiB uint8, {where}"
        if self.resident < len(self):
            text += (f"; {len(self) - self.resident} more decoded in every epoch (over the "
                     f"{datasets.DECODE_CACHE_BYTES / 2**30:.0f} GiB budget)")
        return text

    def gather(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(float canvas [B, 3, H, W] on the compute device, image k (with its border) in its
        top-left corner and zeros elsewhere; sizes [B, 2] (height, width) without the border)."""
        images = [self.images[i] if self.images[i] is not None
                  else with_border(datasets.decode_file(self.files[i])) for i in indices]
        height = max(i.shape[1] for i in images)
        width = max(i.shape[2] for i in images)
        sizes = torch.tensor([[i.shape[1] - 1, i.shape[2] - 1] for i in images])
        if self.where == "pinned":  # fill on the host, then one asynchronous copy of uint8
            canvas = torch.zeros(len(images), 3, height, width, dtype=torch.uint8, pin_memory=True)
        else:  # the cast to float happens in the copy
            canvas = torch.zeros(len(images), 3, height, width, device=self.device)
        for k, image in enumerate(images):
            canvas[k, :, :image.shape[1], :image.shape[2]] = image
        if self.where == "pinned":
            canvas = canvas.to(self.device, non_blocking=True).float()
        return canvas, sizes


class TrainBatches:
    """Shuffled, augmented training batches of one fixed shape (see the module docstring).
    Every random draw (shuffle, crops, flips) comes from `generator`."""

    def __init__(self, store: ImageStore, labels: list[int], batch_size: int,
                 augment: BatchAugment, generator: torch.Generator, sampler=None):
        self.store, self.augment, self.generator = store, augment, generator
        self.labels = torch.tensor(labels)
        self.sampler = sampler  # DistributedSampler under torchrun, else None
        n = len(sampler) if sampler is not None else len(store)
        self.batch_size = min(batch_size, n)
        self.n_batches = math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)  # a new shard shuffle each epoch

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        order = (list(self.sampler) if self.sampler is not None
                 else torch.randperm(len(self.store), generator=self.generator).tolist())
        total = self.n_batches * self.batch_size
        order += order[:total - len(order)]  # top up the last batch: one shape for all
        for start in range(0, total, self.batch_size):
            indices = order[start:start + self.batch_size]
            canvas, sizes = self.store.gather(indices)
            yield self.augment(canvas, sizes, self.generator), self.labels[indices]


class EvalBatches:
    """Validation batches of one shape: images after `geometry` (evaluate's), on the device."""

    def __init__(self, samples: list, geometry, batch_size: int, device: torch.device):
        images = torch.stack([geometry(datasets.decode_file(path)) for path, _ in samples])
        where = placement(device, images.numel())
        images = (images.to(device) if where == "device"
                  else images.pin_memory() if where == "pinned" else images)
        self.images, self.labels = images, torch.tensor([label for _, label in samples])
        self.batch_size = max(1, min(batch_size, len(samples)))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.labels), self.batch_size):
            images = self.images[start:start + self.batch_size]
            n = len(images)  # the padding rows are dropped by infer
            yield pad_batch(images, self.batch_size), Padded(self.labels[start:start + n], n)
