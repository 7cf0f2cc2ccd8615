#!/usr/bin/env bash
# The main job on the default model (SmolLM2-135M-Instruct): set up the machine, then
# `saelab demo` plans and runs every stage built so far over the built-in prompts.
# Extra arguments go to `saelab demo`, e.g. `scripts/demo.sh --run runs/mine --quiet`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/saelab demo "$@"
