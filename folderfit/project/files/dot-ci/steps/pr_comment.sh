#!/usr/bin/env bash
# Post the report of report.sh on the pull request (needs GH_TOKEN and PR_NUMBER); anywhere
# else it does nothing.
set -euo pipefail
report="${REPORT_FILE:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}/pipeline-report.md}"
if [ -z "${PR_NUMBER:-}" ] || [ -z "${GH_TOKEN:-}" ]; then
  echo "pr_comment: not a pull request (or no GH_TOKEN); nothing to post"
  exit 0
fi
gh pr comment "$PR_NUMBER" --body-file "$report"
