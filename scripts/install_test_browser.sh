#!/usr/bin/env bash
# Installs Debian's Chromium for the report's browser test (tests/test_report.py) when it is missing.
# Test tools cannot download their own browsers on offline machines, so the system package is used;
# Playwright (from requirements-test.txt) drives it. Needs root or sudo; does nothing when chromium is on PATH.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
chromium --version
