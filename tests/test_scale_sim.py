"""bench/scale_sim.py's bookkeeping: growth exponents and the time budget (no benchmark run)."""

from __future__ import annotations

import time

from bench import scale_sim


def test_a_step_predicted_over_budget_is_skipped_and_said_so(monkeypatch):
    runner = scale_sim.Runner(budget=0.5)
    step = "neighbours (nearest, k=10)"
    monkeypatch.setattr(scale_sim, "MEASURABLE_S", 0.05)
    runner.run(step, 100, lambda: time.sleep(0.02))
    runner.run(step, 200, lambda: time.sleep(0.08))  # 4x for 2x: quadratic
    runner.run(step, 1000, lambda: (_ for _ in ()).throw(AssertionError("must not run")))
    first, second, third = runner.rows
    assert first["exponent"] is None and 1.5 < second["exponent"] < 2.5
    assert "faster than n log n" in second["note"]
    assert third["seconds"] is None and third["note"].startswith("skipped: predicted")
    table = runner.table()
    assert "| neighbours (nearest, k=10) | 1,000 | - | - | - | skipped: predicted" in table


def test_features_are_clustered_float32_with_near_copies():
    x, labels = scale_sim.features(2000, 64, 5, seed=0)
    assert x.dtype == "float32" and x.shape == (2000, 64) and set(labels.tolist()) == set(range(5))
    z = x / ((x * x).sum(1, keepdims=True) ** 0.5)
    same = (z[labels == 0] @ z[labels == 0].T).mean()
    other = (z[labels == 0] @ z[labels == 1].T).mean()
    assert same > other + 0.2  # neighbours mean something
    assert ((z @ z.T) > 0.99).sum() > 2000  # the 1% near-copies (and the diagonal)
