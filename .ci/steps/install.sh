#!/usr/bin/env bash
# Install the pipeline with its test tools (editable, so the `folderfit` library the stages import is this checkout).
# Tip for CPU runners: set PIP_EXTRA_INDEX_URL to PyTorch's CPU-only wheel index to skip the
# large CUDA wheels.
set -euo pipefail
python -m pip install -e ".[test]"
