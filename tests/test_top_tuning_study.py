"""bench/top_tuning_study.py: its training keeps the best epoch (never worse than the warm start on
its own validation rows) and is seeded; its paired bootstrap is seeded."""

import copy

import numpy as np
import torch
from torch import nn

from bench import top_tuning_study


class _Tiny(nn.Module):
    """The attributes Top reads from a timm EfficientNet, at toy size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(nn.Sequential(nn.Conv2d(4, 6, 1)))
        self.conv_head = nn.Conv2d(6, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, 3)


def _data():
    g = torch.Generator().manual_seed(1)
    labels = np.arange(60) % 3
    acts = torch.randn(60, 2, 4, 3, 3, generator=g)
    acts[:, :, 0] += torch.from_numpy(labels).float().view(-1, 1, 1, 1)  # a learnable signal
    return acts.half(), labels


def _held_loss(top, acts, labels, held):
    with torch.no_grad():
        p = torch.stack([torch.softmax(top(acts[held, v].float()), 1) for v in range(2)]).mean(0)
    return float(nn.functional.nll_loss(p.log(), torch.from_numpy(labels[held])))


def _trained(seed, lr_top=1e-2):
    acts, labels = _data()
    top = top_tuning_study.Top(_Tiny(), with_block=True)
    warm = copy.deepcopy(top)
    inner, held = np.arange(45), np.arange(45, 60)
    times, best = top_tuning_study.train_fold(top, acts, labels, inner, held, lr_top, 1e-2, 8, 3,
                                              seed, 16, 1e-2)
    return top, warm, acts, labels, held, best


def test_keeps_best_epoch_never_worse_than_warm_start():
    top, warm, acts, labels, held, best = _trained(0)
    assert best > 0  # the toy signal is learnable
    assert _held_loss(top, acts, labels, held) < _held_loss(warm, acts, labels, held)
    # an lr that wrecks the top: the warm start (epoch 0) is kept
    top, warm, acts, labels, held, best = _trained(0, lr_top=1e3)
    assert _held_loss(top, acts, labels, held) <= _held_loss(warm, acts, labels, held)


def test_seeded():
    a, b = _trained(3)[0], _trained(3)[0]
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_paired_bootstrap_seeded():
    diff = np.array([1.0, 0.0, 0.0, -1.0, 1.0] * 20)
    assert top_tuning_study.paired_bootstrap(diff, 500, 0) == top_tuning_study.paired_bootstrap(diff, 500, 0)
    low, high = top_tuning_study.paired_bootstrap(diff, 2000, 0)
    assert low < diff.mean() < high
