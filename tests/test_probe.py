"""folderfit.frozen.probe: views, the hflip auto decision on val, flip TTA, the refit on train + val."""

from __future__ import annotations

import torch

from folderfit.frozen import feature_cache, head, probe

N_CLASSES, DIM = 3, 16


def blobs(n_per_class: int, seed: int, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N_CLASSES).repeat_interleave(n_per_class)
    return centres[y] + 0.3 * torch.randn(len(y), DIM, generator=g), y


CENTRES = 2 * torch.eye(N_CLASSES, DIM)


def source(mirror_keeps_labels: bool, seed: int = 0):
    """Features of "train" and "val" under the clean and flip views (crops: clean + noise).
    Mirroring keeps each class's features (photos) or swaps classes 0 and 1 (handwriting)."""
    swapped = CENTRES[[1, 0, 2]]
    vectors, labels = {}, {}
    for i, split in enumerate(("train", "val")):
        x, y = blobs(12 if split == "train" else 6, seed + i, CENTRES)
        mirrored, _ = blobs(12 if split == "train" else 6, seed + 10 + i,
                            CENTRES if mirror_keeps_labels else swapped)
        vectors[split, feature_cache.CLEAN], vectors[split, feature_cache.FLIP], labels[split] = x, mirrored, y
        for k in (1, 2):
            for flip in (False, True):
                view = feature_cache.View("augment", k, 0.6, flip, 42)
                vectors[split, view] = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(k))
    asked = []

    def features(requests):
        asked.extend(requests)
        return [vectors[r] for r in requests]

    return features, labels, asked


def solve(features, labels, **kw):
    settings = {"hflip": "auto", "n_views": 1, "min_scale": 0.6, "seed": 42, "tta": "auto",
                "refit": False, **kw}
    return probe.solve(features, labels["train"], labels["val"], N_CLASSES, **settings)


def test_views_clean_then_mirror_then_crops():
    assert probe.training_views(False, 1, 0.6, 42) == [feature_cache.CLEAN]
    views = probe.training_views(True, 3, 0.6, 42)
    assert views[:2] == [feature_cache.CLEAN, feature_cache.FLIP]
    assert [(v.kind, v.index, v.hflip) for v in views[2:]] == [("augment", 1, True), ("augment", 2, True)]


def test_hflip_auto_keeps_flips_when_mirroring_keeps_the_labels():
    features, labels, _ = source(mirror_keeps_labels=True)
    solved = solve(features, labels)
    assert solved.mirror_test["hflip"] and solved.hflip
    assert solved.views == ["clean", "flip"] and solved.tta == "flip"  # tta auto follows flips


def test_hflip_auto_drops_flips_when_mirroring_changes_the_class():
    features, labels, asked = source(mirror_keeps_labels=False)
    solved = solve(features, labels)
    test = solved.mirror_test
    assert not test["hflip"] and not solved.hflip
    assert test["val_accuracy"] - test["val_accuracy_mirrored"] > test["tolerance"]
    assert solved.views == ["clean"] and solved.tta == "none"
    assert ("train", feature_cache.FLIP) not in asked  # the mirror images of training images are never computed


def test_fixed_hflip_skips_the_test_and_the_mirror_views():
    features, labels, asked = source(mirror_keeps_labels=True)
    solved = solve(features, labels, hflip=False, tta="none")
    assert solved.mirror_test is None and not solved.hflip
    assert all(view == feature_cache.CLEAN for _, view in asked)


def test_flip_tta_scores_val_on_the_mean_of_both_views():
    features, labels, _ = source(mirror_keeps_labels=True)
    solved = solve(features, labels, hflip=True, tta="flip")
    train_clean, train_flip, val_clean, val_flip = features(
        [("train", feature_cache.CLEAN), ("train", feature_cache.FLIP), ("val", feature_cache.CLEAN), ("val", feature_cache.FLIP)])
    expected = head.fit_head(torch.cat([train_clean, train_flip]), labels["train"].repeat(2),
                          (val_clean + val_flip) / 2, labels["val"], N_CLASSES)
    assert solved.tta == "flip"
    assert solved.fit.l2 == expected.l2 and solved.fit.val_loss == expected.val_loss


