"""Where and how the computation runs: seeding, device, precision, memory layout.

`device` (auto | cpu | cuda | cuda:N | mps) and `precision` (auto | fp32 | bf16 | fp16) are
resolved here for train, evaluate and predict alike. What `auto` picks, and what is refused:

| device                         | precision auto          | bf16      | fp16                  |
|--------------------------------|-------------------------|-----------|-----------------------|
| CUDA GPU with bf16 (sm 8.0+)   | bf16 autocast           | bf16      | fp16 + grad scaler    |
| CUDA GPU without (T4, V100)    | fp16 + grad scaler      | refused   | fp16 + grad scaler    |
| CPU with AVX-512 BF16 / AMX    | bf16 autocast           | bf16      | refused               |
| CPU without                    | fp32                    | refused   | refused               |
| Apple GPU (mps; asked for)     | fp32                    | bf16      | fp16 + grad scaler    |

That table is the runtime of training (fine_tune / full_tune: bf16 autocast where it is
native). Inference of a frozen network on a CPU (features for review and feature_extract,
scoring) runs on the engine folderfit.compute.cpu_engine.choose_engine measures for `precision: auto`
(ONNX Runtime fp32, torch fp32 or torch bf16, whichever is fastest here: bf16 is native but
not the fastest on every such CPU); its EngineChoice carries the Runtime to run it under.
Scoring with a trained model file (evaluate, predict, folderfit.load) resolves `auto` to the
numerics recorded in the file instead (scoring_runtime): what its scores were computed with.

Refused = a one-line error naming the setting and the fix, instead of running something
that is much slower (emulated bf16, docs/speed.md) or pointless (fp16
on a CPU). `device: auto` is the current CUDA GPU if there is one, else the CPU; the Apple
GPU is used only when asked for (`device: mps`): it is not tested by this project.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from folderfit.params import DEVICE_CHOICES, DEVICE_PATTERN, PRECISIONS

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; deterministic kernels where torch has them.
    Returns the run's generator (shuffling and augmentation draw from it)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic_algorithms()
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def deterministic_algorithms() -> None:
    """Deterministic kernels in eager mode and under torch.compile, through public switches only:
    * eager kernels: torch.set_deterministic_debug_mode("warn"), the public call that sets what
      torch.use_deterministic_algorithms(True, warn_only=True) sets, without that function's
      import of torch._inductor (seconds of CPU per stage process: docs/speed.md);
    * Inductor: TORCHINDUCTOR_DETERMINISTIC=1, its documented switch, read when it is imported,
      so `compile: true` (or anything else that loads it later) starts deterministic.
    tests/test_runtime.py reads both back through torch's public getters."""
    os.environ.setdefault("TORCHINDUCTOR_DETERMINISTIC", "1")
    torch.set_deterministic_debug_mode("warn")


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


def cuda_supports_bf16(device: torch.device) -> bool:
    """Native bf16 (Ampere, compute capability 8.0, and later). torch's is_bf16_supported()
    also says yes for emulated bf16 on older GPUs, which is slow: ask for native only."""
    return torch.cuda.get_device_capability(device)[0] >= 8


