"""Class and file names are text in every figure, never math text or markup: a class folder
named like `$x^$` must not stop evaluate or review from writing their figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from folderfit.pipeline import evaluate
from folderfit.results import reports

HOSTILE = ["$x^$", "a_b^c", "\\frac", "$", "50%", "$\\alpha$ $"]


def _images(folder: Path, names: list) -> list[Path]:
    files = []
    for i, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        file = folder / name / f"{name}{i}.png"
        Image.new("RGB", (8, 8), (i * 30 % 256, 0, 0)).save(file)
        files.append(file)
    return files


def test_evaluate_figures_with_hostile_class_and_file_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluate, "source_paths", lambda prepared: {})
    files = _images(tmp_path / "img", HOSTILE)
    n = len(HOSTILE)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(n), size=2 * n)
    y = np.arange(2 * n) % n
    samples = [(files[i % n], int(y[i])) for i in range(2 * n)]
    summary = {"split": "$test^$", "top_k": 2, "ece": 0.1}
    out = tmp_path / "eval"
    evaluate.write_eval_dir(out, probs, y, HOSTILE, samples, summary)
    for name in ("confusion.png", "confusion_normalized.png", "reliability.png", "mistakes.png"):
        assert (out / name).stat().st_size > 0, name


def test_review_gallery_with_hostile_names(tmp_path):
    files = _images(tmp_path / "img", HOSTILE)
    tiles = [(f, f"{a} -> {b}\nscore 0.100", f.name) for f, a, b in
             zip(files, HOSTILE, HOSTILE[1:] + HOSTILE[:1])]
    reports.gallery(tmp_path / "label_issues.png", tiles, "label review: $x^$ suspects", "$x^$")
    reports.gallery(tmp_path / "empty.png", [], "t", "no $x^$ found")
    assert (tmp_path / "label_issues.png").stat().st_size > 0
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_usetex_in_the_users_matplotlibrc_is_not_used(tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "text.usetex", True)
    files = _images(tmp_path / "img", ["a_b^c"])
    reports.gallery(tmp_path / "g.png", [(files[0], "50% $x^$", "a_b")], "$", "e")
    assert (tmp_path / "g.png").stat().st_size > 0
