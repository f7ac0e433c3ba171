#!/usr/bin/env bash
# Install the pipeline with its test tools (editable, so `python -m stages.X` uses this checkout).
# Tip for CPU runners: set PIP_EXTRA_INDEX_URL to PyTorch's CPU-only wheel index to skip the
# large CUDA wheels.
set -euo pipefail
python -m pip install -e ".[test]"
