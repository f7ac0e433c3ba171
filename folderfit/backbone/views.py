"""Test-time views: the model with its mirror image averaged in (`evaluate.tta: flip`), the
same averaging the head of a frozen backbone learns with.
"""

from __future__ import annotations

import torch
from torch import nn

from folderfit.errors import PipelineError

# ------------------------------------------------------------------ test-time augmentation
TTA_CHOICES = ("none", "flip")


class FlipTTA(nn.Module):
    """Flip test-time augmentation inside the network: the logits of an image and of its
    mirror image, averaged. Evaluate, predict, the Python API and the exported programs all
    run the loaded model, so they all apply it alike; a caller of an export just feeds the
    image (preprocess.json says the export averages the flip itself)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two calls, not one on the concatenated batch: slicing that batch by len(x) would fix
        # the batch size of an exported program (torch.export specialises it)
        return (self.model(x) + self.model(x.flip(-1))) / 2


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    if tta not in TTA_CHOICES:
        raise PipelineError(f"test-time augmentation '{tta}' is unknown; one of {', '.join(TTA_CHOICES)}")
    return FlipTTA(model) if tta == "flip" else model
