#!/usr/bin/env bash
# Run the whole test suite (slow tests included) after setting up the machine.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test ray
exec .venv/bin/python -m pytest "$@"
