#!/usr/bin/env bash
# Regenerate the README's report screenshot (docs/report.png) from a run (default runs/demo,
# made by ./scripts/demo.sh). Needs the system Chromium: apt-get install chromium.
#   ./scripts/screenshot-report.sh [RUN] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
exec .venv/bin/python scripts/screenshot_report.py "$@"
