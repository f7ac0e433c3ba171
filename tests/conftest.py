"""Shared fixtures: tiny real images and a throwaway copy of the pipeline repository."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from folderfit.params import merge_overrides

REPO = Path(__file__).resolve().parents[1]
# What a user's clone holds that the pipeline needs (code, graph, params, ignore rules).
REPO_FILES = ["stages", "folderfit", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", ".dvc/plots",
              "data/.gitignore", "data/corrections.csv", "metrics/.gitignore", "models/.gitignore"]
# The feature cache of the whole test session lives in a temp folder, not in ~/.cache.
os.environ.setdefault("FOLDERFIT_CACHE", tempfile.mkdtemp(prefix="folderfit-test-cache-"))
# Stage commands say `python`: make that the interpreter running the tests.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
STAGE_MODULES = {"demo_data": "folderfit.pipeline.demo_data", "prepare": "folderfit.pipeline.prepare",
                 "train": "folderfit.pipeline.train", "evaluate": "folderfit.pipeline.evaluate",
                 "review": "folderfit.pipeline.review"}


def nested(dotted: dict) -> dict:
    """{"data.source": x} -> {"data": {"source": x}}."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def repo_params(overrides: dict | None = None) -> dict:
    """The repository's params.yaml (the one source of defaults) with nested overrides."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    return merge_overrides(base, overrides or {})


def params_with(**dotted):
    """Validated Params: the repository's params.yaml with dotted overrides."""
    from folderfit.params import parse_params

    return parse_params(repo_params(nested(dotted)))


def write_params(workdir: Path, **dotted) -> None:
    """params.yaml in `workdir`: the repository's with dotted overrides ("data.source": ...)."""
    # in-process stage tests keep one backbone (test_backbone_choice.py sets mode auto itself)
    (workdir / "params.yaml").write_text(yaml.safe_dump(repo_params(merge_overrides(
        {"backbone_choice": {"mode": "fast"}}, nested(dotted))), sort_keys=False))


def run_stage(name: str, workdir: Path) -> None:
    """A stage's library function in `workdir`, in-process, with the params.yaml found there
    (as `dvc repro` runs the stage, minus the process)."""
    from folderfit.params import load_params

    with contextlib.chdir(workdir):
        importlib.import_module(STAGE_MODULES[name]).run(load_params())


def digit_images(per_class: int, classes=(0, 1, 2), size: int = 32):
    """Real scans (scikit-learn digits) as RGB PIL images: [(class name, image)]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for digit in classes:
        for index in np.flatnonzero(digits.target == digit)[:per_class]:
            pixels = np.round(255 * np.pad(digits.images[index] / 16.0, 2)).astype(np.uint8)
            img = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BICUBIC)
            out.append((f"digit{digit}", img.convert("RGB")))
    return out


def write_image_folder(root: Path, per_class: int = 8, classes=(0, 1, 2), size: int = 32) -> Path:
    counters = {}
    for label, img in digit_images(per_class, classes, size):
        counters[label] = counters.get(label, 0) + 1
        (root / label).mkdir(parents=True, exist_ok=True)
        img.save(root / label / f"img{counters[label]:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")


def run(cmd, cwd, check=True, env=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env or ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


TINY = {  # a configuration that runs the whole graph in well under a minute
    "demo": {"per_class": 6, "size": 16},
    "data": {"image_size": 32},
    "num_epochs": 2,
    "augment": {"feature_views": 2},
    "evaluate": {"bootstrap": 200},
}


def make_repo(dest: Path, params: dict | None = None) -> Path:
    """A git + DVC repository holding the pipeline, with params.yaml overridden
    (the TINY configuration, then `params`), committed."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "test@example.com"], dest)
    run(["git", "config", "user.name", "test"], dest)
    run(["dvc", "init", "-q"], dest)  # before copying: it refuses an existing .dvc/
    run(["dvc", "config", "core.analytics", "false"], dest)
    for name in REPO_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(repo_params(merge_overrides(TINY, params or {})),
                                                     sort_keys=False))
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "pipeline"], dest)
    return dest


@pytest.fixture
def pipeline_repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


# ------------------------------------------------------------------ the quick set by default
# Plain `pytest` is the quick set (README's test command); tests marked slow run dvc, torchrun
# or whole-pipeline repro checks (minutes each) and run with `pytest --runslow` (CI runs both).
def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (dvc repro, torchrun: minutes each)")
    parser.addoption("--slow-only", action="store_true", default=False,
                     help="run only the tests marked slow (CI's second set)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    slow_only = config.getoption("--slow-only")
    keep = [item for item in items if ("slow" in item.keywords) == slow_only]
    dropped = [item for item in items if ("slow" in item.keywords) != slow_only]
    if dropped:  # reported as "N deselected" in pytest's closing line
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
