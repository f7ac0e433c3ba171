"""Stage `prepare` (library side): data.source (an ImageFolder) -> data/prepared/<split>/<class>/... + manifest.

A source holding train/ and val/ (and optionally test/) folders is used as split; otherwise a
stratified, seeded split is made. Writes metrics/data.json: counts per class and split,
class imbalance, image sizes, skipped files with reasons, duplicates and label conflicts.

Images are hashed by their decoded pixels (sha256 of size + RGB bytes), so a byte-identical
copy and the same picture saved in another lossless format are both found. Identical images in
two of the user's train/val/test folders are leakage: listed as a warning, or with
`data.on_leak: fail` prepare stops before replacing anything.

Each image is encoded into a staging folder as soon as it is decoded, so memory does not grow
with the data set; the finished folder replaces data/prepared in one rename.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from folderfit import corrections as C
from folderfit import data as D
from folderfit.errors import PipelineError
from folderfit.fileio import replace_dir, write_json

OUT_DIR = Path("data/prepared")
REPORT = Path("metrics/data.json")
STAGING = ".staging"  # inside the temp output dir: encoded images before their split is known
MAX_LISTED = 10  # leak pairs named in the error message (all are printed as warnings)


class Stager:
    """Writes encoded images to numbered files in a staging folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count()

    def put(self, blob: bytes, ext: str) -> Path:
        path = self.folder / f"{next(self._ids):07d}{ext}"
        path.write_bytes(blob)
        return path


def _load_folder(root: Path, prefix: str, image_size: int, skipped: list, stager: Stager):
    """Decode every image below an ImageFolder root and stage its stored copy:
    ({class: [record]}, class names)."""
    classes, files, ignored = D.list_class_folder(root)
    skipped.extend({"file": f"{prefix}{f}", "reason": r} for f, r in ignored)
    records = defaultdict(list)
    for path, label in files:
        rel = path.relative_to(root).as_posix()
        try:
            img = D.load_rgb(path)
        except D.BadImage as exc:
            skipped.append({"file": f"{prefix}{rel}", "reason": str(exc)})
            continue
        pixel_hash = D.sha256_bytes(f"{img.size}".encode() + img.tobytes())
        stored = D.bounded(img, image_size)
        blob, ext = D.encode(stored, path.suffix)
        within = path.relative_to(root / label).with_suffix("")
        records[label].append({"rel": f"{prefix}{rel}", "label": label, "sha256": pixel_hash,
                               "stem": "__".join(within.parts),
                               "staged": stager.put(blob, ext), "ext": ext, "size": img.size})
    return records, classes


def _check_classes(records: dict, classes: list, where: str) -> list[str]:
    empty = [c for c in classes if not records.get(c)]
    for c in empty:
        print(f"warning: {where}class folder '{c}' has no usable images; it is left out",
              file=sys.stderr)
    usable = [c for c in classes if records.get(c)]
    if len(usable) < 2:
        raise PipelineError(f"data.source {where or '.'}: {len(usable)} class folder(s) with images "
                            f"({', '.join(usable) or 'none'}); a classifier needs at least 2 "
                            f"(one sub-folder of images per class)")
    return empty


def collect(source: Path, val_fraction: float, test_fraction: float, seed: int, image_size: int,
            stager: Stager, fixes: dict | None = None):
    """({split: [record]}, classes, report extras); the stored images go to `stager`;
    `fixes` (data/corrections.csv) relabel or drop images before anything else sees them."""
    skipped: list[dict] = []
    fixes, applied = fixes or {}, set()
    given = D.given_split_dirs(source)
    if given:
        per_split, class_sets = {}, {}
        for split, folder in given.items():
            records, _ = _load_folder(folder, f"{split}/", image_size, skipped, stager)
            records = C.apply(records, fixes, applied)
            per_split[split] = [r for c in sorted(records) for r in records[c]]
            class_sets[split] = sorted(c for c in records if records[c])
        train_classes = class_sets["train"]
        if len(train_classes) < 2:
            raise PipelineError(f"data.source {source}/train: fewer than 2 class folders with images")
        for split, names in class_sets.items():
            if names != train_classes:
                extra = sorted(set(names) ^ set(train_classes))
                raise PipelineError(
                    f"data.source {source}/{split}: classes differ from train/ ({', '.join(extra)}); "
                    f"every split needs the same class folders")
        return per_split, train_classes, {"split_given": True, "skipped": skipped,
                                          **C.report(fixes, applied)}
    records, classes = _load_folder(source, "", image_size, skipped, stager)
    records = C.apply(records, fixes, applied)
    empty = _check_classes(records, classes, "")
    classes = [c for c in classes if c not in empty]
    items, by_rel = [], {}
    for c in classes:
        for r in records[c]:
            items.append(D.Item(r["rel"], c, r["sha256"]))
            by_rel[r["rel"]] = r
    splits = D.stratified_split(items, val_fraction, test_fraction, seed)
    per_split = {s: [by_rel[it.rel] for it in v] for s, v in splits.items() if v}
    return per_split, classes, {"split_given": False, "skipped": skipped,
                                "empty_classes": empty, **C.report(fixes, applied)}


