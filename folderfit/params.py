"""Read params.yaml into typed, validated objects.

params.yaml is the one source of defaults and their documentation: the dataclasses below
declare only names and types, so the code holds no second copy of a default that could drift.
Every key must be present; a missing one is an error naming it.

Every stage goes through `load_params()`, so a typo or a wrong type is reported once, with
the key's full name and what to do, before any work starts. Unknown keys are rejected
(with a close-match suggestion) because a silently ignored knob is worse than an error.
The `preflight` stage (folderfit.pipeline.preflight) runs this same validation first in `dvc repro`,
so a bad hand edit or `dvc exp run -S` (also `-S +new_key`) stops before any stage works.

One reading, DVC's: params.yaml is read as DVC reads it (ruamel.yaml's safe loader, YAML 1.2),
so the value a stage runs with is the one `dvc params diff` and `dvc exp show` show. PyYAML
(YAML 1.1) read `seed: 010` as 8 and `num_epochs: 1:30` as 90 where DVC shows 10 and "1:30";
here they are 10 and a string (refused: num_epochs must be int). ruamel.yaml comes with DVC
(the pipeline extra) and is imported only where a YAML file is read: `folderfit.load` and
`predict` never read params.yaml. A float key also takes text in exponent notation
(`lr: "1e-3"`). Every number is range checked; the seed's range is numpy's (0..2**32-1).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from folderfit.errors import PipelineError

STRATEGIES = ("feature_extract", "fine_tune", "full_tune", "auto")
CLASS_WEIGHTING = ("none", "balanced")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
ON_LEAK = ("warn", "fail")
TTA = ("auto", "flip", "none")
CPU_ENGINES = ("auto", "onnxruntime", "openvino", "torch")  # folderfit.compute.cpu_engine
BACKBONE_CHOICE = ("auto", "fast")  # folderfit.frozen.backbone_choice
DEMO_MAX_PER_CLASS = 174  # scikit-learn's digits: the rarest digit (8) has 174 scans
SEED_MAX = 2**32 - 1  # numpy's seed range, the narrowest of the seeded libraries
COUNT_MAX = 1_000_000  # upper bound of epochs, patience, batch sizes: far beyond any real use
BOOTSTRAP_MIN = 200  # evaluate.bootstrap: 0 (off) or at least this many resamples (metrics)
# a number with an exponent, which YAML 1.2 reads as a float and PyYAML as text
EXPONENT_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


@dataclass(frozen=True)
class DemoParams:
    per_class: int
    size: int


@dataclass(frozen=True)
class DataParams:
    source: str
    val_fraction: float
    test_fraction: float
    image_size: int
    on_leak: str


@dataclass(frozen=True)
class AugmentParams:
    hflip: bool | str  # true | false | "auto"
    min_scale: float
    feature_views: int


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    bootstrap: int
    tta: str
    cv_folds: int


@dataclass(frozen=True)
class PredictParams:
    target_accuracy: float  # accepted predictions' accuracy goal (folderfit.frozen.decisions)


@dataclass(frozen=True)
class BackboneChoiceParams:
    mode: str  # auto | fast (folderfit.frozen.backbone_choice)
    budget_s: float
    sample: int


@dataclass(frozen=True)
class ReviewParams:
    folds: int
    neighbours: int
    duplicate_similarity: float


@dataclass(frozen=True)
class Params:
    model_name: str
    weights: str
    strategy: str
    freeze_layers: int
    num_epochs: int
    patience: int
    warm_start_head: bool
    refit_head: bool
    lr: float
    backbone_lr: float
    lr_decay: float
    weight_decay: float
    batch_size: int
    seed: int
    label_smoothing: float
    class_weighting: str
    precision: str
    device: str
    cpu_engine: str
    compile: bool
    train_cmd: str
    augment: AugmentParams
    backbone_choice: BackboneChoiceParams
    data: DataParams
    demo: DemoParams
    evaluate: EvaluateParams
    review: ReviewParams
    predict: PredictParams


def _suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value, kind, key: str):
    """Check one scalar against its declared type; ints are accepted where floats are.
    A union (bool | str) takes a value of any of its types."""
    if isinstance(kind, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return _coerce(value, option, key)
            except PipelineError:
                pass
        names = " or ".join(option.__name__ for option in typing.get_args(kind))
        raise PipelineError(f"params.yaml: '{key}' must be {names}, got {value!r}; fix the value "
                            f"in params.yaml")
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise PipelineError(f"params.yaml: '{key}' must be a finite number, got {value!r}")
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    raise PipelineError(
        f"params.yaml: '{key}' must be {kind.__name__}, got {value!r}; fix the value in params.yaml"
    )


def _build(cls, raw, prefix: str = ""):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PipelineError(f"params.yaml: '{prefix.rstrip('.')}' must be a mapping of keys")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise PipelineError(
                f"params.yaml: unknown key '{full}'{_suggest(str(key), names)}; "
                f"known keys here: {', '.join(names)}"
            )
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            values[key] = _build(kind, value, prefix=f"{full}.")
        else:
            values[key] = _coerce(value, kind, full)
    missing = [name for name in names if name not in values]
    if missing:
        raise PipelineError(
            f"params.yaml: missing key '{prefix}{missing[0]}'; add it (the project's params.yaml "
            f"lists every key with its default and a comment)")
    return cls(**values)


def _check_choice(value: str, choices, key: str) -> None:
    if value not in choices:
        raise PipelineError(
            f"params.yaml: '{key}' is '{value}'{_suggest(value, choices)}; "
            f"choose one of: {', '.join(choices)}"
        )


def _check_device(value: str) -> None:
    """Whether the device is present is checked where it is used (folderfit.compute.runtime)."""
    if not DEVICE_PATTERN.fullmatch(value):
        raise PipelineError(f"params.yaml: 'device' is '{value}'; choose one of: {DEVICE_CHOICES}")


def _check_range(ok: bool, key: str, rule: str, value) -> None:
    if not ok:
        raise PipelineError(f"params.yaml: '{key}' must be {rule}, got {value!r}")


def validate(p: Params) -> Params:
    _check_choice(p.strategy, STRATEGIES, "strategy")
    _check_choice(p.class_weighting, CLASS_WEIGHTING, "class_weighting")
    _check_choice(p.precision, PRECISIONS, "precision")
    _check_device(p.device)
    _check_choice(p.cpu_engine, CPU_ENGINES, "cpu_engine")
    _check_range("stages.train" in p.train_cmd, "train_cmd", "a command running stages.train "
                 "(python -m stages.train | torchrun --nproc_per_node=N -m stages.train)", p.train_cmd)
    _check_range(0 <= p.seed <= SEED_MAX, "seed", f"in 0..{SEED_MAX}", p.seed)
    for key in ("num_epochs", "patience", "batch_size"):
        _check_range(getattr(p, key) > 0, key, "> 0", getattr(p, key))
        _check_range(getattr(p, key) <= COUNT_MAX, key, f"<= {COUNT_MAX}", getattr(p, key))
    _check_range(p.freeze_layers >= 0, "freeze_layers", ">= 0", p.freeze_layers)
    _check_range(p.freeze_layers <= 1000, "freeze_layers", "<= 1000 (a backbone's stage count)",
                 p.freeze_layers)
    _check_range(0 < p.lr <= 1, "lr", "in (0, 1]", p.lr)
    _check_range(0 < p.backbone_lr <= 1, "backbone_lr", "in (0, 1]", p.backbone_lr)
    _check_range(0 < p.lr_decay <= 1, "lr_decay", "in (0, 1]", p.lr_decay)
    _check_range(0 <= p.weight_decay <= 1, "weight_decay", "in [0, 1]", p.weight_decay)
    _check_range(0 <= p.label_smoothing < 1, "label_smoothing", "in [0, 1)", p.label_smoothing)
    _check_range(p.augment.hflip in (True, False, "auto"), "augment.hflip", "true, false or auto",
                 p.augment.hflip)
    _check_choice(p.evaluate.tta, TTA, "evaluate.tta")
    _check_range(1 <= p.augment.feature_views <= 64, "augment.feature_views", "in 1..64",
                 p.augment.feature_views)
    _check_range(0 < p.augment.min_scale <= 1, "augment.min_scale", "in (0, 1]", p.augment.min_scale)
    c = p.backbone_choice
    _check_choice(c.mode, BACKBONE_CHOICE, "backbone_choice.mode")
    _check_range(0 <= c.budget_s <= 1e6, "backbone_choice.budget_s", "in 0..1000000", c.budget_s)
    _check_range(20 <= c.sample <= 10_000_000, "backbone_choice.sample", "in 20..10000000", c.sample)
    d = p.data
    _check_choice(d.on_leak, ON_LEAK, "data.on_leak")
    _check_range(0 < d.val_fraction < 1, "data.val_fraction", "in (0, 1)", d.val_fraction)
    _check_range(0 <= d.test_fraction < 1, "data.test_fraction", "in [0, 1)", d.test_fraction)
    _check_range(
        d.val_fraction + d.test_fraction < 1,
        "data.val_fraction + data.test_fraction", "< 1", d.val_fraction + d.test_fraction,
    )
    _check_range(16 <= d.image_size <= 4096, "data.image_size", "in 16..4096", d.image_size)
    _check_range(bool(d.source.strip()), "data.source", "a directory path", d.source)
    check_no_tilde(d.source)
    _check_range(3 <= p.demo.per_class <= DEMO_MAX_PER_CLASS, "demo.per_class",
                 f"in 3..{DEMO_MAX_PER_CLASS}", p.demo.per_class)
    _check_range(8 <= p.demo.size <= 1024, "demo.size", "in 8..1024", p.demo.size)
    _check_range(0 < p.evaluate.batch_size <= COUNT_MAX, "evaluate.batch_size",
                 f"in 1..{COUNT_MAX}", p.evaluate.batch_size)
    # fewer resamples than MIN_RESAMPLES make the percentile tails a matter of the seed
    _check_range(p.evaluate.bootstrap == 0 or BOOTSTRAP_MIN <= p.evaluate.bootstrap <= 100_000,
                 "evaluate.bootstrap", f"0 (off) or in {BOOTSTRAP_MIN}..100000",
                 p.evaluate.bootstrap)
    _check_range(p.evaluate.cv_folds == 0 or 2 <= p.evaluate.cv_folds <= 20, "evaluate.cv_folds",
                 "0 (off) or in 2..20", p.evaluate.cv_folds)
    _check_range(0.5 <= p.predict.target_accuracy < 1, "predict.target_accuracy", "in [0.5, 1)",
                 p.predict.target_accuracy)
    _check_range(2 <= p.review.folds <= 100, "review.folds", "in 2..100", p.review.folds)
    _check_range(1 <= p.review.neighbours <= 1000, "review.neighbours", "in 1..1000",
                 p.review.neighbours)
    _check_range(0 < p.review.duplicate_similarity <= 1, "review.duplicate_similarity",
                 "in (0, 1]", p.review.duplicate_similarity)
    return p


def check_no_tilde(source: str) -> None:
    """DVC takes `${data.source}` as a dependency path literally: `~/photos` would be a folder
    named '~' inside the repository, so `dvc repro` could not find it. Refused with the fix."""
    if source.startswith("~"):
        import os.path

        raise PipelineError(
            f"params.yaml: 'data.source' is '{source}', but DVC does not expand '~' in paths; "
            f"write the full path: data.source: {os.path.expanduser(source)}")


def parse_params(raw: dict) -> Params:
    return validate(_build(Params, raw))


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the stage from the repository root")
    return parse_params(read_yaml(path.read_text(encoding="utf-8"), path) or {})


def read_yaml(text: str, where: str | Path = "params.yaml"):
    """YAML text as DVC reads it (dvc.utils.serialize.parse_yaml: ruamel.yaml, typ="safe",
    YAML 1.2). Every reader of params.yaml goes through here, so no value can differ from
    DVC's. Bad YAML (duplicate keys included, as for DVC) is one line naming `where`."""
    from ruamel.yaml import YAML, YAMLError

    try:
        return YAML(typ="safe").load(text)
    except YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{where}: not valid YAML ({problem}{at})") from None


def dump_yaml(data) -> str:
    """Text that read_yaml (and DVC) read back as `data`: block style, keys in their order."""
    import io

    from ruamel.yaml import YAML

    out = io.StringIO()
    writer = YAML(typ="safe")
    writer.default_flow_style = False
    writer.sort_base_mapping_type_on_output = False
    writer.dump(data, out)
    return out.getvalue()


def merge_overrides(base: dict, changes: dict) -> dict:
    """Nested update of raw params (a dict from params.yaml) with `changes`."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge_overrides(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def as_dict(p: Params) -> dict:
    return dataclasses.asdict(p)
