"""Image folders: scan and validate an ImageFolder, split.

The manifest that prepare writes of the result is folderfit.artifacts.manifest.

Decisions (the user-facing side: docs/data.md):
* Hidden files (`.DS_Store`, `._x.jpg`, anything starting with '.') and non-image extensions
  are ignored; unreadable images are skipped and listed with the reason in the data report.
* The scan reads what DVC hashes as prepare's dependency: files and links to files. Links to
  folders (DVC does not look inside them, so a change there would never rerun prepare),
  broken links and pipes are listed, not read. Any depth works (an explicit stack).
* Layout: top-level folders named like splits mean the user's split (detect_layout).
* Names: whatever bytes a name holds, reports carry its printable UTF-8 form (printable); the
  manifest keeps the real name too (folderfit.artifacts.manifest.file_entry).
* Every image is read as RGB with its EXIF orientation applied; transparency is composited
  on white; 16-bit images are scaled to 8 bit by their bit depth (decode.to_rgb).
* No copy is stored: every stage decodes the original file through folderfit.images.decode
  (the one path, predict's too) to at most `STORE_MARGIN` x image_size on its shorter side.
* The split is stratified per class and seeded. Identical images (same decoded pixels, so also
  a PNG and a BMP of one picture) are one group and always land in the same split, even when
  they sit under two classes (a label conflict): no leakage through duplicates.
  Every class gets at least one image in every split, or a PipelineError names class and split.
* Few-shot classes (fewer distinct images than a place in every split needs: 3 with val and
  test): the set then has no test split at all (evaluate estimates by cross-validation over
  train + val, which covers every class; a test split that some classes cannot be in would
  score those not at all); a class of 2 gets one train and one val image, a class of 1 goes
  to train only (few_shot_classes; docs/data.md).

Feeding the prepared images to a network is folderfit.images.datasets.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from folderfit.errors import PipelineError
from folderfit.images import decode
from folderfit.support.fileio import sha256_bytes

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


SPLITS = ("train", "val", "test")


# top-level folder names that mean "a split the user made" (compared in lower case)
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}




LINKED_FOLDER = ("link to a folder, not read: DVC does not track what a linked folder holds, so "
                 "a change there would not rerun prepare; copy the folder in instead")


NOT_REGULAR = "not a regular file (a pipe, socket or device)"


STORE_MARGIN = decode.STORE_MARGIN


@dataclass(frozen=True)
class Item:
    """One source image: its path relative to the source root, class and content hash."""

    rel: str
    label: str
    sha256: str


# ------------------------------------------------------------------ names
def printable(name: str) -> str:
    r"""A file name (or path) as valid, printable UTF-8 text for reports, CSV and messages:
    bytes that are not UTF-8 (os.listdir gives them as surrogates) become `\xNN`, control
    characters (a newline in a name) `\xNN` too. Ordinary names come out unchanged."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return text.translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)]}


