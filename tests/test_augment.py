"""Batched random-resized crop and flip (folderfit.tuning.augment): the crops follow
RandomResizedCrop's rules, the resampling is exact where it should be, flips mirror exactly
the chosen images, and everything is driven by the generator."""

from __future__ import annotations

import math

import pytest
import torch

from folderfit.tuning import augment as batch_augment
from folderfit.tuning.batches import with_border


def sizes_of(*pairs) -> torch.Tensor:
    return torch.tensor(pairs)


def test_boxes_follow_random_resized_crop_rules():
    sizes = sizes_of(*[(60 + 7 * k, 90 - 3 * k) for k in range(10)] * 20)
    boxes = batch_augment.sample_boxes(sizes, 0.4, torch.Generator().manual_seed(0))
    x1, y1, x2, y2 = boxes.unbind(1)
    h, w = sizes[:, 0].double(), sizes[:, 1].double()
    assert torch.equal(boxes, boxes.round())  # whole pixels
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= w).all() and (y2 <= h).all()
    share = (x2 - x1) * (y2 - y1) / (h * w)
    aspect = (x2 - x1) / (y2 - y1)
    slack = 0.05  # the rounding of a box side to whole pixels
    assert share.min() >= 0.4 - slack and share.max() <= 1 + slack
    assert aspect.min() >= 3 / 4 - slack and aspect.max() <= 4 / 3 + slack
    assert share.min() < 0.5 and share.max() > 0.9  # the whole range is used


def test_boxes_are_the_generators():
    sizes = sizes_of((50, 70), (64, 64), (80, 40))
    a = batch_augment.sample_boxes(sizes, 0.3, torch.Generator().manual_seed(5))
    b = batch_augment.sample_boxes(sizes, 0.3, torch.Generator().manual_seed(5))
    c = batch_augment.sample_boxes(sizes, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fallback_is_torchvisions_centre_crop():
    """No try can fit a very long image at scale 1 with a ratio in [3/4, 4/3]: the fallback is
    the largest centre crop whose ratio is within range."""
    sizes = sizes_of((10, 200), (200, 10), (30, 30))
    boxes = batch_augment.sample_boxes(sizes, 1.0, torch.Generator().manual_seed(0))
    # width 200 > 10 * 4/3: width 13 (round(13.33)) centred; height 200: height round(10 / 0.75) = 13
    assert boxes[0].tolist() == [93, 0, 106, 10]
    assert boxes[1].tolist() == [0, 93, 10, 106]
    assert boxes[2].tolist() == [0, 0, 30, 30]  # square at scale 1: the whole image


def test_same_size_box_copies_pixels_exactly():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    canvas = with_border(image).float().unsqueeze(0)
    whole = batch_augment.crop_resize(canvas, torch.tensor([[0.0, 0, 30, 20]]).double(), 20)
    # a square output from a 30x20 box is a resize; a 20x20 box is a copy
    part = batch_augment.crop_resize(canvas, torch.tensor([[7.0, 0, 27, 20]]).double(), 20)
    assert torch.equal(part[0], image[:, :, 7:27].float())
    assert whole.shape == (1, 3, 20, 20)


def test_crops_at_the_edge_do_not_mix_in_padding():
    """A constant image on a larger zero canvas: any crop, enlarged or shrunk, stays constant."""
    image = torch.full((3, 12, 9), 200, dtype=torch.uint8)
    canvas = torch.zeros(2, 3, 40, 40)
    canvas[:, :, :13, :10] = with_border(image).float()
    boxes = torch.tensor([[4.0, 6, 9, 12], [0.0, 0, 9, 12]]).double()  # bottom-right corner; all
    for size in (5, 31):
        out = batch_augment.crop_resize(canvas, boxes, size)
        assert torch.allclose(out, torch.full_like(out, 200.0)), size


def test_shrinking_averages_like_antialiasing():
    """A 1-pixel checkerboard shrunk 4x: bilinear point sampling would keep stripes of
    0 and 255, the adaptive sampling averages them to mid-grey."""
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 255).float()
    canvas = board.expand(1, 3, 64, 64).contiguous()
    out = batch_augment.crop_resize(canvas, torch.tensor([[0.0, 0, 64, 64]]).double(), 16)
    assert out.std() < 1 and abs(float(out.mean()) - 127.5) < 1


def test_flip_mirrors_exactly_the_chosen_images():
    images = torch.rand(4, 3, 5, 6)
    out = batch_augment.flip_where(images, torch.tensor([True, False, True, False]))
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[2], images[2].flip(-1))
    assert torch.equal(out[1], images[1]) and torch.equal(out[3], images[3])


@pytest.mark.parametrize("hflip", [False, True])
def test_batch_augment_is_seeded_and_shaped(hflip):
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((30, 40), (40, 30), (35, 35))]
    canvas = torch.zeros(3, 3, 41, 41)
    for k, image in enumerate(images):
        canvas[k, :, :image.shape[1] + 1, :image.shape[2] + 1] = with_border(image).float()
    sizes = torch.tensor([list(i.shape[1:]) for i in images])
    augment = batch_augment.BatchAugment(24, 0.5, hflip)
    a = augment(canvas, sizes, torch.Generator().manual_seed(1))
    b = augment(canvas, sizes, torch.Generator().manual_seed(1))
    c = augment(canvas, sizes, torch.Generator().manual_seed(2))
    assert a.shape == (3, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) <= 255


def test_flips_come_after_the_same_crops():
    """hflip draws its coin after the boxes: with one seed, the flipped batch is the unflipped
    one with some images mirrored, and over many images about half are."""
    canvas = torch.rand(64, 3, 21, 31) * 255
    sizes = torch.tensor([[20, 30]] * 64)
    plain = batch_augment.BatchAugment(16, 0.5, False)(canvas, sizes, torch.Generator().manual_seed(3))
    flipped = batch_augment.BatchAugment(16, 0.5, True)(canvas, sizes, torch.Generator().manual_seed(3))
    mirrored = [bool(torch.equal(f, p.flip(-1))) for f, p in zip(flipped, plain)]
    same = [bool(torch.equal(f, p)) for f, p in zip(flipped, plain)]
    assert all(m != s for m, s in zip(mirrored, same))
    assert 16 <= sum(mirrored) <= 48, sum(mirrored)
    assert math.isclose(float(flipped.sum()), float(plain.sum()), rel_tol=1e-5)
