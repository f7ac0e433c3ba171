#!/usr/bin/env bash
# Build the docs site (mkdocs.yml, docs/) with --strict: a broken link or anchor, or a page
# missing from the nav, fails the build. The site goes to a temp folder and is thrown away.
set -euo pipefail
export NO_MKDOCS_2_WARNING=1  # mkdocs-material prints a banner about its successor otherwise
cd "$(dirname "$0")/../.."
python -m pip install "mkdocs>=1.6,<2" "mkdocs-material>=9.5,<10"
site="$(mktemp -d "${TMPDIR:-/tmp}/folderfit-site.XXXXXX")"
trap 'rm -rf "$site"' EXIT
python -m mkdocs build --strict --site-dir "$site"