def test_refit_solves_again_on_train_and_val_at_the_chosen_l2():
    features, labels, asked = source(mirror_keeps_labels=True)
    kept = solve(features, labels, hflip=True, n_views=2, tta="none")
    refit = solve(features, labels, hflip=True, n_views=2, tta="none", refit=True)
    assert refit.fit.l2 == kept.fit.l2 and refit.refit
    views = probe.training_views(True, 2, 0.6, 42)
    assert {("val", v) for v in views} <= set(asked)  # every training view of val too
    x = torch.cat([torch.cat([features([("train", v)])[0], features([("val", v)])[0]]) for v in views])
    y = torch.cat([labels["train"], labels["val"]]).repeat(len(views))
    # the same convex problem, solved from the train head instead of along the l2 path: the
    # same function to the solver's tolerance (a weak l2 leaves the weights loosely pinned),
    # and deterministic
    weight, bias = head.refit(x, y, N_CLASSES, kept.fit.l2)
    got, expected = x @ refit.fit.weight.T + refit.fit.bias, x @ weight.T + bias
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    again = solve(features, labels, hflip=True, n_views=2, tta="none", refit=True)
    assert torch.equal(again.fit.weight, refit.fit.weight)
    assert not torch.equal(refit.fit.weight, kept.fit.weight)


def test_the_solve_is_deterministic():
    a = solve(*source(True)[:2], refit=True)
    b = solve(*source(True)[:2], refit=True)
    assert torch.equal(a.fit.weight, b.fit.weight) and a.mirror_test == b.mirror_test


def _noise_source(n_train: int, n_val: int, dim: int, seed: int):
    """Features with no relation to the labels: whatever a head scores on them beyond chance
    it learned from the very images it scores."""
    g = torch.Generator().manual_seed(seed)
    vectors = {(split, view): torch.randn(n, dim, generator=g)
               for split, n in (("train", n_train), ("val", n_val)) for view in (feature_cache.CLEAN, feature_cache.FLIP)}
    labels = {"train": torch.arange(n_train) % N_CLASSES, "val": torch.arange(n_val) % N_CLASSES}
    return probe.tensor_source(vectors), labels


def test_cross_validation_scores_only_images_outside_each_fit():
    # 300 dims for 90 images: a refit head memorises them, yet out-of-fold it must be at chance
    features, labels = _noise_source(60, 30, 300, seed=3)
    settings = {"hflip": False, "n_views": 1, "min_scale": 0.6, "tta": "none", "refit": True}
    memorised = probe.solve(features, labels["train"], labels["val"], N_CLASSES, seed=0, **settings)
    x = torch.cat([features([("train", feature_cache.CLEAN)])[0], features([("val", feature_cache.CLEAN)])[0]])
    y = torch.cat([labels["train"], labels["val"]])
    assert probe.accuracy(x @ memorised.fit.weight.T + memorised.fit.bias, y) > 0.9
    cv = probe.cross_validate(features, labels["train"], labels["val"], N_CLASSES, folds=5,
                          groups=list(range(90)), seed=0, **settings)
    assert cv.folds == 5 and sorted(set(cv.fold.tolist())) == [0, 1, 2, 3, 4]
    assert torch.equal(cv.labels, y)
    assert torch.allclose(cv.probs.sum(1), torch.ones(90, dtype=torch.float64))
    assert probe.accuracy(cv.probs, y) < 0.55  # chance is 1/3; a leak would give ~1.0


def test_cross_validation_keeps_copies_in_one_fold_and_learns_real_signal():
    features, labels, _ = source(mirror_keeps_labels=True)
    groups = [i // 2 for i in range(36 + 18)]  # pairs of "copies"
    cv = probe.cross_validate(features, labels["train"], labels["val"], N_CLASSES, folds=3,
                          groups=groups, seed=0, hflip="auto", n_views=1, min_scale=0.6,
                          tta="auto", refit=True)
    for a in range(0, 54, 2):
        assert cv.fold[a] == cv.fold[a + 1]
    assert probe.accuracy(cv.probs, cv.labels) > 0.9  # separable blobs: the estimate is high
