"""The feature cache (folderfit.frozen.feature_cache): a hit returns exactly what a computation would,
keys change with everything that changes a feature, and the cache never changes results."""

from __future__ import annotations

import tiny_project as T
import torch

from folderfit.backbone import architecture
from folderfit.compute.runtime import Runtime
from folderfit.frozen import feature_cache

CPU = Runtime(torch.device("cpu"), None)


def extractor(seed: int = 0, image_size: int = 32) -> feature_cache.FeatureExtractor:
    torch.manual_seed(seed)
    built = architecture.build_model("mobilenet_v3_small", 3, "none", seed)
    backbone, _ = feature_cache.backbone_only(built.model, built.head_name)
    return feature_cache.FeatureExtractor(backbone, built.preprocess.with_image_size(image_size), CPU, batch_size=4)


def image_files(tmp_path, n_per_class=3):
    root = T.make_image_folder(tmp_path / "images", per_class=n_per_class, size=40, seed=7)
    return sorted(root.rglob("*.png"))


def test_cached_features_equal_computed_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    view = feature_cache.View("augment", 1, 0.5, True, seed=3)
    cold = extractor()
    first = cold.features(files, view)
    assert cold.computed == len(files) and cold.reused == 0
    warm = extractor()  # a new process would see the same packs
    again = warm.features(files, view)
    assert warm.computed == 0 and warm.reused == len(files)
    assert torch.equal(first, again)
    without = extractor()
    without.root = None
    assert torch.equal(without.features(files, view), first)


def test_augmented_view_is_the_same_crop_whatever_the_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    view = feature_cache.View("augment", 2, 0.3, True, seed=1)
    whole = extractor()
    whole.root = None
    subset = extractor()
    subset.root = None
    reordered = list(reversed(files[2:7]))
    assert torch.equal(subset.features(reordered, view), whole.features(files, view)[2:7].flip(0))


def test_keys_follow_everything_that_changes_a_feature(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    base = extractor()
    digests = {base.spec_digest(feature_cache.CLEAN), base.spec_digest(feature_cache.FLIP),
               base.spec_digest(feature_cache.View("augment", 1, 0.5, True, 0)),
               base.spec_digest(feature_cache.View("augment", 2, 0.5, True, 0)),
               base.spec_digest(feature_cache.View("augment", 1, 0.5, True, 1)),
               extractor(seed=1).spec_digest(feature_cache.CLEAN),  # other random weights
               extractor(image_size=48).spec_digest(feature_cache.CLEAN)}
    assert len(digests) == 7
    assert extractor().spec_digest(feature_cache.CLEAN) == base.spec_digest(feature_cache.CLEAN)
    files = image_files(tmp_path, 1)
    edited = tmp_path / "edited.png"
    edited.write_bytes(files[0].read_bytes() + b"\0")  # other bytes: another image key
    assert base.keys([files[0]]) != base.keys([edited])


def test_extraction_leaves_the_global_random_stream_alone(tmp_path, monkeypatch):
    """Later augmentation must not depend on whether features were computed or cached."""
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    ex = extractor()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    ex.features(files, feature_cache.View("augment", 1, 0.5, True, 0))  # computed
    ex.features(files, feature_cache.CLEAN)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_damaged_pack_is_recomputed_and_an_unwritable_cache_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    reference = extractor().features(files)
    (pack,) = (tmp_path / "cache").rglob("*.pt")
    pack.write_bytes(b"PK\x03\x04 broken")
    again = extractor()
    assert torch.equal(again.features(files), reference) and again.computed == len(files)
    assert "unreadable" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FOLDERFIT_CACHE", str(blocker))
    assert torch.equal(extractor().features(files), reference)
    assert "not writable" in capsys.readouterr().err


def test_several_views_in_one_stream_each_pair_computed_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    ex = extractor()
    ex.root = None  # no disk cache: the extractor still remembers what it computed
    clean, flipped, clean_again = ex.features_of([(files, feature_cache.CLEAN), (files, feature_cache.FLIP), (files, feature_cache.CLEAN)])
    assert ex.computed == 2 * len(files) and torch.equal(clean, clean_again)
    assert torch.equal(ex.features(files[:2], feature_cache.FLIP), flipped[:2])
    assert ex.computed == 2 * len(files) and ex.reused == 0  # served from memory, not recomputed
    alone = extractor()
    alone.root = None
    assert torch.equal(alone.features(files, feature_cache.FLIP), flipped)  # same numbers, batched alone


def test_mirrored_views_reuse_the_clean_pixels_and_give_the_same_numbers(tmp_path, monkeypatch):
    """A later stream's mirrored views start from the clean views' pixels kept by the main
    process (no second decode and resize), with exactly the numbers of a fresh decode."""
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    ex = extractor()
    ex.root = None
    ex.features(files, feature_cache.CLEAN)
    assert set(ex._pixels.images) == set(ex.keys(files))
    image = ex._pixels.images[ex.keys(files)[0]]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 32, 32)
    reused = ex.features(files, feature_cache.FLIP)
    fresh = extractor()
    fresh.root = None
    assert torch.equal(reused, fresh.features(files, feature_cache.FLIP)) and not fresh._pixels.images
