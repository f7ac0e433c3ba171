"""Prepared images (the original files prepare listed) as network input: geometry (train crops, eval resize + centre crop),
normalisation on the compute device, and datasets of uint8 tensors.

Training reads uint8 tensors (decoded once and kept in memory while they fit in
`DECODE_CACHE_BYTES`), crops/flips them as tensors, and normalises whole batches on the
compute device.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

DECODE_CACHE_BYTES = 4 << 30

_INTERPOLATION = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return getattr(InterpolationMode, _INTERPOLATION.get(name, "BILINEAR"))


def train_geometry(pre, hflip: bool, min_scale: float):
    """uint8 -> uint8 random crop (+ flip) at the network's input size."""
    from torchvision.transforms import v2

    ops = [v2.RandomResizedCrop(pre.image_size, scale=(min_scale, 1.0),
                                interpolation=_interp(pre.interpolation), antialias=True)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops)


def eval_geometry(pre):
    """uint8 -> uint8 resize of the shorter side + centre crop, as the weights were trained."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(pre.resize_size, interpolation=_interp(pre.interpolation), antialias=True),
                       v2.CenterCrop(pre.image_size)])


class Normalizer(torch.nn.Module):
    """uint8 NCHW batch -> normalised float batch, run on the compute device."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() - self.mean) / self.std


def decode_file(path: Path) -> torch.Tensor:
    """An image as a uint8 CHW tensor. A file prepare listed (decode.SourceImage, from
    folderfit.artifacts.manifest) gives its stored copy, checked against the manifest's pixel
    hash (decode.read_prepared): the pixels predict computes from it, so evaluate sees what
    predict sees. Any other path: the file's pixels as they are (RGB)."""
    from PIL import Image

    stored_copy = getattr(path, "stored_copy", None)  # decode imports this module: no import back
    if stored_copy is not None:
        pixels = np.asarray(stored_copy())
    else:
        with Image.open(path) as img:
            pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


class ImageTensorDataset(torch.utils.data.Dataset):
    """(uint8 image tensor, label) pairs. Decoded files stay in memory while the cache budget
    allows; with `cache_output` (deterministic geometry) the transformed tensor is kept."""

    def __init__(self, samples, geometry, cache_output: bool = False,
                 cache_bytes: int = DECODE_CACHE_BYTES):
        self.samples = list(samples)
        self.geometry = geometry
        self.cache_output = cache_output
        self.cache_bytes = cache_bytes
        self._cache: dict[int, torch.Tensor] = {}
        self._cached = {"bytes": 0}  # shared with with_geometry() copies, like the cache

    def __len__(self) -> int:
        return len(self.samples)

    def with_geometry(self, geometry) -> "ImageTensorDataset":
        """The same images under another geometry, sharing the decoded-image cache (so
        several augmented passes decode each file once)."""
        if self.cache_output:
            raise ValueError("a dataset caching transformed images cannot share its cache")
        other = copy.copy(self)
        other.geometry = geometry
        return other

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        tensor = self._cache.get(i)
        if tensor is None:
            tensor = decode_file(path)
            if self.cache_output:
                tensor = self.geometry(tensor)
            if self._cached["bytes"] + tensor.numel() <= self.cache_bytes:
                self._cache[i] = tensor
                self._cached["bytes"] += tensor.numel()
        if not self.cache_output:
            tensor = self.geometry(tensor)
        return tensor, label
