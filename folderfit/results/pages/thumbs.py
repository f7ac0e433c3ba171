"""Small inline thumbnails: base64 JPEG data URIs, made in parallel.

Thumbnails dominate page generation time, so: JPEG files are decoded at a reduced scale
(PIL's draft mode: the decoder skips the detail a 112 px tile cannot show), work is spread
over threads (PIL releases the GIL while decoding, resizing and encoding), each distinct file
is done once, and a file that cannot be read becomes None (the page shows an empty tile)
instead of failing the stage that writes the page.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

THUMB_PX = 112  # longest side; the pages show tiles of about this size
JPEG_QUALITY = 70  # ~3 kB a tile: 10,000 tiles stay ~30 MB


def data_uri(path: Path, size: int = THUMB_PX) -> str | None:
    """The image at `path` as a `data:image/jpeg;base64,...` thumbnail (longest side `size`),
    or None when it cannot be read."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))  # decode at 1/2..1/8 scale, never below `size`
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = _rgb(img)
            img.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _rgb(img: Image.Image) -> Image.Image:
    """RGB, transparency composited on white (as prepare stores images)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def data_uris(paths: list[Path], size: int = THUMB_PX, workers: int | None = None) -> list[str | None]:
    """data_uri of every path, in order (each distinct path computed once)."""
    unique = list(dict.fromkeys(paths))
    workers = workers or min(8, os.cpu_count() or 1)
    if workers == 1 or len(unique) < 16:
        done = [data_uri(p, size) for p in unique]
    else:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(lambda p: data_uri(p, size), unique, chunksize=32))
    by_path = dict(zip(unique, done))
    return [by_path[p] for p in paths]
