"""OpenVINO as the third CPU engine (folderfit.compute.openvino_engine): torch fp32's numbers
to ONNX Runtime's parity tolerance, compiled in forced fp32 on folderfit's threads, chosen by the
trial only where it is clearly faster, rejected with a reason when it computes something else,
and optional: not installed, `auto` leaves it out silently, `cpu_engine: openvino` stops with
one line, and a model file recording it scores with torch fp32 after a note."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import tiny_project as T
import torch
from torch import nn

from folderfit.backbone import architecture
from folderfit.compute import classifier, cpu_engine, openvino_engine, runtime
from folderfit.compute.runtime import Runtime
from folderfit.errors import PipelineError
from folderfit.frozen import feature_cache
from folderfit.frozen.extractor import recorded_extractor

needs_openvino = pytest.mark.skipif(not openvino_engine.installed(), reason="pip install openvino")

CPU = Runtime(torch.device("cpu"), None)
SIZE = 64  # lite0 at 64 px: the real pretrained network, small enough to convert in seconds


@pytest.fixture(scope="module")
def lite0():
    """lite0's pretrained backbone (bundled weights), head removed, and its preprocessing."""
    built = architecture.build_model("tf_efficientnet_lite0", 3, "default", 0)
    backbone, _ = feature_cache.backbone_only(built.model.eval(), built.head_name)
    return backbone, built.preprocess.with_image_size(SIZE)


@pytest.fixture(scope="module")
def compiled(lite0):
    return cpu_engine.openvino_backbone(lite0[0], SIZE, 4)


def tiny_preprocess():
    return architecture.build_model("mobilenet_v3_small", 2, "none", 0).preprocess.with_image_size(16)


