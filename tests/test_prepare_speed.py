"""prepare at the machine's speed (issue 21 item 3): JPEG draft decoding by the shared rule,
a process pool, and progress lines that also reach logs that are not terminals."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from folderfit.images import decode
from folderfit.pipeline import prepare
from folderfit.support.progress import progress


def big_jpeg(path, size=(2400, 1800)):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(path, quality=90)


def test_large_jpeg_is_drafted_and_keeps_its_size(tmp_path):
    path = tmp_path / "big.jpg"
    big_jpeg(path)
    img, size = decode.decode_upright(path, decode.store_side(64))  # stored side 80: 1/8 keeps 225 >= 160
    assert size == (2400, 1800) and img.size == (300, 225)
    full, _ = decode.decode_upright(path, None)
    assert full.size == (2400, 1800)
    # prepare and predict take the same (drafted) path: its stored copy is the same
    _, stored, _ = decode.stored_image(path, 64)
    assert stored.size == (107, 80) and stored.tobytes() == decode.shrink(img, 64).tobytes()


def test_decode_one_returns_the_hash_size_and_thumbnail_but_no_copy(tmp_path):
    from folderfit.frozen import similarity

    path = tmp_path / "big.jpg"
    big_jpeg(path)
    pixel_hash, reason, (size, thumbnail) = prepare.decode_one(path, 64)
    img, stored, _ = decode.stored_image(path, 64)
    assert size == (2400, 1800) and reason is None
    assert pixel_hash == decode.pixel_hash(img) and len(pixel_hash) == 64
    assert np.array_equal(thumbnail, similarity.thumbnail_pixels(stored)) and thumbnail.dtype == np.uint8
    missing, reason, _ = prepare.decode_one(tmp_path / "missing.jpg", 64)
    assert missing is None and reason.startswith("cannot read")


def test_progress_prints_plain_lines_when_not_a_terminal(monkeypatch):
    """tqdm stays silent when stderr is a file (CI logs): plain lines are printed instead."""
    out = io.StringIO()
    ticks = iter(range(0, 1000, 4))  # each step takes 4 "seconds"
    monkeypatch.setattr("folderfit.support.progress.time.monotonic", lambda: next(ticks))
    items = list(progress(range(10), total=10, desc="prepare", unit="images", interval=10, stream=out,
                          enabled=True))
    assert items == list(range(10))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("prepare: 3/10 images (30%), 12 s")
    assert lines[-1].startswith("prepare: 10/10 images (100%)")


def test_progress_can_be_switched_off():
    out = io.StringIO()
    assert list(progress(range(3), stream=out, enabled=False, interval=0)) == [0, 1, 2]
    assert out.getvalue() == ""
