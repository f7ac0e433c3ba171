"""Backbones: name resolution, head replacement, stages, freezing and parameter groups.

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
* `freeze_layers: N` freezes the first N stages, for every family alike.
* Layered learning rates: the head trains at `lr`; backbone stage i (counted from the head
  backwards, the last stage being 1) at `lr * lr_decay**i`.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from folderfit import weights as W
from folderfit.errors import PipelineError

MIN_STAGES = 4
POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
MODEL_FILE_FORMAT = 1


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


# ------------------------------------------------------------------ strategies
def auto_strategy(n_train: int, device_type: str = "cpu") -> str:
    """On a GPU, the recipe's table: < 1,000 training images -> feature_extract;
    1,000-10,000 -> fine_tune; > 10,000 -> full_tune. On a CPU always feature_extract: an
    epoch of backpropagation through the backbone costs there what the whole feature_extract
    run costs (lite2 @ 260 on 2 cores: ~70 s per epoch of 340 images against ~60 s for the
    whole feature_extract pipeline), so fine-tuning cannot pay for itself in reasonable time."""
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


# ------------------------------------------------------------------ building
@dataclass
class BuiltModel:
    model: nn.Module
    model_name: str
    family: str
    head_name: str
    stages: list
    preprocess: W.Preprocess
    weights: W.WeightsInfo


def build_model(model_name: str, num_classes: int, weights_spec: str = "default",
                seed: int = 0) -> BuiltModel:
    family, bare = resolve_family(model_name)
    model = create_architecture(family, bare)
    head_name = find_head(model)
    spec = weights_spec.strip()
    if family == "torchvision":
        preprocess = W.torchvision_preprocess(bare)
    else:
        preprocess = W.timm_preprocess(model)
    if spec.lower() == "none":
        info = W.WeightsInfo(spec, "none", "random-init", None)
    elif W.is_local_file_spec(spec):
        info = W.load_state_dict_file(model, spec, head_name, spec)
    elif family == "timm" and bare in W.BUNDLED and spec == "default":
        info = W.load_bundled(model, bare, spec)
    elif family == "torchvision":
        info = W.load_torchvision_pretrained(model, bare, spec)
    else:
        info = W.load_timm_pretrained(model, bare, spec)
    replace_head(model, num_classes, seed)
    stages = backbone_stages(model, head_name)
    return BuiltModel(model, model_name, family, head_name, stages, preprocess, info)


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


# ------------------------------------------------------------------ model file
def save_model_file(path, built: BuiltModel, class_names: list, preprocess: W.Preprocess,
                    extra: dict | None = None, tta: str = "none") -> None:
    """One self-contained file: architecture name, classes, preprocessing, test-time
    augmentation, weights. Plain types and tensors only, so it loads with
    torch.load(weights_only=True)."""
    from folderfit.fileio import save_torch

    payload = {
        "format": MODEL_FILE_FORMAT,
        "model_name": built.model_name,
        "head_name": built.head_name,
        "class_names": list(class_names),
        "preprocess": preprocess.to_dict(),
        "tta": tta,
        "weights": built.weights.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in built.model.state_dict().items()},
        "extra": extra or {},
    }
    save_torch(payload, path)


@dataclass
class LoadedModel:
    model: nn.Module  # with the file's test-time augmentation applied inside (FlipTTA)
    class_names: list
    preprocess: W.Preprocess
    info: dict

    @property
    def tta(self) -> str:
        return self.info.get("tta", "none")

    @property
    def numerics(self) -> str | None:
        """The engine and precision the file's scores were computed with ('onnxruntime-fp32',
        'torch-bf16', ...): train's `extra.numerics`; for files written before it, a
        feature_extract file's feature engine or the run's precision; None if unknown.
        evaluate, predict and folderfit.load score with it by default (runtime.scoring_runtime)."""
        extra = self.info.get("extra") if isinstance(self.info.get("extra"), dict) else {}
        for value in (extra.get("numerics"),
                      extra.get("feature_engine") if extra.get("strategy") == "feature_extract" else None,
                      f"torch-{extra['precision']}" if isinstance(extra.get("precision"), str) else None):
            if isinstance(value, str) and value.rpartition("-")[2] in ("fp32", "bf16", "fp16"):
                return value
        return None


# The model file's schema: key -> type. Checked on every load, so a file of another version,
# a damaged one or one edited by hand is one line naming what is wrong, never a traceback.
MODEL_FILE_KEYS = {"format": int, "model_name": str, "head_name": str, "class_names": list,
                   "preprocess": dict, "weights": dict, "state_dict": dict, "extra": dict}
PREPROCESS_KEYS = {"image_size": int, "resize_size": int, "mean": list, "std": list,
                   "interpolation": str}
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def check_model_file(payload, path) -> None:
    """Raise a one-line PipelineError if `payload` (a loaded model file) breaks the schema."""
    def bad(what: str) -> PipelineError:
        return PipelineError(f"{path}: not a usable model file of this pipeline ({what}); "
                             f"retrain with `dvc repro train` or pass the right --model")

    if not isinstance(payload, dict):
        raise bad(f"holds a {type(payload).__name__}, not a model file's dictionary")
    if payload.get("format") != MODEL_FILE_FORMAT:
        raise bad(f"format {payload.get('format')!r}, this version reads format {MODEL_FILE_FORMAT}")
    for key, kind in MODEL_FILE_KEYS.items():
        if key not in payload:
            raise bad(f"no '{key}'")
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            raise bad(f"'{key}' is a {type(payload[key]).__name__}, not a {kind.__name__}")
    classes = payload["class_names"]
    if len(classes) < 2 or not all(isinstance(c, str) for c in classes) or len(set(classes)) < len(classes):
        raise bad("'class_names' must be at least 2 different strings")
    pre = payload["preprocess"]
    for key, kind in PREPROCESS_KEYS.items():
        if not isinstance(pre.get(key), kind):
            raise bad(f"'preprocess.{key}' is missing or not a {kind.__name__}")
    if not (0 < pre["image_size"] <= pre["resize_size"] <= 8192):
        raise bad("'preprocess' sizes out of range")
    for key in ("mean", "std"):
        values = pre[key]
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values) or (
                key == "std" and min(values) <= 0):
            raise bad(f"'preprocess.{key}' must be 3 numbers")
    if pre["interpolation"] not in INTERPOLATIONS:
        raise bad(f"'preprocess.interpolation' is {pre['interpolation']!r}")
    tensors = payload["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise bad("'state_dict' must map names to tensors")
    if payload.get("tta", "none") not in TTA_CHOICES:  # absent: a file from before TTA existed
        raise bad(f"'tta' is {payload['tta']!r}, not one of {', '.join(TTA_CHOICES)}")


def _check_weights_fit(model: nn.Module, payload: dict, path) -> None:
    """The stored tensors must be exactly the architecture's: same names, same shapes, and a
    head with one output per class name."""
    name = payload["model_name"]
    head = payload["head_name"]
    if head != find_head(model):
        raise PipelineError(f"{path}: weights do not fit {name} (its classifier is "
                            f"'{find_head(model)}', the file's is '{head}'); the file was made for "
                            f"another architecture or is damaged, retrain it")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in payload["state_dict"].items()}
    weight = stored.get(f"{head}.weight")
    if weight is None or weight[0] != len(payload["class_names"]):
        outputs = "no" if weight is None else weight[0]
        raise PipelineError(f"{path}: the head has {outputs} outputs but the file lists "
                            f"{len(payload['class_names'])} class names; the file is damaged or "
                            f"edited, retrain it with `dvc repro train`")
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + \
               ([f"shape of {', '.join(wrong[:3])}"] if wrong else [])
    if problems:
        raise PipelineError(f"{path}: weights do not fit {name} ({'; '.join(problems)}); the file "
                            f"was made for another architecture or is damaged, retrain it")


def load_model_file(path) -> LoadedModel:
    """The model file `path`, checked against its schema and its architecture; every problem
    is one PipelineError line naming the file."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: model file not found; run `dvc repro train` first or pass --model")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"{path}: not a model file of this pipeline ({type(exc).__name__}); "
                            f"retrain with `dvc repro train` or pass the right --model") from None
    check_model_file(payload, path)
    try:
        family, bare = resolve_family(payload["model_name"])
    except PipelineError:
        raise PipelineError(f"{path}: made for model_name '{payload['model_name']}', which neither "
                            f"torchvision nor timm here provides; install the library version "
                            f"that trained it, or retrain") from None
    model = create_architecture(family, bare)
    replace_head(model, len(payload["class_names"]), seed=0)
    _check_weights_fit(model, payload, path)
    model.load_state_dict(payload["state_dict"])
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info.setdefault("tta", "none")  # files written before test-time augmentation existed
    model = with_tta(model, info["tta"]).eval()
    return LoadedModel(model, payload["class_names"], W.Preprocess.from_dict(payload["preprocess"]), info)


# ------------------------------------------------------------------ CLI
def describe(model_name: str, out=None) -> None:
    out = out or sys.stdout
    family, bare = resolve_family(model_name)
    model = create_architecture(family, bare)
    head_name = find_head(model)
    stages = backbone_stages(model, head_name)
    head = model.get_submodule(head_name)
    print(f"{model_name} ({family}): {len(stages)} backbone stages + head", file=out)
    print("freeze_layers: N freezes stages 0..N-1 (fine_tune allows 0.."
          f"{len(stages) - 1}); feature_extract freezes all {len(stages)}", file=out)
    for i, stage in enumerate(stages):
        names = ", ".join(n for n, _ in stage.modules)
        if len(names) > 70:
            names = names[:67] + "..."
        print(f"  {i:2d}  {stage.name:<28} {stage.num_params():>12,d}  [{names}]", file=out)
    print(f"  head {head_name:<27} {sum(p.numel() for p in head.parameters()):>12,d}  "
          f"Linear({head.in_features} -> classes)", file=out)


def command(args) -> None:
    """`folderfit describe MODEL_NAME` (arguments: folderfit.cli)."""
    describe(args.model_name)
