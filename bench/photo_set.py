"""A large ImageFolder of real-size photos re-cut from a small set of real photos.

    python -m bench.photo_set --photos ../shared/datasets/trashnet-mini --images 10000 \\
        --classes 20 --out /tmp/photos-10k

Each new photo is a random crop (30-80% of the side) of a random source photo, colour- and
contrast-shifted, scaled to 640-1600 px on its long side and saved as JPEG (quality 80-95),
seeded. With more classes than the source has, class k takes source class k mod C in one
of four looks (as taken, upside down, turned a quarter, grey), so the extra classes are
separable without being copies. The set is for timing and memory, not for accuracy claims:
its photos share sources, so it has more near-copies than a real collection.
"""

from __future__ import annotations

import argparse
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

LOOKS = ("taken", "upside_down", "quarter_turn", "grey")


def _sources(root: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
            for d in sorted(root.iterdir()) if d.is_dir()}


def _look(img: Image.Image, look: str) -> Image.Image:
    if look == "upside_down":
        return img.transpose(Image.Transpose.ROTATE_180)
    if look == "quarter_turn":
        return img.transpose(Image.Transpose.ROTATE_90)
    if look == "grey":
        return ImageOps.grayscale(img).convert("RGB")
    return img


def _make(job: tuple[int, str, str, str, Path, int]) -> None:
    index, source, look, label, out, seed = job
    rng = random.Random(seed * 1_000_003 + index)
    with Image.open(source) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    scale = rng.uniform(0.3, 0.8)
    cw, ch = max(16, int(w * scale)), max(16, int(h * scale))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = _look(img.crop((x, y, x + cw, y + ch)), look)
    long_side = rng.randint(640, 1600)
    cw, ch = crop.size
    size = (long_side, max(1, long_side * ch // cw)) if cw >= ch else (max(1, long_side * cw // ch), long_side)
    crop = crop.resize(size, Image.Resampling.BICUBIC)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        crop = enhance(crop).enhance(rng.uniform(0.75, 1.25))
    target = out / label / f"img{index:05d}.jpg"
    crop.save(target, quality=rng.randint(80, 95))


def generate(photos: Path, out: Path, n: int, n_classes: int, seed: int = 0) -> Path:
    """Write the set (reused when OUT already holds n photos); returns OUT."""
    if out.is_dir() and sum(1 for _ in out.rglob("*.jpg")) == n:
        print(f"reusing {n} photos in {out}")
        return out
    sources = _sources(photos)
    names = sorted(sources)
    if n_classes > 4 * len(names):
        raise SystemExit(f"error: --classes {n_classes}: at most {4 * len(names)} from {len(names)} source classes")
    labels = []
    for k in range(n_classes):
        base, look = names[k % len(names)], LOOKS[k // len(names)]
        labels.append((base, look, base if look == "taken" else f"{base}_{look}"))
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        base, look, label = labels[i % n_classes]
        jobs.append((i, rng.choice(sources[base]), look, label, out, seed))
    for _, _, label in labels:
        (out / label).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_make, jobs, chunksize=64))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="ImageFolder of real photos")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generate(args.photos, args.out, args.images, args.classes, args.seed)
    print(f"{args.images} photos in {args.classes} classes: {args.out}")


if __name__ == "__main__":
    main()