def images(n: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1


@needs_openvino
def test_openvino_computes_torch_fp32s_features_on_lite0(lite0, compiled):
    backbone, _ = lite0
    batch = images(4)
    with torch.inference_mode():
        expected = backbone(batch)
    got = compiled(batch)
    assert isinstance(compiled, openvino_engine.OvBackbone) and got.shape == expected.shape == (4, 1280)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= cpu_engine.PARITY_TOLERANCE * scale
    # another batch size than the one compiled for: the batch-free compilation, same numbers
    assert torch.allclose(compiled(batch[:3]), got[:3], atol=1e-5 * scale)


@needs_openvino
def test_fp32_is_forced_on_folderfits_threads(compiled):
    import openvino
    import openvino.properties.hint as hints
    from openvino import properties

    compiled(images(3))  # the batch-free compilation too
    assert set(compiled._compiled) == {4, None}
    for model in compiled._compiled.values():
        assert model.get_property(hints.inference_precision) == openvino.Type.f32
        assert model.get_property(properties.inference_num_threads) == torch.get_num_threads()


@needs_openvino
def test_the_feature_extractor_runs_openvino_under_its_own_keys(lite0, tmp_path, monkeypatch):
    import openvino

    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    backbone, pre = lite0
    files = sorted(T.make_image_folder(tmp_path / "images", per_class=2, size=72, seed=3).rglob("*.png"))
    ov = feature_cache.FeatureExtractor(backbone, pre, CPU, 4, engine="openvino")
    eager = feature_cache.FeatureExtractor(backbone, pre, CPU, 4, engine="torch")
    assert ov.engine == "openvino" and ov.numerics == "openvino-fp32"
    assert ov.base_spec["engine"] == f"openvino {openvino.__version__}"
    assert ov.spec_digest(feature_cache.CLEAN) != eager.spec_digest(feature_cache.CLEAN)
    got, expected = ov.features(files), eager.features(files)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= cpu_engine.PARITY_TOLERANCE * scale


@needs_openvino
def test_a_graph_that_computes_something_else_is_rejected_with_the_reason(monkeypatch):
    real_call = openvino_engine.OvBackbone.__call__
    monkeypatch.setattr(openvino_engine.OvBackbone, "__call__", lambda self, x: real_call(self, x) + 1.0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(cpu_engine.EngineUnavailable, match=r"OpenVINO differs from torch by 1 "):
        cpu_engine.openvino_backbone(net, 16, 2)
    # in the trial: left out, the reason noted
    engine, times, notes = cpu_engine._measure(net, [cpu_engine.TORCH_FP32, cpu_engine.OV_FP32], 16, 2)
    assert engine == "torch-fp32" and set(times) == {"torch-fp32"}
    assert len(notes) == 1 and notes[0].startswith("openvino-fp32: OpenVINO differs from torch by 1 ")


@needs_openvino
def test_the_extraction_after_the_trial_compiles_no_more(monkeypatch):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    first = cpu_engine.openvino_backbone(net, 16, 2)
    assert cpu_engine.openvino_backbone(net, 16, 2) is first
    assert cpu_engine.openvino_backbone(net, 16, 3) is not first  # another batch: compiled for it
    with torch.no_grad():
        net[0].weight.mul_(2)  # changed weights: compiled again, and computing them
    again = cpu_engine.openvino_backbone(net, 16, 2)
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        assert again is not first and torch.allclose(again(x), net(x), atol=1e-5)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A CPU with native bf16 whose engine speeds (ms/image) the test sets."""
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(cpu_engine, "export_backbone", lambda *a: "ort")  # never run: timing is faked
    monkeypatch.setattr(cpu_engine, "openvino_backbone", lambda *a: "ov")
    state = SimpleNamespace(speeds={}, timed=[])

    def time(name, run, images, rounds, best_so_far):
        state.timed.append(name)
        return state.speeds[name]

    monkeypatch.setattr(cpu_engine, "time_runner", time)
    return state


def choose(cpu_engine_setting="auto", precision="auto", model_name="tiny"):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return cpu_engine.choose_engine(net, CPU, precision=precision, cpu_engine=cpu_engine_setting,
                                    model_name=model_name, image_size=16, batch_size=8)


@needs_openvino
def test_the_trial_keeps_openvino_only_where_it_is_clearly_faster(machine, tmp_path):
    machine.speeds = {"onnxruntime-fp32": 25.8, "torch-fp32": 110.0, "openvino-fp32": 12.0, "torch-bf16": 137.0}
    choice = choose()
    assert machine.timed == ["onnxruntime-fp32", "torch-fp32", "openvino-fp32", "torch-bf16"]
    assert (choice.engine, choice.cpu_engine, choice.rt.dtype, choice.how) == ("openvino-fp32", "openvino",
                                                                               None, "measured")
    extractor = feature_cache.FeatureExtractor(nn.Identity(), tiny_preprocess(), choice.rt, 8, use_cache=False,
                                               engine=choice.cpu_engine, fallback=True)
    assert extractor.engine == "openvino" and extractor.numerics == "openvino-fp32"
    # slower, or faster within the margin: ONNX Runtime stays
    for ov in (30.0, 24.0):
        machine.speeds["openvino-fp32"] = ov
        assert choose(model_name=f"other {ov}").engine == "onnxruntime-fp32"
    # precision fp32: the three fp32 engines compete
    machine.speeds["openvino-fp32"] = 12.0
    machine.timed.clear()
    assert choose(precision="fp32", model_name="fp32").engine == "openvino-fp32"
    assert machine.timed == ["onnxruntime-fp32", "torch-fp32", "openvino-fp32"]
    # explicit settings: openvino unmeasured; torch never gets it
    machine.timed.clear()
    assert (choose("openvino").engine, choose("openvino").how, machine.timed) == ("openvino-fp32", "explicit", [])
    assert choose("torch", model_name="torch").engine == "torch-fp32"
    assert "openvino-fp32" not in machine.timed


def test_openvino_on_bf16_or_a_gpu_is_refused_in_one_line(machine):
    with pytest.raises(PipelineError, match=r"^params.yaml: 'cpu_engine' is 'openvino', but features "
                                            r"are computed on cpu in bf16; OpenVINO runs them"):
        cpu_engine.choose_engine(nn.Identity(), Runtime(torch.device("cpu"), torch.bfloat16),
                                 precision="bf16", cpu_engine="openvino", model_name="x",
                                 image_size=16, batch_size=8)


@pytest.fixture
def not_installed(monkeypatch):
    """A Python without openvino: its import fails."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_not_installed_auto_skips_it_silently(machine, not_installed, capsys):
    machine.speeds = {"onnxruntime-fp32": 25.8, "torch-fp32": 110.0, "openvino-fp32": 1.0, "torch-bf16": 137.0}
    choice = choose()
    assert machine.timed == ["onnxruntime-fp32", "torch-fp32", "torch-bf16"]
    assert choice.engine == "onnxruntime-fp32" and choice.notes == ()
    assert capsys.readouterr().err == ""


def test_not_installed_explicit_is_one_line_naming_the_install(machine, not_installed):
    with pytest.raises(PipelineError) as caught:
        choose("openvino")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("params.yaml: 'cpu_engine' is 'openvino'")
    assert "pip install openvino" in message
    with pytest.raises(PipelineError, match=r"^params.yaml: 'cpu_engine' is 'openvino', but OpenVINO "
                                            r"cannot run this backbone: openvino is not installed.*pip install openvino"):
        feature_cache.FeatureExtractor(nn.Identity(), tiny_preprocess(), CPU, 8, use_cache=False, engine="openvino")


@needs_openvino
def test_preflight_stops_at_cpu_engine_openvino_without_the_package(not_installed, monkeypatch):
    from folderfit.pipeline import preflight

    monkeypatch.setattr(preflight, "check_source_names", lambda source: None)
    params = SimpleNamespace(cpu_engine="openvino", data=SimpleNamespace(source="photos"))
    with pytest.raises(PipelineError, match=r"^params.yaml: 'cpu_engine' is 'openvino', but the openvino "
                                            r"package is not installed: pip install openvino"):
        preflight.run(params)


@needs_openvino
def test_a_file_recording_openvino_predicts_with_it_or_torch_fp32_after_a_note(tmp_path, monkeypatch, capsys):
    """predict's default is the file's numerics: OpenVINO where installed; where not, torch
    fp32, which agrees to the parity tolerance (as it does below ORT_MIN_IMAGES anyway)."""
    from folderfit.artifacts import model_file

    path = tmp_path / "model.pt"
    built = architecture.build_model("tf_efficientnet_lite0", len(T.CLASSES), "default", 0)  # seeded head
    model_file.save_model_file(path, built, list(T.CLASSES), built.preprocess.with_image_size(SIZE),
                               extra={"strategy": "feature_extract", "numerics": "openvino-fp32"})
    loaded = model_file.load_model_file(path)
    assert loaded.numerics == "openvino-fp32"
    files = sorted(T.make_image_folder(tmp_path / "images", per_class=2, size=72, seed=3).rglob("*.png"))
    monkeypatch.setattr(classifier, "ORT_MIN_IMAGES", 1)
    routes = []
    real = classifier.onnxruntime_model
    monkeypatch.setattr(classifier, "onnxruntime_model", lambda *a: routes.append(real(*a)) or routes[-1])
    by_openvino = classifier.predict_files(loaded, files, 4, progress=False)[0]
    assert isinstance(routes[-1], openvino_engine.OvBackbone)
    by_torch = classifier.predict_files(loaded, files, 4, precision="fp32", progress=False)[0]
    # the numerics contract's bound (tests/test_numerics_contract.py)
    assert (by_openvino - by_torch).abs().max().item() <= 1e-4
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "openvino", None)  # loaded afresh, as in another Python
    without = classifier.predict_files(model_file.load_model_file(path), files, 4, progress=False)[0]
    assert not isinstance(routes[-1], openvino_engine.OvBackbone)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("note: predict runs torch fp32, not OpenVINO (openvino is not installed (openvino); "
                    "pip install openvino): the same numbers")]
    assert torch.equal(without, by_torch)


def test_evaluate_computes_recorded_openvino_features_with_torch_where_not_installed(lite0, not_installed, capsys):
    backbone, pre = lite0
    params = SimpleNamespace(evaluate=SimpleNamespace(batch_size=8))
    extractor = recorded_extractor(backbone, pre, params, CPU, "openvino")
    assert extractor.engine == "torch" and extractor.numerics == "torch-fp32"
    assert capsys.readouterr().err.strip() == ("note: features computed with torch, not OpenVINO: "
                                                "openvino is not installed (openvino)")
