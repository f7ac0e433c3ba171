"""The engine that runs a frozen network (backbone features; whole-model scoring) on the CPU:
ONNX Runtime in fp32, torch in fp32 (channels_last) or torch under bf16 autocast, chosen by
measurement.

Which one is fastest depends on the machine: ONNX Runtime folds every batch norm into its
convolution and fuses the activations, so it beat torch eager ~3x on a 2-core AVX2 EPYC; on a
CPU with AVX-512 BF16, torch's bf16 autocast is native but still far slower than ONNX Runtime
in fp32 for tf_efficientnet_lite2 (bench/engine_speed.py prints the table). A flag alone
cannot tell, so `precision: auto` with `cpu_engine: auto` times each candidate on a few
batches of the real network (random input, after a warm-up) and takes the fastest, preferring
the more exact engine (ONNX Runtime fp32, then torch fp32, then torch bf16) unless a later one
is faster by more than CHOICE_MARGIN: timings of the same machine wobble by ~10% under load,
and a choice that flipped between runs would change the features' last bits. The choice is
stored in `<cache root>/engine_choice.json` per (machine: CPU model, flags, threads; torch and
onnxruntime versions; model, image size, batch; candidates), so a machine measures once and
always gives the same answer afterwards. What was chosen, how, and the measured ms/image are
returned as an EngineChoice for details.json.

Where the optional `openvino` package is installed, OpenVINO fp32 (folderfit.compute.openvino_engine)
is a third fp32 candidate, kept only where it is clearly faster; `cpu_engine: openvino` always
uses it.

Explicit settings are honoured without measuring: `precision: fp32` leaves ONNX Runtime and
torch fp32 to compare, `precision: bf16` is torch bf16, `cpu_engine: torch` never uses ONNX
Runtime, `cpu_engine: onnxruntime` always does (an export that fails is then an error). On a
GPU, torch runs the network under the runtime's autocast (not measured).

ONNX Runtime's outputs agree with torch's to about 1e-5, not bit for bit, and bf16's to about
1e-2, so the engine, precision included, is part of the feature cache's key
(folderfit.frozen.feature_cache). The graph is exported from the torch module with the TorchScript-based
exporter (an order of magnitude faster than the torch.export-based one), its batch dimension free
and fixed at session creation, and kept in `<cache root>/onnx_graphs` (see GRAPH_DIR), so a
machine exports a backbone once, not once per stage process. Before use, one image goes
through both engines: a graph, fresh or cached, that does not compute what the torch module
computes is never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import sys
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import torch
from torch import nn

from folderfit.compute import runtime
from folderfit.compute.runtime import Runtime
from folderfit.errors import PipelineError
from folderfit.params import CPU_ENGINES

ONNX_OPSET = 17
# ONNX Runtime against torch on one image: the largest difference allowed, relative to the
# largest feature (measured: ~2e-6 for lite2, ~1e-6 for mobilenet_v3_small and resnet18)
PARITY_TOLERANCE = 1e-3


class EngineUnavailable(Exception):
    """ONNX Runtime (or OpenVINO) cannot run this backbone (not installed, export or parity
    failed)."""


def applies(rt: Runtime) -> bool:
    """Whether ONNX Runtime can stand in for torch on this runtime: CPU, fp32."""
    return rt.device.type == "cpu" and rt.dtype is None


ENGINE_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torch": "torch"}


def planned_engine(choice: str, rt: Runtime) -> str:
    """"onnxruntime", "openvino" or "torch" for `cpu_engine: choice`, before any export is
    tried."""
    if choice not in CPU_ENGINES:
        raise PipelineError(f"params.yaml: 'cpu_engine' is '{choice}'; choose one of: {', '.join(CPU_ENGINES)}")
    if choice == "torch":
        return "torch"
    if not applies(rt):
        if choice in ("onnxruntime", "openvino"):
            raise PipelineError(
                f"params.yaml: 'cpu_engine' is '{choice}', but features are computed on "
                f"{rt.device.type} in {rt.precision}; {ENGINE_NAMES[choice]} runs them on the CPU "
                f"in fp32 only: set cpu_engine: auto (or device: cpu and precision: fp32)")
        return "torch"
    return "openvino" if choice == "openvino" else "onnxruntime"


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class OrtBackbone:
    """Called like the torch backbone in eval mode: a float32 NCHW batch in, features out."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def eval(self) -> OrtBackbone:
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def _session(graph: bytes, threads: int, batch_size: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # idle threads sleep instead of spinning: the decoding process shares the cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if batch_size is not None:
        options.add_free_dimension_override_by_name("batch", batch_size)
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def export_backbone(backbone: nn.Module, image_size: int, batch_size: int,
                    threads: int | None = None) -> OrtBackbone:
    """An ONNX Runtime session computing `backbone` (frozen, on the CPU) for batches of
    `batch_size` square images of `image_size` px, checked against torch on one image.
    The graph comes from this process's last export, else from the graph cache on disk
    (GRAPH_DIR), else from the exporter (and is then stored there). Raises EngineUnavailable
    with the reason."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailable(f"onnxruntime is not installed ({exc.name}); pip install onnxruntime")
    threads = threads or torch.get_num_threads()
    return OrtBackbone(_session(checked_graph(backbone, image_size, threads), threads, batch_size))


def checked_graph(backbone: nn.Module, image_size: int, threads: int | None = None) -> bytes:
    """The ONNX graph of `backbone` for `image_size` px, checked against torch on one image:
    from this process's last export, else from the graph cache on disk (GRAPH_DIR), else from
    the exporter (and then stored there). ONNX Runtime and OpenVINO both run it. Raises
    EngineUnavailable with the reason."""
    threads = threads or torch.get_num_threads()
    backbone = backbone.eval()
    memo_key = (image_size, _weights_fingerprint(backbone))
    memo_ref = _GRAPH_MEMO.get("module")
    if memo_ref is not None and memo_ref() is backbone and _GRAPH_MEMO["key"] == memo_key:
        return _GRAPH_MEMO["graph"]  # the engine trial exported this very (live) module
    # a fixed, seeded image in the normalised range: the parity check must not depend on
    # the global random stream (nor move it)
    example = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        expected = backbone(example).float()
    path = graph_file(backbone, image_size)
    graph = _read_graph(path)
    if graph is not None and _parity_problem(graph, example, expected, threads) is not None:
        # intact, yet not this module's function (a key that misses what changed it): never used
        print(f"note: {path}: the cached ONNX graph does not compute this backbone; exported again",
              file=sys.stderr)
        graph = None
    if graph is None:
        graph = _export(backbone, example)
        problem = _parity_problem(graph, example, expected, threads)
        if problem is not None:
            raise EngineUnavailable(problem)
        _store_graph(path, graph)
    _GRAPH_MEMO.update(module=weakref.ref(backbone), key=memo_key, graph=graph)
    return graph


def _export(backbone: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX graph of `backbone` (TorchScript-based exporter, batch dimension free)."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(backbone, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    except Exception as exc:  # any exporter failure means: use torch
        raise EngineUnavailable(f"export failed ({_reason(exc)})")
    return buffer.getvalue()


def _reason(exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + reason if reason else ''}"


def _parity_problem(graph: bytes, example: torch.Tensor, expected: torch.Tensor,
                    threads: int) -> str | None:
    """Why `graph` cannot stand in for the torch module that gave `expected` on `example`
    (None: it can)."""
    try:
        check = OrtBackbone(_session(graph, threads, None))(example)
    except Exception as exc:  # a graph ONNX Runtime cannot load or run
        return f"export failed ({_reason(exc)})"
    if check.shape != expected.shape:
        return f"the exported graph gives shape {tuple(check.shape)}, torch {tuple(expected.shape)}"
    scale = expected.abs().max().item() or 1.0
    difference = (check - expected).abs().max().item()
    if not difference <= PARITY_TOLERANCE * scale:
        return f"the exported graph differs from torch by {difference:.3g} (largest feature {scale:.3g})"
    return None


# ------------------------------------------------------------------ the graph cache
# Exported graphs, one file per (module structure, weights, image size, exporter and runtime
# versions, opset), so the review, train and evaluate processes of a run, and later runs,
# export a backbone once per machine. A file is the header line GRAPH_MAGIC, the graph's size
# and sha256, then the graph: a truncated or damaged file fails the check and is exported
# again; an intact one still passes the parity check before use. Like the feature cache, a
# pure memo: deleting it costs only time, and a cache that cannot be written is skipped.
GRAPH_DIR = "onnx_graphs"
GRAPH_FORMAT = 1
GRAPH_MAGIC = b"folderfit-onnx-graph"


def _package_version(name: str) -> str | None:
    """The installed version, without importing the package (onnx costs ~1 s to import)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def graph_key(backbone: nn.Module, image_size: int) -> str:
    """What the exported graph of `backbone` at `image_size` depends on, as a digest."""
    spec = {"format": GRAPH_FORMAT, "opset": ONNX_OPSET, "image_size": image_size,
            "class": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
            "structure": hashlib.sha256(repr(backbone).encode()).hexdigest(),
            "torch": torch.__version__, "onnx": _package_version("onnx"),
            "onnxruntime": _package_version("onnxruntime")}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for name, tensor in backbone.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:32]


