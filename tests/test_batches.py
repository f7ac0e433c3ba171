"""The epoch loop's data path (folderfit.tuning.batches) on the CPU, the same code a GPU runs:
decode once, padded canvases, fixed batch shapes, every image each epoch, seeded batches
that a restored generator reproduces, and validation batches equal to the old loader's."""

from __future__ import annotations

from collections import Counter

import tiny_project as T
import torch

from folderfit.backbone.weights import Preprocess
from folderfit.compute import inference
from folderfit.compute.runtime import Runtime
from folderfit.images import datasets
from folderfit.tuning import batches as batch_data
from folderfit.tuning.augment import BatchAugment

CPU = torch.device("cpu")


def files(tmp_path, per_class=4):
    """Pictures of three sizes (40x40, 40x28, 28x40) so canvases need padding."""
    root = T.make_image_folder(tmp_path / "a", per_class=per_class, size=40, seed=1)
    out = sorted(root.rglob("*.png"))
    from PIL import Image

    for k, path in enumerate(out):
        if k % 3:
            img = Image.open(path)
            img.resize((40, 28) if k % 3 == 1 else (28, 40)).save(path)
    return out


def test_store_decodes_once_and_gathers_padded_canvases(tmp_path, monkeypatch):
    paths = files(tmp_path)
    calls = []
    real = datasets.decode_file
    monkeypatch.setattr(datasets, "decode_file", lambda p: calls.append(p) or real(p))
    store = batch_data.ImageStore(paths, CPU)
    assert store.where == "host" and store.resident == len(paths)
    for _ in range(3):
        canvas, sizes = store.gather([2, 0, 1])
    assert len(calls) == len(paths)  # decoded once, however often gathered
    assert canvas.shape == (3, 3, 41, 41) and canvas.dtype == torch.float32
    for k, i in enumerate([2, 0, 1]):
        image = real(paths[i])
        h, w = image.shape[1:]
        assert sizes[k].tolist() == [h, w]
        assert torch.equal(canvas[k, :, :h + 1, :w + 1], batch_data.with_border(image).float())
        assert canvas[k, :, h + 1:].abs().sum() == 0 and canvas[k, :, :, w + 1:].abs().sum() == 0


def test_images_over_the_budget_are_decoded_when_needed(tmp_path):
    paths = files(tmp_path)
    full = batch_data.ImageStore(paths, CPU)
    small = batch_data.ImageStore(paths, CPU, budget=3 * 41 * 41 * 2)  # room for about two images
    assert 0 < small.resident < len(paths)
    assert "decoded in every epoch" in small.describe()
    indices = list(range(len(paths)))
    assert all(torch.equal(a, b) for a, b in zip(small.gather(indices), full.gather(indices)))


def train_batches(store, seed, batch_size=5, sampler=None, hflip=True):
    labels = list(range(len(store)))  # label = index: shows which image a row is
    return batch_data.TrainBatches(store, labels, batch_size, BatchAugment(16, 0.5, hflip),
                          torch.Generator().manual_seed(seed), sampler)


def test_every_batch_has_one_shape_and_every_image_comes_each_epoch(tmp_path):
    store = batch_data.ImageStore(files(tmp_path), CPU)  # 12 images, batches of 5: 5, 5, 2 + 3 topped up
    batches = train_batches(store, 0)
    assert len(batches) == 3
    for _ in range(2):
        seen = []
        for images, labels in batches:
            assert images.shape == (5, 3, 16, 16) and labels.shape == (5,)
            seen += labels.tolist()
        counts = Counter(seen)
        assert set(counts) == set(range(12)) and sum(counts.values()) == 15
        assert sorted(counts.values()) == [1] * 9 + [2] * 3
    one = train_batches(store, 0, batch_size=50)  # more than the set: one batch of all 12
    assert [tuple(images.shape) for images, _ in one] == [(12, 3, 16, 16)]


def test_batches_are_the_generators_and_a_restored_generator_repeats_them(tmp_path):
    store = batch_data.ImageStore(files(tmp_path), CPU)
    a, b, c = train_batches(store, 7), train_batches(store, 7), train_batches(store, 8)
    first_a, first_b, first_c = list(a), list(b), list(c)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(first_a, first_b))
    assert not torch.equal(first_a[0][0], first_c[0][0])
    state = a.generator.get_state()  # what the checkpoint stores after an epoch
    second = list(a)
    assert not torch.equal(second[0][0], first_a[0][0])  # a new shuffle and new crops
    resumed = train_batches(store, 99)
    resumed.generator.set_state(state)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(second, resumed))


def test_a_distributed_sampler_shards_the_epoch(tmp_path):
    from torch.utils.data.distributed import DistributedSampler

    store = batch_data.ImageStore(files(tmp_path), CPU)
    shards = {}
    for epoch in (1, 2):
        for rank in range(2):
            sampler = DistributedSampler(store, num_replicas=2, rank=rank, shuffle=True, seed=3)
            batches = train_batches(store, rank, batch_size=3, sampler=sampler)
            batches.set_epoch(epoch)
            shards[epoch, rank] = [i for _, labels in batches for i in labels.tolist()]
        assert sorted(shards[epoch, 0] + shards[epoch, 1]) == list(range(12))  # 6 each
    assert shards[1, 0] != shards[2, 0]  # set_epoch reshuffles


def test_validation_batches_equal_the_old_loaders_and_padding_is_dropped(tmp_path):
    paths = files(tmp_path, per_class=3)  # 9 images in batches of 4: 4, 4, 1 (+3 padding)
    samples = [(p, k % 3) for k, p in enumerate(paths)]
    pre = Preprocess(24, 28, (0.5,) * 3, (0.5,) * 3, "bicubic")
    new = batch_data.EvalBatches(samples, datasets.eval_geometry(pre), 4, CPU)
    old = torch.utils.data.DataLoader(datasets.ImageTensorDataset(samples, datasets.eval_geometry(pre)), batch_size=4)
    new_images = [images for images, _ in new]
    assert [tuple(i.shape) for i in new_images] == [(4, 3, 24, 24)] * 3
    old_images = torch.cat([images for images, _ in old])
    assert torch.equal(torch.cat(new_images)[:9], old_images)  # bit for bit evaluate's geometry
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 3))
    rt = Runtime(CPU, None)
    norm = datasets.Normalizer(pre.mean, pre.std)
    new_out, new_labels = inference.infer_labelled(model, new, norm, rt)
    old_out, old_labels = inference.infer_labelled(model, old, norm, rt)
    assert new_out.shape == (9, 3) and torch.equal(new_labels, old_labels)
    assert torch.allclose(new_out, old_out, atol=1e-5)
