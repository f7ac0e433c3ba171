"""Frozen-backbone inference on the CPU: torch eager (channels_last, inference_mode) against
ONNX Runtime (folderfit.cpu_engine), model only, on one synthetic batch.

    python -m bench.engine_speed                                  # params.yaml's backbone and size
    python -m bench.engine_speed --model tf_efficientnet_lite0 --size 224 --rounds 5
    python -m bench.engine_speed --model resnet50 --size 224 --weights none

Prints ms per image for each engine (median of --rounds timed batches, after one warm-up
batch, the engines interleaved so that a change of machine load hits both), the export time,
and the largest difference between their features. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)

    from folderfit import cpu_engine as E
    from folderfit import models as M
    from folderfit.features import backbone_only
    from folderfit.runtime import Runtime, prepare_model

    rt = Runtime(torch.device("cpu"), None)
    built = M.build_model(args.model, 2, args.weights, seed=0)
    backbone, _ = backbone_only(prepare_model(built.model, rt), built.head_name)
    backbone.eval()
    started = time.perf_counter()
    ort = E.export_backbone(backbone, args.size, args.batch)
    export_s = time.perf_counter() - started
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = images.contiguous(memory_format=torch.channels_last)
    engines = {"torch eager": backbone, "onnxruntime": ort}
    times: dict[str, list[float]] = {name: [] for name in engines}
    with torch.inference_mode():
        outputs = {name: run(images) for name, run in engines.items()}  # warm-up
        for _ in range(args.rounds):
            for name, run in engines.items():
                tick = time.perf_counter()
                run(images)
                times[name].append((time.perf_counter() - tick) / args.batch * 1000)
    print(f"{args.model} @ {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"onnxruntime {E.version()}; export + parity check {export_s:.1f} s")
    for name, values in times.items():
        print(f"{name:<12} {statistics.median(values):7.1f} ms/image  "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")
    ratio = statistics.median(times["torch eager"]) / statistics.median(times["onnxruntime"])
    difference = (outputs["onnxruntime"] - outputs["torch eager"]).abs().max().item()
    print(f"onnxruntime is {ratio:.1f}x torch; largest feature difference {difference:.2e} "
          f"(largest feature {outputs['torch eager'].abs().max().item():.2f})")


if __name__ == "__main__":
    main()
