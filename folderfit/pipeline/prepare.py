"""Stage `prepare` (library side): data.source (an ImageFolder) -> data/prepared/manifest.csv
(+ thumbnails): each row names the ORIGINAL file, its split, class and pixel hash; no pixels
are copied, so data/ and DVC's cache grow by a manifest, not by a second set of photos.

Layout (folderfit.images.image_folder.detect_layout): top-level folders named like splits (train, val, valid,
validation, test; any case) hold the user's split, each with the class folders inside; val
missing -> carved from train (stratified, seeded; test too when only train/ is given). No such
folder: one folder per class, split here. Writes metrics/data.json: counts per class and split,
class imbalance, image sizes, every file and class folder left out with its reason,
duplicates and label conflicts.

Images are hashed by their decoded pixels (sha256 of size + RGB bytes), so a byte-identical
copy and the same picture saved in another lossless format are both found. Identical images in
two of the user's train/val/test folders are leakage: listed as a warning, or with
`data.on_leak: fail` prepare stops before replacing anything.

Names: any name the file system allows is read; reports and the manifest hold its printable
form (folderfit.images.image_folder.printable), the manifest's `file` column its real path too.

Images are decoded by a pool of processes (one per core, results taken in input order, so the
output does not depend on the core count) through folderfit.images.decode, the path predict takes
too; the later stages decode the same original the same way (decode.read_prepared, which
checks its pixels against the manifest's hash), so what evaluate scores is what predict
answers. Progress: folderfit.support.progress. Only the hash, size and a 32x32 thumbnail of
each image are kept, so memory grows little with the data set; two prepares at once in one
project: the second stops (exclusive); the finished folder replaces data/prepared in one rename (fileio.staged_dir),
after metrics/data.json is written. Any failure, a full disk included, leaves both as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import sys
from collections import defaultdict, deque
from pathlib import Path

import numpy as np

from folderfit.artifacts import corrections, manifest
from folderfit.errors import PipelineError
from folderfit.frozen import similarity
from folderfit.images import decode, image_folder
from folderfit.paths import DATA_REPORT, PREPARED, THUMBNAILS_NAME
from folderfit.support.fileio import (
    check_dvc_cache_room,
    staged_dir,
    write_bytes,
    write_json,
)
from folderfit.support.progress import progress
from folderfit.support.report import say

MAX_LISTED = 10  # leak pairs named in the error message (all are printed as warnings)
MIN_POOL_JOBS = 16  # fewer images are decoded in this process
MAX_WORKERS = 32
WINDOW_PER_WORKER = 8  # decoded images waiting per worker (bounds memory, keeps workers busy)


def decode_one(path: Path, image_size: int):
    """Worker: (pixel hash, None, (full upright size, thumbnail)), or (None, reason, None).
    The image is decoded through folderfit.images.decode, the path predict also takes (and the
    later stages, from the same file: decode.read_prepared); the review's 32x32 thumbnail is
    made from its stored copy here, while it is decoded."""
    try:
        img, stored, size = decode.stored_image(path, image_size)
    except decode.BadImage as exc:
        return None, str(exc), None
    return decode.pixel_hash(img), None, (size, similarity.thumbnail_pixels(stored))


def workers(n_jobs: int) -> int:
    """Decoding processes: one per usable core (1 for small jobs: a pool costs ~0.1 s)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 1 if n_jobs < MIN_POOL_JOBS else max(1, min(cores, MAX_WORKERS))


def decode_all(paths: list[Path], image_size: int):
    """decode_one of every path, in order (so the output is the same for any worker count),
    decoded by a process pool; at most WINDOW results wait in memory."""
    n = workers(len(paths))
    if n == 1:
        yield from (decode_one(p, image_size) for p in paths)
        return
    from concurrent.futures import ProcessPoolExecutor

    window = WINDOW_PER_WORKER * n
    with ProcessPoolExecutor(max_workers=n) as pool:
        pending = deque()
        for path in paths:
            pending.append(pool.submit(decode_one, path, image_size))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def decode_jobs(jobs: list, image_size: int, source: Path, skipped: list) -> list:
    """[record or None] for jobs [(Found, label)]: each image decoded (in parallel); an
    unusable one is None with its reason added to `skipped`. A record's `file` is the image's
    real path below `source` (manifest.file_entry)."""
    out = []
    results = decode_all([found.path for found, _ in jobs], image_size)
    for (found, label), (pixel_hash, reason, facts) in zip(
            jobs, progress(results, total=len(jobs), desc="prepare", unit="images")):
        if pixel_hash is None:
            skipped.append({"file": found.rel, "reason": reason})
            out.append(None)
            continue
        real = Path(os.path.relpath(found.path, source)).as_posix()
        out.append({"rel": found.rel, "label": label, "sha256": pixel_hash,
                    "file": manifest.file_entry(real), "size": facts[0], "thumbnail": facts[1]})
    return out


