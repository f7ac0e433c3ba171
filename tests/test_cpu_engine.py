"""ONNX Runtime as the CPU engine of feature extraction (folderfit.compute.cpu_engine): the same
features as torch up to float rounding, under their own cache keys, identical from run to
run, and a backbone it cannot run falls back to torch with a note (auto) or stops with one
line (onnxruntime), never silently."""

from __future__ import annotations

import pytest
import tiny_project as T
import torch
from torch import nn

from folderfit.backbone import architecture
from folderfit.compute import cpu_engine
from folderfit.compute.runtime import Runtime
from folderfit.errors import PipelineError
from folderfit.frozen import feature_cache

CPU = Runtime(torch.device("cpu"), None)


def extractor(engine: str, seed: int = 0, backbone: nn.Module | None = None, rt: Runtime = CPU):
    torch.manual_seed(seed)
    built = architecture.build_model("mobilenet_v3_small", 3, "none", seed)
    if backbone is None:
        backbone, _ = feature_cache.backbone_only(built.model, built.head_name)
    return feature_cache.FeatureExtractor(backbone, built.preprocess.with_image_size(32), rt, batch_size=4,
                              engine=engine)


def image_files(tmp_path):
    return sorted(T.make_image_folder(tmp_path / "images", per_class=3, size=40, seed=7).rglob("*.png"))


def test_onnxruntime_features_match_torch_under_their_own_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    view = feature_cache.View("augment", 1, 0.5, True, seed=3)
    ort, eager = extractor("auto"), extractor("torch")
    assert ort.engine == "onnxruntime" and eager.engine == "torch"
    assert ort.spec_digest(view) != eager.spec_digest(view)  # never served each other's vectors
    fast, reference = ort.features(files, view), eager.features(files, view)
    assert ort.computed == eager.computed == len(files)
    assert not torch.equal(fast, reference)  # really another engine
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def test_onnxruntime_features_are_identical_from_run_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    first, second = extractor("onnxruntime"), extractor("onnxruntime")
    first.root = second.root = None  # both compute: a fresh export and session each
    clean, flipped = first.features_of([(files, feature_cache.CLEAN), (files, feature_cache.FLIP)])
    assert torch.equal(second.features(files[::-1], feature_cache.CLEAN), clean.flip(0))
    assert torch.equal(second.features(files, feature_cache.FLIP), flipped)


class Unexportable(nn.Module):
    """Pooled features through an operation the ONNX exporter does not translate."""

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        return torch.linalg.svd(pooled.unsqueeze(-1)).S


def test_a_backbone_onnx_cannot_run_falls_back_to_torch_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    files = image_files(tmp_path)
    auto = extractor("auto", backbone=Unexportable())
    features = auto.features(files)
    assert auto.engine == "torch" and auto.computed == len(files)
    note = capsys.readouterr().err
    assert "features computed with torch, not ONNX Runtime: export failed" in note
    assert torch.equal(features, extractor("torch", backbone=Unexportable()).features(files))
    with pytest.raises(PipelineError, match=r"^params.yaml: 'cpu_engine' is 'onnxruntime', but ONNX "
                                            r"Runtime cannot run this backbone: export failed"):
        extractor("onnxruntime", backbone=Unexportable()).features(files)


def test_onnxruntime_is_only_for_fp32_on_the_cpu():
    bf16 = Runtime(torch.device("cpu"), torch.bfloat16)
    assert extractor("auto", rt=bf16).engine == "torch"
    with pytest.raises(PipelineError, match=r"'cpu_engine' is 'onnxruntime', but features are "
                                            r"computed on cpu in bf16"):
        extractor("onnxruntime", rt=bf16)
    assert cpu_engine.planned_engine("auto", CPU) == "onnxruntime"
    with pytest.raises(PipelineError, match=r"'cpu_engine' is 'onnx'; choose one of: auto, onnxruntime, openvino, torch"):
        cpu_engine.planned_engine("onnx", CPU)


def test_a_graph_that_computes_something_else_is_refused():
    """The parity check: an export that changed the function is never used."""

    class TracesOneWay(nn.Module):
        def forward(self, x):  # the exporter's trace records another function than eager runs
            return x.mean(dim=(2, 3)) * (1.0 if torch.jit.is_tracing() else 2.0)

    with pytest.raises(cpu_engine.EngineUnavailable, match="differs from torch"):
        cpu_engine.export_backbone(TracesOneWay(), 16, 4)
