"""Feature cache keys cover everything that changes a vector, and loaded vectors are checked
(issue 24: a bf16 run's vectors were reused by a later fp32 run; a NaN or wrong-width pack
ended in a traceback; negated vectors were used silently)."""

from __future__ import annotations

import pytest
import tiny_project as T
import torch

from folderfit.backbone import architecture
from folderfit.compute.runtime import Runtime
from folderfit.frozen import feature_cache

CPU = Runtime(torch.device("cpu"), None)
CPU_BF16 = Runtime(torch.device("cpu"), torch.bfloat16)


def extractor(rt=CPU, batch_size=4, poison=False) -> feature_cache.FeatureExtractor:
    torch.manual_seed(0)
    built = architecture.build_model("mobilenet_v3_small", 3, "none", 0)
    backbone, _ = feature_cache.backbone_only(built.model, built.head_name)
    if poison:
        with torch.no_grad():
            next(backbone.parameters()).fill_(float("nan"))
    return feature_cache.FeatureExtractor(backbone, built.preprocess.with_image_size(32), rt,
                              batch_size=batch_size, engine="torch")


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    root = T.make_image_folder(tmp_path / "images", per_class=2, size=40, seed=7)
    return sorted(root.rglob("*.png"))


def test_precision_device_batch_and_engine_version_are_in_the_key(files):
    base = extractor()
    other_device = extractor()
    other_device.rt = Runtime(torch.device("cuda"), None)  # only the key is asked for here
    other_device._reset()
    digests = {base.spec_digest(feature_cache.CLEAN), extractor(CPU_BF16).spec_digest(feature_cache.CLEAN),
               other_device.spec_digest(feature_cache.CLEAN), extractor(batch_size=8).spec_digest(feature_cache.CLEAN)}
    assert len(digests) == 4
    assert base.base_spec["engine"] == f"torch {torch.__version__}"
    assert "crop" in base.base_spec["preprocess"] and "torchvision" in base.base_spec["preprocess"]


def test_a_bf16_run_is_not_reused_by_an_fp32_run(files):
    bf16 = extractor(CPU_BF16)
    bf16.features(files)
    fp32 = extractor()
    cold = fp32.features(files)
    assert (fp32.computed, fp32.reused) == (len(files), 0)
    fresh = extractor()
    fresh.root = None
    assert torch.equal(cold, fresh.features(files))  # what a cold fp32 run computes


def rewrite_pack(tmp_path, change, keep_checksum=False):
    (pack,) = (tmp_path / "cache").rglob("*.pt")
    payload = torch.load(pack, weights_only=True)
    payload["features"] = change(payload["features"])
    if not keep_checksum:  # as if someone fixed up the checksum too: width and NaN still caught
        payload["sha256"] = feature_cache.pack_checksum(payload["keys"], payload["features"])
    torch.save(payload, pack)
    return pack


@pytest.mark.parametrize("change, keep_checksum, says", [
    (lambda m: -m, True, "checksum mismatch"),
    (lambda m: m[:, :-1].contiguous(), False, "vectors of width"),
    (lambda m: m.index_fill(0, torch.tensor([1]), float("nan")), False, "NaN or Inf"),
    (lambda m: m.index_fill(0, torch.tensor([0]), float("inf")), False, "NaN or Inf"),
])
def test_a_bad_pack_is_discarded_with_a_note_and_recomputed(files, tmp_path, capsys, change,
                                                             keep_checksum, says):
    reference = extractor().features(files)
    pack = rewrite_pack(tmp_path, change, keep_checksum)
    again = extractor()
    assert torch.equal(again.features(files), reference)
    assert (again.computed, again.reused) == (len(files), 0)
    err = capsys.readouterr().err
    assert says in err and "discarded" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if str(pack) in line]) == 1
    third = extractor()  # the bad pack is gone: the recomputed one serves
    third.features(files)
    assert third.reused == len(files)


def test_non_finite_features_are_an_error_and_never_cached(files, tmp_path):
    from folderfit.errors import PipelineError

    with pytest.raises(PipelineError, match=f"the backbone gave NaN/Inf for {len(files)} image"):
        extractor(poison=True).features(files)
    assert not list((tmp_path / "cache").rglob("*.pt"))
