"""The -q / -v switch: quiet keeps warnings and each command's answer, drops status lines and
progress; verbose adds details; the stages take the level from FOLDERFIT_VERBOSITY."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tiny_project as T

from folderfit import __version__, cli
from folderfit.artifacts import model_file
from folderfit.backbone import architecture
from folderfit.support import progress, report

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    T.make_image_folder(root / "images", per_class=2, size=36, seed=3)
    built = architecture.build_model("mobilenet_v3_small", len(T.CLASSES), "none", 0)
    model_file.save_model_file(root / "model.pt", built, list(T.CLASSES), built.preprocess.with_image_size(32))
    return root / "model.pt", root / "images"


def folderfit(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "folderfit", *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=env)


def test_quiet_predict_keeps_the_csv_and_drops_the_status_line(model_and_images):
    model, images = model_and_images
    normal = folderfit("predict", str(images), "--model", str(model))
    quiet = folderfit("-q", "predict", str(images), "--model", str(model))
    assert normal.returncode == quiet.returncode == 0, normal.stderr + quiet.stderr
    assert "image(s) classified" in normal.stderr
    assert "image(s) classified" not in quiet.stderr
    assert quiet.stdout == normal.stdout and quiet.stdout.count("\n") == 1 + 2 * len(T.CLASSES)


def test_version_names_the_installed_library():
    done = folderfit("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"folderfit {__version__}"


def test_levels_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv(report.ENV, "quiet")
    report.say("status")
    report.detail("inner")
    assert list(progress.progress([1, 2], desc="x", interval=0)) == [1, 2]
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv(report.ENV, "verbose")
    report.say("status")
    report.detail("inner")
    assert capsys.readouterr().out == "status\ninner\n"
    monkeypatch.setenv(report.ENV, "loud")  # a typo shows everything normal, and says so
    report.say("status")
    report.detail("inner")
    captured = capsys.readouterr()
    assert captured.out == "status\n" and "FOLDERFIT_VERBOSITY='loud'" in captured.err


def test_a_verbose_stage_names_its_module(monkeypatch, capsys):
    monkeypatch.setenv(report.ENV, "verbose")
    ran = []
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda module: type("Stage", (), {"run": staticmethod(lambda params: ran.append(module))}))
    monkeypatch.setattr("folderfit.params.load_params", lambda: "params")
    cli.stage_main("train", "doc", argv=[])
    assert ran == ["folderfit.pipeline.train"]
    assert "train: folderfit.pipeline.train.run" in capsys.readouterr().out


def test_cli_switches_set_the_level(monkeypatch):
    monkeypatch.delenv(report.ENV, raising=False)
    assert cli.build_parser().parse_args(["-q", "describe", "x"]).quiet
    with pytest.raises(SystemExit):  # one or the other
        cli.build_parser().parse_args(["-q", "-v", "describe", "x"])
