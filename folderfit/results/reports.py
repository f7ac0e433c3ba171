"""Rendering of the evaluation: PNG figures, CSV files and the per-class table.

Figures use matplotlib's Agg backend and are saved without a "Software" or date entry, so
the same numbers give byte-identical PNGs on the same machine. Every file is written
atomically (temp file + rename).
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path

import numpy as np

from folderfit.support.fileio import atomic_path, write_text

GALLERY_MAX = 16  # most confident mistakes shown in the gallery
THUMB_PX = 160


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_text(figure_function):
    """Draw the figure with every string as plain text: class and file names such as `$x^$`
    or `a_b^c` are neither math text (a parse error) nor LaTeX, whatever the user's
    matplotlibrc says. Text objects read these settings when created and when drawn, so the
    whole function runs inside the context."""
    @functools.wraps(figure_function)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return figure_function(*args, **kwargs)
    return wrapper


def save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    _pyplot().close(fig)


def write_csv(path: Path, header: list, rows) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_rows_json(path: Path, rows: list) -> None:
    """A JSON list with one object per line: DVC plots read it, a diff stays readable."""
    write_text(path, "[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")


@plain_text
def confusion_png(path: Path, matrix: np.ndarray, class_names: list, title: str,
                  normalized: bool = False) -> None:
    """Heat map with the value in every cell (counts, or row shares when normalized)."""
    plt = _pyplot()
    n = len(class_names)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalized else max(1, matrix.max()))
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    top = 1.0 if normalized else max(1, matrix.max())
    for i in range(n):
        for j in range(n):
            value = matrix[i, j]
            ax.text(j, i, f"{value:.2f}" if normalized else f"{value:d}", ha="center",
                    va="center", fontsize=8, color="white" if value > top / 2 else "black")
    fig.tight_layout()
    save_png(fig, path)


@plain_text
def reliability_png(path: Path, bins: dict, ece: float, title: str) -> None:
    """Accuracy against mean confidence per bin (the diagonal is perfect calibration), with
    the number of images per bin below."""
    plt = _pyplot()
    edges = bins["edges"]
    width = edges[1] - edges[0]
    used = bins["count"] > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    top.bar(edges[:-1][used], bins["accuracy"][used], width=width, align="edge",
            edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy in bin")
    top.scatter(bins["confidence"][used], bins["accuracy"][used], color="tab:red", s=12,
                zorder=3, label="mean confidence in bin")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}\nECE {ece:.4f} ({len(edges) - 1} equal-width bins)")
    bottom.bar(edges[:-1], bins["count"], width=width, align="edge", edgecolor="black",
               color="tab:grey")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    bottom.yaxis.get_major_locator().set_params(integer=True)
    # legend in the count panel: over the bars it would hide the calibration gaps
    bottom.legend(*top.get_legend_handles_labels(), loc="upper left", fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def _thumbnail(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((THUMB_PX, THUMB_PX))
        return np.asarray(img)


def mistakes_gallery(path: Path, mistakes: list, title: str) -> None:
    """Grid of (image file, true, predicted, confidence) rows, already sorted; a figure that
    says so when there are none."""
    shown = mistakes[:GALLERY_MAX]
    gallery(path, [(file, f"true: {true}\npred: {predicted} ({confidence:.2f})", Path(file).name[:32])
                   for file, true, predicted, confidence in shown],
            f"{title}: {len(shown)} of {len(mistakes)} mistakes, most confident first",
            f"{title}\nno mistakes")


@plain_text
def gallery(path: Path, tiles: list, title: str, empty: str) -> None:
    """Grid of thumbnails, each (image file, caption above, note below); `empty` is the
    figure's text when there are no tiles."""
    plt = _pyplot()
    if not tiles:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=11)
        save_png(fig, path)
        return
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.0 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (file, caption, note) in zip(axes.ravel(), tiles):
        ax.imshow(_thumbnail(file))
        ax.set_title(caption, fontsize=9)
        ax.text(0.5, -0.04, note, transform=ax.transAxes, ha="center", va="top",
                fontsize=6, color="dimgrey")
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def per_class_table(split: str, n_images: int, per_class: dict, summary: dict) -> str:
    """Readable fixed-width table of the per-class report and the headline numbers."""
    width = max([len("class")] + [len(name) for name in per_class])
    lines = [f"split: {split} ({n_images} images)", "",
             f"{'class':<{width}}  precision  recall      f1  support  roc_auc  avg_prec"]

    def cell(value):
        return "       -" if value is None else f"{value:8.4f}"

    for name, row in per_class.items():
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
                     f"{row['f1']:6.4f}  {row['support']:7d}  {cell(row['roc_auc'])} "
                     f"{cell(row['average_precision'])}")
    lines.append("")
    notes = [f"{name}: {row['note']}" for name, row in per_class.items() if row.get("note")]
    if notes:  # few-shot classes (docs/data.md)
        lines += notes + [""]
    for key, value in summary.items():
        lines.append(f"{key:<24} {value}")
    return "\n".join(lines) + "\n"
