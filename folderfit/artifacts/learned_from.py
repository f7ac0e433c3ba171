"""Which images may be scored: the record of what the delivered model learned from, and the
honest estimate when there is no test split.

Truth contract: a reported score never comes from an image the delivered model learned from.
`train` writes every image that shaped the model file (fitted on, or used to choose l2,
flips or the best epoch) to metrics/train/learned_from.csv; `evaluate` refuses to score any
of them. "Unseen" means by content: a scored image with the content hash (prepare's manifest)
of a learned one is a copy, left out of the score whatever its path or split (split_copies;
evaluate reports how many and the score with them). What evaluate reports, per layout:

* a test split (prepared, or the given test/ folder): the model file on the test images.
* no test split, feature_extract: K-fold cross-validation of the whole head procedure
  (folderfit.frozen.probe.cross_validate) over train + val, from metrics/train/cv_predictions.csv;
  the model file is fitted on everything. Split name `cv`.
* no test split, fine_tune / full_tune: cross-validating backpropagation would cost K
  trainings, so val is cut in two (stratified, seeded, copies in one half): the first half
  chooses the warm start's l2 and flips and the best epoch, the second half is never used
  and is scored.
  Split name `val_holdout`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from folderfit.errors import PipelineError
from folderfit.paths import TRAIN_DIR
from folderfit.support.fileio import write_text

LEARNED_FROM = "learned_from.csv"
CV_PREDICTIONS = "cv_predictions.csv"
HOLDOUT_FRACTION = 0.5  # of each class's val images, scored when fine-tuning without a test split


def holdout_split(val: list, seed: int, groups: list | None = None) -> tuple[list, list]:
    """(selection, holdout) halves of the val samples [(path, label)], per class, seeded; a
    class with a single val image keeps it for selection. `groups` (one key per sample, e.g.
    its content hash): samples sharing a key (copies) stay in the same half, so a copy of an
    image that chose the epoch is never held out. A group goes with the class of its first
    sample; each class holds out whole groups up to its share. Without copies the halves are
    the same as without `groups`."""
    rng = np.random.default_rng(seed)
    keys = list(range(len(val))) if groups is None else list(groups)
    members: dict = {}  # group key -> sample indices, in sample order
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    by_class: dict[int, list] = {}
    for key, indices in members.items():
        by_class.setdefault(val[indices[0]][1], []).append(key)
    held = set()
    for label in sorted(by_class):
        class_groups = by_class[label]
        room = int(sum(len(members[k]) for k in class_groups) * HOLDOUT_FRACTION)
        for j in rng.permutation(len(class_groups)):
            size = len(members[class_groups[j]])
            if size <= room:
                held.update(members[class_groups[j]])
                room -= size
    return ([s for i, s in enumerate(val) if i not in held],
            [s for i, s in enumerate(val) if i in held])


def split_copies(samples: list, learned: set[str], hashes: dict[str, str]) -> tuple[list, list]:
    """(fresh, copies) of `samples` [(path, label)]: a copy has the content hash (`hashes`:
    file -> hash, data.content_hashes) of a file the model learned from, whatever its path or
    split, so it is not unseen. Files without a hash are fresh."""
    learned_hashes = {hashes[f] for f in learned if f in hashes}
    fresh, copies = [], []
    for sample in samples:
        twin = hashes.get(Path(sample[0]).as_posix()) in learned_hashes
        (copies if twin else fresh).append(sample)
    return fresh, copies


def write_learned_from(folder: Path, roles: dict[str, list]) -> None:
    """roles: name (train, val_selection, ...) -> samples [(path, label)] the model learned from."""
    rows = [["file", "role"]] + [[Path(path).as_posix(), role]
                                 for role, samples in roles.items() for path, _ in samples]
    write_text(folder / LEARNED_FROM, _csv_text(rows))


def read_learned_from(folder: Path = TRAIN_DIR, *, required: bool = True) -> set[str] | None:
    """The files the model learned from; None when the record is missing and not `required`
    (a model file made outside the train stage, scored on a test split)."""
    path = folder / LEARNED_FROM
    if not path.is_file():
        if not required:
            return None
        raise PipelineError(f"{path}: missing (written by the train stage); rerun `dvc repro train`")
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["file"] for row in csv.DictReader(fh)}


def write_cv(folder: Path, samples: list, cv) -> None:
    """Out-of-fold probabilities of folderfit.frozen.probe.cross_validate, one row per image."""
    n_classes = cv.probs.shape[1]
    rows = [["file", "label", "fold"] + [f"p{c}" for c in range(n_classes)]]
    for (path, _), label, fold, probs in zip(samples, cv.labels.tolist(), cv.fold.tolist(),
                                             cv.probs.tolist()):
        rows.append([Path(path).as_posix(), label, fold, *map(repr, probs)])
    write_text(folder / CV_PREDICTIONS, _csv_text(rows))


def read_cv(folder: Path = TRAIN_DIR) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray] | None:
    """(files, probs [N, classes], labels, folds) or None when train made no cross-validation."""
    path = folder / CV_PREDICTIONS
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    n_classes = sum(1 for key in rows[0] if key.startswith("p") and key[1:].isdigit())
    probs = np.array([[float(r[f"p{c}"]) for c in range(n_classes)] for r in rows])
    return ([r["file"] for r in rows], probs, np.array([int(r["label"]) for r in rows]),
            np.array([int(r["fold"]) for r in rows]))


def _csv_text(rows: list[list]) -> str:
    """CSV text (quoted where a cell needs it), one row a line."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()
