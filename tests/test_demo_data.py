"""Stage demo_data through `dvc repro`: the digits are made only when data.source is the demo
folder; with the user's own photos the stage leaves a note, and pointing data.source back at
the demo makes them (data.source is one of its params)."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import ENV, make_repo, run, write_image_folder

from folderfit.pipeline.demo_data import NOT_USED, demo_is_used


def set_source(repo: Path, source: str) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = source
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def images_below(folder: Path) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def test_demo_digits_are_made_only_when_they_are_the_source(tmp_path):
    repo = make_repo(tmp_path / "repo")
    own = write_image_folder(tmp_path / "own photos", per_class=2)
    set_source(repo, str(own))
    out = run(["dvc", "repro", "demo_data"], repo, env=ENV)
    assert "the demo set is not made" in out.stdout
    assert images_below(repo / "data/demo") == []
    assert str(own) in (repo / "data/demo" / NOT_USED).read_text()

    set_source(repo, "data/demo")
    out = run(["dvc", "repro", "demo_data"], repo, env=ENV)
    assert "Running stage 'demo_data'" in out.stdout  # data.source is a param of the stage
    made = images_below(repo / "data/demo")
    assert len(made) == 10 * 6 and not (repo / "data/demo" / NOT_USED).exists()  # TINY: 6 per digit


def test_which_sources_need_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert demo_is_used("data/demo") and demo_is_used("./data/demo/") and demo_is_used("data")
    assert demo_is_used(str(tmp_path / "data/demo/3"))
    assert not demo_is_used("photos") and not demo_is_used("data/demo-copy")
