"""torchrun + DistributedDataParallel on CPU (gloo, 2 processes) against a 1-process run.

The tiny config makes the two runs mathematically the same computation, so they must agree
to float rounding: full-batch steps (batch_size = all 18 training images, 9 per rank, DDP
averages the two half-batch gradients = the full-batch gradient), deterministic geometry
(min_scale 1 on square images: the crop is the whole image; no flips), a model without
BatchNorm or dropout (timm's test_convnext: LayerNorm), fp32. Stated tolerance: 1e-5
absolute on every parameter and every logged loss, identical accuracies.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_project as T
import torch

from folderfit.errors import PipelineError
from folderfit.tuning import distributed

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    T.make_image_folder(single / "src", per_class=8, size=40, seed=5)
    T.write_params(single, **{
        "data.source": "src", "data.image_size": 32, "data.val_fraction": 0.25,
        "data.test_fraction": 0.0, "model_name": "timm/test_convnext", "weights": "none",
        "strategy": "full_tune", "num_epochs": 2, "patience": 5, "batch_size": 18,
        "precision": "fp32", "augment.min_scale": 1.0, "augment.hflip": False,
        "evaluate.batch_size": 4})
    T.prepare(single)
    ddp = tmp_path_factory.mktemp("ddp")
    shutil.copytree(single, ddp, dirs_exist_ok=True)
    one = run([sys.executable, "-m", "stages.train"], single)
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "stages.train"], ddp)
    print(two.stdout)  # the DDP run's log, for the record
    return single, ddp, one, two


def curve(project: Path, split: str, metric: str) -> list[float]:
    path = project / f"metrics/train/plots/metrics/{split}/{metric}.tsv"
    with open(path, newline="") as fh:
        return [float(row[metric]) for row in csv.DictReader(fh, delimiter="\t")]


@pytest.mark.slow  # torchrun
def test_ddp_two_processes_match_single_process(runs):
    single, ddp, one, two = runs
    assert "distributed: 2 processes, max parameter difference to rank 0: 0\n" in two.stdout
    assert two.stdout.count("epoch   1 ") == 1  # rank 1 prints nothing
    summary = json.loads((ddp / "metrics/train/details.json").read_text())
    reference = json.loads((single / "metrics/train/details.json").read_text())
    assert (summary["processes"], reference["processes"]) == (2, 1)
    assert summary["best_epoch"] == reference["best_epoch"] and summary["epochs_run"] == 2
    assert summary["best_val_accuracy"] == reference["best_val_accuracy"]
    assert abs(summary["best_val_loss"] - reference["best_val_loss"]) <= TOLERANCE
    for split in ("train", "val"):
        assert curve(ddp, split, "accuracy") == curve(single, split, "accuracy")
        for a, b in zip(curve(ddp, split, "loss"), curve(single, split, "loss"), strict=True):
            assert abs(a - b) <= TOLERANCE
    a = torch.load(ddp / "models/model.pt", weights_only=True)["state_dict"]
    b = torch.load(single / "models/model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()  # saved from the plain module, not the DDP wrapper ("module.")
    drift = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    print(f"max |parameter difference| 2 processes vs 1: {drift:.3g}")
    assert drift <= TOLERANCE


def test_helpers_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init_from_env()
    assert not ctx.enabled and ctx.is_main and distributed.reducer(ctx, torch.device("cpu")) is None
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, ctx) is model and distributed.train_sampler([1, 2], ctx, 0) is None


def test_shards_and_global_batch():
    data = list(range(7))
    shards = [list(distributed.shard(data, distributed.DistContext(r, 3))) for r in range(3)]
    assert sorted(sum(shards, [])) == data  # every validation image counted exactly once
    assert distributed.per_rank_batch(32, distributed.DistContext(0, 4)) == 8
    with pytest.raises(PipelineError, match="below the number of processes"):
        distributed.per_rank_batch(2, distributed.DistContext(0, 4))
    with pytest.raises(PipelineError, match="validation image"):
        distributed.shard([1], distributed.DistContext(0, 2))
