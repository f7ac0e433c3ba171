"""The project's shape: thin stage entry points, a library nothing imports them from, stage
deps that cover every import (and match the checkpoint's idea of "the code"), and command
lines whose --help runs nothing."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from folderfit.support import provenance

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
LOCAL_PACKAGES = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def local_import_closure(entry: Path) -> set[Path]:
    """Files of this repository reachable by imports from `entry` (strings naming a
    "module:function" target, as stage_main takes, count as imports too)."""
    todo, seen = [entry], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        names = imported_modules(path)
        names |= {node.value.split(":")[0] for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value.startswith("folderfit.") and ":" in node.value}
        for name in names:
            if name.split(".")[0] not in LOCAL_PACKAGES:
                continue
            parts = name.split(".")
            for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
                if candidate.is_file():
                    todo.append(candidate)
    return seen


ALWAYS = "(always_changed)"  # a stage that always runs (preflight) has its whole library current


def stage_deps(stage: str) -> list[str]:
    return STAGES[stage]["deps"] + ([ALWAYS] if STAGES[stage].get("always_changed") else [])


def declared_files(deps: list[str]) -> set[Path]:
    """The files a list of dvc.yaml deps covers (folders expanded, __pycache__ ignored);
    data/preflight.ok stands for the library files whose digest it records."""
    files = set()
    for dep in deps:
        if dep in ("data/preflight.ok", ALWAYS):
            files |= set(provenance.library_files())
        path = ROOT / dep
        if path.is_dir():
            files |= {p for p in path.rglob("*.py") if "__pycache__" not in p.parts}
        elif path.suffix == ".py":
            files.add(path)
    return files


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_every_import_of_its_entry_point(stage):
    entry = ROOT / "stages" / f"{stage}.py"
    assert entry.is_file(), f"stage {stage}: no entry script {entry}"
    cmd = STAGES[stage]["cmd"]
    command = PARAMS["train_cmd"] if cmd == "${train_cmd}" else cmd
    assert command.endswith(f"-m stages.{stage}"), command
    closure = local_import_closure(entry)
    declared = declared_files(stage_deps(stage))
    missing = sorted(str(p.relative_to(ROOT)) for p in closure - declared)
    assert not missing, f"stage {stage} imports files its dvc.yaml deps do not list: {missing}"
    assert any(p.parent.name == "folderfit" for p in closure), "the stage calls no library code"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_checkpoint_fingerprint_hashes_what_dvc_yaml_declares(stage):
    declared = declared_files(stage_deps(stage))
    fingerprinted = {p.resolve() for p in provenance.stage_code_files(stage) if p.suffix == ".py"}
    assert fingerprinted == {p.resolve() for p in declared}


def test_entry_points_are_thin_and_nothing_imports_them():
    for entry in (ROOT / "stages").glob("*.py"):
        code = entry.read_text()
        assert len(code.splitlines()) <= 15, f"{entry.name} is not a thin entry point"
        assert imported_modules(entry) <= {"folderfit.cli", "folderfit.cli.stage_main"}, entry.name
    for folder in ("folderfit", "tests", "bench", ".ci"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not any(m == "stages" or m.startswith("stages.") for m in imported_modules(path)), \
                f"{path.relative_to(ROOT)} imports a stage entry point"


def test_library_imports_only_itself_locally():
    for path in (ROOT / "folderfit").rglob("*.py"):
        local = {m.split(".")[0] for m in imported_modules(path)} & LOCAL_PACKAGES
        assert local <= {"folderfit"}, f"{path.name} imports {local - {'folderfit'}}"


def run_in(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=tmp, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_help_runs_nothing_and_unknown_flags_are_refused(stage, tmp_path):
    shown = run_in(tmp_path, "-m", f"stages.{stage}", "--help")
    assert shown.returncode == 0 and f"stages.{stage}" in shown.stdout, shown.stderr
    assert list(tmp_path.iterdir()) == []  # no params.yaml needed, nothing written
    refused = run_in(tmp_path, "-m", f"stages.{stage}", "--epochs", "3")
    assert refused.returncode == 2 and "unrecognized arguments: --epochs 3" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_console_script_help_for_every_command(tmp_path):
    from folderfit.cli import COMMANDS

    top = run_in(tmp_path, "-m", "folderfit", "--help")
    assert top.returncode == 0
    for name in COMMANDS:
        assert name in top.stdout
        shown = run_in(tmp_path, "-m", "folderfit", name, "--help")
        assert shown.returncode == 0 and shown.stdout.startswith(f"usage: folderfit {name}"), shown.stderr
    refused = run_in(tmp_path, "-m", "folderfit", "predict", "x.jpg", "--topk", "2")
    assert refused.returncode == 2 and "unrecognized arguments" in refused.stderr
    assert list(tmp_path.iterdir()) == []
