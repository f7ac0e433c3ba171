"""The one path from an image file to the network's input, shared by prepare, evaluate and
training (which read the original files prepare listed: read_prepared), predict,
folderfit.load and export's preprocessing contract.

    file --decode--> upright 8-bit RGB --shrink--> stored copy --eval geometry--> network input
                     (decode_upright)             (shrink)       (datasets.eval_geometry)

* decode_upright: a JPEG much larger than needed is decoded at 1/2, 1/4 or 1/8 scale by
  libjpeg (`Image.draft`; the largest factor that keeps the shorter side at least DRAFT_GAP x
  the stored side); EXIF orientation applied; every mode made 8-bit RGB (to_rgb).
* shrink: the shorter side is brought down to STORE_MARGIN x image_size (never enlarged),
  PIL bicubic with reducing_gap 3.
* prepare writes no copy: the later stages decode the original file through stored_image
  again (read_prepared, which checks the pixels against the manifest's hash), so they see the
  very pixels predict computes from it: evaluate's per-image probabilities equal predict's on
  the original (tested in tests/test_preprocess_path.py).

Size limits (checked from the header, before any pixel is decoded):
* aspect ratio (longer / shorter side) at most MAX_ASPECT: the eval resize brings the shorter
  side to resize_size, so the resized image has at most MAX_ASPECT x resize_size^2 pixels (a
  6000x1 PNG of 100 bytes would otherwise become a 1.5 GB tensor);
* at most PIL's Image.MAX_IMAGE_PIXELS (~89 megapixels) in the file (decompression bombs).
An image over a limit is refused with the reason (prepare: listed as skipped in
metrics/data.json; predict: reported on stderr per file).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from folderfit.errors import PipelineError
from folderfit.support.fileio import sha256_bytes, sha256_file

STORE_MARGIN = 1.25  # stored copy: shorter side at most this x image_size
# JPEG draft only while the shorter side stays >= this x the stored side. libjpeg's reduced
# IDCT is itself a proper downscale, so no margin is needed (1.0 against 2.0 halved prepare's
# time per photo: docs/speed.md)
DRAFT_GAP = 1.0
MAX_ASPECT = 20.0  # longer side / shorter side
# 16-bit and 32-bit grey images: the bit depths a sample range is read as (see to_rgb)
DEPTHS = (8, 10, 12, 14, 16)
NOT_AN_IMAGE = "not an image file (unrecognised content)"


class BadImage(Exception):
    """The file cannot be used as an image; the message says why (it is reported, not raised)."""


def store_side(image_size: int) -> int:
    """Shorter side of the stored copy (images already smaller keep their size)."""
    return math.ceil(image_size * STORE_MARGIN)


def check_shape(width: int, height: int) -> None:
    """Refuse an image whose resize would blow up (see the module docstring)."""
    if min(width, height) < 1:
        raise BadImage(f"empty image ({width}x{height} px)")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise BadImage(f"aspect ratio {ratio:.0f}:1 ({width}x{height} px) is over the limit of "
                       f"{MAX_ASPECT:.0f}:1 (resizing its shorter side would make a huge image); "
                       f"crop it to a less extreme shape")


def draft_factor(width: int, height: int, target: int | None) -> int:
    """1, 2, 4 or 8: the JPEG decode scale (the largest keeping the shorter side >= DRAFT_GAP
    x target)."""
    if not target:
        return 1
    short = min(width, height)
    return next((r for r in (8, 4, 2) if short / r >= DRAFT_GAP * target), 1)


def apply_draft(img: Image.Image, target: int | None) -> None:
    """Ask libjpeg to decode `img` (opened, not yet loaded) at a reduced scale, per draft_factor.
    No effect on other formats or on an image already loaded."""
    if img.format != "JPEG" or not getattr(img, "tile", None):
        return
    r = draft_factor(img.width, img.height, target)
    if r > 1:  # PIL picks the scale as min(w // req_w, h // req_h): floor keeps it exactly r
        img.draft(img.mode, (img.width // r, img.height // r))


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, from the header: EXIF orientations 5-8 swap the sides."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: exif_transpose ignores it too
        orientation = 1
    return (img.height, img.width) if orientation in (5, 6, 7, 8) else img.size


def decode_upright(path: str | Path, target: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """(8-bit RGB image as a viewer shows it, drafted for `target` (the stored side), and the
    file's full upright size), or raise BadImage(reason)."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise BadImage(f"cannot read ({exc.strerror or exc})") from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with decode_errors(), Image.open(handle) as img:
            return from_image(img, target)


@contextlib.contextmanager
def decode_errors():
    """PIL's failures to open or decode an image, inside this block, become BadImage(reason):
    one wording for files (decode_upright) and uploads (folderfit.commands.serve)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too many pixels, refused as a possible decompression bomb "
                       f"({str(exc).split(' could be')[0]}; the limit is "
                       f"{Image.MAX_IMAGE_PIXELS} pixels)") from None
    except UnidentifiedImageError:
        raise BadImage(NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BadImage(f"cannot decode ({first[:100]})") from None


def from_image(img: Image.Image, target: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """decode_upright for an opened PIL image (an unloaded JPEG is drafted like a file)."""
    check_shape(*img.size)
    size = upright_size(img)
    if img.width * img.height > Image.MAX_IMAGE_PIXELS:
        raise BadImage(f"too many pixels ({img.width}x{img.height}), over the limit of "
                       f"{Image.MAX_IMAGE_PIXELS} pixels (a guard against decompression bombs)")
    apply_draft(img, target)
    img.load()
    return to_rgb(ImageOps.exif_transpose(img)), size


def _depth_scale(arr: np.ndarray) -> float:
    """The full-scale value of a grey sample array: 2^b - 1 for the smallest b in DEPTHS that
    holds its maximum. A 12-bit sensor image in a 16-bit container is read as 12-bit (not
    almost black); a true 16-bit image darker than 1/16 of full scale is brightened (its
    samples cannot be told from 12-bit ones)."""
    top = float(arr.max()) if arr.size else 0.0
    return float(next((2 ** b - 1 for b in DEPTHS if top <= 2 ** b - 1), 2 ** DEPTHS[-1] - 1))


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit grey (I;16*) and 32-bit integer grey (I) with samples in 0..65535:
    scaled by their bit depth (_depth_scale); other 32-bit integer or float (F) images:
    stretched from their minimum to their maximum. Palette and alpha: transparency composited
    on white. Other modes: PIL's conversion."""
    if img.mode.startswith("I"):
        arr = np.asarray(img).astype(np.float64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):  # not a 16-bit sample range
            img = _stretched(arr)
        else:
            scale = _depth_scale(arr)
            img = Image.fromarray(np.clip(np.floor(arr / scale * 255.0 + 0.5), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = _stretched(np.asarray(img, dtype=np.float64))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def _stretched(arr: np.ndarray) -> Image.Image:
    arr = np.nan_to_num(arr)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    return Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8), "L")


def shrink(img: Image.Image, image_size: int) -> Image.Image:
    """The stored copy: shorter side at most store_side(image_size) (never enlarged)."""
    limit = store_side(image_size)
    short = min(img.size)
    if short <= limit:
        return img
    scale = limit / short
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def stored_image(path: str | Path, image_size: int) -> tuple[Image.Image, Image.Image, tuple[int, int]]:
    """(decoded upright RGB, its stored copy, full upright size) of an image file."""
    img, size = decode_upright(path, store_side(image_size))
    return img, shrink(img, image_size), size


def pixel_hash(img: Image.Image) -> str:
    """sha256 of an image's size and RGB bytes (decode_upright's output): the manifest's
    content hash, the same for a byte copy and for the same picture in another lossless format."""
    return sha256_bytes(f"{img.size}".encode() + img.tobytes())


class SourceChanged(PipelineError):
    """A file prepare listed is gone or no longer holds what prepare read. A DataLoader worker's
    exception reaches the main process rebuilt from its traceback text (torch does that), so
    the message is cut back to its own last line: still one line for the user."""

    def __init__(self, message: str):
        if "\n" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class SourceImage(type(Path())):
    """An original image file as prepare's manifest names it (folderfit.artifacts.manifest):
    its path, plus the pixel hash prepare recorded and the image_size it prepared for, so the
    reader can check that the file still holds what prepare saw (read_prepared)."""

    sha256 = ""
    image_size = 0

    def stored_copy(self) -> Image.Image:
        return read_prepared(self)

    def __reduce__(self):  # to DataLoader workers with its facts (Path's own drops them)
        return source_image, (str(self), self.sha256, self.image_size)


def source_image(path: str | Path, sha256: str, image_size: int) -> SourceImage:
    out = SourceImage(path)
    out.sha256, out.image_size = sha256, int(image_size)
    return out


def content_hash(path: str | Path) -> str:
    """The content of an image: the manifest's pixel hash for a file prepare listed (a byte
    copy or a lossless re-save of a picture has the same), else the sha256 of the file's bytes."""
    if isinstance(path, SourceImage) and path.sha256:
        return path.sha256
    return sha256_file(path)


def read_prepared(path: SourceImage) -> Image.Image:
    """The stored copy (stored_image) of a file prepare listed, after checking that its
    decoded pixels still have the manifest's hash: evaluate and training see exactly the
    pixels predict computes from the file, and a file changed or removed since prepare is a
    one-line error, never a silent different read."""
    again = "rerun `dvc repro` so prepare reads data.source again"
    try:
        img, stored, _ = stored_image(path, path.image_size)
    except BadImage as exc:
        if not os.path.lexists(path):
            raise SourceChanged(f"{path}: not found, but prepare listed it in its manifest; put "
                                f"it back, or {again}") from None
        raise SourceChanged(f"{path}: can no longer be read ({exc}), but prepare read it; "
                            f"if it changed, {again}") from None
    if pixel_hash(img) != path.sha256:
        raise SourceChanged(f"{path}: changed since prepare (its pixels no longer match the "
                            f"manifest's sha256); {again}")
    return stored


def network_image(source, pre):
    """uint8 CHW tensor after the eval geometry, for an image file path or a PIL image: what
    predict, folderfit.load and export's parity check feed the network (evaluate reads the
    same stored copy through read_prepared and applies the same geometry)."""
    import torch

    if isinstance(source, Image.Image):
        img, _ = from_image(source, store_side(pre.image_size))
        img = shrink(img, pre.image_size)
    else:
        _, img, _ = stored_image(source, pre.image_size)
    tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
    return _eval_geometry(pre)(tensor)


@functools.lru_cache(maxsize=8)
def _eval_geometry(pre):
    from folderfit.images import datasets

    return datasets.eval_geometry(pre)
