"""models/model.pt: the one self-contained model file (architecture name, classes,
preprocessing, weights and how the train stage made it), written by train and read by evaluate,
predict, folderfit.load and export. Loading checks the file's schema and loads weights only
(torch.load(weights_only=True)), so an untrusted file cannot run code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from folderfit.backbone import weights
from folderfit.backbone.architecture import (
    BuiltModel,
    create_architecture,
    find_head,
    replace_head,
    resolve_family,
)
from folderfit.backbone.views import TTA_CHOICES, with_tta
from folderfit.errors import PipelineError

MODEL_FILE_FORMAT = 1


# ------------------------------------------------------------------ model file
def save_model_file(path, built: BuiltModel, class_names: list, preprocess: weights.Preprocess,
                    extra: dict | None = None, tta: str = "none", decisions: dict | None = None) -> None:
    """One self-contained file: architecture name, classes, preprocessing, test-time
    augmentation, weights, and (optionally) the decision rules (DecisionRules.to_payload).
    Plain types and tensors only, so it loads with torch.load(weights_only=True)."""
    from folderfit.support.fileio import save_torch

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
    if decisions is not None:
        payload["decisions"] = decisions
    save_torch(payload, path)


PRECISIONS = ("fp32", "bf16", "fp16")


class Numerics(NamedTuple):
    """An engine and the precision it computes in, written "engine-precision"
    ("onnxruntime-fp32", "torch-bf16"): how a model's scores or a backbone's features were
    computed. The one place that spells and parses that text."""
    engine: str
    precision: str

    def __str__(self) -> str:
        return f"{self.engine}-{self.precision}"

    @classmethod
    def parse(cls, text) -> Numerics | None:
        """The Numerics `text` names, or None for anything else (not a string, no engine, an
        unknown precision)."""
        if not isinstance(text, str):
            return None
        engine, _, precision = text.rpartition("-")
        return cls(engine, precision) if engine and precision in PRECISIONS else None


@dataclass(frozen=True)
class TrainRecord:
    """How the train stage made the model, as the file records it (its `extra`, which train
    also writes to metrics/train/details.json), read back typed: no reader parses the dict.
    A field the file does not hold (an older file, one written outside train) is None."""
    strategy: str | None
    model_name: str | None
    weights_source: str | None
    feature_engine: Numerics | None  # what computed the backbone's features (feature_extract)
    numerics: Numerics | None  # what computed the scores evaluate reports
    precision: str | None
    n_train: int | None
    n_val: int | None

    @classmethod
    def from_extra(cls, extra) -> TrainRecord:
        extra = extra if isinstance(extra, dict) else {}

        def text(key):
            return extra[key] if isinstance(extra.get(key), str) else None

        def count(key):
            value = extra.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        weights_info = extra.get("weights") if isinstance(extra.get("weights"), dict) else {}
        return cls(strategy=text("strategy"), model_name=text("model_name"),
                   weights_source=weights_info.get("source") if isinstance(weights_info.get("source"), str) else None,
                   feature_engine=Numerics.parse(extra.get("feature_engine")),
                   numerics=Numerics.parse(extra.get("numerics")), precision=text("precision"),
                   n_train=count("n_train"), n_val=count("n_val"))


@dataclass(frozen=True)
class DecisionRules:
    """When the model says `unsure` or `unfamiliar` instead of a class, and its prediction
    sets (folderfit.frozen.decisions fits them from out-of-sample scores; folderfit.compute.decisions
    applies them). Stored under the file's `decisions` key; a file without it (older, or made
    outside train) has none and never abstains."""
    target_accuracy: float  # predict.target_accuracy at training time
    confidence_threshold: float  # top probability from which a prediction is accepted
    target_met: bool  # False: no threshold reached the target; only the most confident pass
    calibration: str  # which out-of-sample scores chose the thresholds
    n_calibration: int
    accepted_fraction: float  # of the calibration images, at the threshold
    accuracy_low: float  # one-sided 95% lower bound on accepted accuracy (Clopper-Pearson)
    reference: torch.Tensor  # [M, D] float16 L2-normalised backbone features of training images
    neighbours: int  # distance = mean cosine distance to this many nearest references
    distance_threshold: float  # above it an image is `unfamiliar`
    distance_quantile: float  # of out-of-sample in-distribution distances
    conformal_scores: list  # per class: sorted 1 - p(true class) of its calibration images
    min_class_calibration: int  # classes with fewer scores use the pooled ones for sets

    def to_payload(self) -> dict:
        return {k: (v.detach().cpu().half().contiguous() if k == "reference" else
                    [t.detach().cpu().float().contiguous() for t in v] if k == "conformal_scores" else v)
                for k, v in self.__dict__.items()}

    @classmethod
    def from_payload(cls, raw) -> DecisionRules:
        return cls(**{k: raw[k] for k in DECISION_KEYS})


# DecisionRules' fields as stored: key -> type, checked on load like the rest of the file
DECISION_KEYS = {"target_accuracy": float, "confidence_threshold": float, "target_met": bool,
                 "calibration": str, "n_calibration": int, "accepted_fraction": float,
                 "accuracy_low": float, "reference": torch.Tensor, "neighbours": int,
                 "distance_threshold": float, "distance_quantile": float,
                 "conformal_scores": list, "min_class_calibration": int}


@dataclass
class LoadedModel:
    model: nn.Module  # with the file's test-time augmentation applied inside (FlipTTA)
    class_names: list
    preprocess: weights.Preprocess
    info: dict

    @property
    def tta(self) -> str:
        return self.info.get("tta", "none")

    @property
    def decisions(self) -> DecisionRules | None:
        """The file's decision rules; None for a file without them (it never abstains)."""
        raw = self.info.get("decisions")
        return DecisionRules.from_payload(raw) if raw is not None else None

    @property
    def record(self) -> TrainRecord:
        return TrainRecord.from_extra(self.info.get("extra"))

    @property
    def numerics(self) -> str | None:
        """The engine and precision the file's scores were computed with ('onnxruntime-fp32',
        'torch-bf16', ...): train's `numerics`; for files written before it, a feature_extract
        file's feature engine or the run's precision; None if unknown. evaluate, predict and
        folderfit.load score with it by default (runtime.scoring_runtime)."""
        record = self.record
        for value in (record.numerics,
                      record.feature_engine if record.strategy == "feature_extract" else None,
                      Numerics.parse(f"torch-{record.precision}") if record.precision else None):
            if value is not None:
                return str(value)
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
    if "decisions" in payload:
        _check_decisions(payload["decisions"], len(classes), bad)
    if payload.get("tta", "none") not in TTA_CHOICES:  # absent: a file from before TTA existed
        raise bad(f"'tta' is {payload['tta']!r}, not one of {', '.join(TTA_CHOICES)}")


