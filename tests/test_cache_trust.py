"""The memo files under the cache folder are read only when they are what they claim: a named
pipe among the feature packs does not hang the run, and an engine choice record holding NaN or
Infinity is measured again, with a note (issue 30)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from folderfit.compute import cpu_engine
from folderfit.compute.runtime import Runtime
from folderfit.frozen import feature_cache

REPO = Path(__file__).resolve().parents[1]
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


@needs_fifo
def test_a_named_pipe_among_the_feature_packs_is_skipped_not_waited_on(tmp_path):
    folder = tmp_path / "features" / "spec"
    good = feature_cache.FeatureCache(folder)
    good.add(["a", "b"], torch.ones(2, 3))
    os.mkfifo(folder / "0000pipe.pt")  # sorted first: read before the real pack
    (folder / "zz-folder.pt").mkdir()
    code = ("import sys; from pathlib import Path; from folderfit.frozen.feature_cache import FeatureCache; "
            "print(sorted(FeatureCache(Path(sys.argv[1])).vectors))")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['a', 'b']"
    assert "0000pipe.pt: a named pipe, not a regular file; skipped" in done.stderr
    assert "zz-folder.pt: a folder, not a regular file; skipped" in done.stderr
    assert "Traceback" not in done.stderr


@needs_fifo
def test_open_regular_refuses_a_pipe_at_once(tmp_path):
    from folderfit.support.fileio import NotRegularFile, open_regular

    os.mkfifo(tmp_path / "p")
    with pytest.raises(NotRegularFile, match="named pipe"):
        open_regular(tmp_path / "p")
    (tmp_path / "f").write_bytes(b"x")
    with open_regular(tmp_path / "f") as fh:
        assert fh.read() == b"x"


@needs_fifo
def test_a_named_pipe_as_the_engine_choice_file_is_measured_again(tmp_path):
    os.mkfifo(tmp_path / cpu_engine.CHOICE_FILE)
    code = ("from folderfit.compute import cpu_engine; "
            "print(cpu_engine._read_choices(cpu_engine.choice_file()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                                                     "FOLDERFIT_CACHE": str(tmp_path)})
    assert (done.returncode, done.stdout.strip()) == (0, "{}"), done.stderr


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "true", "-1"])
def test_a_non_finite_time_in_the_engine_choice_is_measured_again(bad, tmp_path, monkeypatch, capsys):
    from folderfit.compute import runtime

    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    timed = []
    monkeypatch.setattr(cpu_engine, "time_runner", lambda name, *a: timed.append(name) or
                        {"onnxruntime-fp32": 20.0, "torch-fp32": 100.0, "openvino-fp32": 30.0, "torch-bf16": 120.0}[name])
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()
    spec = dict(precision="auto", cpu_engine="auto", model_name="tiny", image_size=16, batch_size=8)
    cpu = Runtime(torch.device("cpu"), None)
    first = cpu_engine.choose_engine(net, cpu, **spec)
    path = tmp_path / cpu_engine.CHOICE_FILE
    stored = json.loads(path.read_text())
    for record in stored.values():
        record["ms_per_image"][first.engine] = json.loads(bad)  # json reads NaN and Infinity
    path.write_text(json.dumps(stored))
    assert bad in path.read_text()
    timed.clear()
    capsys.readouterr()
    again = cpu_engine.choose_engine(net, cpu, **spec)
    assert again.how == "measured" and timed
    assert "the stored engine choice for this machine and setting is not usable" in capsys.readouterr().err
    assert all(v == v and abs(v) != float("inf") for v in again.ms_per_image.values())
