"""Every path the pipeline reads or writes, relative to the project root (where dvc.yaml is
and where DVC runs the stages): the one place they are defined, matching dvc.yaml's deps and
outs."""

import os
from pathlib import Path

PREFLIGHT_OK = Path("data/preflight.ok")
DEMO_DIR = Path("data/demo")
CORRECTIONS = Path("data/corrections.csv")
PREPARED = Path("data/prepared")
MANIFEST_NAME = "manifest.csv"  # inside PREPARED
THUMBNAILS_NAME = "thumbnails.npy"  # inside PREPARED: 32x32 grey thumbnails, manifest row order
TEST_CORRECTIONS_NAME = "test_corrections.json"  # inside PREPARED: the fixes applied to test images
DATA_REPORT = Path("metrics/data.json")
REVIEW_DIR = Path("metrics/review")
REVIEW_JSON = Path("metrics/review.json")
MODEL_FILE = Path("models/model.pt")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_DIR = Path("metrics/train")
CANDIDATES_NAME = "candidates.json"  # inside TRAIN_DIR: the backbone choice's table (train only)
TIMING = Path("metrics/timing.json")
EVAL_JSON = Path("metrics/eval.json")
EVAL_DIR = Path("metrics/eval")
REPORT_TXT = Path("metrics/classification_report.txt")


def cache_root() -> Path:
    """The feature cache and the engine choices: $FOLDERFIT_CACHE, else ~/.cache/folderfit."""
    base = os.environ.get("FOLDERFIT_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "folderfit"
