"""prepare stores each image's 32x32 review thumbnail (made while the image is decoded);
review uses it instead of reading every image again, with the same numbers."""

from __future__ import annotations

import numpy as np
import tiny_project as T
from conftest import run_stage, write_params

from folderfit.frozen import similarity
from folderfit.artifacts import manifest
from folderfit.paths import THUMBNAILS_NAME
from folderfit.pipeline.review import prepared_thumbnails, read_rows


def test_prepared_thumbnails_equal_the_files(tmp_path, monkeypatch):
    source = T.make_image_folder(tmp_path / "images", per_class=5, size=48, seed=2, suffix=".jpg")
    write_params(tmp_path, **{"data.source": str(source), "data.image_size": 32})
    run_stage("prepare", tmp_path)
    monkeypatch.chdir(tmp_path)
    prepared = tmp_path / "data/prepared"
    files = [manifest.image_path("data/prepared", r) for r in read_rows()]
    known = prepared_thumbnails(read_rows())
    assert sorted(known) == sorted(f.as_posix() for f in files) and len(files) == 15
    assert np.array_equal(similarity.thumbnails(files, known), similarity.thumbnails(files))
    # a thumbnails file that does not match the manifest is ignored (the images are read)
    np.save(prepared / THUMBNAILS_NAME, np.zeros((3, 1024), np.uint8))
    assert prepared_thumbnails(read_rows()) == {}
    (prepared / THUMBNAILS_NAME).write_bytes(b"not numpy")
    assert prepared_thumbnails(read_rows()) == {}


def test_pairs_above_matches_brute_force():
    rng = np.random.default_rng(0)
    z = similarity.normalise(rng.normal(size=(300, 8)) + np.repeat(rng.normal(size=(30, 8)), 10, axis=0) * 3)
    threshold = 0.9
    expected = sorted((i, j, float(min(1.0, z[i] @ z[j]))) for i in range(len(z))
                      for j in range(i + 1, len(z)) if z[i] @ z[j] >= threshold)
    got = similarity.pairs_above(z, threshold)
    assert [(i, j) for i, j, _ in got] == [(i, j) for i, j, _ in expected] and len(got) > 100
    assert np.allclose([s for *_, s in got], [s for *_, s in expected], atol=1e-6)
