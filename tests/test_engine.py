"""The epoch loop: true best-epoch restore, frozen BatchNorm, early stopping."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from folderfit.backbone import architecture
from folderfit.compute.runtime import Runtime
from folderfit.images.datasets import Normalizer
from folderfit.tuning import epoch_loop, freezing


def test_early_stopping_keeps_a_deep_copy():
    layer = nn.Linear(2, 2)
    stopper = epoch_loop.EarlyStopping(patience=2)
    stopper.update(1, 0.9, 0.1, layer)
    saved = stopper.best_state["weight"].clone()
    with torch.no_grad():
        layer.weight.add_(1.0)  # later training must not leak into the saved best state
    assert torch.equal(stopper.best_state["weight"], saved)
    assert not stopper.update(2, 0.5, 0.2, layer)
    assert stopper.update(3, 0.5, 0.2, layer)  # two epochs without improvement -> stop


def test_best_epoch_weights_are_restored_not_the_last():
    """Validation labels are the opposite of training labels, so validation accuracy is best
    early and falls as the model learns: the returned weights must be that early epoch's."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8, generator=gen)
    y = (x[:, 0, 0, 0] > 127).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    snapshots = {}

    def log(epoch, row):
        snapshots[epoch] = copy.deepcopy(model.state_dict())

    train = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=16)
    val = torch.utils.data.DataLoader(list(zip(x, 1 - y)), batch_size=64)
    run = epoch_loop.RunContext(Runtime(torch.device("cpu"), None), torch.Generator().manual_seed(1), log=log)
    result = epoch_loop.fit(model, torch.optim.SGD(model.parameters(), lr=0.5), train, val,
                   Normalizer((0.5,) * 3, (0.5,) * 3), epoch_loop.FitConfig(num_epochs=8, patience=3), run, [])
    assert result.best_epoch < result.epochs_run
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[result.best_epoch][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[result.epochs_run][k]) for k in final)
    floor = result.history[0]["val_accuracy"]  # epoch 0: the start
    eligible = [r for r in result.history if r["val_accuracy"] >= floor]
    assert result.best_val_loss == min(r["val_loss"] for r in eligible)


def test_frozen_batchnorm_statistics_do_not_change():
    built = architecture.build_model("resnet18", 2, "none", seed=0)
    model = built.model
    frozen = freezing.apply_freezing(model, built.stages, 3)  # stem, layer1, layer2
    before = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 4)
    loader = torch.utils.data.DataLoader(list(zip(images, labels)), batch_size=4)
    groups = freezing.parameter_groups(model, built.stages, built.head_name, lr=0.01, backbone_lr=0.01,
                                lr_decay=0.5, weight_decay=0.0)
    run = epoch_loop.RunContext(Runtime(torch.device("cpu"), None), torch.Generator().manual_seed(0))
    epoch_loop.fit(model, torch.optim.AdamW(groups), loader, loader, Normalizer((0.5,) * 3, (0.5,) * 3),
          epoch_loop.FitConfig(num_epochs=1, patience=1, score_start=False), run, frozen)
    after = dict(model.named_buffers())
    for name, value in before.items():
        changed = not torch.equal(after[name], value)
        in_frozen = name.startswith(("bn1", "layer1", "layer2"))
        assert changed != in_frozen, name


@pytest.mark.slow  # torch.compile generates and builds C++ kernels: about a minute on 2 cores
def test_compiled_training_matches_eager_training():
    """compile: true trains the same model (to float rounding) and the saved weights come
    from the plain module (no "_orig_mod." prefixes)."""
    from folderfit.tuning.distributed import unwrap

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=gen)
    y = (x[:, 0].float().mean((1, 2)) > 127).long()
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=8)
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        net = torch.compile(model, dynamic=False) if compiled else model
        assert unwrap(net) is model
        run = epoch_loop.RunContext(Runtime(torch.device("cpu"), None), torch.Generator().manual_seed(1))
        epoch_loop.fit(net, torch.optim.SGD(model.parameters(), lr=0.1), loader, loader,
              Normalizer((0.5,) * 3, (0.5,) * 3), epoch_loop.FitConfig(num_epochs=2, patience=5), run, [])
        results[compiled] = unwrap(net).state_dict()
    assert results[True].keys() == results[False].keys()
    for name, value in results[False].items():
        assert torch.allclose(results[True][name].float(), value.float(), atol=1e-4), name


def _separable(n: int = 32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=gen)
    y = (x[:, 0].float().mean((1, 2)) > 127).long()
    return torch.utils.data.DataLoader(list(zip(x, y)), batch_size=8)


def _solved_linear() -> nn.Module:
    """A model already right on _separable: logit 1 - logit 0 grows with channel 0's mean."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[-20.0, 0, 0], [20.0, 0, 0]]))
        model[2].bias.zero_()
    return model


def test_the_starting_weights_win_when_training_only_makes_them_worse():
    loader = _separable()
    model = _solved_linear()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    run = epoch_loop.RunContext(Runtime(torch.device("cpu"), None), torch.Generator().manual_seed(0))
    # a learning rate that wrecks the solved head within the first epoch
    result = epoch_loop.fit(model, torch.optim.SGD(model.parameters(), lr=1e4), loader, loader,
                   Normalizer((0.5,) * 3, (0.5,) * 3),
                   epoch_loop.FitConfig(num_epochs=2, patience=5, warmup_epochs=0), run, [])
    start_accuracy = result.history[0]["val_accuracy"]
    assert result.history[0]["epoch"] == 0 and start_accuracy > 0.9
    assert max(r["val_accuracy"] for r in result.history[1:]) < start_accuracy  # training hurt
    assert result.best_epoch == 0 and result.best_val_accuracy == start_accuracy
    for name, value in model.state_dict().items():
        assert torch.equal(value, start[name]), name


def test_learning_rates_warm_up_linearly_over_the_first_epoch():
    loader = _separable()  # 4 batches an epoch
    model = _solved_linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    optimizer.step = recording_step
    run = epoch_loop.RunContext(Runtime(torch.device("cpu"), None), torch.Generator().manual_seed(0))
    epoch_loop.fit(model, optimizer, loader, loader, Normalizer((0.5,) * 3, (0.5,) * 3),
          epoch_loop.FitConfig(num_epochs=2, patience=5), run, [])
    assert seen[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert seen[4:] == pytest.approx([0.1] * 4)
