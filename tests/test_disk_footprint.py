"""Disk no bigger than the photos (issue #33 item 1): prepare keeps no pixel copies. Its
manifest names the original files, which every later stage decodes through predict's path and
checks against the manifest's pixel hash: a file changed or removed since prepare is a
one-line error, never a silent different read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_project as T
import torch
from PIL import Image

from folderfit.artifacts import manifest
from folderfit.backbone.weights import Preprocess
from folderfit.errors import PipelineError
from folderfit.images import datasets, decode

PRE = Preprocess(48, 55, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
PREPARED_FILES = {"manifest.csv", "thumbnails.npy", "test_corrections.json"}


def photo(path: Path, seed: int, size=(320, 240)) -> None:
    """A detailed JPEG, the kind of file users have (several kB, not a flat colour)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(coarse, 8, 0), 8, 1).astype(np.int16)
    pixels += rng.integers(-30, 31, pixels.shape).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=85)


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    for c, kind in enumerate(("cans", "glass", "paper")):
        for i in range(6):
            photo(root / "photos" / kind / f"{i:02d}.jpg", 10 * c + i)
    T.write_params(root, **{"data.source": "photos", "data.image_size": PRE.image_size,
                            "data.test_fraction": 0.2})
    T.prepare(root)
    return root


def samples(project: Path) -> list:
    """read_manifest's (file, class index) pairs, every split, as evaluate and train get them."""
    _, splits = manifest.read_manifest(project / "data/prepared")
    return [s for split in splits.values() for s in split]


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_prepared_holds_no_pixels_and_is_far_below_the_photos(project):
    prepared = project / "data/prepared"
    assert {p.name for p in prepared.rglob("*")} <= PREPARED_FILES
    assert size_of(prepared) * 5 < size_of(project / "photos")
    rows = manifest.read_manifest_rows(prepared)
    assert len(rows) == 18 and {r["root"] for r in rows} == {"photos"}  # relative stays relative
    files = [manifest.image_path(prepared, r) for r in rows]
    assert sorted(f.resolve() for f in files) == sorted(p.resolve() for p in (project / "photos").rglob("*.jpg"))


def test_evaluate_reads_predicts_pixels_from_the_originals(project):
    """What evaluate's dataset gives for a manifest row is predict's input for the file."""
    pairs = samples(project)
    dataset = datasets.ImageTensorDataset(pairs, datasets.eval_geometry(PRE))
    for k, (path, _) in enumerate(pairs):
        assert isinstance(path, decode.SourceImage)
        assert torch.equal(dataset[k][0], decode.network_image(Path(str(path)), PRE)), path


def test_a_copy_of_the_project_reads_its_own_photos(project, tmp_path):
    """`dvc exp run` works in a copy of the project: a relative data.source resolves there."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(project, moved)
    shutil.rmtree(project)
    pairs = samples(moved)
    assert all(Path(p).resolve().is_relative_to(moved.resolve()) for p, _ in pairs)
    assert datasets.decode_file(pairs[0][0]).shape[0] == 3


def one_line_error(path: Path) -> str:
    with pytest.raises(PipelineError) as caught:
        datasets.decode_file(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "dvc repro" in message
    return message


def test_a_source_changed_after_prepare_is_a_one_line_error(project):
    path, _ = samples(project)[0]
    photo(Path(path), seed=999)  # another picture under the same name
    assert "changed since prepare" in one_line_error(path)
    # the evaluate and train readers stop too, with the same line
    dataset = datasets.ImageTensorDataset([(path, 0)], datasets.eval_geometry(PRE))
    with pytest.raises(PipelineError, match="changed since prepare"):
        dataset[0]


def test_a_deleted_source_is_a_one_line_error(project):
    path, _ = samples(project)[1]
    os.remove(path)
    assert "not found" in one_line_error(path)


def test_same_pixels_in_new_bytes_still_read(tmp_path):
    """The check is on the decoded pixels: a lossless re-save of a photo is the same photo."""
    root = tmp_path / "project"
    T.make_image_folder(root / "photos", per_class=4, size=40)
    T.write_params(root, **{"data.source": "photos", "data.image_size": 32, "data.test_fraction": 0})
    T.prepare(root)
    path, _ = samples(root)[0]
    before = datasets.decode_file(path)
    Image.open(path).save(path, compress_level=0)  # other bytes, same pixels
    assert torch.equal(datasets.decode_file(path), before)


def test_names_that_are_not_utf8_are_found(tmp_path):
    root = tmp_path / "project"
    T.make_image_folder(root / "photos", per_class=4, size=40)
    odd = os.fsdecode(b"caf\xe9 100%.png")
    os.rename(root / "photos/bars/000.png", root / "photos/bars" / odd)
    T.write_params(root, **{"data.source": str(root / "photos"), "data.image_size": 32,
                            "data.test_fraction": 0})
    T.prepare(root)
    rows = manifest.read_manifest_rows(root / "data/prepared")
    row = next(r for r in rows if r["source"].startswith("bars/caf"))
    assert row["root"] == (root / "photos").as_posix()  # an absolute data.source stays absolute
    path = manifest.image_path(root / "data/prepared", row)
    assert path == root / "photos/bars" / odd and datasets.decode_file(path).shape[0] == 3


def test_the_error_stays_one_line_from_a_loader_worker(project):
    """On a GPU the images are decoded in DataLoader workers, whose errors torch rebuilds in
    the main process from the worker's traceback text."""
    path, _ = samples(project)[2]
    photo(Path(path), seed=998)
    dataset = datasets.ImageTensorDataset([(path, 0)], datasets.eval_geometry(PRE))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1)
    with pytest.raises(PipelineError) as caught:
        next(iter(loader))
    assert str(caught.value) == one_line_error(path)
