"""The frozen backbone on the CPU through ONNX Runtime, for feature extraction.

A feature_extract run (and the review stage) passes every image and view once through a
frozen backbone; on a CPU that is nearly all of its time. ONNX Runtime runs the same network
about 3x faster than torch eager (tf_efficientnet_lite2 @ 260 px, batch 32, 2-core AVX2 EPYC:
~22 against ~78 ms per image; bench/engine_speed.py), because its graph optimiser folds every
batch norm into its convolution and fuses the activations. Its outputs agree with torch's to
about 1e-5, not bit for bit, so the engine is part of the feature cache's key
(folderfit.features) and two runs on one machine still give identical bytes.

The graph is exported from the torch module (weights as they are: bundled, torchvision/timm,
a file or random) when a feature is missing from the cache, with the TorchScript-based
exporter: ~1-2 s, where the torch.export-based one took ~20 s for lite2. The batch dimension
is exported free and fixed at session creation to the extractor's batch size, which is as
fast as a fixed-shape export. Before use, one image goes through both engines: a graph that
does not compute what the torch module computes is never used.

params.yaml `cpu_engine`: auto = ONNX Runtime where the features are computed on the CPU in
fp32 and the export works, else torch (with a note saying why); onnxruntime = the same, but
an export that fails is an error; torch = never ONNX Runtime. On a GPU, or in bf16/fp16,
features are always computed by torch.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from folderfit.errors import PipelineError
from folderfit.params import CPU_ENGINES
from folderfit.runtime import Runtime

ONNX_OPSET = 17
# ONNX Runtime against torch on one image: the largest difference allowed, relative to the
# largest feature (measured: ~2e-6 for lite2, ~1e-6 for mobilenet_v3_small and resnet18)
PARITY_TOLERANCE = 1e-3


class EngineUnavailable(Exception):
    """ONNX Runtime cannot run this backbone (not installed, export or parity failed)."""


def applies(rt: Runtime) -> bool:
    """Whether ONNX Runtime can stand in for torch on this runtime: CPU, fp32."""
    return rt.device.type == "cpu" and rt.dtype is None


def planned_engine(choice: str, rt: Runtime) -> str:
    """"onnxruntime" or "torch" for `cpu_engine: choice`, before any export is tried."""
    if choice not in CPU_ENGINES:
        raise PipelineError(f"params.yaml: 'cpu_engine' is '{choice}'; choose one of: {', '.join(CPU_ENGINES)}")
    if choice == "torch":
        return "torch"
    if not applies(rt):
        if choice == "onnxruntime":
            raise PipelineError(
                f"params.yaml: 'cpu_engine' is 'onnxruntime', but features are computed on "
                f"{rt.device.type} in {rt.precision}; ONNX Runtime runs them on the CPU in fp32 "
                f"only: set cpu_engine: auto (or device: cpu and precision: fp32)")
        return "torch"
    return "onnxruntime"


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
    Raises EngineUnavailable with the reason."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailable(f"onnxruntime is not installed ({exc.name}); pip install onnxruntime")
    threads = threads or torch.get_num_threads()
    backbone = backbone.eval()
    # a fixed, seeded image in the normalised range: the parity check must not depend on
    # the global random stream (nor move it)
    example = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(backbone, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        graph = buffer.getvalue()
        check = OrtBackbone(_session(graph, threads, None))(example)
    except Exception as exc:  # any exporter or runtime failure means: use torch
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise EngineUnavailable(f"export failed ({type(exc).__name__}{': ' + reason if reason else ''})")
    with torch.inference_mode():
        expected = backbone(example).float()
    if check.shape != expected.shape:
        raise EngineUnavailable(f"the exported graph gives shape {tuple(check.shape)}, torch "
                                f"{tuple(expected.shape)}")
    scale = expected.abs().max().item() or 1.0
    difference = (check - expected).abs().max().item()
    if not difference <= PARITY_TOLERANCE * scale:
        raise EngineUnavailable(f"the exported graph differs from torch by {difference:.3g} "
                                f"(largest feature {scale:.3g})")
    return OrtBackbone(_session(graph, threads, batch_size))

