#!/usr/bin/env bash
# Rerun the whole pipeline twice in a temporary copy and require identical outputs.
# REPRO_CHECK_ARGS: extra arguments, e.g. "--set num_epochs=2 --set data.image_size=64" for a
# cheaper check. The output goes to the log and, in GitHub Actions, to the job summary.
set -euo pipefail
log="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/repro-check.log"
status=0
# shellcheck disable=SC2086  # REPRO_CHECK_ARGS is a list of arguments
folderfit repro-check ${REPRO_CHECK_ARGS:-} 2>&1 | tee "$log" || status=$?
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  { echo "## Reproducibility check"; echo; echo '```'; cat "$log"; echo '```'; } >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
