#!/usr/bin/env bash
# Headline results and changed params of this checkout against BASE_REV (default main), as
# Markdown: written to REPORT_FILE and appended to the GitHub job summary.
set -euo pipefail
base="${BASE_REV:-main}"
report="${REPORT_FILE:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}/pipeline-report.md}"
rev="$base"
if ! git rev-parse --verify -q "$rev^{commit}" >/dev/null; then
  rev="origin/$base"  # in a pull-request checkout only the remote branch exists
fi
if ! git rev-parse --verify -q "$rev^{commit}" >/dev/null; then
  echo "report: no '$base' revision to compare with (fetch it: actions/checkout fetch-depth: 0)" >&2
  exit 1
fi
folderfit ci-report --base "$rev" > "$report"
cat "$report"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  cat "$report" >> "$GITHUB_STEP_SUMMARY"
fi
