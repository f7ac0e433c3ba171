"""Random-resized crop and horizontal flip of a whole batch, as tensor ops on the compute device.

The crop of every image is drawn like torchvision's RandomResizedCrop (area share in
[min_scale, 1], aspect ratio in [3/4, 4/3], up to 10 tries, else a centre crop), but for the
whole batch at once, on the CPU, from the run's generator: a batch is the same whatever the
device, and a resumed run (which restores the generator) draws the same crops. Then one
`torchvision.ops.roi_align` call crops and resizes every image of the batch to its own box:
bilinear, with ceil(box / output) samples per output pixel and axis averaged (adaptive
`sampling_ratio`), which smooths like antialiasing when a box is shrunk. It differs in the
last bits from the per-image bicubic resize of the eval geometry; only training crops use it.
"""

from __future__ import annotations

import math

import torch

from folderfit.compute.runtime import async_copy

RATIO = (3 / 4, 4 / 3)
TRIES = 10


def sample_boxes(sizes: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Crop boxes [B, 4] (x1, y1, x2, y2 in pixels, float64) for images of `sizes` [B, 2]
    (height, width). Always draws B x TRIES x 4 numbers, so the stream advances the same
    whatever the images are."""
    h, w = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    u = torch.rand(len(sizes), TRIES, 4, generator=generator, dtype=torch.float64)
    target_area = h * w * (min_scale + (1 - min_scale) * u[..., 0])
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    cw = torch.round(torch.sqrt(target_area * aspect))
    ch = torch.round(torch.sqrt(target_area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first try that fits

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, first).squeeze(1)

    cw, ch = pick(cw), pick(ch)
    top = torch.floor(pick(u[..., 2]) * (h.squeeze(1) - ch + 1))
    left = torch.floor(pick(u[..., 3]) * (w.squeeze(1) - cw + 1))
    # no try fitted: the largest centre crop with an aspect ratio inside RATIO
    h, w = h.squeeze(1), w.squeeze(1)
    fb_w = torch.where(w / h > RATIO[1], torch.round(h * RATIO[1]), w)
    fb_h = torch.where(w / h < RATIO[0], torch.round(w / RATIO[0]), h)
    missed = ~fits.any(1)
    cw, ch = torch.where(missed, fb_w, cw), torch.where(missed, fb_h, ch)
    top = torch.where(missed, torch.div(h - ch, 2, rounding_mode="floor"), top)
    left = torch.where(missed, torch.div(w - cw, 2, rounding_mode="floor"), left)
    return torch.stack([left, top, left + cw, top + ch], 1)


def crop_resize(canvas: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, size, size] float: box k of image k of `canvas` [B, C, H, W] (float), resized.
    Pixel k spans [k, k+1) (aligned=True), so a box the size of the output copies pixels
    exactly."""
    from torchvision.ops import roi_align

    index = torch.arange(len(boxes), dtype=torch.float64).unsqueeze(1)
    rois = async_copy(torch.cat([index, boxes], 1).float(), canvas.device)
    return roi_align(canvas, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def flip_where(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """images [B, C, H, W] with those where `flips` [B] (bool) is true mirrored left-right."""
    flips = async_copy(flips, images.device).view(-1, 1, 1, 1)
    return torch.where(flips, images.flip(-1), images)


class BatchAugment:
    """Random-resized crop to image_size (+ random horizontal flip) of a padded batch."""

    def __init__(self, image_size: int, min_scale: float, hflip: bool):
        self.image_size, self.min_scale, self.hflip = image_size, min_scale, hflip

    def __call__(self, canvas: torch.Tensor, sizes: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        """canvas [B, C, H, W] float (image k in its top-left sizes[k] corner) -> float
        [B, C, image_size, image_size] in the canvas's value range, on its device."""
        boxes = sample_boxes(sizes, self.min_scale, generator)
        images = crop_resize(canvas, boxes, self.image_size)
        if self.hflip:
            images = flip_where(images, torch.rand(len(sizes), generator=generator) < 0.5)
        return images
