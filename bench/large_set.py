"""Peak memory and time of prepare and train on a large generated image set.

    python -m bench.large_set --images 10000 --image-size 224 --strategy feature_extract

Generates `--images` JPEG photos-like images (smooth random colour fields, 320x240) in 10
classes in a temp folder, then runs `python -m stages.prepare` and `python -m stages.train`
there as separate processes (as `dvc repro` does) and prints each one's wall time and peak
resident memory.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def generate(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = f"class{i % classes}"
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        coarse[..., i % 3] = 40 + 20 * (i % classes)  # a class-dependent tint
        img = Image.fromarray(coarse).resize((320, 240), Image.Resampling.BICUBIC)
        (root / label).mkdir(parents=True, exist_ok=True)
        img.save(root / label / f"{i:05d}.jpg", quality=90)


def run_stage(module: str, cwd: Path) -> tuple[float, float]:
    """(wall s, peak RSS GiB) of one stage process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", module], cwd=cwd, check=True)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children so far
    if peak <= before:
        print(f"note: {module} peaked below an earlier stage; the number shown is that stage's")
    return wall, peak / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--strategy", default="feature_extract")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--views", type=int, default=1, help="augment.feature_views")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="large-set-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        generate(work / "images", args.images)
        print(f"generated {args.images} images in {time.perf_counter() - started:.0f} s")
        (work / "stages").symlink_to(REPO / "stages")
        (work / "folderfit").symlink_to(REPO / "folderfit")
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params.update(strategy=args.strategy, num_epochs=args.epochs)
        params["data"].update(source=str(work / "images"), image_size=args.image_size)
        params["augment"]["feature_views"] = args.views
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for module in ("stages.prepare", "stages.train"):
            wall, peak = run_stage(module, work)
            print(f"{module}: {wall:.0f} s wall, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
