"""metrics/train/candidates.json: the backbones train's choice tried (feature_extract with
backbone_choice.mode auto; folderfit.frozen.backbone_choice), written by train, read by the
results page. No wall times in it: two identical runs write the same bytes.

Schema: {"mode", "chosen", "image_size", "requested", "images", "sampled", "rule", "nested":
{"accuracy", "accuracy_ci", "chosen_per_fold", "what"}, "candidates": [{"model_name",
"image_size", "status" (chosen | tried | skipped), "default", ["accuracy", "accuracy_ci",
"difference", "difference_ci"], ["reason"]}]}.
"""

from __future__ import annotations

from pathlib import Path

from folderfit.errors import PipelineError
from folderfit.paths import TRAIN_DIR
from folderfit.support.fileio import read_json_if_present, write_json

CANDIDATES = "candidates.json"


def write_candidates(folder: Path, record: dict) -> None:
    write_json(Path(folder) / CANDIDATES, record)


def read_candidates(folder: Path = TRAIN_DIR) -> dict | None:
    """The record, or None when train made no choice (mode fast, nothing to choose, another
    strategy, an older run)."""
    path = Path(folder) / CANDIDATES
    record = read_json_if_present(path, "dvc repro train")
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("candidates"), list):
        raise PipelineError(f"{path}: not a backbone choice record (a `candidates` list); "
                            f"rerun `dvc repro train`")
    return record