def _empty_reason(files: list) -> str:
    if not files:
        return "no image file in the folder"
    return f"none of its {len(files)} image file(s) could be used (see skipped)"


def _too_few_classes(where: str, usable: list, skipped: list = ()) -> PipelineError:
    # class folders that are links are the usual surprise here: name them and say what to do
    linked = [s["file"] for s in skipped if s["reason"] == image_folder.LINKED_FOLDER]
    why = (f"; {len(linked)} linked folder(s) were not read ({', '.join(linked[:5])}"
           f"{', ...' if len(linked) > 5 else ''}): DVC does not track what a linked folder holds, "
           f"so copy the folders in (cp -rL) or point data.source at the real folder") if linked else ""
    return PipelineError(f"data.source {where}: {len(usable)} class folder(s) with images "
                         f"({', '.join(usable) or 'none'}); a classifier needs at least 2 "
                         f"(one sub-folder of images per class){why}")


def collect(source: Path, val_fraction: float, test_fraction: float, seed: int, image_size: int,
            fixes: dict | None = None):
    """({split: [record]}, classes, report extras); `fixes` (data/corrections.csv) relabel or drop images before anything else sees them."""
    fixes, applied = fixes or {}, corrections.Applied()
    layout = image_folder.detect_layout(source)
    skipped = [{"file": f, "reason": r} for f, r in layout.skipped]
    roots = ({None: (source, "")} if layout.splits is None else
             {split: (folder, image_folder.printable(folder.name) + "/") for split, folder in layout.splits.items()})
    scanned = {}  # split (None: not split yet) -> {class: [Found]}
    for split, (root, prefix) in roots.items():
        classes, left_out = image_folder.read_image_folder(root, prefix)
        scanned[split] = classes
        skipped += [{"file": f, "reason": r} for f, r in left_out]
    jobs = [(f, label) for classes in scanned.values() for label, files in classes.items() for f in files]
    staged = iter(decode_jobs(jobs, image_size, source, skipped))
    records = {split: {label: [r for _ in files if (r := next(staged))]
                       for label, files in classes.items()}
               for split, classes in scanned.items()}
    # splits are made from the ORIGINAL labels and paths, the fixes applied after them: a
    # relabel or a drop never moves another image between splits (corrections.apply_to_splits)
    labels = sorted({label for classes in scanned.values() for label in classes})
    usable = [c for c in labels if any(records[s].get(c) for s in records)]
    empty = [{"folder": f"{roots[s][1]}{c}", "reason": _empty_reason(scanned[s][c])}
             for c in labels if c not in usable for s in scanned if c in scanned[s]]
    for entry in empty:
        print(f"warning: class folder '{entry['folder']}' has no usable images "
              f"({entry['reason']}); it is left out", file=sys.stderr)
    if layout.splits is None:
        if len(usable) < 2:
            raise _too_few_classes(image_folder.printable(str(source)), usable, skipped)
        per_split, classes, extras = _split_here(
            records[None], usable, val_fraction, test_fraction, seed, skipped, empty,
            made=[s for s in image_folder.SPLITS if s != "test" or test_fraction > 0])
        per_split = corrections.apply_to_splits(per_split, fixes, applied)
        return per_split, corrections.classes_of(per_split, classes), {**extras, **corrections.report(fixes, applied)}
    _check_given_classes(source, roots, scanned, records, usable, skipped)
    per_split = {split: [r for c in usable for r in records[split].get(c, [])] for split in records}
    made, few = [], None
    if "val" not in per_split:  # carve val (and test, if not given either) out of train
        made = ["val"] + (["test"] if "test" not in per_split and test_fraction > 0 else [])
        carved, _, carve_facts = _split_here({c: records["train"][c] for c in usable}, usable, val_fraction,
                                             test_fraction if "test" in made else 0.0, seed, [], [], made)
        per_split.update(carved)
        made = carve_facts["made_splits"]
        few = carve_facts.get("few_shot_classes")
    per_split = corrections.apply_to_splits(per_split, fixes, applied)
    return per_split, corrections.classes_of(per_split, usable), {"split_given": True, "made_splits": made, "skipped": skipped,
                               "empty_classes": empty, **({"few_shot_classes": few} if few else {}),
                               **corrections.report(fixes, applied)}


