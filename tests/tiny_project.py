"""A tiny, fully generated project for tests of predict, export and distributed training:
an ImageFolder of synthetic pictures, a params.yaml, the prepared split and a model file
built in-process (no training pipeline run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("bars", "blobs", "checks")


def picture(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A noisy RGB picture whose pattern depends on the class (learnable, not trivial)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "bars":
        base = np.sin(xx * 6 * np.pi + phase)
    elif kind == "blobs":
        cx, cy = rng.uniform(0.3, 0.7, 2)
        base = 1.0 - 8 * ((xx - cx) ** 2 + (yy - cy) ** 2)
    else:
        base = np.sign(np.sin(xx * 5 * np.pi + phase) * np.sin(yy * 5 * np.pi))
    tint = rng.uniform(0.4, 1.0, 3)
    pixels = (base[..., None] * 0.5 + 0.5) * tint + rng.normal(0, 0.08, (size, size, 3))
    return Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8), "RGB")


def make_image_folder(root: Path, per_class: int = 8, size: int = 40, seed: int = 0,
                      suffix: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            picture(kind, size, rng).save(root / kind / f"{i:03d}{suffix}")
    return root


def write_params(project: Path, **overrides) -> None:
    """params.yaml: the repository's, with the given (dotted) overrides."""
    from conftest import write_params as write

    write(project, **overrides)


def prepare(project: Path) -> None:
    """Run the real prepare stage in `project` (needs params.yaml and data.source there)."""
    from conftest import run_stage

    run_stage("prepare", project)


def save_tiny_model(path: Path, model_name: str = "mobilenet_v3_small", image_size: int = 32,
                    weights: str = "none", seed: int = 0, classes=CLASSES, tta: str = "none",
                    extra: dict | None = None):
    """A model file as train writes it, from an untrained (or pretrained, weights=default)
    backbone with a seeded head; BatchNorm statistics are made non-trivial first."""
    import torch

    from folderfit.artifacts import model_file
    from folderfit.backbone import architecture

    torch.manual_seed(seed)
    built = architecture.build_model(model_name, len(classes), weights, seed)
    with torch.no_grad():  # random-init BN running stats (0 mean, 1 var) make a dull net
        for module in built.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    pre = built.preprocess.with_image_size(image_size)
    model_file.save_model_file(path, built, list(classes), pre, tta=tta, extra=extra)
    return built, pre
