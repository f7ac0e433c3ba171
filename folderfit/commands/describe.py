"""`folderfit describe MODEL_NAME`: a backbone's stages (what `freeze_layers` counts).
"""

from __future__ import annotations

import sys

from folderfit.backbone.architecture import (
    backbone_stages,
    create_architecture,
    find_head,
    resolve_family,
)


# ------------------------------------------------------------------ CLI
def describe(model_name: str, out=None) -> None:
    out = out or sys.stdout
    family, bare = resolve_family(model_name)
    model = create_architecture(family, bare)
    head_name = find_head(model)
    stages = backbone_stages(model, head_name)
    head = model.get_submodule(head_name)
    print(f"{model_name} ({family}): {len(stages)} backbone stages + head", file=out)
    print("freeze_layers: N freezes stages 0..N-1 (fine_tune allows 0.."
          f"{len(stages) - 1}); feature_extract freezes all {len(stages)}", file=out)
    for i, stage in enumerate(stages):
        names = ", ".join(n for n, _ in stage.modules)
        if len(names) > 70:
            names = names[:67] + "..."
        print(f"  {i:2d}  {stage.name:<28} {stage.num_params():>12,d}  [{names}]", file=out)
    print(f"  head {head_name:<27} {sum(p.numel() for p in head.parameters()):>12,d}  "
          f"Linear({head.in_features} -> classes)", file=out)


def command(args) -> None:
    """`folderfit describe MODEL_NAME` (arguments: folderfit.cli)."""
    describe(args.model_name)
