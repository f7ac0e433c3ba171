"""params.yaml is read one way, DVC's (ruamel.yaml, YAML 1.2): the value a stage runs with is
the value `dvc params diff` shows. PyYAML (YAML 1.1) read `seed: 010` as octal 8 and
`num_epochs: 1:30` as sexagesimal 90 while DVC showed 10 and "1:30"."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
from conftest import REPO, make_repo, run

from folderfit.cli import stage_main
from folderfit.params import load_params, read_yaml

SEXAGESIMAL = "error: params.yaml: 'num_epochs' must be int, got '1:30'; fix the value in params.yaml"


def edit_line(path: Path, key: str, value: str) -> None:
    """Replace a top-level key's value as a user would type it (comment kept)."""
    text = path.read_text()
    new, count = re.subn(rf"(?m)^{key}:[ ]*[^ #\n]+", f"{key}: {value}", text)
    assert count == 1, key
    path.write_text(new)


def dvc_reads(path: Path) -> dict:
    from dvc.utils.serialize import load_yaml

    return load_yaml(str(path))


def preflight(workdir: Path, capsys) -> tuple[int, list[str]]:
    """The preflight stage's entry point (what `dvc repro` runs) in `workdir`."""
    code = 0
    with contextlib.chdir(workdir):
        try:
            stage_main("preflight", "", "folderfit.pipeline.preflight:run", argv=[])
        except SystemExit as exc:
            code = exc.code
    return code, capsys.readouterr().err.splitlines()


@pytest.fixture
def params_file(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    return path


def test_leading_zero_seed_is_the_decimal_number_dvc_shows(params_file, capsys):
    edit_line(params_file, "seed", "010")
    assert dvc_reads(params_file)["seed"] == 10
    assert load_params(params_file).seed == 10  # PyYAML: 8
    assert preflight(params_file.parent, capsys) == (0, [])


def test_sexagesimal_epochs_are_refused_by_preflight(params_file, capsys):
    edit_line(params_file, "num_epochs", "1:30")
    assert dvc_reads(params_file)["num_epochs"] == "1:30"
    code, err = preflight(params_file.parent, capsys)  # PyYAML: 90 epochs, passed
    assert (code, err) == (2, [SEXAGESIMAL])


def test_every_value_is_read_as_dvc_reads_it(params_file):
    """Spellings on which YAML 1.1 and 1.2 disagree, in one file: the same values as DVC."""
    text = ("a: 010\nb: 1:30\nc: 1e-3\nd: yes\ne: 0o17\nf: off\ng: 0x1F\nh: 1_000\n"
            "i: .5\nj: '010'\nk: ~\nl: 2001-12-14\n")
    params_file.write_text(text)
    assert read_yaml(text) == dvc_reads(params_file)
    assert read_yaml(text)["a"] == 10 and read_yaml(text)["d"] == "yes"


def test_duplicate_key_is_one_line_naming_the_file(params_file, capsys):
    params_file.write_text(params_file.read_text() + "seed: 7\n")
    code, err = preflight(params_file.parent, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: params.yaml: not valid YAML (found duplicate key \"seed\"")


@pytest.mark.slow
def test_dvc_repro_preflight_refuses_and_agrees_with_dvc_params_diff(tmp_path):
    repo = make_repo(tmp_path / "repo")
    edit_line(repo / "params.yaml", "num_epochs", "1:30")
    result = run(["dvc", "repro", "preflight"], repo, check=False)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [SEXAGESIMAL]
    run(["git", "checkout", "params.yaml"], repo)
    edit_line(repo / "params.yaml", "seed", "010")
    run(["dvc", "repro", "preflight"], repo)
    diff = json.loads(run(["dvc", "params", "diff", "--json"], repo).stdout)
    assert diff["params.yaml"]["seed"]["new"] == 10
    with contextlib.chdir(repo):
        assert load_params().seed == 10