def graph_file(backbone: nn.Module, image_size: int) -> Path:
    from folderfit.paths import cache_root

    return cache_root() / GRAPH_DIR / f"{graph_key(backbone, image_size)}.onnx"


def _read_graph(path: Path) -> bytes | None:
    """The graph stored at `path`, or None when missing, truncated or damaged (with a note)."""
    from folderfit.support.fileio import open_regular, sha256_bytes

    try:
        with open_regular(path) as fh:  # a named pipe in its place would block for ever
            data = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        print(f"note: {path}: cached ONNX graph not readable ({exc}); exported again", file=sys.stderr)
        return None
    header, _, graph = data.partition(b"\n")
    fields = header.split(b" ")
    if (len(fields) == 3 and fields[0] == GRAPH_MAGIC and fields[1] == str(len(graph)).encode()
            and fields[2] == sha256_bytes(graph).encode()):
        return graph
    print(f"note: {path}: cached ONNX graph is damaged or incomplete; exported again", file=sys.stderr)
    return None


def _store_graph(path: Path, graph: bytes) -> None:
    from folderfit.support.fileio import sha256_bytes, write_bytes

    header = b" ".join([GRAPH_MAGIC, str(len(graph)).encode(), sha256_bytes(graph).encode()])
    try:
        write_bytes(path, header + b"\n" + graph)
    except (OSError, PipelineError) as exc:  # a memo: without it the next process exports again
        print(f"note: ONNX graph not cached in {path} ({exc}); the next run exports again",
              file=sys.stderr)


