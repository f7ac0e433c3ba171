"""The built-in demo set (stage `demo_data`), written as an ImageFolder of PNGs (no network).

Real data: scikit-learn's copy of the UCI handwritten digits (8x8 grey scans of digits 0-9
written by 43 people). The first `demo.per_class` images of each digit (in dataset order) are
written to data/demo/<digit>/<index>.png: light ink on a dark background with a 2-pixel margin,
smoothly (bicubic) upscaled to `demo.size` px. Smooth strokes and the margin matter: ImageNet
features of blocky nearest-neighbour digits classify ~10 points worse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from folderfit.paths import DEMO_DIR
from folderfit.support.fileio import staged_dir
from folderfit.support.report import say


def write_digits(out_dir: Path, per_class: int, size: int) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = 0
    with staged_dir(out_dir) as tmp:  # swapped in whole; a failure leaves the old one
        for digit in range(10):
            (tmp / str(digit)).mkdir(parents=True)
            indices = np.flatnonzero(digits.target == digit)[:per_class]
            for index in indices:
                ink = np.pad(digits.images[index] / 16.0, 2)  # 0 (background) .. 1 (ink)
                img = Image.fromarray(ink.astype(np.float32), "F").resize((size, size), Image.Resampling.BICUBIC)
                pixels = np.clip(np.round(255 * np.asarray(img)), 0, 255).astype(np.uint8)
                img = Image.fromarray(pixels, "L")
                img.save(tmp / str(digit) / f"{index:04d}.png")
                written += 1
    return written


NOT_USED = "NOT_USED.txt"


def demo_is_used(source: str) -> bool:
    """data.source is the demo folder, inside it, or holds it."""
    src, demo = Path(source).resolve(), DEMO_DIR.resolve()
    return src == demo or demo in src.parents or src in demo.parents


def run(params) -> None:
    if not demo_is_used(params.data.source):
        # your own photos: the digits (and scikit-learn's import) would be seconds of every
        # fresh run for nothing; the stage still leaves its output, a note
        with staged_dir(DEMO_DIR) as tmp:
            (tmp / NOT_USED).write_text(f"data.source is {params.data.source}, so the demo digits "
                                        f"were not made; set data.source: {DEMO_DIR} to make them\n")
        say(f"demo_data: data.source is not {DEMO_DIR}: the demo set is not made")
        return
    n = write_digits(DEMO_DIR, params.demo.per_class, params.demo.size)
    say(f"demo_data: wrote {n} digit images to {DEMO_DIR}/")
