"""The delivered feature_extract head's confidences: one temperature fitted on val
(folderfit.frozen.head.temperature, applied by folderfit.frozen.probe.solve with calibrate=True)."""

from __future__ import annotations

import numpy as np
import torch

from folderfit.frozen import feature_cache, head, probe
from folderfit.results.metrics import expected_calibration_error

K, DIM = 4, 32


def calibrated_logits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true probability of each label (labels drawn from it)."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, K, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).flatten()
    return z, y


def test_temperature_recovers_the_scale_that_made_logits_overconfident_or_flat():
    z, y = calibrated_logits(20000, seed=1)
    for scale in (0.25, 1.0, 3.0):
        t = head.temperature(z * scale, y)
        assert abs(t / scale - 1) < 0.05, (scale, t)


def test_a_val_set_without_mistakes_leaves_the_confidences_alone():
    y = torch.arange(12) % K
    z = torch.zeros(12, K)
    z[torch.arange(12), y] = 4.0  # every image right: the loss would only fall as T -> 0
    assert head.temperature(z, y) == 1.0
    z[0] = torch.tensor([0.0, 4.0, 0.0, 0.0])  # one mistake: now there is something to fit
    t = head.temperature(z, y)
    assert head.TEMPERATURE_BOUNDS[0] < t < head.TEMPERATURE_BOUNDS[1] and t != 1.0


def test_temperature_is_deterministic():
    z, y = calibrated_logits(500, seed=2)
    assert head.temperature(z * 2, y) == head.temperature(z * 2, y)


def blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping classes: a linear head is right ~80% of the time, never certain."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n_per_class)
    centres = 1.2 * torch.eye(K, DIM)
    return centres[y] + torch.randn(len(y), DIM, generator=g), y


def solved(calibrate: bool):
    vectors, labels = {}, {}
    for split, n, seed in (("train", 40, 0), ("val", 15, 1)):
        vectors[split, feature_cache.CLEAN], labels[split] = blobs(n, seed)
    settings = dict(hflip=False, n_views=1, min_scale=0.6, seed=0, tta="none", refit=True)
    return probe.solve(probe.tensor_source(vectors), labels["train"], labels["val"], K,
                       calibrate=calibrate, **settings)


def test_calibration_rescales_the_head_and_keeps_every_prediction():
    plain, calibrated = solved(False), solved(True)
    assert plain.calibration is None
    c = calibrated.calibration
    t = c["temperature"]
    assert c["val_loss_calibrated"] <= c["val_loss"]
    torch.testing.assert_close(calibrated.fit.weight, plain.fit.weight / t)
    torch.testing.assert_close(calibrated.fit.bias, plain.fit.bias / t)
    x, _ = blobs(500, seed=7)
    assert torch.equal((x @ plain.fit.weight.T + plain.fit.bias).argmax(1),
                       (x @ calibrated.fit.weight.T + calibrated.fit.bias).argmax(1))


def test_calibrated_confidences_are_closer_to_the_truth_on_new_images():
    x, y = blobs(2000, seed=9)  # images neither head saw
    ece = {}
    for calibrate in (False, True):
        fit = solved(calibrate).fit
        p = torch.softmax(x @ fit.weight.T + fit.bias, 1)
        conf, pred = p.max(1)
        ece[calibrate] = expected_calibration_error(conf.numpy(), (pred == y).numpy())
    assert ece[True] < ece[False] / 3, ece  # 0.26 -> 0.06 when written; 60 val images set T


def test_cross_validation_calibrates_inside_each_fold():
    vectors, labels = {}, {}
    for split, n, seed in (("train", 40, 0), ("val", 15, 1)):
        vectors[split, feature_cache.CLEAN], labels[split] = blobs(n, seed)
    settings = dict(hflip=False, n_views=1, min_scale=0.6, seed=0, tta="none", refit=True)
    groups = np.arange(len(labels["train"]) + len(labels["val"]))
    cv = {c: probe.cross_validate(probe.tensor_source(vectors), labels["train"], labels["val"], K,
                                  folds=3, groups=groups, calibrate=c, **settings)
          for c in (False, True)}
    assert torch.equal(cv[False].probs.argmax(1), cv[True].probs.argmax(1))
    assert not torch.allclose(cv[False].probs, cv[True].probs)


def test_too_few_val_images_leave_the_head_as_solved():
    vectors, labels = {}, {}
    for split, n, seed in (("train", 40, 0), ("val", 4, 1)):  # 16 val images < CALIBRATION_MIN_VAL
        vectors[split, feature_cache.CLEAN], labels[split] = blobs(n, seed)
    settings = dict(hflip=False, n_views=1, min_scale=0.6, seed=0, tta="none", refit=True)
    out = {c: probe.solve(probe.tensor_source(vectors), labels["train"], labels["val"], K,
                          calibrate=c, **settings) for c in (False, True)}
    assert out[True].calibration["temperature"] == 1.0 and "16 val images" in out[True].calibration["skipped"]
    assert torch.equal(out[True].fit.weight, out[False].fit.weight)