# the last graph that passed its parity check, so that the engine trial and the extraction
# after it export once: for the same live module (a weak reference) with the same weights
# (their storage and in-place version counters)
_GRAPH_MEMO: dict = {}


def _weights_fingerprint(module: nn.Module) -> tuple:
    """Changes when a weight is replaced or modified in place (tensor version counters)."""
    return tuple((name, t.data_ptr(), t._version) for name, t in module.state_dict().items())



# ------------------------------------------------------------------ the choice
# Candidates in order of preference: the more exact engine first (ONNX Runtime and torch fp32
# agree to ~1e-5; bf16 rounds activations to 8 bits of mantissa).
# OpenVINO (folderfit.compute.openvino_engine, optional) is as exact as ONNX Runtime, but comes
# after both fp32 engines: a new engine must win clearly where it is installed to be chosen.
ORT_FP32, TORCH_FP32, TORCH_BF16 = "onnxruntime-fp32", "torch-fp32", "torch-bf16"
OV_FP32 = "openvino-fp32"
PREFERENCE = (ORT_FP32, TORCH_FP32, OV_FP32, TORCH_BF16)
CHOICE_MARGIN = 1.2  # a less preferred engine must be this much faster to be chosen
TRIAL_ROUNDS = 2  # timed batches per candidate after one warm-up batch (the fastest counts)
# Losers stop early: the trial times whole batches of the real size, which take seconds.
# A candidate must beat the best so far by CHOICE_MARGIN to be chosen, so one timed batch
# slower than the best ends its rounds, and a warm-up batch (which also builds kernels) this
# much slower means it is not timed at all.
PRUNE_FACTOR = 1.0
WARMUP_PRUNE_FACTOR = 2.0
CHOICE_FILE = "engine_choice.json"
CHOICE_FORMAT = 2  # 2: trials at the batch size used (format 1 timed batches of 4)


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs a frozen network, and why. `engine` names it with its precision
    ('onnxruntime-fp32', 'torch-fp32', 'torch-bf16'; 'torch-fp16' etc. on a GPU); `rt` is the
    runtime to run it under (its dtype is the engine's precision); `cpu_engine` is the value
    for FeatureExtractor(engine=...); `how`: measured | cached | explicit | gpu;
    `ms_per_image`: the trial's times by engine (measured now or when cached); `notes`: the
    candidates left out and why."""

    engine: str
    rt: Runtime
    cpu_engine: str
    how: str
    ms_per_image: dict = field(default_factory=dict)
    notes: tuple = ()

    def to_dict(self) -> dict:
        """For details.json: {"feature_engine": choice.engine, "engine_choice": choice.to_dict()}."""
        return {"engine": self.engine, "how": self.how,
                "ms_per_image": {k: round(v, 2) for k, v in self.ms_per_image.items()},
                "notes": list(self.notes)}

    def describe(self) -> str:
        times = ", ".join(f"{k} {v:.1f}" for k, v in self.ms_per_image.items())
        return f"{self.engine} ({self.how}{'; ms/image: ' + times if times else ''})"


def _cpu_identity() -> dict:
    """What makes one CPU faster than another at this: model, instruction sets, threads."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:  # the first processor's block describes them all
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:  # not Linux: the processor string and torch's capability must do
        model = platform.processor()
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return {"arch": platform.machine(), "model": model, "capability": capability,
            "flags": hashlib.sha256(flags.encode()).hexdigest()[:16], "native_bf16": runtime.cpu_supports_bf16(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def _choice_key(candidates: list[str], model_name: str, image_size: int, batch_size: int) -> str:
    try:
        ort = version() if ORT_FP32 in candidates else None
    except ImportError:
        ort = None
    spec = {"format": CHOICE_FORMAT, "cpu": _cpu_identity(), "torch": torch.__version__,
            "onnxruntime": ort, "model": model_name, "image_size": image_size,
            "batch": batch_size, "candidates": candidates}
    if OV_FP32 in candidates:  # only then: the keys stored before OpenVINO stay valid
        from folderfit.compute import openvino_engine

        try:
            spec["openvino"] = openvino_engine.version()
        except ImportError:  # found but broken: the trial notes why
            spec["openvino"] = None
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def choice_file() -> Path:
    from folderfit.paths import cache_root

    return cache_root() / CHOICE_FILE


def _read_choices(path: Path) -> dict:
    from folderfit.support.fileio import open_regular

    try:
        with open_regular(path) as fh:  # a named pipe in its place would block for ever
            data = json.loads(fh.read().decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # missing or damaged: it only costs a new trial
        return {}


def _store_choice(path: Path, key: str, record: dict) -> None:
    from folderfit.support.fileio import write_json

    choices = _read_choices(path)
    choices[key] = record
    try:
        write_json(path, choices)
    except (OSError, PipelineError) as exc:  # a memo: without it the next run measures again
        print(f"note: engine choice not stored in {path} ({exc}); the next run measures again",
              file=sys.stderr)


def time_runner(name: str, run, images: torch.Tensor, rounds: int, best_so_far: float | None) -> float:
    """ms per image of engine `name` running `run(images)`: one warm-up call, then the fastest
    of `rounds` timed calls (the fastest is the least disturbed by other work on the machine).
    Losers stop early: a warm-up call already WARMUP_PRUNE_FACTOR times slower than the best
    engine so far returns its own time (an overestimate: first calls also build kernels), a
    timed one PRUNE_FACTOR times slower ends the rounds."""
    tick = perf_counter()
    run(images)
    warm_up = (perf_counter() - tick) * 1000 / len(images)
    if best_so_far is not None and warm_up > WARMUP_PRUNE_FACTOR * best_so_far:
        return warm_up
    best = float("inf")
    for _ in range(rounds):
        tick = perf_counter()
        run(images)
        best = min(best, (perf_counter() - tick) * 1000 / len(images))
        if best_so_far is not None and best > PRUNE_FACTOR * best_so_far:
            break
    return best


def _torch_runner(network: nn.Module, dtype: torch.dtype | None):
    def run(images):
        with torch.inference_mode(), (torch.autocast("cpu", dtype=dtype) if dtype
                                      else torch.autocast("cpu", enabled=False)):
            return network(images)

    return run


def openvino_backbone(backbone: nn.Module, image_size: int, batch_size: int | None):
    """OpenVINO fp32 computing `backbone` (folderfit.compute.openvino_engine), held to ONNX
    Runtime's parity check. Raises EngineUnavailable with the reason. The last one compiled
    is served again for the same live module, weights and shapes (the trial's, to the
    extraction after it), as export_backbone serves its graph."""
    from folderfit.compute import openvino_engine

    key = (image_size, batch_size, torch.get_num_threads(), _weights_fingerprint(backbone))
    memo_ref = _OPENVINO_MEMO.get("module")
    if memo_ref is not None and memo_ref() is backbone and _OPENVINO_MEMO["key"] == key:
        return _OPENVINO_MEMO["engine"]
    try:
        engine = openvino_engine.compile_backbone(backbone, checked_graph(backbone, image_size), image_size,
                                                  batch_size, tolerance=PARITY_TOLERANCE)
    except openvino_engine.EngineUnavailable as exc:
        raise EngineUnavailable(str(exc)) from exc
    _OPENVINO_MEMO.update(module=weakref.ref(backbone), key=key, engine=engine)
    return engine


_OPENVINO_MEMO: dict = {}


def _candidates(precision: str, cpu_engine: str, rt: Runtime) -> list[str]:
    """The engines `precision` and `cpu_engine` allow on this CPU, in order of preference."""
    from folderfit.compute import openvino_engine

    fp32 = [ORT_FP32, TORCH_FP32] + ([OV_FP32] if openvino_engine.installed() else [])
    if precision == "auto":
        allowed = fp32 + ([TORCH_BF16] if runtime.cpu_supports_bf16() else [])
    else:  # resolved and checked by pick_runtime: fp32, or bf16 where native
        allowed = [TORCH_BF16] if rt.dtype == torch.bfloat16 else fp32
    if cpu_engine == "torch":
        allowed = [c for c in allowed if c not in (ORT_FP32, OV_FP32)]
    elif cpu_engine in ("onnxruntime", "openvino"):
        planned_engine(cpu_engine, Runtime(rt.device, None if precision == "auto" else rt.dtype))
        if cpu_engine == "openvino":
            openvino_engine.require("params.yaml: 'cpu_engine'")
        allowed = [ORT_FP32 if cpu_engine == "onnxruntime" else OV_FP32]
    return [c for c in PREFERENCE if c in allowed]


def _valid_record(record, candidates: list[str]) -> bool:
    """A stored choice is used only if it is well formed (the file is a memo anyone can edit)."""
    return (isinstance(record, dict) and record.get("engine") in candidates
            and isinstance(record.get("ms_per_image"), dict)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and v >= 0 for v in record["ms_per_image"].values())  # JSON allows NaN
            and isinstance(record.get("notes", []), list)
            and all(isinstance(n, str) for n in record.get("notes", [])))


def _result(engine: str, rt: Runtime, cpu_engine: str, how: str, times=None, notes=()) -> EngineChoice:
    dtype = torch.bfloat16 if engine == TORCH_BF16 else None
    # auto keeps its fallback to torch (for OpenVINO: FeatureExtractor's `fallback`)
    passed = {ORT_FP32: cpu_engine, OV_FP32: "openvino"}.get(engine, "torch")
    return EngineChoice(engine, Runtime(rt.device, dtype), passed, how, dict(times or {}), tuple(notes))


def choose_engine(network: nn.Module, rt: Runtime, *, precision: str, cpu_engine: str,
                  model_name: str, image_size: int, batch_size: int,
                  store: bool = True) -> EngineChoice:
    """The engine for inference of the frozen `network` (eval mode, prepared for `rt`) on
    batches of `batch_size` square images of `image_size` px, for params.yaml's `precision`
    and `cpu_engine` (rt = pick_runtime(precision, device)): see the module docstring.
    `store`: read and write the choice file (off: measure every time)."""
    if cpu_engine not in CPU_ENGINES:
        planned_engine(cpu_engine, rt)  # the one-line error naming the choices
    if rt.device.type != "cpu":
        planned_engine(cpu_engine, rt)  # onnxruntime on a GPU: the one-line refusal
        return EngineChoice(f"torch-{rt.precision}", rt, "torch", "gpu")
    candidates = _candidates(precision, cpu_engine, rt)
    if len(candidates) == 1:
        return _result(candidates[0], rt, cpu_engine, "explicit")
    path = choice_file() if store else None
    key = _choice_key(candidates, model_name, image_size, batch_size)
    cached = _read_choices(path).get(key) if path else None
    if _valid_record(cached, candidates):
        return _result(cached["engine"], rt, cpu_engine, "cached", cached.get("ms_per_image"),
                       cached.get("notes", ()))
    if cached is not None:
        print(f"note: {path}: the stored engine choice for this machine and setting is not "
              f"usable (an unknown engine, or a time that is not a finite number); measuring "
              f"again", file=sys.stderr)
    # timed at the very batch size the extraction will use: torch's speed per image depends on
    # it (a 26 MB batch of 32 lite2 inputs puts every activation above the fixed mmap
    # threshold of folderfit.support.memory, so each one is mapped and zero-filled afresh): a
    # trial on small batches once chose an engine that then ran 3x slower (docs/speed.md).
    engine, times, notes = _measure(network, candidates, image_size, batch_size)
    if path and engine is not None:
        _store_choice(path, key, {"engine": engine, "ms_per_image": times, "notes": notes,
                                  "measured_at_load": round(os.getloadavg()[0], 2)
                                  if hasattr(os, "getloadavg") else None})
    return _result(engine, rt, cpu_engine, "measured", times, notes)


def _measure(network: nn.Module, candidates: list[str], image_size: int,
             batch: int) -> tuple[str, dict, list]:
    """Time every candidate on one random batch; (the chosen engine, ms/image by engine,
    notes on candidates that could not run)."""
    network = network.eval()
    images = (torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
              * 2 - 1).contiguous(memory_format=torch.channels_last)
    times: dict[str, float] = {}
    notes: list[str] = []
    for name in candidates:
        if name in (ORT_FP32, OV_FP32):
            prepare = export_backbone if name == ORT_FP32 else openvino_backbone
            try:
                run = prepare(network, image_size, batch)
            except EngineUnavailable as exc:
                notes.append(f"{name}: {exc}")
                continue
        else:
            run = _torch_runner(network, torch.bfloat16 if name == TORCH_BF16 else None)
        best = min(times.values()) if times else None
        with torch.inference_mode():
            times[name] = time_runner(name, run, images, TRIAL_ROUNDS, best)
    chosen = None
    for name in candidates:  # in order of preference: later ones must win by the margin
        if name in times and (chosen is None or times[name] * CHOICE_MARGIN < times[chosen]):
            chosen = name
    return chosen, times, notes
