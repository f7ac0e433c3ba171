"""The measured choice of the CPU inference engine (folderfit.compute.cpu_engine.choose_engine), on
machines faked by replacing the CPU's bf16 detection and the trial's timing function: the
fastest allowed engine wins (the more exact one unless another is clearly faster), bf16 only
where it is native, a failed export leaves torch, explicit settings are honoured unmeasured,
and a machine measures once."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from folderfit.compute import cpu_engine as cpu_engines
from folderfit.compute import openvino_engine, runtime
from folderfit.compute.runtime import Runtime
from folderfit.errors import PipelineError
from folderfit.frozen import feature_cache

CPU = Runtime(torch.device("cpu"), None)
CPU_BF16 = Runtime(torch.device("cpu"), torch.bfloat16)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@pytest.fixture(autouse=True)
def without_openvino(monkeypatch):
    """These trials are ONNX Runtime's and torch's; OpenVINO's: tests/test_openvino_engine.py."""
    monkeypatch.setattr(openvino_engine, "installed", lambda: False)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A CPU whose bf16 support and engine speeds (ms/image) the test sets; records what the
    trial timed."""
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))

    class Machine:
        timed: list[str] = []
        batches: list[int] = []
        speeds: dict[str, float] = {}

        def set(self, bf16: bool, **speeds):
            monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: bf16)
            self.speeds = {k.replace("_", "-"): v for k, v in speeds.items()}
            self.timed = []
            self.batches = []

        def time(self, name, run, images, rounds, best_so_far):
            self.timed.append(name)
            self.batches.append(len(images))
            return self.speeds[name]

    m = Machine()
    monkeypatch.setattr(cpu_engines, "time_runner", m.time)
    return m


def choose(precision="auto", cpu_engine="auto", rt=CPU, net=None, **kw):
    spec = dict(model_name="tiny", image_size=16, batch_size=8)
    spec.update(kw)
    return cpu_engines.choose_engine(net or network(), rt, precision=precision, cpu_engine=cpu_engine, **spec)


speeds = dict(onnxruntime_fp32=25.8, torch_fp32=110.0, torch_bf16=137.0)  # lite2 @ 260 here


def test_bf16_cpu_where_onnxruntime_is_fastest_picks_onnxruntime(machine):
    machine.set(bf16=True, **speeds)
    choice = choose()
    assert machine.timed == ["onnxruntime-fp32", "torch-fp32", "torch-bf16"]
    assert choice.engine == "onnxruntime-fp32" and choice.how == "measured"
    assert choice.rt.dtype is None and choice.cpu_engine == "auto"  # auto keeps torch as fallback
    assert choice.ms_per_image == {"onnxruntime-fp32": 25.8, "torch-fp32": 110.0, "torch-bf16": 137.0}
    assert choice.to_dict() == {"engine": "onnxruntime-fp32", "how": "measured", "notes": [],
                                "ms_per_image": choice.ms_per_image}
    extractor = feature_cache.FeatureExtractor(network(), _preprocess(), choice.rt, 4, use_cache=False,
                                   engine=choice.cpu_engine)
    assert extractor.engine == "onnxruntime"


def test_bf16_wins_only_where_it_is_clearly_faster(machine):
    machine.set(bf16=True, onnxruntime_fp32=120.0, torch_fp32=110.0, torch_bf16=40.0)
    choice = choose()
    assert choice.engine == "torch-bf16" and choice.rt.dtype == torch.bfloat16
    assert choice.cpu_engine == "torch"
    # within the margin the more exact engine stays: noise must not flip the features
    machine.set(bf16=True, onnxruntime_fp32=100.0, torch_fp32=95.0, torch_bf16=90.0)
    assert choose(model_name="other").engine == "onnxruntime-fp32"


def test_a_cpu_without_native_bf16_never_gets_bf16(machine):
    machine.set(bf16=False, onnxruntime_fp32=200.0, torch_fp32=100.0, torch_bf16=1.0)
    choice = choose()
    assert machine.timed == ["onnxruntime-fp32", "torch-fp32"]  # bf16 not even tried
    assert choice.engine == "torch-fp32" and choice.rt.dtype is None and choice.cpu_engine == "torch"


def test_a_failed_export_leaves_torch_fp32(machine, monkeypatch):
    machine.set(bf16=True, onnxruntime_fp32=1.0, torch_fp32=100.0, torch_bf16=105.0)

    def fail(*args, **kwargs):
        raise cpu_engines.EngineUnavailable("export failed (UnsupportedOperatorError: svd)")

    monkeypatch.setattr(cpu_engines, "export_backbone", fail)
    choice = choose()
    assert machine.timed == ["torch-fp32", "torch-bf16"]
    assert choice.engine == "torch-fp32" and choice.cpu_engine == "torch"
    assert choice.notes == ("onnxruntime-fp32: export failed (UnsupportedOperatorError: svd)",)


def test_explicit_settings_are_honoured(machine):
    machine.set(bf16=True, **speeds)
    assert (choose("fp32", "torch").engine, machine.timed) == ("torch-fp32", [])
    bf16 = choose("bf16", "auto", rt=CPU_BF16)
    assert (bf16.engine, bf16.how, bf16.rt.dtype, machine.timed) == ("torch-bf16", "explicit",
                                                                      torch.bfloat16, [])
    ort = choose("auto", "onnxruntime")
    assert (ort.engine, ort.cpu_engine, ort.how, machine.timed) == ("onnxruntime-fp32", "onnxruntime",
                                                                     "explicit", [])
    with pytest.raises(PipelineError, match=r"'cpu_engine' is 'onnxruntime', but features are "
                                            r"computed on cpu in bf16"):
        choose("bf16", "onnxruntime", rt=CPU_BF16)
    with pytest.raises(PipelineError, match=r"'cpu_engine' is 'onnx'; choose one of"):
        choose("auto", "onnx")
    # fp32 asked for: the fp32 engines compete, bf16 does not
    assert choose("fp32", "auto").engine == "onnxruntime-fp32"
    assert machine.timed == ["onnxruntime-fp32", "torch-fp32"]
    # torch asked for: torch's precisions compete
    machine.set(bf16=True, **speeds)
    assert choose("auto", "torch").engine == "torch-fp32"
    assert machine.timed == ["torch-fp32", "torch-bf16"]


def test_a_gpu_runs_torch_under_its_autocast_unmeasured(machine):
    machine.set(bf16=True, **speeds)
    gpu = Runtime(torch.device("cuda", 0), torch.bfloat16)
    choice = choose(rt=gpu)
    assert (choice.engine, choice.how, choice.rt, machine.timed) == ("torch-bf16", "gpu", gpu, [])


def test_the_choice_is_measured_once_per_machine_and_setting(machine, tmp_path):
    machine.set(bf16=True, **speeds)
    first = choose()
    machine.set(bf16=True, onnxruntime_fp32=500.0, torch_fp32=10.0, torch_bf16=10.0)
    again = choose()
    assert machine.timed == []  # not measured again: the same answer, however loaded the CPU
    assert (again.engine, again.how, again.ms_per_image) == (first.engine, "cached", first.ms_per_image)
    stored = json.loads((tmp_path / "cache" / cpu_engines.CHOICE_FILE).read_text())
    assert [record["engine"] for record in stored.values()] == ["onnxruntime-fp32"]
    # another batch size, model or CPU is another key
    assert choose(batch_size=16).engine == "torch-fp32" and machine.timed
    machine.set(bf16=False, onnxruntime_fp32=500.0, torch_fp32=10.0)
    assert choose().how == "measured"
    # a damaged file or record costs a new trial, not an error
    (tmp_path / "cache" / cpu_engines.CHOICE_FILE).write_text("{not json")
    machine.set(bf16=True, **speeds)
    assert choose().how == "measured" and machine.timed
    stored = json.loads((tmp_path / "cache" / cpu_engines.CHOICE_FILE).read_text())
    for record in stored.values():
        record["ms_per_image"] = {"onnxruntime-fp32": "fast"}
    (tmp_path / "cache" / cpu_engines.CHOICE_FILE).write_text(json.dumps(stored))
    machine.set(bf16=True, **speeds)
    assert choose().how == "measured" and machine.timed


def test_the_trial_times_the_batch_size_the_extraction_uses(machine):
    """torch's speed per image depends on the batch (at 32 lite2 images every activation is
    mapped afresh, folderfit.support.memory): a trial on smaller batches chose torch bf16 where it
    then ran 3x slower than its trial."""
    machine.set(True, **speeds)
    choose(batch_size=32)
    assert machine.batches and set(machine.batches) == {32}
    machine.set(True, **speeds)
    choose(batch_size=3, model_name="other")
    assert set(machine.batches) == {3}


def test_a_real_trial_times_every_candidate_and_exports_once(tmp_path, monkeypatch):
    """Unfaked: the real timing, the real export; the extraction afterwards reuses the graph
    the trial exported instead of exporting again."""
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    net = network()
    choice = choose(net=net)
    assert set(choice.ms_per_image) == {"onnxruntime-fp32", "torch-fp32"}
    assert all(t > 0 for t in choice.ms_per_image.values())
    exports = []
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    session = cpu_engines.export_backbone(net, 16, 8)  # the extractor's batch: a new session, same graph
    assert exports == [] and session(torch.zeros(8, 3, 16, 16)).shape == (8, 4)
    with torch.no_grad():
        net[0].weight.mul_(2)  # changed weights: exported again
    cpu_engines.export_backbone(net, 16, 8)
    assert exports == [1]
    del net  # another module, perhaps at the same address: never served the old graph
    other = network()
    with torch.no_grad():
        other[0].weight.mul_(3)
    cpu_engines.export_backbone(other, 16, 8)
    assert exports == [1, 1]
    cpu_engines.export_backbone(network(), 16, 8)  # the trial's weights: its graph, from disk
    assert exports == [1, 1]


def _preprocess():
    from folderfit.backbone import architecture

    return architecture.build_model("mobilenet_v3_small", 2, "none", 0).preprocess.with_image_size(16)


PIPELINE_EXTRAS = ("sklearn", "scipy", "dvc", "dvclive", "cleanlab", "matplotlib", "onnx",
                   "onnxruntime", "onnxscript", "openvino", "pandas", "ruamel", "yaml")


def test_load_and_the_choice_work_with_the_core_install_only(tmp_path):
    """pyproject's core dependencies suffice for folderfit.load: in a process where every
    pipeline extra fails to import, a model file loads and classifies, and the engine choice
    (ONNX Runtime missing) falls back to torch with a note."""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import sys
for name in {PIPELINE_EXTRAS!r}:
    sys.modules[name] = None  # import raises ImportError, as when it is not installed
import torch
from PIL import Image
import folderfit
from folderfit.compute import cpu_engine as cpu_engines
from folderfit.backbone import architecture
from folderfit.artifacts import model_file
from folderfit.compute.runtime import Runtime
built = architecture.build_model("mobilenet_v3_small", 2, "none", 0)
pre = built.preprocess.with_image_size(32)
model_file.save_model_file({str(tmp_path / 'model.pt')!r}, built, ["cat", "dog"], pre)
top = folderfit.load({str(tmp_path / 'model.pt')!r}, device="cpu", precision="fp32").classify(
    Image.new("RGB", (40, 40), (200, 10, 10)))
assert [name for name, _ in top] in (["cat", "dog"], ["dog", "cat"]), top
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
choice = cpu_engines.choose_engine(net, Runtime(torch.device("cpu"), None), precision="fp32",
                         cpu_engine="auto", model_name="tiny", image_size=16, batch_size=4, store=False)
assert choice.engine == "torch-fp32", choice
assert "onnxruntime is not installed" in choice.notes[0], choice.notes
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_the_timing_stops_early_for_clear_losers(monkeypatch):
    """time_runner: the fastest of the timed rounds; a warm-up twice as slow as the best so
    far is the only call; a first round slower than the best ends the rounds."""
    clock = iter(range(0, 10_000, 1)).__next__
    durations = []

    def fake_perf_counter():
        return clock() / 1000  # one tick per reading: each call "lasts" what run() adds

    def run(images):
        step = durations.pop(0)
        for _ in range(step - 1):
            clock()

    monkeypatch.setattr(cpu_engines, "perf_counter", fake_perf_counter)
    images = torch.zeros(2, 3, 4, 4)
    durations[:] = [40, 20, 10]  # ms for the batch of 2: warm-up, then two rounds
    assert cpu_engines.time_runner("x", run, images, 2, None) == pytest.approx(5.0) and durations == []
    durations[:] = [24, 20, 10]
    assert cpu_engines.time_runner("x", run, images, 2, best_so_far=5.0) == pytest.approx(12.0)  # warm-up 12/img > 2 x 5
    assert durations == [20, 10]
    durations[:] = [18, 20, 10]  # warm-up 9/img: timed; 10/img > 5: cannot win, no 2nd round
    assert cpu_engines.time_runner("x", run, images, 2, best_so_far=5.0) == pytest.approx(10.0)
    assert durations == [10]
    durations[:] = [18, 9, 8]  # rounds faster than the best so far go on: the fastest counts
    assert cpu_engines.time_runner("x", run, images, 2, best_so_far=5.0) == pytest.approx(4.0)
    assert durations == []
