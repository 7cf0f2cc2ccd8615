"""A small real run with every stage the report shows, made once per test session.

builtin:styles (40 formal + 40 casual statements) through blocks.7.hook_resid_post of the
default model; a small JumpReLU SAE saved in the native format and encoded (every token),
contrast of the two styles, a short patch sweep over four prompts, and two inspected features.
Tests copy it before changing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from saelab.pipeline.contrast import ContrastConfig, run_contrast
from saelab.pipeline.encode import EncodeConfig, run_encode
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.patch import PatchConfig, run_patch
from tests.test_encode import random_sae

HOOK = "blocks.7.hook_resid_post"
_MADE: dict[str, Any] = {}


def build_run(root: Path, lm: Any, *, patch: bool = True) -> Path:
    run = root / "run"
    run_extract(
        ExtractConfig(
            prompts="builtin:styles",
            limit=80,  # the first 40 pairs
            hooks="resid_post.7",
            run=str(run),
            quiet=True,
            store_dtype="float32",
        ),
        lm=lm,
    )
    sae = random_sae("jumprelu", HOOK, d_sae=512, seed=11)
    sae.save(root / "saes" / HOOK)
    run_encode(EncodeConfig(saes=str(root / "saes"), run=str(run), quiet=True))
    run_contrast(ContrastConfig(run=str(run), groups="formal,casual", min_active=3, quiet=True))
    if patch:
        prompts = root / "few.jsonl"
        few = [
            ("f0", "The committee has postponed the meeting.", "formal"),
            ("c0", "heads up, the meeting is off lol", "casual"),
        ]
        prompts.write_text(
            "".join(json.dumps({"id": i, "text": t, "group": g}) + "\n" for i, t, g in few)
        )
        run_patch(
            PatchConfig(
                run=str(run),
                sweep="top:2",
                values="0,@4",
                prompts=str(prompts),
                generate=2,
                targets=" the, a",
                outcome=["comma=,"],
                quiet=True,
            )
        )
    return run


@pytest.fixture()
def small_run(smol, tmp_path_factory) -> Path:
    """The shared small run (made on first use in the session)."""
    if "run" not in _MADE:
        _MADE["run"] = build_run(tmp_path_factory.mktemp("report-run"), smol)
    return _MADE["run"]
