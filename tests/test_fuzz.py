"""Property test: random file and folder names (any bytes Linux allows in a name) holding random
bytes (valid, truncated or junk images) go through `prepare` and `predict`.

Whatever the input: prepare either succeeds or stops with one PipelineError line; on success
every file is used or listed with a reason, the reports are strict UTF-8, stored names fit in
255 bytes; predict writes one row for every image prepare could read, as valid UTF-8."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import nested, repo_params, run_stage
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from folderfit.errors import PipelineError
from folderfit.artifacts import manifest
from folderfit.images import image_folder

EXTENSIONS = [b".png", b".jpg", b".JPEG", b".gif", b".bmp", b".webp", b".txt", b""]


def name_bytes(max_size: int):
    """A file name: 1..max_size bytes, anything but '/' and NUL, not '.' or '..'."""
    return st.lists(st.integers(1, 255).filter(lambda b: b != 0x2F), min_size=1,
                    max_size=max_size).map(bytes).filter(lambda n: n not in (b".", b".."))


@st.composite
def image_bytes(draw) -> tuple[str, bytes]:
    """(kind, content): a real image in some format, a cut-off one, junk, or nothing."""
    kind = draw(st.sampled_from(["image", "image", "truncated", "junk", "empty"]))
    if kind in ("junk", "empty"):
        return kind, b"" if kind == "empty" else draw(st.binary(min_size=1, max_size=300))
    side = draw(st.integers(1, 24))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]))
    pixels = np.frombuffer(draw(st.binary(min_size=side * side * 3, max_size=side * side * 3)),
                           dtype=np.uint8).reshape(side, side, 3)
    img = Image.fromarray(pixels, "RGB").convert(mode)
    if fmt in ("JPEG", "BMP") and mode in ("RGBA", "P"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(1, max(1, len(data) - 1)))]
    return kind, data


@st.composite
def source_files(draw) -> list[tuple[bytes, bytes]]:
    """[(path below the source, content)]: random files in two fixed class folders and maybe a
    third class with a random name, some in random sub-folders."""
    folders = [b"a", b"b"]
    if draw(st.booleans()):
        folders.append(draw(name_bytes(60).filter(lambda n: n not in (b"a", b"b"))))
    files = []
    for _ in range(draw(st.integers(1, 8))):
        folder = draw(st.sampled_from(folders))
        sub = draw(st.one_of(st.just(b""), name_bytes(200).map(lambda n: n + b"/")))
        stem = draw(name_bytes(247))
        files.append((folder + b"/" + sub + stem + draw(st.sampled_from(EXTENSIONS)),
                      draw(image_bytes())[1]))
    return folders, files


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    import tiny_project as T

    path = tmp_path_factory.mktemp("fuzz-model") / "model.pt"
    T.save_tiny_model(path, "mobilenet_v3_small", 32, "none", classes=("a", "b"))
    return path


def write(root: Path, rel: bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def fixed_images(root: Path, folders: list[bytes]) -> None:
    """Three distinct valid images per class folder, so every class can be split."""
    rng = np.random.default_rng(0)
    for folder in folders:
        for i in range(3):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
            write(root, folder + b"/fixed%d.png" % i, buf.getvalue())


def covered(rel: str, listed: set[str]) -> bool:
    """rel itself, or a folder above it, is in `listed`."""
    parts = rel.split("/")
    return any("/".join(parts[:i]) in listed for i in range(1, len(parts) + 1))


@pytest.mark.slow  # 25 random folders through prepare and predict
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(source=source_files())
def test_random_names_and_bytes_through_prepare_and_predict(source, model_file):
    from folderfit.cli import build_parser
    from folderfit.commands import predict

    folders, files = source
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.chdir(tmp_name):
        tmp = Path(tmp_name)
        src = tmp / "src"
        fixed_images(src, folders)
        for rel, data in files:
            with contextlib.suppress(IsADirectoryError, NotADirectoryError, FileExistsError):
                write(src, rel, data)  # a name may clash with a folder made for another file
        params = repo_params(nested({"data.source": "src", "data.image_size": 16}))
        (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        try:
            run_stage("prepare", tmp)
        except PipelineError as exc:
            event(f"prepare stopped: {str(exc)[:60]}")
            assert "\n" not in str(exc)  # e.g. label conflicts that would empty a split
            return
        report = json.loads((tmp / "metrics/data.json").read_bytes().decode("utf-8", "strict"))
        with open(tmp / "data/prepared/manifest.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        used = {row["source"] for row in rows}
        listed = {s["file"] for s in report["skipped"]}
        on_disk = set()
        for dirpath, _, names in os.walk(os.fsencode(src)):
            for name in names:
                rel = os.path.relpath(os.path.join(dirpath, name), os.fsencode(src))
                on_disk.add(image_folder.printable(os.fsdecode(rel)))
        for rel in on_disk:  # every file is used or listed with its reason
            assert rel in used or covered(rel, listed), rel
        assert report["n_images"] == len(rows) == len(used)
        for row in rows:  # each row names its own original, whatever bytes its name holds
            path = manifest.image_path(tmp / "data/prepared", row)
            assert path.is_file() and path.resolve().is_relative_to(src.resolve())
            assert image_folder.printable(os.path.relpath(path, src)) == row["source"]

        out = tmp / "preds.csv"
        with contextlib.suppress(SystemExit):  # exit code 1 when some file was unreadable
            predict.command(build_parser().parse_args(
                ["predict", "src", "--model", str(model_file), "--output", str(out),
                 "--precision", "fp32"]))
        with open(out, newline="", encoding="utf-8", errors="strict") as fh:
            predicted = {row["path"].removeprefix("src/") for row in csv.DictReader(fh)}
        event(f"prepared {len(used)} images, {len(listed)} listed")
        assert predicted == used  # a row for every image prepare could read, whatever its name