# ------------------------------------------------------------------ scanning
@dataclass(frozen=True)
class Found:
    """An image file found by a scan: the path to open, and its printable path relative to
    the scanned root ('/'-separated)."""

    path: Path
    rel: str


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _entry_kind(entry: os.DirEntry, follow_folder_links: bool) -> tuple[str, str | None]:
    """('dir' | 'file', None) for what a scan enters or takes, ('skip', reason) otherwise."""
    if entry.name.startswith("."):
        return "skip", "hidden folder" if _is_dir(entry) else "hidden file"
    try:
        if entry.is_symlink():
            try:
                target = os.stat(entry.path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return "skip", "symbolic link loop (the link leads back to itself)"
                return "skip", "broken symbolic link (its target does not exist)"
            if stat.S_ISDIR(target.st_mode):
                return ("dir", None) if follow_folder_links else ("skip", LINKED_FOLDER)
            return ("file", None) if stat.S_ISREG(target.st_mode) else ("skip", NOT_REGULAR)
        if entry.is_dir(follow_symlinks=False):
            return "dir", None
        if entry.is_file(follow_symlinks=False):
            return "file", None
        return "skip", NOT_REGULAR
    except OSError as exc:
        return "skip", f"cannot read ({exc.strerror})"


def _sorted_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def walk_images(root: Path, prefix: str = "", follow_folder_links: bool = False):
    """([Found] image files below `root`, [(rel, reason)] left out), both sorted by path.
    Hidden entries and other extensions are left out; links to files are followed, links to
    folders only with `follow_folder_links` (each folder is searched once, so link loops end).
    Iterative, so any depth the file system allows works."""
    found, skipped, visited = [], [], set()
    stack = [(Path(root), prefix)]
    while stack:
        folder, rel = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in visited:
                skipped.append((rel, "link loop (this folder is already searched)"))
                continue
            visited.add((info.st_dev, info.st_ino))
            entries = _sorted_entries(folder)
        except OSError as exc:
            skipped.append((rel, f"cannot read folder ({exc.strerror})"))
            continue
        for entry in entries:
            child = f"{rel}/{printable(entry.name)}" if rel else printable(entry.name)
            kind, reason = _entry_kind(entry, follow_folder_links)
            if kind == "dir":
                stack.append((Path(entry.path), child))
            elif kind == "skip":
                skipped.append((child, reason))
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                skipped.append((child, "not an image extension"))
            else:
                found.append(Found(Path(entry.path), child))
    found.sort(key=lambda f: f.rel.split("/"))
    skipped.sort(key=lambda s: s[0].split("/"))
    return found, skipped


def read_image_folder(root: Path, prefix: str = ""):
    """An ImageFolder: ({class: [Found]} for every class folder, empty ones included,
    [(rel, reason)] left out). Class names are the folders' printable names; rel paths start
    with `prefix` (a given split's folder name)."""
    classes: dict[str, list[Found]] = {}
    skipped = []
    for entry in _sorted_entries(root):
        rel = f"{prefix}{printable(entry.name)}"
        kind, reason = _entry_kind(entry, follow_folder_links=False)
        if kind == "skip":
            skipped.append((rel, reason))
        elif kind == "file":
            skipped.append((rel, "not inside a class folder"))
        else:
            label = printable(entry.name)
            if label in classes:
                raise PipelineError(
                    f"data.source {printable(str(root))}: two class folders are both named "
                    f"'{label}' once written as UTF-8 text; rename one of them")
            images, left_out = walk_images(Path(entry.path), rel)
            classes[label] = images
            skipped.extend(left_out)
    return classes, skipped


@dataclass(frozen=True)
class Layout:
    """How data.source is organised: `splits` maps train/val/test to the user's split folders,
    or is None for one folder per class; `skipped` is what the top level holds besides."""

    splits: dict[str, Path] | None
    skipped: list


def detect_layout(source: Path) -> Layout:
    """Folders named like splits (train, val, valid, validation, test; any case) at the top of
    data.source mean a given split; no such folder means one folder per class. Both at once is
    refused: a class called 'test' next to 'cats' is far more likely a mistake than a class."""
    where = printable(str(source))
    folders, skipped = [], []
    for entry in _sorted_entries(source):
        kind, reason = _entry_kind(entry, follow_folder_links=False)
        if kind == "dir":
            folders.append(entry.name)
        else:
            skipped.append((printable(entry.name), reason or "not inside a split folder"))
    named = {name: SPLIT_FOLDERS[name.lower()] for name in folders if name.lower() in SPLIT_FOLDERS}
    if not named:
        return Layout(None, [])
    others = [printable(name) for name in folders if name not in named]
    if others:
        listed = ", ".join(others[:5]) + (f" (+{len(others) - 5} more)" if len(others) > 5 else "")
        raise PipelineError(
            f"data.source {where}: split folders ({', '.join(sorted(named))}) next to other "
            f"folders ({listed}); use either one folder per class, or only train/ [val/] [test/] "
            f"folders that each hold the class folders (rename a class folder named like a split)")
    by_split = defaultdict(list)
    for name, split in sorted(named.items()):
        by_split[split].append(name)
    for split, names in by_split.items():
        if len(names) > 1:
            raise PipelineError(f"data.source {where}: {' and '.join(names)} are all {split} "
                                f"folders; keep one")
    if "train" not in by_split:
        raise PipelineError(f"data.source {where}: split folders ({', '.join(sorted(named))}) but "
                            f"no train/ folder; add train/ holding one folder per class")
    return Layout({split: source / names[0] for split, names in by_split.items()}, skipped)


def names_dvc_cannot_track(source: Path, limit: int = 3) -> tuple[list[str], list[str]]:
    """([printable paths] of names that are not UTF-8, [printable paths] of broken links)
    below `source`, at most `limit` of each. DVC hashes data.source as a dependency and stops
    on both (a UnicodeEncodeError; an "unexpected error" for the link) before prepare runs.
    Like DVC, links to folders are not entered."""
    not_utf8, broken = [], []
    stack = [Path(source)]
    while stack and (len(not_utf8) < limit or len(broken) < limit):
        folder = stack.pop()
        try:
            entries = _sorted_entries(folder)
        except OSError:
            continue
        for entry in entries:
            rel = printable(os.path.relpath(entry.path, source))
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                not_utf8.append(rel)
            if entry.is_symlink():
                if not os.path.exists(entry.path):
                    broken.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return not_utf8[:limit], broken[:limit]


def check_source(source: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise PipelineError(f"data.source {source}: does not exist; point data.source in "
                            f"params.yaml at an ImageFolder directory (one folder per class)")
    if not path.is_dir():
        raise PipelineError(f"data.source {source}: is not a directory; point it at an "
                            f"ImageFolder directory (one folder per class)")
    return path


# ------------------------------------------------------------------ decoding
# ------------------------------------------------------------------ splitting
def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes for one class: at least one image in every non-empty split."""
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction))
    n_train = n - n_val - n_test
    return n_train, n_val, n_test


def places_needed(val_fraction: float, test_fraction: float) -> int:
    """Distinct images a class needs for one in train and one in every other split made
    (split_counts gives every class a val image, whatever val_fraction)."""
    return 2 + (1 if test_fraction > 0 else 0)


def few_shot_classes(items: list[Item], val_fraction: float, test_fraction: float) -> dict[str, int]:
    """{class: distinct images} of the classes too small for a place in every split."""
    distinct = defaultdict(set)
    for item in items:
        distinct[item.label].add(item.sha256)
    needed = places_needed(val_fraction, test_fraction)
    return {label: len(h) for label, h in sorted(distinct.items()) if len(h) < needed}


def stratified_split(items: list[Item], val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, list[Item]]:
    """Seeded split per class; items sharing a sha256 (identical images) move together.

    An image filed under several classes (a label conflict) is placed once, by the first of its
    classes (in name order); the later classes count it towards their own share of that split
    and fill the rest from their other images. Every class gets at least one image in train,
    in val and (with test_fraction > 0) in test, or a PipelineError names class and split.
    With few-shot classes (few_shot_classes) there is no test split, and a class too small
    for val too goes to train whole (module docstring)."""
    if test_fraction > 0 and few_shot_classes(items, val_fraction, test_fraction):
        test_fraction = 0.0
    needed = places_needed(val_fraction, test_fraction)
    by_class: dict[str, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_class[item.label][item.sha256].append(item)
    home: dict[str, str] = {}  # sha256 -> split
    for label in sorted(by_class):
        hashes = sorted(by_class[label])
        want = dict(zip(SPLITS, split_counts(len(hashes), val_fraction, test_fraction)))
        if len(hashes) < needed:  # too few for val as well: train only
            want = {"train": len(hashes), "val": 0, "test": 0}
        if want["train"] < 1:  # enough images, but the fractions leave none for training
            raise PipelineError(
                f"params.yaml: data.val_fraction {val_fraction:g} and data.test_fraction "
                f"{test_fraction:g} leave no training image for class '{label}' "
                f"({len(hashes)} distinct images: {want['val']} to val, {want['test']} to "
                f"test); lower the fractions (e.g. 0.15 each)")
        placed = Counter(home[h] for h in hashes if h in home)
        free = [h for h in hashes if h not in home]
        need_test = max(0, want["test"] - placed["test"])
        need_val = max(0, want["val"] - placed["val"])
        rng = np.random.default_rng([seed, int(sha256_bytes(label.encode())[:8], 16)])
        for rank, index in enumerate(rng.permutation(len(free))):
            home[free[index]] = ("test" if rank < need_test else
                                 "val" if rank < need_test + need_val else "train")
        got = Counter(home[h] for h in hashes)
        for split in SPLITS:
            if want[split] and not got[split]:
                raise _empty_split_error(label, split, hashes, by_class, placed)
    out = {s: [] for s in SPLITS}
    for item in items:
        out[home[item.sha256]].append(item)
    for split in out:
        out[split].sort(key=lambda it: (it.label, it.rel))
    return out


def _empty_split_error(label: str, split: str, hashes: list, by_class: dict, placed) -> PipelineError:
    """A class left without images in a split because its images identical to images of other
    classes (label conflicts) were already placed with those copies."""
    twins = []
    for h in hashes:
        others = [it.rel for other in sorted(by_class) if other != label for it in by_class[other].get(h, [])]
        if others:
            twins.append(f"{by_class[label][h][0].rel} = {others[0]}")
    return PipelineError(
        f"data.source: class '{label}' gets no image in {split}: {sum(placed.values())} of its "
        f"{len(hashes)} distinct images are identical to images filed under other classes "
        f"(label conflicts) and stay with those copies ({'; '.join(twins[:3])}); delete the "
        f"wrongly labelled copies or add images to '{label}'")

