#!/usr/bin/env bash
# Headless Chromium for the page tests (tests/test_pages_browser.py): Debian/Ubuntu's chromium
# and its matching chromedriver from apt, selenium from PyPI. Without them those tests skip
# with the reason; with them they open the review and results pages in a real browser.
set -euo pipefail
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v chromedriver >/dev/null 2>&1; then
  sudo_ apt-get update -q
  # Debian names the packages chromium / chromium-driver; Ubuntu runners: chromium-browser
  # is a snap wrapper, so prefer Debian names and fall back to the Ubuntu ones.
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    chromium chromium-driver \
    || sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-browser chromium-chromedriver
fi
python -m pip install "selenium>=4.10"
(command -v chromium || command -v chromium-browser || command -v google-chrome) >/dev/null \
  && chromedriver --version
