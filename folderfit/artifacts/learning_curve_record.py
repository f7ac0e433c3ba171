"""metrics/train/learning_curve.json: how accuracy grew with photos per class (feature_extract
only), written by train (folderfit.frozen.learning_curve.describe), read by the results page.

Schema: {"folds", "fractions", "overall": {"photos_per_class", "accuracy"}, "classes": {name:
{"photos_now", "photos", "accuracy", "forecast", "verdict", "statement"}}} or {"skipped": why}.
"""

from __future__ import annotations

from pathlib import Path

from folderfit.errors import PipelineError
from folderfit.paths import TRAIN_DIR
from folderfit.support.fileio import read_json_if_present, write_json

LEARNING_CURVE = "learning_curve.json"


def write_learning_curve(folder: Path, record: dict) -> None:
    write_json(Path(folder) / LEARNING_CURVE, record)


def read_learning_curve(folder: Path = TRAIN_DIR) -> dict | None:
    """The record, or None when train wrote none (fine_tune / full_tune, an older run)."""
    path = Path(folder) / LEARNING_CURVE
    record = read_json_if_present(path, "dvc repro train")
    if record is None:
        return None
    classes = record.get("classes", {}) if isinstance(record, dict) else None
    if not isinstance(classes, dict) or not all(isinstance(v, dict) for v in classes.values()):
        raise PipelineError(f"{path}: not a learning curve record (a `classes` mapping of "
                            f"class -> facts); rerun `dvc repro train`")
    return record
