"""Which backbone stages train: the strategy's frozen stage count, freezing (frozen BatchNorm
layers stay in eval mode), and the optimizer's parameter groups with their learning rates
(the head at `lr`, the stage next to it at `backbone_lr`, each earlier one `lr_decay` times less).
"""

from __future__ import annotations

from torch import nn

from folderfit.backbone.architecture import Stage
from folderfit.errors import PipelineError


# ------------------------------------------------------------------ strategies
def auto_strategy(n_train: int, device_type: str = "cpu") -> str:
    """On a GPU, the recipe's table: < 1,000 training images -> feature_extract;
    1,000-10,000 -> fine_tune; > 10,000 -> full_tune. On a CPU always feature_extract: an
    epoch of backpropagation through the backbone costs there what the whole feature_extract
    run costs (docs/speed.md), so fine-tuning cannot pay for itself in reasonable time."""
    if device_type == "cpu" or n_train < 1000:
        return "feature_extract"
    if n_train <= 10000:
        return "fine_tune"
    return "full_tune"


def frozen_stage_count(strategy: str, freeze_layers: int, n_stages: int) -> int:
    if strategy == "feature_extract":
        return n_stages
    if strategy == "full_tune":
        return 0
    if strategy == "fine_tune":
        if freeze_layers >= n_stages:
            raise PipelineError(
                f"params.yaml: 'freeze_layers' is {freeze_layers} but this backbone has "
                f"{n_stages} stages (0..{n_stages - 1} allowed for fine_tune); see "
                f"folderfit describe MODEL_NAME")
        return freeze_layers
    raise PipelineError(f"unresolved strategy '{strategy}'")


def apply_freezing(model: nn.Module, stages: list[Stage], n_frozen: int) -> list[nn.Module]:
    """requires_grad False for the first n_frozen stages, True elsewhere. Returns the frozen
    modules, whose BatchNorm layers must stay in eval mode while training."""
    for p in model.parameters():
        p.requires_grad_(True)
    frozen = []
    for stage in stages[:n_frozen]:
        for p in stage.parameters():
            p.requires_grad_(False)
        frozen.extend(m for _, m in stage.modules)
    return frozen


def set_train_mode(model: nn.Module, frozen_modules: list[nn.Module]) -> None:
    """model.train(), except frozen layers: a frozen BatchNorm must not update its running
    statistics, and a frozen dropout should not drop either."""
    model.train()
    for module in frozen_modules:
        module.eval()


def parameter_groups(model: nn.Module, stages: list[Stage], head_name: str, *, lr: float,
                     backbone_lr: float, lr_decay: float, weight_decay: float) -> list[dict]:
    """All groups up front, frozen ones included (their params simply get no grad), so the
    optimizer and ReduceLROnPlateau see a fixed set of groups for the whole run. The head
    learns at `lr`; the backbone stage next to it at `backbone_lr`, each earlier one
    `lr_decay` times less (pretrained early features are the most general)."""
    head = model.get_submodule(head_name)
    groups = [{"name": "head", "params": list(head.parameters()), "lr": lr,
               "weight_decay": weight_decay}]
    depth = len(stages)
    for i, stage in enumerate(stages):
        distance = depth - i - 1  # 0 for the stage next to the head
        groups.append({"name": stage.name, "params": list(stage.parameters()),
                       "lr": backbone_lr * lr_decay ** distance, "weight_decay": weight_decay})
    covered = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in covered]
    if rest:  # anything the stage rule did not place trains with the first stage's LR
        groups.append({"name": "other", "params": rest,
                       "lr": backbone_lr * lr_decay ** max(depth - 1, 0),
                       "weight_decay": weight_decay})
    return [g for g in groups if g["params"]]


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer: fine-tuning a pretrained backbone keeps them in eval mode. In
    train mode they normalise with the batch's statistics instead of the running ones the
    warm-started head was solved on; measured on the demo (lite2, full_tune): cross-entropy
    0.13 on val in eval mode, 200 on the very first training batch in train mode."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
