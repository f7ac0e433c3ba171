"""Backbones: name resolution, building, head replacement and stages.

One mechanism for every architecture, torchvision or timm:

* The **head** is the network's final `nn.Linear` (the classifier). It is replaced by a new
  Linear with one output per class.
* The **stages** are the backbone's ordered building blocks, found from the module tree:
  the model's top-level children with parameters (the head's container excluded), where
  consecutive plain layers (conv, norm, ...) merge into one stage (the *stem* at the start,
  the *neck* after the blocks). While fewer than 4 stages are found, the stage with the most
  parameters is opened up into its children (e.g. the `features` Sequential of VGG,
  MobileNet, EfficientNet, ConvNeXt; the `blocks` of timm's EfficientNets). Within an opened
  plain-layer sequence (VGG) a stage ends at each pooling layer. Parameters held directly by
  an opened container (ViT's position embedding) go with the first stage.
  Examples: resnet50 -> stem, layer1..layer4; vgg16 -> 5 conv blocks + the classifier MLP;
  tf_efficientnet_lite0 -> stem, blocks.0..blocks.6, neck. See them with
  `folderfit describe MODEL_NAME`.
* `freeze_layers: N` freezes the first N stages, for every family alike (folderfit.tuning.freezing).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import torch
from torch import nn

from folderfit.backbone import weights as pretrained_weights
from folderfit.errors import PipelineError

MIN_STAGES = 4


POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class Stage:
    name: str
    modules: list = field(default_factory=list)  # list of (qualified name, module)
    direct_params: list = field(default_factory=list)  # params owned by opened containers

    def parameters(self):
        seen = set()
        for _, module in self.modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p
        for p in self.direct_params:
            if id(p) not in seen:
                seen.add(id(p))
                yield p

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ------------------------------------------------------------------ names
def _torchvision_names() -> list:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list:
    import timm

    return timm.list_models()


def resolve_family(model_name: str) -> tuple[str, str]:
    """('torchvision' | 'timm', bare name). `timm/NAME` forces timm; a plain name is looked up
    in torchvision first (the recipe's names: resnet50, vgg16, ...), then in timm."""
    if model_name.startswith("timm/"):
        bare = model_name.removeprefix("timm/")
        if bare in set(_timm_names()):
            return "timm", bare
        pool = _timm_names()
    else:
        if model_name in set(_torchvision_names()):
            return "torchvision", model_name
        if model_name in set(_timm_names()):
            return "timm", model_name
        pool = _torchvision_names() + _timm_names()
    bare = model_name.removeprefix("timm/")
    close = difflib.get_close_matches(bare, list(dict.fromkeys(pool)), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "see torchvision.models.list_models() or timm.list_models()"
    raise PipelineError(f"params.yaml: unknown model_name '{model_name}'; {hint}")


def create_architecture(family: str, name: str) -> nn.Module:
    if family == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    import timm

    return timm.create_model(name, pretrained=False)


# ------------------------------------------------------------------ head
def find_head(model: nn.Module) -> str:
    """Qualified name of the final nn.Linear (the classifier)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise PipelineError(f"{type(model).__name__} has no nn.Linear classifier; pick another "
                            f"model_name (convolutional classifiers are not supported)")
    return last


def set_submodule(model: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def replace_head(model: nn.Module, num_classes: int, seed: int) -> str:
    head_name = find_head(model)
    old = model.get_submodule(head_name)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the new head's initialisation depends on the seed alone
    new = nn.Linear(old.in_features, num_classes)
    torch.random.set_rng_state(generator_state)
    set_submodule(model, head_name, new)
    return head_name


# ------------------------------------------------------------------ stages
def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_plain(module: nn.Module) -> bool:
    """A single layer (conv, norm, activation, a norm+activation pair, ...) rather than a
    block of layers: none of its children hold parameters."""
    return not any(_has_params(child) for child in module.children())


def _units(container: nn.Module, prefix: str, head_name: str):
    """Children of `container` as stage candidates: runs of plain layers merged, pooling
    layers closing a run, the head (and containers holding it) left out."""
    units, run = [], []

    def close_run():
        if any(_has_params(m) for _, m in run):
            units.append(run.copy())
        run.clear()

    for name, child in container.named_children():
        qualified = f"{prefix}{name}"
        if qualified == head_name:
            continue
        if head_name.startswith(qualified + "."):
            # the head's container: its other layers (e.g. VGG's MLP, ConvNeXt's norm) form the neck
            close_run()
            units.extend(u for u in _units(child, qualified + ".", head_name))
            continue
        if _is_plain(child):
            run.append((qualified, child))
            if isinstance(child, POOLING):
                close_run()
        else:
            close_run()
            if _has_params(child):
                units.append([(qualified, child)])
    close_run()
    return units


def _unit_params(unit) -> int:
    return sum(p.numel() for _, m in unit for p in m.parameters())


def _direct_params(module: nn.Module) -> list:
    return list(module.parameters(recurse=False))


def backbone_stages(model: nn.Module, head_name: str | None = None) -> list[Stage]:
    """Ordered backbone stages (head excluded); see the module docstring for the rule."""
    head_name = head_name or find_head(model)
    units = _units(model, "", head_name)
    orphans = _direct_params(model)
    while len(units) < MIN_STAGES:
        openable = [i for i, u in enumerate(units) if len(u) == 1 and not _is_plain(u[0][1])]
        if not openable:
            break
        i = max(openable, key=lambda j: _unit_params(units[j]))
        name, module = units[i][0]
        inner = _units(module, name + ".", head_name)
        if len(inner) <= 1:
            break
        orphans += _direct_params(module)
        units[i:i + 1] = inner
    stages = []
    for index, unit in enumerate(units):
        if len(unit) == 1 and not _is_plain(unit[0][1]):
            label = unit[0][0]
        elif index == 0:
            label = "stem"
        elif index == len(units) - 1:
            label = "neck"
        else:
            label = f"{unit[0][0]}..{unit[-1][0]}" if len(unit) > 1 else unit[0][0]
        stages.append(Stage(label, list(unit)))
    if stages:
        stages[0].direct_params.extend(orphans)
    return stages


# ------------------------------------------------------------------ building
@dataclass
class BuiltModel:
    model: nn.Module
    model_name: str
    family: str
    head_name: str
    stages: list
    preprocess: pretrained_weights.Preprocess
    weights: pretrained_weights.WeightsInfo


def build_model(model_name: str, num_classes: int, weights_spec: str = "default",
                seed: int = 0) -> BuiltModel:
    family, bare = resolve_family(model_name)
    model = create_architecture(family, bare)
    head_name = find_head(model)
    spec = weights_spec.strip()
    if family == "torchvision":
        preprocess = pretrained_weights.torchvision_preprocess(bare)
    else:
        preprocess = pretrained_weights.timm_preprocess(model)
    if spec.lower() == "none":
        info = pretrained_weights.WeightsInfo(spec, "none", "random-init", None)
    elif pretrained_weights.is_local_file_spec(spec):
        info = pretrained_weights.load_state_dict_file(model, spec, head_name, spec)
    elif family == "timm" and bare in pretrained_weights.BUNDLED and spec == "default":
        info = pretrained_weights.load_bundled(model, bare, spec)
    elif family == "torchvision":
        info = pretrained_weights.load_torchvision_pretrained(model, bare, spec)
    else:
        info = pretrained_weights.load_timm_pretrained(model, bare, spec)
    replace_head(model, num_classes, seed)
    stages = backbone_stages(model, head_name)
    return BuiltModel(model, model_name, family, head_name, stages, preprocess, info)