def _split_here(records: dict, classes: list, val_fraction: float, test_fraction: float,
                seed: int, skipped: list, empty: list, made: list):
    items, by_rel = [], {}
    for c in classes:
        for r in records[c]:
            items.append(image_folder.Item(r["rel"], c, r["sha256"]))
            by_rel[r["rel"]] = r
    few = image_folder.few_shot_classes(items, val_fraction, test_fraction)
    splits = image_folder.stratified_split(items, val_fraction, test_fraction, seed)
    per_split = {s: [by_rel[it.rel] for it in v] for s, v in splits.items() if v}
    if few and "val" not in per_split and val_fraction > 0:
        raise PipelineError(
            f"data.source: every class has a single distinct image ({', '.join(list(few)[:5])}"
            f"{', ...' if len(few) > 5 else ''}): nothing is left to validate or to estimate the "
            f"accuracy with; add a second photo to some classes")
    extras = {"split_given": False, "made_splits": [s for s in made if s in per_split],
              "skipped": skipped, "empty_classes": empty}
    if few:  # the split rule for them: image_folder's docstring, docs/data.md
        extras["few_shot_classes"] = [{"class": c, "images": n} for c, n in few.items()]
    return per_split, classes, extras


def _check_given_classes(source: Path, roots: dict, scanned: dict, records: dict, usable: list,
                         skipped: list = ()) -> None:
    """Every class with images must have images in every given split folder."""
    where = image_folder.printable(str(source))
    train = [c for c in usable if records["train"].get(c)]
    if len(train) < 2:
        raise _too_few_classes(f"{where}/{roots['train'][1].rstrip('/')}", train, skipped)
    for split, (_, prefix) in roots.items():
        names = [c for c in usable if records[split].get(c)]
        if names == train:
            continue
        for label in sorted(set(train) - set(names)):
            if label in scanned[split]:  # the folder is there, but nothing in it could be used
                raise PipelineError(
                    f"data.source {where}/{prefix}{label}: no usable image here "
                    f"({_empty_reason(scanned[split][label])}), but the class has images in "
                    f"{roots['train'][1]}; every class needs images in every split: add some, "
                    f"or remove '{label}' from every split")
        extra = sorted(set(names) ^ set(train))
        raise PipelineError(
            f"data.source {where}/{prefix.rstrip('/')}: classes differ from "
            f"{roots['train'][1]} ({', '.join(extra)}); every split needs the same class folders")


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


def write_prepared(per_split: dict, tmp: Path, source: Path, image_size: int) -> list[dict]:
    """Write the manifest (one row per image, naming its original file below data.source) and
    the thumbnails into tmp: no pixels are copied (folderfit.artifacts.manifest)."""
    root = manifest.source_root(source)
    rows = [{"file": r["file"], "source": r["rel"], "class": r["label"], "split": split,
             "sha256": r["sha256"], "width": r["size"][0], "height": r["size"][1],
             "root": root, "image_size": image_size}
            for split in image_folder.SPLITS for r in per_split.get(split, [])]
    manifest.write_manifest(tmp, rows)
    thumbnails = [r["thumbnail"] for split in image_folder.SPLITS for r in per_split.get(split, [])]
    # manifest row order; saved to memory first: numpy's own file write reports a full disk
    # as a short write without an errno, which would not be recognised as one
    buffer = io.BytesIO()
    np.save(buffer, np.stack(thumbnails))
    write_bytes(tmp / THUMBNAILS_NAME, buffer.getvalue())
    return rows


def build_report(rows: list[dict], classes: list, extras: dict, dups: dict) -> dict:
    """metrics/data.json. Its scalars are the headline numbers DVC tables show; everything
    per class, per file or per group is a list (`dvc exp show` makes no columns of lists)."""
    counts = {s: {c: 0 for c in classes} for s in image_folder.SPLITS}
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
        "made_splits": extras["made_splits"],
        "per_class": [{"class": c, **{s: counts[s][c] for s in counts}} for c in classes],
        "image_size_px": {"width_min_median_max": spread("width"),
                          "height_min_median_max": spread("height")},
        "duplicates": {"groups": dups["groups"], "label_conflicts": dups["label_conflicts"],
                       "cross_split_duplicates": dups["cross_split_duplicates"]},
        "empty_classes": extras["empty_classes"],
        **({"few_shot_classes": extras["few_shot_classes"]} if "few_shot_classes" in extras else {}),
        "skipped": extras["skipped"],
        **{k: extras[k] for k in corrections.REPORT_KEYS if k in extras},
    }


@contextlib.contextmanager
def exclusive(folder: Path):
    """Hold an exclusive lock on `folder` (data/) while prepare writes there: two prepares at
    once outside DVC would clear each other's staging folder. The second one stops with a
    clear message instead. File systems without flock (some network mounts) run unlocked."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                f"another prepare is writing {PREPARED} in this project right now; wait until it "
                f"has finished (or stop it), then run this one again") from None
        except OSError:
            pass  # no locking here: run as before
        yield
    finally:
        os.close(fd)  # releases the lock


def run(params) -> None:
    source = image_folder.check_source(params.data.source)
    fixes = corrections.read(source)  # checked before any image is decoded
    with exclusive(PREPARED.parent):
        _run(params, source, fixes)


def _run(params, source: Path, fixes) -> None:
    with staged_dir(PREPARED) as tmp:
        per_split, classes, extras = collect(source, params.data.val_fraction,
                                             params.data.test_fraction, params.seed,
                                             params.data.image_size, fixes)
        dups = duplicates_report(per_split)
        for leak in dups["cross_split_duplicates"]:
            print(f"warning: identical images in different splits (leakage): {', '.join(leak)}",
                  file=sys.stderr)
        check_leaks(dups, params.data.on_leak)
        rows = write_prepared(per_split, tmp, source, params.data.image_size)
        check_dvc_cache_room(tmp, PREPARED)  # DVC's copy of the manifest, before any swap
        report = build_report(rows, classes, extras, dups)
        corrections.write_test_record(tmp, report)
        write_json(DATA_REPORT, report)  # before the swap: a failure here leaves both as they were
    sizes = ", ".join(f"{s} {report.get(f'n_{s}', 0)}" for s in image_folder.SPLITS)
    say(f"prepare: {len(rows)} images, {len(classes)} classes ({sizes}); "
          f"{report['n_skipped']} skipped, {dups['duplicate_files']} duplicate file(s)")
    if fixes:
        say(f"corrections ({corrections.CORRECTIONS}): {report['n_relabelled']} relabelled, "
              f"{report['n_dropped']} dropped, {report['n_unchanged']} unchanged; "
              f"{report['n_test_corrections']} test image(s) corrected (kept apart)")
    few = extras.get("few_shot_classes")
    if few:
        named = ", ".join(f"'{f['class']}' {f['images']}" for f in few[:5]) + (", ..." if len(few) > 5 else "")
        say(f"prepare: {len(few)} class(es) with too few distinct images for a place in every split "
            f"({named}): they train (and validate where they have 2)"
            + ("" if report.get("n_test") else "; no test split: evaluate estimates by "
               "cross-validation over train + val") + " (docs/data.md)")
    if extras["split_given"] and extras["made_splits"]:
        say(f"prepare: {' and '.join(extras['made_splits'])} drawn from your train/ folder "
              f"(stratified, seed {params.seed})")
    for s in extras["skipped"]:
        say(f"  skipped {s['file']}: {s['reason']}", file=sys.stderr)
    for pair in dups["label_conflicts"]:
        print(f"warning: the same image is labelled differently: {' vs '.join(pair)}", file=sys.stderr)