def duplicates_report(per_split: dict) -> dict:
    """Identical images (same decoded pixels): groups, cross-split leaks, label conflicts."""
    by_hash = defaultdict(list)
    for split, records in per_split.items():
        for r in records:
            by_hash[r["sha256"]].append((split, r["label"], r["rel"]))
    groups = [sorted(v) for v in by_hash.values() if len(v) > 1]
    conflicts = [[rel for _, _, rel in g] for g in groups if len({lab for _, lab, _ in g}) > 1]
    leaks = [[f"{s}:{rel}" for s, _, rel in g] for g in groups if len({s for s, _, _ in g}) > 1]
    return {"groups": sorted([rel for _, _, rel in g] for g in groups),
            "duplicate_files": sum(len(g) - 1 for g in groups),
            "label_conflicts": sorted(conflicts),
            "cross_split_duplicates": sorted(leaks)}


def check_leaks(dups: dict, on_leak: str) -> None:
    """data.on_leak=fail: identical images in two splits stop the stage."""
    leaks = dups["cross_split_duplicates"]
    if on_leak == "fail" and leaks:
        listed = "; ".join(", ".join(g) for g in leaks[:MAX_LISTED])
        more = f" (+{len(leaks) - MAX_LISTED} more)" if len(leaks) > MAX_LISTED else ""
        raise PipelineError(
            f"data.source: {len(leaks)} image(s) appear in more than one split (leakage): "
            f"{listed}{more}; delete or move the copies so each sits in one split, "
            f"or set data.on_leak: warn in params.yaml")


def write_prepared(per_split: dict, tmp: Path) -> list[dict]:
    """Move the staged images to tmp/<split>/<class>/ and write the manifest there."""
    rows = []
    for split in D.SPLITS:
        used = set()
        for r in per_split.get(split, []):
            stem, ext = r["stem"], r["ext"]
            name, n = f"{stem}{ext}", 1
            while (r["label"], name) in used:  # a.png + a.bmp in one class: keep both
                name, n = f"{stem}-{n}{ext}", n + 1
            used.add((r["label"], name))
            rel_out = f"{split}/{r['label']}/{name}"
            target = tmp / rel_out
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(r["staged"], target)
            rows.append({"file": rel_out, "source": r["rel"], "class": r["label"], "split": split,
                         "sha256": r["sha256"], "width": r["size"][0], "height": r["size"][1]})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (tmp / D.MANIFEST).write_text(buf.getvalue(), encoding="utf-8")
    return rows


def build_report(rows: list[dict], classes: list, extras: dict, dups: dict) -> dict:
    """metrics/data.json. Its scalars are the headline numbers DVC tables show; everything
    per class, per file or per group is a list (`dvc exp show` makes no columns of lists)."""
    counts = {s: {c: 0 for c in classes} for s in D.SPLITS}
    for r in rows:
        counts[r["split"]][r["class"]] += 1
    counts = {s: v for s, v in counts.items() if sum(v.values())}
    totals = {c: sum(counts[s][c] for s in counts) for c in classes}

    def spread(key: str) -> list:  # source image sizes (before prepare shrinks them)
        values = sorted(int(r[key]) for r in rows)
        return [values[0], values[len(values) // 2], values[-1]]

    return {
        "n_images": len(rows),
        "n_classes": len(classes),
        **{f"n_{s}": sum(v.values()) for s, v in counts.items()},
        "n_skipped": len(extras["skipped"]),
        "n_duplicate_files": dups["duplicate_files"],
        "n_label_conflicts": len(dups["label_conflicts"]),
        "imbalance_ratio": round(max(totals.values()) / max(1, min(totals.values())), 3),
        "split_given": extras["split_given"],
        "per_class": [{"class": c, **{s: counts[s][c] for s in counts}} for c in classes],
        "image_size_px": {"width_min_median_max": spread("width"),
                          "height_min_median_max": spread("height")},
        "duplicates": {"groups": dups["groups"], "label_conflicts": dups["label_conflicts"],
                       "cross_split_duplicates": dups["cross_split_duplicates"]},
        "empty_classes": extras.get("empty_classes", []),
        "skipped": extras["skipped"],
        **{k: extras[k] for k in ("n_relabelled", "n_dropped", "corrections") if k in extras},
    }


def run(params) -> None:
    source = D.check_source(params.data.source)
    fixes = C.read(source)  # checked before any image is decoded
    tmp = OUT_DIR.with_name(f".{OUT_DIR.name}.tmp")  # never a half-written data/prepared
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        per_split, classes, extras = collect(source, params.data.val_fraction,
                                             params.data.test_fraction, params.seed,
                                             params.data.image_size, Stager(tmp / STAGING), fixes)
        dups = duplicates_report(per_split)
        for leak in dups["cross_split_duplicates"]:
            print(f"warning: identical images in different splits (leakage): {', '.join(leak)}",
                  file=sys.stderr)
        check_leaks(dups, params.data.on_leak)
        rows = write_prepared(per_split, tmp)
        shutil.rmtree(tmp / STAGING)
        report = build_report(rows, classes, extras, dups)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, OUT_DIR)
    write_json(REPORT, report)
    sizes = ", ".join(f"{s} {report.get(f'n_{s}', 0)}" for s in D.SPLITS)
    print(f"prepare: {len(rows)} images, {len(classes)} classes ({sizes}); "
          f"{report['n_skipped']} skipped, {dups['duplicate_files']} duplicate file(s)")
    if fixes:
        print(f"corrections ({C.CORRECTIONS}): {report['n_relabelled']} relabelled, "
              f"{report['n_dropped']} dropped")
    for s in extras["skipped"]:
        print(f"  skipped {s['file']}: {s['reason']}", file=sys.stderr)
    for pair in dups["label_conflicts"]:
        print(f"warning: the same image is labelled differently: {' vs '.join(pair)}", file=sys.stderr)

