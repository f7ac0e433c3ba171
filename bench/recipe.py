"""The original recipe's training loop, reimplemented as the benchmark's baseline.

Kept on purpose, because they are what we measure against:
* torchvision ImageFolder + PIL decoding of the full-size originals every epoch, DataLoader
  with worker processes;
* train transforms that random-resize-crop and then apply the weights' full preprocessing
  (resize + centre crop again);
* `model.train()` on the frozen backbone (BatchNorm statistics keep moving);
* a forward pass through the whole network for every image in every epoch;
* the "best" weights kept with `state_dict().copy()` (a shallow copy: really the last);
* no early stopping, fp32, NCHW.
"""

from __future__ import annotations

import time

import torch
from torch import nn


def recipe_transforms(pre):
    from torchvision import transforms as T

    interp = getattr(T.InterpolationMode, pre.interpolation.upper())
    weights_preprocessing = [T.Resize(pre.resize_size, interpolation=interp), T.CenterCrop(pre.image_size),
                             T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    train = T.Compose([T.RandomResizedCrop(pre.image_size), T.RandomHorizontalFlip(),
                       *weights_preprocessing])
    return train, T.Compose(weights_preprocessing)


def run_recipe(model: nn.Module, head_name: str, pre, train_dir, val_dir, test_dir,
               epochs: int, batch_size: int = 32, workers: int = 2, lr: float = 1e-3) -> dict:
    from torchvision.datasets import ImageFolder

    train_tf, eval_tf = recipe_transforms(pre)
    loaders = {
        name: torch.utils.data.DataLoader(ImageFolder(str(folder), tf), batch_size=batch_size,
                                          shuffle=name == "train", num_workers=workers)
        for name, folder, tf in (("train", train_dir, train_tf), ("val", val_dir, eval_tf),
                                 ("test", test_dir, eval_tf))
    }
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(head_name + ".")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_state = -1.0, None
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in loaders["train"]:
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
        val_acc = _accuracy(model, loaders["val"])
        if val_acc > best_acc:
            best_acc, best_state = val_acc, model.state_dict().copy()
    model.load_state_dict(best_state)
    test_acc = _accuracy(model, loaders["test"])
    return {"wall_s": time.perf_counter() - started, "test_accuracy": test_acc,
            "train_images": len(loaders["train"].dataset)}


def _accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            seen += len(labels)
    return correct / max(seen, 1)
