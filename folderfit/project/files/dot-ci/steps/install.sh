#!/usr/bin/env bash
# Install what the workflow runs, with the `pipeline` extra and no test tools: in folderfit's
# own repository this checkout (editable, so the stages import it); in a project made by
# `folderfit init`, the release its .ci/requirements.txt pins.
# Without an NVIDIA GPU, torch and torchvision come first from PyTorch's CPU-only wheel index:
# the default Linux wheels bring ~4.5 GB of CUDA libraries a CPU runner never uses.
# TORCH_INDEX_URL overrides the index (e.g. a CUDA one, https://download.pytorch.org/whl/cu128).
set -euo pipefail
pins=.ci/requirements.txt
if [[ -f "$pins" ]]; then target=(-r "$pins"); else target=(-e ".[pipeline]"); fi
index="${TORCH_INDEX_URL:-}"
if [[ -z "$index" ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
  index="https://download.pytorch.org/whl/cpu"
fi
if [[ -n "$index" ]]; then
  # the torch and torchvision requirements exactly as folderfit states them
  mapfile -t torch_reqs < <(python - "$pins" <<'PY'
import os, re, sys, tomllib
if os.path.exists(sys.argv[1]):
    reqs = [line.strip() for line in open(sys.argv[1]) if not line.lstrip().startswith("#")]
else:
    reqs = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for req in reqs:
    if re.match(r"(torch|torchvision)\b(?![-\w])", req):
        print(req)
PY
)
  python -m pip install --index-url "$index" "${torch_reqs[@]}"
fi
python -m pip install "${target[@]}"
