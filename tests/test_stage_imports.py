"""Start-up of the stage processes: each one imports only what its path needs (every heavy
package costs 0.5-3 s of a process that may do a second of work), and a backbone's ONNX
graph, once exported on a machine, is loaded by later processes without the exporter (nor
the `onnx` package it imports). Each check runs in a fresh interpreter, since this test
session has imported everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, write_params
from tiny_project import make_image_folder

HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "sklearn", "scipy", "matplotlib",
         "cleanlab", "pandas", "dvclive")
# what importing a stage's module (as `python -m stages.<name>` does before run()) must not load
NOT_AT_IMPORT = {
    "preflight": HEAVY,
    "prepare": HEAVY,
    "review": ("onnx", "sklearn", "scipy", "matplotlib", "cleanlab", "pandas", "dvclive"),
    "train": ("onnx", "sklearn", "matplotlib", "cleanlab", "dvclive"),
    "evaluate": ("onnx", "cleanlab", "dvclive"),
}


def loaded_after(code: str, cwd: Path = REPO, env: dict | None = None, names=HEAVY) -> set[str]:
    """The modules of `names` in sys.modules after `code` ran in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {tuple(names)!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("stage", sorted(NOT_AT_IMPORT))
def test_a_stage_module_imports_no_package_its_start_does_not_need(stage):
    loaded = loaded_after(f"import stages.{stage}, folderfit.params, folderfit.pipeline.{stage}")
    assert not loaded & set(NOT_AT_IMPORT[stage]), f"{stage} imports {sorted(loaded & set(NOT_AT_IMPORT[stage]))}"


def test_preflight_and_prepare_run_without_torch(tmp_path):
    """Their whole run, not only their import: they read files and images, nothing more."""
    make_image_folder(tmp_path / "photos", per_class=4, size=40)
    write_params(tmp_path, **{"data.source": "photos"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corrections.csv").write_text((REPO / "data" / "corrections.csv").read_text())
    for stage in ("preflight", "prepare"):
        loaded = loaded_after(f"from folderfit.cli import stage_main\nstage_main({stage!r}, '', argv=[])",
                              cwd=tmp_path)
        assert not loaded, f"{stage} imported {sorted(loaded)}"
    assert (tmp_path / "data" / "prepared" / "manifest.csv").is_file()


NET = textwrap.dedent("""
    import sys, torch
    from folderfit.compute import cpu_engine
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    out = cpu_engine.export_backbone(net, 24, 2)(torch.ones(2, 3, 24, 24))
    print(out.sum().item(), file=sys.stderr)
""")


def test_a_later_process_loads_the_exported_graph_without_the_exporter(tmp_path):
    env = {"FOLDERFIT_CACHE": str(tmp_path / "cache")}
    assert "onnx" in loaded_after(NET, env=env)  # the first process on the machine exports
    assert "onnx" not in loaded_after(NET, env=env)  # the next ones read the graph


def test_the_accuracy_bound_needs_no_scipy_stats():
    """train's decision rules take the Clopper-Pearson bound from scipy.special: the same
    numbers as scipy.stats.beta.ppf, without the second or more that scipy.stats costs."""
    import numpy as np
    from scipy.stats import beta

    from folderfit.frozen import decisions

    rng = np.random.default_rng(0)
    n = rng.integers(1, 5000, 20000).astype(float)
    correct = np.floor(rng.uniform(0, 1, n.size) * (n + 1))
    correct[:3], n[:3] = [0, 1, 7], [4, 1, 7]
    for confidence in (0.95, 0.9, 0.99):
        with np.errstate(invalid="ignore"):
            expected = beta.ppf(1 - confidence, correct, n - correct + 1)
        expected = np.where(correct > 0, np.nan_to_num(expected, nan=0.0), 0.0)
        assert np.array_equal(decisions.accuracy_lower_bound(correct, n, confidence), expected)
    loaded = loaded_after("from folderfit.frozen import decisions\n"
                          "decisions.accuracy_lower_bound([5, 0, 30], [10, 4, 30])",
                          names=("scipy.stats",))
    assert not loaded
