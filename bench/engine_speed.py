"""Frozen-backbone inference on the CPU, per engine: torch fp32 (contiguous and channels_last),
torch bf16 autocast (where the CPU has native bf16) and ONNX Runtime fp32
(folderfit.compute.cpu_engine), model only, on one synthetic batch; then what the pipeline's measured
choice (cpu_engine.choose_engine, precision auto, cpu_engine auto) picks here.

    python -m bench.engine_speed                                  # params.yaml's backbone and size
    python -m bench.engine_speed --model tf_efficientnet_lite0 --size 224 --rounds 5
    python -m bench.engine_speed --model resnet50 --size 224 --weights none

Prints ms per image for each engine (the median of --rounds timed batches after one warm-up
batch, the engines interleaved so that a change of machine load hits all of them), the export
time, each engine's largest feature difference from torch fp32, the CPU's bf16 support and the
load average. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults["model_name"])
    parser.add_argument("--size", type=int, default=defaults["data"]["image_size"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--weights", default="default", help="as params.yaml's weights (none: random, "
                        "for backbones whose weights cannot be downloaded here)")
    parser.add_argument("--no-choice", action="store_true", help="skip the measured choice's trial")
    args = parser.parse_args(argv)

    from folderfit.backbone import architecture
    from folderfit.compute import cpu_engine
    from folderfit.compute.runtime import Runtime, cpu_supports_bf16, prepare_model
    from folderfit.frozen.feature_cache import backbone_only

    load_before = os.getloadavg()[0]
    rt = Runtime(torch.device("cpu"), None)
    built = architecture.build_model(args.model, 2, args.weights, seed=0)
    backbone, _ = backbone_only(prepare_model(built.model, rt), built.head_name)
    backbone.eval()
    started = time.perf_counter()
    ort = cpu_engine.export_backbone(backbone, args.size, args.batch)
    export_s = time.perf_counter() - started
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    contiguous = images.contiguous()
    images = images.contiguous(memory_format=torch.channels_last)

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return backbone(x).float()

    # (engine, callable, input): channels_last weights either way, as prepare_model leaves them
    engines = {"torch-fp32 contiguous": (backbone, contiguous),
               "torch-fp32 channels_last": (backbone, images)}
    native_bf16 = cpu_supports_bf16()
    if native_bf16:  # emulated bf16 is ~15x slower: never a candidate, not timed
        engines["torch-bf16 channels_last"] = (bf16, images)
    engines["onnxruntime-fp32"] = (ort, images)
    times: dict[str, list[float]] = {name: [] for name in engines}
    with torch.inference_mode():
        outputs = {name: run(x) for name, (run, x) in engines.items()}  # warm-up
        for _ in range(args.rounds):
            for name, (run, x) in engines.items():
                tick = time.perf_counter()
                run(x)
                times[name].append((time.perf_counter() - tick) / args.batch * 1000)
    print(f"{args.model} @ {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, onnxruntime {cpu_engine.version()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16}; "
          f"export + parity check {export_s:.1f} s")
    reference = outputs["torch-fp32 channels_last"]
    scale = reference.abs().max().item()
    for name, values in times.items():
        difference = (outputs[name] - reference).abs().max().item()
        print(f"{name:<26} {statistics.median(values):7.1f} ms/image  (rounds: "
              f"{', '.join(f'{v:.1f}' for v in values)}; max |diff| vs torch-fp32 {difference:.1e}, "
              f"largest feature {scale:.2f})")
    if not args.no_choice:
        started = time.perf_counter()
        choice = cpu_engine.choose_engine(backbone, rt, precision="auto", cpu_engine="auto",
                                 model_name=args.model, image_size=args.size,
                                 batch_size=args.batch, store=False)
        print(f"measured choice (precision auto, cpu_engine auto): {choice.describe()}, "
              f"trial {time.perf_counter() - started:.1f} s")
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
