"""OpenVINO as an engine for a frozen network on the CPU, in fp32 only: the third candidate of
folderfit.compute.cpu_engine's measured trial, and what runs a model file whose numerics say
'openvino-fp32'.

OpenVINO reads the ONNX graph cpu_engine exports and caches for ONNX Runtime (its own PyTorch
front end converts the same module several times slower). It is compiled for the CPU with the inference precision forced to f32: on a CPU
with AVX-512 BF16 or AMX, OpenVINO's default is bf16, whose activations differ from fp32 by
~1e-2, and the engine's name says fp32. Before use, one image goes through it and through
torch, and the graph must agree to the tolerance of ONNX Runtime's check (the caller,
cpu_engine.openvino_backbone, passes it and the ONNX opset).

The `openvino` package is optional (pip install openvino): `cpu_engine: auto` leaves it out
when it is not installed, `cpu_engine: openvino` then stops with a one-line error.
"""

from __future__ import annotations

import importlib.util
import io

import torch
from torch import nn

from folderfit.errors import PipelineError

ENGINE = "openvino"
INSTALL = "pip install openvino"


class EngineUnavailable(Exception):
    """OpenVINO cannot run this backbone (not installed, conversion or parity failed)."""


def installed() -> bool:
    """Whether the openvino package can be imported (without importing it: ~1 s)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):  # a broken or stubbed module in sys.modules
        return False


def require(setting: str) -> None:
    """The one-line error for an explicit `setting` naming OpenVINO where it is not installed."""
    if not installed():
        raise PipelineError(f"{setting} is 'openvino', but the openvino package is not installed: "
                            f"{INSTALL} (or choose another engine)")


def version() -> str:
    import openvino

    return openvino.__version__


def compile_options(threads: int) -> dict:
    """OpenVINO's CPU plugin settings: fp32 forced, `threads` threads in one stream (one
    batch at a time, as the other engines run)."""
    import openvino
    import openvino.properties.hint as hints
    from openvino import properties

    return {hints.inference_precision: openvino.Type.f32,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            properties.inference_num_threads: threads,
            properties.num_streams: 1}


class OvBackbone:
    """Called like the torch backbone in eval mode: a float32 NCHW batch in, features out.
    Compiled for a fixed batch size when given (as ONNX Runtime's session is); another batch
    size runs through a batch-free compilation, made when first needed."""

    def __init__(self, model, threads: int, batch_size: int | None):
        self.model, self.threads, self.batch_size = model, threads, batch_size
        self._compiled: dict[int | None, object] = {}
        self.compiled = self._compile(batch_size)

    def _compile(self, batch_size: int | None):
        if batch_size not in self._compiled:
            import openvino

            model = self.model.clone()
            if batch_size is not None:
                shape = list(model.inputs[0].get_partial_shape())
                model.reshape([batch_size] + [dim.get_length() for dim in shape[1:]])
            self._compiled[batch_size] = openvino.Core().compile_model(model, "CPU", compile_options(self.threads))
        return self._compiled[batch_size]

    def eval(self) -> OvBackbone:
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        compiled = self.compiled if len(array) == self.batch_size else self._compile(None)
        return torch.from_numpy(compiled(array)[0].copy())


def compile_backbone(backbone: nn.Module, graph: bytes, image_size: int, batch_size: int | None, *,
                     tolerance: float, threads: int | None = None) -> OvBackbone:
    """OpenVINO computing `backbone` (frozen, on the CPU) for square images of `image_size` px
    from its ONNX graph `graph` (cpu_engine.checked_graph: exported once per machine), in fp32
    on `threads` threads (torch's, the cores folderfit uses), checked against torch on one
    image: the largest difference at most `tolerance` times the largest feature. Raises
    EngineUnavailable with the reason."""
    try:
        import openvino
    except ImportError as exc:
        raise EngineUnavailable(f"openvino is not installed ({exc.name}); {INSTALL}")
    threads = threads or torch.get_num_threads()
    backbone = backbone.eval()
    # the parity image of cpu_engine.checked_graph: seeded, apart from the global stream
    example = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        engine = OvBackbone(openvino.convert_model(io.BytesIO(graph)), threads, batch_size)
        # through the very compilation that will run (a full batch where one is fixed)
        check = engine(example.expand(batch_size or 1, -1, -1, -1))[:1]
    except Exception as exc:  # any OpenVINO failure means: another engine
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise EngineUnavailable(f"conversion failed ({type(exc).__name__}{': ' + reason if reason else ''})")
    with torch.inference_mode():
        expected = backbone(example).float()
    if check.shape != expected.shape:
        raise EngineUnavailable(f"OpenVINO gives shape {tuple(check.shape)}, torch {tuple(expected.shape)}")
    scale = expected.abs().max().item() or 1.0
    difference = (check - expected).abs().max().item()
    if not difference <= tolerance * scale:
        raise EngineUnavailable(f"OpenVINO differs from torch by {difference:.3g} (largest feature {scale:.3g})")
    return engine
