"""One preprocessing path: evaluate's input for a prepared image is predict's input for the
original file (issue 24: a lossy stored copy made them differ by up to 0.32 in confidence;
prepare now keeps no copy, and evaluate decodes the original the way predict does)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tiny_project as T
import torch
from PIL import Image

from folderfit.artifacts import manifest as prepared_manifest
from folderfit.artifacts.model_file import load_model_file
from folderfit.images import datasets, decode

SIZES = {"big": (1024, 768), "small": (300, 168), "tall": (168, 300)}


def noise_jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    """High-detail texture: where a re-encoded copy differs most from the original."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w].astype(np.int16)
    pixels += rng.integers(-60, 61, (h, w, 3)).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one-path")
    for c, kind in enumerate(T.CLASSES):
        (root / "src" / kind).mkdir(parents=True)
        for i in range(4):
            name = list(SIZES)[i % len(SIZES)]
            noise_jpeg(root / "src" / kind / f"{name}{i}.jpg", SIZES[name], seed=10 * c + i)
    T.write_params(root, **{"data.source": "src", "data.image_size": 64, "data.test_fraction": 0.25,
                            "precision": "fp32"})
    T.prepare(root)
    T.save_tiny_model(root / "models" / "model.pt", "mobilenet_v3_small", 64)
    return root


def manifest(project: Path) -> list[dict]:
    with open(project / "data/prepared/manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_prepared_copy_gives_predicts_input(project):
    """Eval path on a prepared image == predict path on the original, pixel for pixel."""
    loaded = load_model_file(project / "models/model.pt")
    rows = manifest(project)
    assert len(rows) == 12
    samples = [(prepared_manifest.image_path(project / "data/prepared", r), 0) for r in rows]
    # the manifest names the originals: no pixels are kept under data/prepared
    assert [s[0].resolve() for s in samples] == [(project / "src" / r["source"]).resolve() for r in rows]
    evaluated = datasets.ImageTensorDataset(samples, datasets.eval_geometry(loaded.preprocess))
    for k, row in enumerate(rows):
        original = project / "src" / row["source"]
        assert torch.equal(evaluated[k][0], decode.network_image(original, loaded.preprocess)), row["file"]
        # the manifest keeps the original's size
        assert (int(row["width"]), int(row["height"])) == Image.open(original).size


def test_probabilities_agree(project):
    """A model's probabilities: predict on the originals == evaluate's on the prepared copies."""
    from folderfit.compute import classifier as model_classifier

    loaded = load_model_file(project / "models/model.pt")
    rows = manifest(project)
    originals = [project / "src" / r["source"] for r in rows]
    probs, order, failed = model_classifier.predict_files(loaded, originals, 5, "fp32", progress=False, device="cpu")
    assert not failed and order == list(range(len(rows)))
    samples = [(prepared_manifest.image_path(project / "data/prepared", r), 0) for r in rows]
    dataset = datasets.ImageTensorDataset(samples, datasets.eval_geometry(loaded.preprocess))
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    normalizer = datasets.Normalizer(loaded.preprocess.mean, loaded.preprocess.std)
    with torch.no_grad():
        expected = torch.softmax(loaded.model.float().eval()(normalizer(batch)), 1)
    assert (probs - expected).abs().max() < 1e-5
    # the folderfit.load API: an opened (unloaded) JPEG takes the same path as its file
    classifier = model_classifier.Classifier(loaded, "fp32", "cpu")
    got = classifier.probabilities([Image.open(originals[0])])
    assert (got[0] - expected[0]).abs().max() < 1e-5


def test_draft_rule_is_shared():
    """A large JPEG is drafted (decoded at a reduced scale) by the one rule."""
    assert decode.draft_factor(4000, 3000, 325) == 8  # 375 >= 325
    assert decode.draft_factor(2048, 1536, 325) == 4  # 384 >= 325, 192 is not
    assert decode.draft_factor(1300, 650, 325) == 2
    assert decode.draft_factor(1299, 649, 325) == 1
    assert decode.draft_factor(1024, 768, 80) == 8
    assert decode.draft_factor(300, 168, 80) == 2
    assert decode.draft_factor(4000, 3000, None) == 1


def test_extreme_aspect_ratio_refused(tmp_path):
    """A 6000x1 PNG (~100 bytes) would become a 1.5 GB tensor after the resize."""
    path = tmp_path / "line.png"
    Image.new("RGB", (6000, 1), (9, 9, 9)).save(path)
    assert path.stat().st_size < 200
    with pytest.raises(decode.BadImage, match="aspect ratio 6000:1"):
        decode.decode_upright(path, 40)
    Image.new("RGB", (600, 40)).save(tmp_path / "wide.png")  # 15:1 is fine
    assert decode.decode_upright(tmp_path / "wide.png", 40)[0].size == (600, 40)


def test_decompression_bomb_message(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(decode.BadImage, match="decompression bomb.*limit is 10000 pixels"):
        decode.decode_upright(path, 40)


def test_12_bit_png_keeps_its_brightness(tmp_path):
    """Samples 0..4095 in a 16-bit PNG (a 12-bit sensor) are scaled by 4095, not 65535."""
    ramp = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "12bit.png")
    img, _ = decode.decode_upright(tmp_path / "12bit.png", None)
    arr = np.asarray(img)
    assert arr[0, -1].tolist() == [255, 255, 255] and arr[0, 0].tolist() == [0, 0, 0]
    assert abs(int(arr[0, 32, 0]) - round(ramp[0, 32] / 4095 * 255)) <= 1
    full = (ramp.astype(np.uint32) * 16).astype(np.uint16)  # the same picture at 16 bits
    full[0, -1] = 65535
    Image.fromarray(full).save(tmp_path / "16bit.png")
    arr16 = np.asarray(decode.decode_upright(tmp_path / "16bit.png", None)[0])
    assert np.abs(arr16.astype(int) - arr.astype(int)).max() <= 1
