"""Wall time and peak memory of `prepare` and `review` on a large photo set (10,000 images).

    python -m bench.review_large --photos ../shared/datasets/trashnet-mini --images 10000 \\
        --out /tmp/review-large [--model tf_efficientnet_lite0 --image-size 224]

Makes `--images` new photos from the class folders of `--photos` (each a random crop of a
random photo of that class, resized, colour-shifted and re-encoded, seeded) in OUT/images,
then runs `python -m stages.prepare` and `python -m stages.review` in OUT/work as separate
processes (as `dvc repro` does), with the feature cache in OUT/cache, and prints each one's
wall time and peak resident memory (/usr/bin/time). `--runs 2` runs review once more: the
second run has every feature cached (the review's own cost). Existing images are reused.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parents[1]
LONG_SIDE = 512  # source photos are shrunk to this once, before cropping


def _photos(root: Path) -> dict[str, list[Image.Image]]:
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = []
        for file in sorted(folder.iterdir()):
            with Image.open(file) as img:
                img = img.convert("RGB")
                img.thumbnail((LONG_SIDE, LONG_SIDE))
                images.append(img)
        out[folder.name] = images
    return out


def generate(photos: Path, root: Path, n: int, seed: int = 0) -> None:
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        print(f"reusing {n} images in {root}")
        return
    rng = random.Random(seed)
    by_class = _photos(photos)
    classes = sorted(by_class)
    for i in range(n):
        name = classes[i % len(classes)]
        img = rng.choice(by_class[name])
        w, h = img.size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        side = rng.randint(200, 400)
        out = img.crop((x, y, x + cw, y + ch)).resize((side, side * ch // cw), Image.Resampling.BILINEAR)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            out = enhance(out).enhance(rng.uniform(0.7, 1.3))
        (root / name).mkdir(parents=True, exist_ok=True)
        out.save(root / name / f"img{i:05d}.jpg", quality=rng.randint(80, 95))


def timed(module: str, cwd: Path, cache: Path) -> tuple[float, float]:
    """(wall s, peak RSS GiB) of one stage process."""
    stats = cwd / f".{module}.time"
    env = {"FOLDERFIT_CACHE": str(cache), "PYTHONPATH": str(REPO), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    subprocess.run(["/usr/bin/time", "-o", str(stats), "-f", "%e %M", sys.executable, "-m", module],
                   cwd=cwd, env=env, check=True)
    wall, peak_kib = stats.read_text().split()[-2:]
    return float(wall), int(peak_kib) / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="ImageFolder of real photos")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="model_name (default: params.yaml's)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--runs", type=int, default=2, help="review runs (the 2nd: features cached)")
    parser.add_argument("--skip-prepare", action="store_true")
    args = parser.parse_args(argv)
    images, work = args.out / "images", args.out / "work"
    generate(args.photos, images, args.images)
    work.mkdir(parents=True, exist_ok=True)
    for link in ("stages", "folderfit"):
        if not (work / link).exists():
            (work / link).symlink_to(REPO / link)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(images.resolve())
    params["augment"]["hflip"] = True  # photos: a mirrored photo keeps its class
    if args.model:
        params["model_name"] = args.model
    if args.image_size:
        params["data"]["image_size"] = args.image_size
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    results = {"images": args.images, "model_name": params["model_name"],
               "image_size": params["data"]["image_size"]}
    modules = ([] if args.skip_prepare else ["stages.prepare"]) + ["stages.review"] * args.runs
    for n, module in enumerate(modules):
        wall, peak = timed(module, work, args.out / "cache")
        label = module if module == "stages.prepare" else f"{module} (run {modules[:n].count(module) + 1})"
        results[label] = {"wall_s": round(wall, 1), "peak_rss_gib": round(peak, 2)}
        print(f"{label}: {wall:.0f} s wall, peak RSS {peak:.2f} GiB", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