@dataclass(frozen=True)
class Setting:
    """How the user spelled a setting, so an error names it and its fix in the same words:
    origin "params" (params.yaml), "cli" (--key value) or "api" (key='value')."""

    origin: str = "params"

    def name(self, key: str, value: str) -> str:
        return {"params": f"params.yaml: '{key}' is '{value}'", "cli": f"--{key} {value}",
                "api": f"{key}={value!r}"}[self.origin]

    def fix(self, key: str, value: str) -> str:
        return {"params": f"set {key}: {value} in params.yaml", "cli": f"use --{key} {value}",
                "api": f"pass {key}={value!r}"}[self.origin]


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = fp32

    @property
    def channels_last(self) -> bool:
        return True  # faster for convnets on both oneDNN (CPU) and cuDNN (GPU)

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def grad_scaling(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range."""
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled for fp16 only (disabled it passes everything through)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.grad_scaling)

    def describe(self) -> str:
        name = (f"{torch.cuda.get_device_name(self.device)} ({self.device})"
                if self.device.type == "cuda" else self.device.type)
        amp = {"fp32": "fp32", "bf16": "bf16 autocast",
               "fp16": "fp16 autocast + grad scaler"}[self.precision]
        return f"{name}, {amp}, channels_last"


def resolve_device(spec: str = "auto", setting: Setting = Setting()) -> torch.device:
    """The torch device for `device: spec`; a one-line PipelineError when it is absent."""
    from folderfit.errors import PipelineError

    if not DEVICE_PATTERN.fullmatch(spec):
        raise PipelineError(f"{setting.name('device', spec)}: not a device; choose one of: "
                            f"{DEVICE_CHOICES}")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                else torch.device("cpu"))
    if spec == "mps":
        if not torch.backends.mps.is_available():
            why = ("this torch build has no MPS support" if not torch.backends.mps.is_built()
                   else "mps is macOS on Apple silicon")
            raise PipelineError(f"{setting.name('device', spec)}: no Apple GPU here ({why}); "
                                f"{setting.fix('device', 'auto')} or cpu")
        return torch.device("mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = ("this torch build has no CUDA" if torch.version.cuda is None
               else f"torch built for CUDA {torch.version.cuda} finds no GPU or driver")
        raise PipelineError(f"{setting.name('device', spec)}: no CUDA GPU visible ({why}); "
                            f"{setting.fix('device', 'auto')} or cpu")
    index = int(spec.partition(":")[2]) if ":" in spec else torch.cuda.current_device()
    if index >= count:
        raise PipelineError(f"{setting.name('device', spec)}: only {count} CUDA GPU(s) visible "
                            f"(cuda:0..cuda:{count - 1}); {setting.fix('device', 'cuda:0')} or auto")
    torch.cuda.set_device(index)  # so that anything allocating on "cuda" lands here too
    return torch.device("cuda", index)


def resolve_precision(spec: str, device: torch.device, setting: Setting = Setting()) -> torch.dtype | None:
    """The autocast dtype for `precision: spec` on `device` (None = fp32), by the table in
    the module docstring; a one-line PipelineError for the refused combinations."""
    from folderfit.errors import PipelineError

    if spec not in PRECISIONS:
        raise PipelineError(f"{setting.name('precision', spec)}: choose one of: "
                            f"{', '.join(PRECISIONS)}")
    if device.type == "cuda":
        native_bf16 = cuda_supports_bf16(device)
        if spec == "auto":
            return torch.bfloat16 if native_bf16 else torch.float16
        if spec == "bf16" and not native_bf16:
            major, minor = torch.cuda.get_device_capability(device)
            raise PipelineError(
                f"{setting.name('precision', spec)}: {torch.cuda.get_device_name(device)} has no "
                f"native bf16 (compute capability {major}.{minor}, bf16 needs 8.0+) and emulates "
                f"it slowly; {setting.fix('precision', 'auto')} (fp16 with a gradient scaler "
                f"here) or fp16")
        return _DTYPES[spec]
    if device.type == "mps":
        return None if spec == "auto" else _DTYPES[spec]
    # CPU
    if spec == "fp16":
        raise PipelineError(f"{setting.name('precision', spec)}: fp16 is for GPUs (a CPU has "
                            f"no fast fp16 kernels); {setting.fix('precision', 'auto')} or fp32")
    native_bf16 = cpu_supports_bf16()
    if spec == "bf16" and not native_bf16:
        raise PipelineError(
            f"{setting.name('precision', spec)}: this CPU has no native bf16 (AVX-512 BF16 / "
            f"AMX), where bf16 runs ~15x slower than fp32; {setting.fix('precision', 'auto')} "
            f"(fp32 here) or fp32")
    if spec == "auto":
        return torch.bfloat16 if native_bf16 else None
    return _DTYPES[spec]


def pick_runtime(precision: str = "auto", device: str = "auto",
                 setting: Setting = Setting()) -> Runtime:
    """The Runtime for these `precision` and `device` settings (see the module docstring)."""
    dev = resolve_device(device, setting)
    return Runtime(dev, resolve_precision(precision, dev, setting))


def engine_precision(engine: str | None) -> str | None:
    """'fp32' of 'onnxruntime-fp32', 'bf16' of 'torch-bf16'; None for anything else."""
    from folderfit.artifacts.model_file import Numerics

    numerics = Numerics.parse(engine)
    return numerics.precision if numerics else None


def scoring_runtime(precision: str, device: str, recorded: str | None,
                    setting: Setting = Setting()) -> Runtime:
    """The Runtime that scores images with a model file (evaluate, predict, folderfit.load).
    `precision: auto` means the numerics the model file's scores were computed with
    (`recorded`, e.g. 'onnxruntime-fp32', 'torch-bf16': folderfit.artifacts.model_file.LoadedModel.numerics):
    bf16 against fp32 moved one real photo's confidence by 0.28, so predict must not pick
    another precision than evaluate did. ONNX Runtime fp32 runs as torch fp32 here (they agree
    to ~1e-6 in probability). A recorded precision this device has no native kernels for
    (bf16 from a machine with AVX-512 BF16, on one without) falls back to fp32, with a note.
    An explicit precision, or a file recording none, resolves as pick_runtime does."""
    wanted = engine_precision(recorded)
    if precision != "auto" or wanted is None:
        return pick_runtime(precision, device, setting)
    import sys

    from folderfit.errors import PipelineError

    dev = resolve_device(device, setting)
    try:
        return Runtime(dev, resolve_precision(wanted, dev, setting))
    except PipelineError:  # not native on this device
        print(f"note: the model's scores were computed in {wanted}, which this {dev.type} has no "
              f"native kernels for; scoring in fp32 here (probabilities can differ from "
              f"evaluate's by up to ~0.3)", file=sys.stderr)
        return Runtime(dev, None)


def prepare_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def async_copy(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor (labels, crop boxes) onto `device` without waiting: a blocking copy to a
    GPU would first wait for all the work queued there, so the CPU could not prepare the next
    batch while the GPU computes. Pinned memory makes the copy truly asynchronous."""
    if device.type == "cuda" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def to_device(batch: torch.Tensor, rt: Runtime) -> torch.Tensor:
    batch = batch.to(rt.device, non_blocking=True)
    if rt.channels_last and batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch
