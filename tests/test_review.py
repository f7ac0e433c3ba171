"""The label review (stage `review`, folderfit.pipeline.review / crossfit / similarity): planted wrong
labels come out on top, scores are out of sample, copies and off-topic images are found, the
paths are data.source's exactly, reruns are identical, and train reuses the review's features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tiny_project as T
import torch
from conftest import run_stage, write_params
from PIL import Image

PLANTED = {"bars/007.png": "blobs", "blobs/011.png": "checks", "checks/003.png": "bars"}


def read_csv(path: Path) -> tuple[list, list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def planted_source(root: Path, per_class: int = 20) -> dict:
    """tiny_project's three learnable picture classes with PLANTED files moved to a wrong
    class folder, a JPEG copy of one PNG picture under another class (not pixel-identical, so
    prepare does not see it; a wrong label too) and two off-topic images (flat grey, pixel
    noise). Returns {what: source-relative paths}.
    (How far the embedding reaches for resized and cropped photos is measured on real photos
    by bench/review_quality.py: these 64 px textures all look alike to the backbone.)"""
    T.make_image_folder(root, per_class=per_class, size=64, seed=3)
    moved = {}
    for rel, wrong in PLANTED.items():
        target = root / wrong / f"m{Path(rel).name}"
        (root / rel).rename(target)
        moved[rel] = target.relative_to(root).as_posix()
    with Image.open(root / "bars/002.png") as img:
        img.convert("RGB").save(root / "checks/copy.jpg", quality=100)
    Image.new("RGB", (64, 64), (128, 128, 128)).save(root / "blobs/grey.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "bars/noise.png")
    return {"moved": moved, "copy": ("bars/002.png", "checks/copy.jpg"),
            "off_topic": {"blobs/grey.png", "bars/noise.png"}}


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    """prepare + review once on the planted source (flat layout), outputs kept for the tests."""
    tmp = tmp_path_factory.mktemp("review")
    plants = planted_source(tmp / "images")
    work = tmp / "work"
    work.mkdir()
    write_params(work, **{"data.source": str(tmp / "images"), "data.image_size": 64,
                          "augment.feature_views": 1, "augment.hflip": True})
    run_stage("prepare", work)
    run_stage("review", work)
    return work, tmp / "images", plants


def test_planted_wrong_labels_rank_on_top(reviewed):
    work, _, plants = reviewed
    header, rows = read_csv(work / "metrics/review/label_issues.csv")
    assert header == ["path", "given", "suggested", "score"]
    top = {r["path"]: r for r in rows[:len(PLANTED) + 1]}
    assert set(top) == {*plants["moved"].values(), plants["copy"][1]}, [r["path"] for r in rows[:6]]
    for original, path in plants["moved"].items():
        assert top[path]["suggested"] == original.split("/")[0]  # its true class
    assert top[plants["copy"][1]]["suggested"] == "bars"
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores)  # most suspect (lowest label quality) first
    assert all(r["given"] != r["suggested"] for r in rows)


def test_copies_across_classes_and_off_topic_images_are_listed(reviewed):
    work, _, plants = reviewed
    header, pairs = read_csv(work / "metrics/review/near_duplicates.csv")
    assert header[:4] == ["path", "other", "similarity", "issue"]
    found = {frozenset((p["path"], p["other"])): p for p in pairs}
    copy = found[frozenset(plants["copy"])]
    assert copy["issue"].startswith("different classes")
    _, outliers = read_csv(work / "metrics/review/outliers.csv")
    listed = [o["path"] for o in outliers]
    assert plants["off_topic"] <= set(listed[:3]), listed


def test_every_path_is_the_source_path_and_summary_is_flat(reviewed):
    work, source, _ = reviewed
    for name in ("label_issues.csv", "near_duplicates.csv", "outliers.csv", "scores.csv"):
        _, rows = read_csv(work / "metrics/review" / name)
        for row in rows:
            for key in ("path", "other"):
                if key in row:
                    assert (source / row[key]).is_file(), (name, row[key])
    _, scores = read_csv(work / "metrics/review/scores.csv")
    assert len(scores) == sum(1 for p in source.rglob("*") if p.is_file())  # every image scored
    summary = json.loads((work / "metrics/review.json").read_text())
    assert isinstance(summary["per_class"], list)
    scalars = {k for k, v in summary.items() if not isinstance(v, list)}
    assert scalars == {"n_label_issues", "label_noise_rate", "n_near_duplicates",
                       "n_near_duplicates_across_splits", "n_near_duplicates_across_classes",
                       "n_outliers", "folds", "folds_requested", "n_not_reviewable",
                       "feature_engine"}
    _, issues = read_csv(work / "metrics/review/label_issues.csv")
    assert summary["n_label_issues"] == len(issues)
    assert (work / "metrics/review/label_issues.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_is_identical_and_train_reuses_the_features(reviewed, capsys):
    work, _, _ = reviewed
    folder = work / "metrics/review"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    before["review.json"] = (work / "metrics/review.json").read_bytes()
    capsys.readouterr()
    run_stage("review", work)
    assert "0 computed" in capsys.readouterr().out  # everything came from the cache
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    after["review.json"] = (work / "metrics/review.json").read_bytes()
    assert after == before
    run_stage("train", work)
    out = capsys.readouterr().out
    assert "0 vectors computed" in out, out  # train's views of its images: all from the review


def test_given_split_paths_and_folds(tmp_path):
    source = tmp_path / "images"
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        T.make_image_folder(source / split, per_class=n, size=64, seed={"train": 0, "val": 1, "test": 2}[split])
    (source / "train/bars/005.png").rename(source / "train/checks/x005.png")
    (source / "val/blobs/copy.png").write_bytes((source / "train/blobs/002.png").read_bytes())
    write_params(tmp_path, **{"data.source": str(source), "data.image_size": 64,
                              "augment.feature_views": 1, "review.folds": 3})
    run_stage("prepare", tmp_path)
    run_stage("review", tmp_path)
    _, issues = read_csv(tmp_path / "metrics/review/label_issues.csv")
    assert issues[0]["path"] == "train/checks/x005.png"
    assert issues[0]["suggested"] == "bars"
    details = json.loads((tmp_path / "metrics/review/details.json").read_text())
    assert details["folds"] == 3
    _, scores = read_csv(tmp_path / "metrics/review/scores.csv")
    assert {r["split"] for r in scores} == {"train", "val", "test"}  # every split is scored
    _, pairs = read_csv(tmp_path / "metrics/review/near_duplicates.csv")
    leak = [p for p in pairs if {p["path"], p["other"]} == {"train/blobs/002.png", "val/blobs/copy.png"}]
    assert leak and leak[0]["issue"] == "different splits" and pairs[0] == leak[0]


# ------------------------------------------------------------------ out of sample
def test_no_image_is_scored_by_a_head_that_saw_its_label(monkeypatch):
    """Random features with random labels: a head that saw an image's label would give it a
    high probability (in-sample fit: near 1); out of sample it is chance. And every refit's
    training rows exclude the fold it scores and every copy of its images."""
    from folderfit.frozen import crossfit, head

    rng = np.random.default_rng(0)
    n, d, c = 90, 40, 3
    x = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))
    labels = rng.integers(0, c, n)
    x[1] = x[0]  # a copy: must share image 0's fold
    groups = np.arange(n)
    groups[1] = 0
    seen = []
    real_refit = head.refit

    def spying_refit(rows_x, rows_y, *args, **kwargs):
        seen.append(rows_x)
        return real_refit(rows_x, rows_y, *args, **kwargs)

    monkeypatch.setattr(head, "refit", spying_refit)
    fit = crossfit.cross_fit([x, x + 0.01], labels, c, groups, k=5, seed=1)
    assert fit.fold[0] == fit.fold[1]
    in_sample = real_refit(x, torch.from_numpy(labels), c, 1e-4)
    p_in = torch.softmax(x @ in_sample[0].T + in_sample[1], 1).numpy()[np.arange(n), labels]
    p_out = fit.probs[np.arange(n), labels]
    assert p_in.mean() > 0.75 and p_out.mean() < 0.5  # in sample: memorised; out: chance (1/3)
    for f, rows_x in enumerate(seen):
        scored = {tuple(v) for v in x[fit.fold == f].numpy().round(5)}
        trained = {tuple(v) for v in rows_x.numpy().round(5)}
        assert not scored & trained


def test_folds_are_stratified_seeded_and_keep_copies_together():
    from folderfit.frozen import crossfit

    labels = np.repeat([0, 1, 2], 20)
    groups = np.arange(60)
    groups[[5, 25, 45]] = 5  # one image under three classes
    a = crossfit.assign_folds(labels, groups, 5, seed=7)
    assert np.array_equal(a, crossfit.assign_folds(labels, groups, 5, seed=7))
    assert not np.array_equal(a, crossfit.assign_folds(labels, groups, 5, seed=8))
    assert len(set(a[[5, 25, 45]])) == 1
    for f in range(5):
        counts = np.bincount(labels[a == f], minlength=3)
        assert counts.min() >= 3


def test_folds_split_every_class_evenly_and_copies_stay_together_at_scale():
    from folderfit.frozen import crossfit

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 3000)
    groups = np.arange(3000)
    copies = rng.choice(3000, 200, replace=False)
    groups[copies] = groups[rng.choice(3000, 200)]  # ~200 copies, some across classes
    fold = crossfit.assign_folds(labels, groups, 5, seed=1)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    no_copies = crossfit.assign_folds(labels, np.arange(3000), 5, seed=1)
    for c in range(7):
        per_fold = np.bincount(no_copies[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
        with_copies = np.bincount(fold[labels == c], minlength=5)
        assert with_copies.max() - with_copies.min() <= 0.1 * with_copies.mean()


def test_similar_pairs_groups_and_outlier_rule():
    from folderfit.frozen import similarity

    z = similarity.normalise(np.array([[1, 0, 0], [0.99, 0.05, 0], [0, 1, 0], [0, 0.8, 0.6], [0, 0, 1]]))
    pairs = similarity.similar_pairs(z, 0.95)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert similarity.groups(5, pairs).tolist() == [0, 0, 2, 3, 4]
    index, sim = similarity.nearest(z, 2)
    assert index[0, 0] == 1 and 0 not in index[0]
    flags, threshold = similarity.outlier_flags(np.array([0.3, 0.31, 0.32, 0.33, 0.34, 0.9]), 1.7)
    assert flags.tolist() == [False] * 5 + [True] and 0.34 < threshold < 0.9


def test_thumbnails_find_resized_and_reencoded_copies_only(tmp_path):
    """Backbone-free copies: a JPEG re-encode and a downsized copy of one picture correlate
    >= 0.998 with it at 32x32; other pictures of the same class, and a flat image, do not."""
    from folderfit.frozen import similarity

    rng = np.random.default_rng(5)
    original = T.picture("blobs", 96, rng)
    files = [tmp_path / name for name in ("a.png", "a_copy.jpg", "a_small.png", "b.png", "c.png", "flat.png")]
    original.save(files[0])
    original.save(files[1], quality=90)
    original.resize((60, 60), Image.Resampling.BILINEAR).save(files[2])
    T.picture("blobs", 96, rng).save(files[3])
    T.picture("bars", 96, rng).save(files[4])
    Image.new("RGB", (96, 96), (90, 90, 90)).save(files[5])
    pairs = similarity.pairs_above(similarity.thumbnails(files), similarity.THUMBNAIL_CORRELATION)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (0, 2), (1, 2)], pairs


# ------------------------------------------------------------------ the console command
def test_review_command_prints_the_lists_and_writes_a_template(reviewed, tmp_path, capsys):
    from folderfit.artifacts import corrections
    from folderfit.cli import main

    work, source, plants = reviewed
    template = tmp_path / "todo.csv"
    main(["review", "--dir", str(work / "metrics/review"), "--top", "4", "--template", str(template)])
    out = capsys.readouterr().out
    assert "label issues:" in out and "near-duplicates:" in out and "outliers:" in out
    assert all(p in out for p in plants["moved"].values()), out
    fixes = corrections.read(source, template)  # a valid corrections file, as it is
    _, scores = read_csv(work / "metrics/review/scores.csv")
    split = {r["path"]: r["split"] for r in scores}
    top = {*plants["moved"].values(), plants["copy"][1]}
    assert set(fixes) == {p for p in top if split[p] != "test"}  # never a test image
    assert all(f"#   {p!r}" in template.read_text() for p in top if split[p] == "test")
    assert {f.new_class for f in fixes.values()} <= {"bars", "blobs", "checks"}
    with pytest.raises(SystemExit):
        main(["review", "--dir", str(work / "metrics/review"), "--template", str(template)])
    assert "exists" in capsys.readouterr().err


class FakeExtractor:
    """Vectors that separate two classes; their mirror images keep or swap the class."""

    def __init__(self, mirror_keeps_class: bool):
        self.keeps = mirror_keeps_class

    def features_of(self, requests, desc=""):
        from folderfit.frozen import feature_cache

        out = []
        for files, view in requests:
            signs = torch.tensor([1.0 if "a/" in str(f) else -1.0 for f in files])
            if view == feature_cache.FLIP and not self.keeps:
                signs = -signs
            out.append(torch.stack([signs, torch.ones_like(signs)], 1))
        return out


@pytest.mark.parametrize("keeps", [True, False])
def test_hflip_auto_follows_trains_mirror_test(keeps):
    from folderfit.frozen import feature_cache
    from folderfit.pipeline.review import follow_mirror_test

    rows = [{"split": s, "class": c} for s in ("train", "val") for c in "ab" for _ in range(6)]
    files = [Path(f"{r['class']}/{i}.png") for i, r in enumerate(rows)]
    labels = np.array([0 if r["class"] == "a" else 1 for r in rows])
    views, test = follow_mirror_test(FakeExtractor(keeps), files, rows, labels, 2)
    assert views == ([feature_cache.CLEAN, feature_cache.FLIP] if keeps else [feature_cache.CLEAN])
    assert test["hflip"] is keeps and test["val_accuracy"] == 1.0
