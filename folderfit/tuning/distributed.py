"""Multi-process training with DistributedDataParallel, launched by torchrun:

    torchrun --nproc_per_node=4 -m stages.train

Without torchrun (or with --nproc_per_node=1) nothing here does anything: train runs as one
plain process. With N processes ("ranks"):

* Backend nccl when the run uses CUDA (`device` auto with a GPU, or cuda: one GPU per rank,
  cuda:LOCAL_RANK), else gloo (CPU, `device: cpu`). `device: cuda:N` and `mps` are refused:
  each rank takes the GPU of its local rank.
* `batch_size` stays the *global* batch: every rank takes batch_size // N images per step, so
  a run on N GPUs makes the same number of optimizer steps per epoch as one process.
* Training images are sharded by a seeded DistributedSampler (reshuffled every epoch);
  validation images are split rank::N without padding. Loss sums, correct counts and image
  counts are all-reduced, so every rank sees the same epoch metrics and takes the same
  early-stopping / learning-rate decisions.
* Seeds: every rank seeds like a single process (same head and backbone initialisation;
  DDP also broadcasts rank 0's weights at start); the global stream is then reseeded with
  seed + rank, and crops and flips come from a generator seeded seed + rank, so ranks do not
  augment their shards alike. Same seed + same number of
  processes + same machine => same result. It is not bit-identical to a 1-process run (the
  shuffling and augmentation streams differ, and BatchNorm layers see per-rank batches).
* Only rank 0 writes outputs (model file, metrics, dvclive); the other ranks print nothing.
* feature_extract runs the identical (deterministic) computation on every rank with no
  communication, and rank 0 writes the result: it is a one-pass job that DDP cannot speed
  up, so prefer a single process for it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from folderfit.errors import PipelineError
from folderfit.support.report import say


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, for the
    `device` setting of params.yaml."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if device.startswith("cuda:") or device == "mps":
        raise PipelineError(f"params.yaml: 'device' is '{device}' but under torchrun every process "
                            f"uses the GPU of its local rank; set device: cuda (or auto, or cpu)")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device != "cpu" and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise PipelineError(f"torchrun: local rank {local} but only {torch.cuda.device_count()} "
                                f"GPU(s) visible; use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)  # torch.device("cuda") now means this rank's GPU
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    if rank != 0:  # one copy of the log, from rank 0; errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    return DistContext(rank, world, local)


def finish(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def reseed_augmentation(ctx: DistContext, seed: int) -> None:
    """After the model is built (identically on every rank): distinct random crops per rank."""
    if ctx.enabled:
        torch.manual_seed(seed + ctx.rank)


def augmentation_generator(ctx: DistContext, generator: torch.Generator, seed: int) -> torch.Generator:
    """Crops and flips: the run's generator in one process (checkpointed with it); under
    torchrun one seeded seed + rank, so ranks do not draw the same crops."""
    return torch.Generator().manual_seed(seed + ctx.rank) if ctx.enabled else generator


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    on_gpu = next(model.parameters()).is_cuda
    device_ids = [torch.cuda.current_device()] if on_gpu else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile's and DDP's wrappers (its state_dict has no
    "_orig_mod." or "module." prefixes)."""
    from torch.nn.parallel import DistributedDataParallel

    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DistributedDataParallel) else model


def per_rank_batch(batch_size: int, ctx: DistContext) -> int:
    if batch_size < ctx.world_size:
        raise PipelineError(f"params.yaml: 'batch_size' {batch_size} is below the number of "
                            f"processes ({ctx.world_size}); it is the global batch, raise it")
    if batch_size % ctx.world_size:
        say(f"note: batch_size {batch_size} is not a multiple of {ctx.world_size} processes; "
              f"each takes {batch_size // ctx.world_size}")
    return batch_size // ctx.world_size


def train_sampler(dataset, ctx: DistContext, seed: int):
    """None for one process (the DataLoader shuffles); else this rank's seeded shard."""
    if not ctx.enabled:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                              seed=seed)


def shard(dataset, ctx: DistContext):
    """Every world_size-th sample from rank on (no padding: each sample counted once)."""
    if not ctx.enabled:
        return dataset
    if len(dataset) < ctx.world_size:
        raise PipelineError(f"{len(dataset)} validation image(s) for {ctx.world_size} processes; "
                            f"use fewer processes or raise data.val_fraction")
    return torch.utils.data.Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))


def reducer(ctx: DistContext, device: torch.device):
    """None for one process; else a function summing per-rank numbers (loss sums, correct
    counts, image counts) over all ranks, the same result on every rank."""
    if not ctx.enabled:
        return None

    def sum_across(values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    return sum_across


def report_sync(model: torch.nn.Module, ctx: DistContext) -> float:
    """Print and return the largest |parameter difference| between any rank and rank 0.
    DDP keeps replicas identical (same averaged gradients, same optimizer steps): anything
    but 0 means the ranks trained different models and only rank 0's is saved."""
    if not ctx.enabled:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    drift = torch.tensor([float((flat - reference).abs().max())], dtype=torch.float64, device=flat.device)
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    say(f"distributed: {ctx.world_size} processes, max parameter difference to rank 0: "
          f"{float(drift):.3g}" + ("" if float(drift) == 0 else " (WARNING: replicas diverged)"))
    return float(drift)