def _check_decisions(rules, n_classes: int, bad) -> None:
    """The `decisions` record's schema (DECISION_KEYS), tensors' shapes included."""
    if not isinstance(rules, dict):
        raise bad("'decisions' is not a dictionary")
    for key, kind in DECISION_KEYS.items():
        value = rules.get(key)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise bad(f"'decisions.{key}' is missing or not a {kind.__name__}")
    if rules["reference"].ndim != 2 or rules["neighbours"] < 1:
        raise bad("'decisions.reference' must be a [vectors, features] matrix")
    scores = rules["conformal_scores"]
    if len(scores) != n_classes or not all(isinstance(t, torch.Tensor) and t.ndim == 1 for t in scores):
        raise bad("'decisions.conformal_scores' must hold one vector per class")


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
    rules = payload.get("decisions")
    width = payload["state_dict"][f"{payload['head_name']}.weight"].shape[1]
    if rules is not None and rules["reference"].shape[1] != width:
        raise PipelineError(f"{path}: the decision rules' feature vectors have {rules['reference'].shape[1]} "
                            f"values, the head reads {width}; the file is damaged or edited, retrain it")
    model.load_state_dict(payload["state_dict"])
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info.setdefault("tta", "none")  # files written before test-time augmentation existed
    model = with_tta(model, info["tta"]).eval()
    return LoadedModel(model, payload["class_names"], weights.Preprocess.from_dict(payload["preprocess"]), info)
