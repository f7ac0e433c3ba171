"""folderfit export as one atomic step (issue 24): a failed parity check, a crash or a kill
leaves the previous export complete; bad --tolerance and unwritable folders fail before any
tracing. The tracing itself is faked here (tests/test_export.py runs the real one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_project as T
import torch

from folderfit.cli import build_parser
from folderfit.commands import export as export_command
from folderfit.errors import PipelineError

OLD = {"model.pt2": b"old program", "preprocess.json": b'{"old": 1}\n', "parity.json": b'{"old": 2}\n'}


def export(*argv: str) -> None:
    export_command.command(build_parser().parse_args(["export", *argv]))


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-atomic")
    images = T.make_image_folder(root / "images", per_class=2, size=40, seed=3)
    T.save_tiny_model(root / "model.pt", "mobilenet_v3_small", 32)
    return root / "model.pt", images


@pytest.fixture
def fake_tracing(monkeypatch):
    """torch.export stand-ins: the 'program' is the eager model; files hold a marker."""
    calls = []

    def save(program, path):
        calls.append("save")
        Path(path).write_bytes(b"new program")

    monkeypatch.setattr(export_command, "export_program", lambda model, example: calls.append("trace") or model)
    monkeypatch.setattr(export_command, "save_program", save)
    state = {"offset": 0.0}
    monkeypatch.setattr(export_command, "run_program", lambda path, batch: state["model"](batch).float() + state["offset"])
    real_export_into = export_command._export_into

    def export_into(tmp, model_file, *args):
        from folderfit.artifacts.model_file import load_model_file

        state["model"] = load_model_file(model_file).model.float().eval()
        with torch.no_grad():
            return real_export_into(tmp, model_file, *args)

    monkeypatch.setattr(export_command, "_export_into", export_into)
    return calls, state


def old_export(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, data in OLD.items():
        (folder / name).write_bytes(data)


def assert_old(folder: Path) -> None:
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == OLD
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def args(model_file, images, out):
    return ("--model", str(model_file), "--out-dir", str(out), "--images", str(images),
            "--n-images", "3", "--formats", "torch_export")


def test_success_swaps_the_whole_folder(model_and_images, tmp_path, fake_tracing):
    out = tmp_path / "export"
    old_export(out)
    export(*args(*model_and_images, out))
    assert (out / "model.pt2").read_bytes() == b"new program"
    assert json.loads((out / "parity.json").read_text())["n_images"] == 3
    assert "class_names" in json.loads((out / "preprocess.json").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name != "export"]


def test_failed_parity_keeps_the_previous_export(model_and_images, tmp_path, fake_tracing):
    calls, state = fake_tracing
    state["offset"] = 0.01
    out = tmp_path / "export"
    old_export(out)
    with pytest.raises(PipelineError, match="parity check FAILED.*previous export there is kept"):
        export(*args(*model_and_images, out))
    assert "save" in calls
    assert_old(out)


def test_crash_midway_keeps_the_previous_export(model_and_images, tmp_path, fake_tracing, monkeypatch):
    out = tmp_path / "export"
    old_export(out)
    monkeypatch.setattr(export_command, "write_json", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export(*args(*model_and_images, out))
    assert_old(out)


def test_killed_run_leftovers_are_cleared(model_and_images, tmp_path, fake_tracing):
    out = tmp_path / "export"
    old_export(out)
    dead = tmp_path / ".export.export-999999999.tmp"  # a pid that cannot be alive
    dead.mkdir()
    (dead / "model.pt2").write_bytes(b"half")
    export(*args(*model_and_images, out))
    assert not dead.exists() and (out / "model.pt2").read_bytes() == b"new program"


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_tolerance_is_one_line(model_and_images, tmp_path, fake_tracing, value):
    calls, _ = fake_tracing
    with pytest.raises(PipelineError, match=r"--tolerance .*must be a finite number >= 0") as exc:
        export(*args(*model_and_images, tmp_path / "e"), "--tolerance", value)
    assert "\n" not in str(exc.value) and not calls and not any(tmp_path.iterdir())


def test_unwritable_folder_fails_before_tracing(model_and_images, tmp_path, fake_tracing):
    calls, _ = fake_tracing
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PipelineError, match="cannot write there"):
        export(*args(*model_and_images, tmp_path / "a_file" / "export"))
    assert not calls


def test_folder_with_other_files_is_refused(model_and_images, tmp_path, fake_tracing):
    calls, _ = fake_tracing
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"precious")
    with pytest.raises(PipelineError, match="holds files that are not an export's"):
        export(*args(*model_and_images, models))
    assert (models / "model.pt").read_bytes() == b"precious" and not calls
