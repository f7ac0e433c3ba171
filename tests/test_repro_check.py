"""The reproducibility check (folderfit repro-check, folderfit/commands/repro_check.py) and the CI workflow that runs it.

The check on the real pipeline runs in .ci/run (.ci/workflow_selftest.py, tiny config). Here it
runs on small DVC pipelines built in the test, one deterministic and one not, so that both
verdicts and the exemption of metrics/timing.json are exercised in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/pipeline.yml"

STAGE_SCRIPT = """\
import json, os, sys, time
from pathlib import Path
noisy = sys.argv[1] == "noisy"
Path("out").mkdir(exist_ok=True)
Path("out/model.bin").write_bytes(os.urandom(8) if noisy else b"weights")
Path("out/curve.tsv").write_text("step\\tloss\\n0\\t1.0\\n")
Path("metrics").mkdir(exist_ok=True)
Path("metrics/timing.json").write_text(json.dumps({"wall_s": time.time()}))
"""


def make_pipeline(path: Path, mode: str) -> Path:
    """A git repo with params.yaml and a one-stage dvc.yaml; `noisy` writes random bytes."""
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    (path / "stage.py").write_text(STAGE_SCRIPT)
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"fit": {
        "cmd": f"{sys.executable} stage.py {mode}", "deps": ["stage.py"], "params": ["seed"],
        "outs": ["out"], "metrics": [{"metrics/timing.json": {"cache": False}}]}}}))
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    return path


def check(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "folderfit", "repro-check", *args], cwd=repo,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow  # dvc repro, twice
def test_identical_reruns_pass_and_timing_is_exempt(tmp_path):
    result = check(make_pipeline(tmp_path, "steady"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exempt: metrics/timing.json (wall-clock time" in result.stdout
    assert "compared 1 outputs of 1 stages" in result.stdout
    assert "repro-check: OK: 2 runs gave identical outputs" in result.stdout


@pytest.mark.slow
def test_a_difference_fails_and_names_output_and_file(tmp_path):
    repo = make_pipeline(tmp_path, "noisy")
    result = check(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: 1 output(s) of run 2 differ from run 1" in result.stderr
    assert "stage fit: out  md5 " in result.stderr
    assert "files that differ: model.bin" in result.stderr
    assert "curve.tsv" not in result.stderr
    # the user's workspace is untouched: the check ran in a temporary copy
    assert not (repo / "out").exists() and not (repo / "dvc.lock").exists()


def test_set_overrides_are_validated(tmp_path):
    repo = make_pipeline(tmp_path, "steady")
    result = check(repo, "--set", "num_epoch=2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: params.yaml: unknown key 'num_epoch' (did you mean 'num_epochs'?)")
    result = check(repo, "--set", "num_epochs")
    assert result.returncode == 2 and "expected KEY=VALUE" in result.stderr


def test_set_writes_the_copy_params(tmp_path):
    from folderfit.commands.repro_check import apply_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    raw = apply_overrides(tmp_path / "params.yaml", ["num_epochs=2", "data.image_size=32",
                                                     "data.source=photos"], Path("/origin"))
    assert raw["num_epochs"] == 2 and raw["data"]["image_size"] == 32
    # a source folder outside the copy (not a pipeline output) is read from the original repo
    assert raw["data"]["source"] == "/origin/photos"
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == raw


# ------------------------------------------------------------------ the workflow file
def test_workflow_matches_the_github_schema():
    pytest.importorskip("check_jsonschema", reason="pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                             "vendor.github-workflows", str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_shell_step_is_a_script_that_ci_runs():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["reproduce"]["steps"]
    runs = [s["run"].strip() for s in steps if "run" in s]
    assert len(runs) == 6
    for run in runs:
        script = run.removeprefix("bash ")
        assert run.startswith("bash .ci/steps/") and "\n" not in run, run
        assert (ROOT / script).is_file(), script
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0
