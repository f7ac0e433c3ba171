"""Where and how the computation runs: seeding, device, precision, memory layout."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; deterministic kernels where torch has them.
    Returns a generator for DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic_algorithms()
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def deterministic_algorithms() -> None:
    """torch.use_deterministic_algorithms(True, warn_only=True) without the import of
    torch._inductor's config it makes to set the same flag for torch.compile, which nothing
    here uses: that import doubled the CPU time of `import torch` (+4 s per stage process on
    the 2-core CPU, measured). Once inductor is loaded anyway, the public call."""
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def gpu_memory_guard(batch_key: str, batch_size: int):
    """A CUDA out-of-memory error becomes a one-line message suggesting a smaller batch."""
    from folderfit.errors import PipelineError

    try:
        yield
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        smaller = max(1, batch_size // 2)
        raise PipelineError(
            f"out of GPU memory with {batch_key}: {batch_size}; lower it in params.yaml, e.g. "
            f"dvc exp run -S {batch_key}={smaller} (or precision: bf16, a smaller data.image_size)"
        ) from None


def cpu_supports_bf16() -> bool:
    """AVX-512 BF16 / AMX: bf16 matmuls and convolutions run natively and fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = fp32

    @property
    def channels_last(self) -> bool:
        return True  # faster for convnets on both oneDNN (CPU) and cuDNN (GPU)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return f"{name}, {'bf16 autocast' if self.dtype else 'fp32'}, channels_last"


def pick_runtime(precision: str) -> Runtime:
    """precision auto: bf16 autocast on a CUDA GPU with bf16 or a CPU with native bf16, else fp32."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "fp32":
        return Runtime(device, None)
    if precision == "bf16":
        return Runtime(device, torch.bfloat16)
    if device.type == "cuda":
        return Runtime(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    return Runtime(device, torch.bfloat16 if cpu_supports_bf16() else None)


def prepare_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(batch: torch.Tensor, rt: Runtime) -> torch.Tensor:
    batch = batch.to(rt.device, non_blocking=True)
    if rt.channels_last and batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch
