"""Images: scan and validate an ImageFolder, decode, split, store small, and the manifest.

Decisions (see README for the user-facing side):
* Hidden files (`.DS_Store`, `._x.jpg`, anything starting with '.') and non-image extensions
  are ignored; unreadable images are skipped and listed with the reason in the data report.
* Every image is stored as RGB with its EXIF orientation applied; transparency is composited
  on white; 16-bit images are scaled to 8 bit.
* Stored images are at most `STORE_MARGIN` x image_size on their shorter side (never
  upscaled), so training decodes small files. JPEG sources stay JPEG (quality 95), others PNG.
* The split is stratified per class and seeded. Identical images (same decoded pixels, so also
  a PNG and a BMP of one picture) are one group and always land in the same split, even when
  they sit under two classes (a label conflict): no leakage through duplicates.

Feeding the prepared images to a network is folderfit.datasets.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from folderfit.errors import PipelineError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "val", "test")
STORE_MARGIN = 1.25
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class Item:
    """One source image: its path relative to the source root, class and content hash."""

    rel: str
    label: str
    sha256: str


class BadImage(Exception):
    """The file cannot be used as an image; the message says why (it is reported, not raised)."""


# ------------------------------------------------------------------ scanning
def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def list_class_folder(root: Path) -> tuple[list[str], list[tuple[Path, str]], list[tuple[str, str]]]:
    """(class names, [(file, class)], [(file, reason) ignored]) for an ImageFolder directory."""
    classes, files, ignored = [], [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)):
        classes.append(class_dir.name)
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file():
                continue
            if any(_is_hidden(part) for part in path.relative_to(root).parents if part.name) or _is_hidden(path):
                ignored.append((str(path.relative_to(root)), "hidden file"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append((str(path.relative_to(root)), "not an image extension"))
            else:
                files.append((path, class_dir.name))
    return classes, files, ignored


def given_split_dirs(source: Path) -> dict[str, Path] | None:
    """{split: dir} when the source is already split into train/ and val/ (test/ optional)."""
    if (source / "train").is_dir() and (source / "val").is_dir():
        return {s: source / s for s in SPLITS if (source / s).is_dir()}
    return None


def check_source(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise PipelineError(f"data.source {source}: does not exist; point data.source in "
                            f"params.yaml at an ImageFolder directory (one folder per class)")
    if not path.is_dir():
        raise PipelineError(f"data.source {source}: is not a directory; point it at an "
                            f"ImageFolder directory (one folder per class)")
    return path


# ------------------------------------------------------------------ decoding
def load_rgb(path: Path) -> Image.Image:
    """Open an image as 8-bit RGB with EXIF orientation applied, or raise BadImage(reason)."""
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return upright_rgb(img)
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(f"too many pixels, refused as a possible decompression bomb ({exc})") from None
    except Image.DecompressionBombWarning:
        raise BadImage("too many pixels, refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise BadImage("not an image file (unrecognised content)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"cannot decode ({str(exc).splitlines()[0][:100]})") from None


def upright_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows it: EXIF orientation applied, see to_rgb for the modes."""
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def bounded(img: Image.Image, image_size: int) -> Image.Image:
    """Shrink so the shorter side is at most STORE_MARGIN x image_size (never enlarge)."""
    limit = math.ceil(image_size * STORE_MARGIN)
    short = min(img.size)
    if short <= limit:
        return img
    scale = limit / short
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode(img: Image.Image, source_suffix: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if source_suffix.lower() in (".jpg", ".jpeg"):
        img.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), ".jpg"
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue(), ".png"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ splitting
def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes for one class: at least one image in every non-empty split."""
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction))
    n_train = n - n_val - n_test
    return n_train, n_val, n_test


def stratified_split(items: list[Item], val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, list[Item]]:
    """Seeded split per class; items sharing a sha256 (duplicates) move together."""
    by_class: dict[str, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_class[item.label][item.sha256].append(item)
    out = {s: [] for s in SPLITS}
    for label in sorted(by_class):
        groups = [sorted(g, key=lambda it: it.rel) for _, g in sorted(by_class[label].items())]
        n_train, n_val, n_test = split_counts(len(groups), val_fraction, test_fraction)
        if n_train < 1:
            needed = 1 + (1 if val_fraction > 0 else 0) + (1 if test_fraction > 0 else 0)
            raise PipelineError(
                f"data.source: class '{label}' has {len(groups)} distinct image(s), at least "
                f"{needed} are needed to give it a place in every split; add images or remove the class")
        rng = np.random.default_rng([seed, int(sha256_bytes(label.encode())[:8], 16)])
        order = rng.permutation(len(groups))
        for rank, index in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out[split].extend(groups[index])
    out = _colocate_across_classes(out)
    for split in out:
        out[split].sort(key=lambda it: (it.label, it.rel))
    return out


def _colocate_across_classes(out: dict[str, list[Item]]) -> dict[str, list[Item]]:
    """Move copies of one image filed under several classes into one split: the earliest of
    train, val, test that holds a copy (so no class loses a training image for it)."""
    home: dict[str, str] = {}
    for split in SPLITS:
        for item in out[split]:
            home.setdefault(item.sha256, split)
    moved = {s: [] for s in SPLITS}
    for split in SPLITS:
        for item in out[split]:
            moved[home[item.sha256]].append(item)
    return moved


# ------------------------------------------------------------------ manifest
def read_manifest(prepared: str | Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, {split: [(file, class index)]}) from prepare's manifest."""
    prepared = Path(prepared)
    path = prepared / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run `dvc repro prepare` first")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["class"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list] = {s: [] for s in SPLITS}
    for r in rows:
        splits[r["split"]].append((prepared / r["file"], index[r["class"]]))
    return classes, {s: v for s, v in splits.items() if v}


def class_counts(samples: list[tuple[Path, int]], n_classes: int) -> list[int]:
    counts = Counter(label for _, label in samples)
    return [counts.get(i, 0) for i in range(n_classes)]
