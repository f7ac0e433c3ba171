#!/usr/bin/env bash
# Bring every stage up to date (stages whose inputs did not change are skipped), then show
# what dvc.lock records.
set -euo pipefail
dvc repro
dvc status
