"""saelab's own format, SAELens's: `cfg.json` + `sae_weights.safetensors` (+ optional
`sparsity.safetensors`), read by `SAE.load` (layout in `saelab.sae.model`)."""

from __future__ import annotations

import re
from pathlib import Path

from saelab.sae.formats.registry import FormatSpec, register
from saelab.sae.model import CFG_FILE, SAE, SPARSITY_FILE, WEIGHTS_FILE


def load_saelens(path: Path, dtype: str | None) -> SAE:
    sae = SAE.load(path, dtype=dtype)
    sae.cfg.metadata["format"] = "saelens"
    return sae


SAELENS = register(
    FormatSpec(
        "saelens",
        (CFG_FILE, WEIGHTS_FILE),
        (SPARSITY_FILE,),
        load=load_saelens,
        rank=10,
        hub_files=(WEIGHTS_FILE, SPARSITY_FILE, CFG_FILE),
        folder_hint=re.compile(r"blocks\.\d+\.hook_"),
        hint_rank=6,
    )
)
