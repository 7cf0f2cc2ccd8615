"""`saelab export --run RUN`: chosen features' activations per prompt and token, for other tools.

JSON is for people and notebooks (one object per prompt: id, text, group, token ids and
strings, and per hook the values of each chosen feature at each position); npz is for
arrays (per hook a dense rows x features block, its row offsets per prompt, the prompt ids).
Only the chosen features are ever made dense, so the output is small even for a 98k-wide SAE.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from saelab.atomic import atomic_write_bytes
from saelab.errors import SaelabError
from saelab.models.hooks import select_hooks
from saelab.models.loading import load_tokenizer
from saelab.pipeline import inputs
from saelab.pipeline.flags import flags_in_errors
from saelab.pipeline.inputs import model_depth
from saelab.pipeline.options import RunOptions, option
from saelab.run import RunFolder
from saelab.sae.features import parse_features
from saelab.store import open_activations

FORMATS = ("json", "npz")


class ExportConfig(RunOptions):
    """Per-prompt, per-token activations of chosen features as JSON or npz."""

    features: str | None = option(None, "feature ids, e.g. 645,1170")
    format: str = option("json", "json | npz", "--format")
    hooks: str | None = option(None, "hooks (default: every encoded hook)")
    out: str | None = option(None, "output file (default: RUN/export.FORMAT)")


def run_export(config: ExportConfig) -> Path:
    """Write the chosen features' values per prompt and token; return the file written."""
    o = config
    if o.run is None:
        raise SaelabError("--run is needed: name the run folder with codes")
    if o.format not in FORMATS:
        raise SaelabError(f"--format {o.format!r} is not one of {', '.join(FORMATS)}")
    run, features, fmt, out = o.run, o.features, o.format, o.out
    with flags_in_errors(ExportConfig.field_names()):
        codes = inputs.codes(RunFolder(run))
        depth = model_depth(RunFolder(run), hooks=codes.hooks)
        wanted = select_hooks(
            o.hooks, codes.hooks, depth, where="the run's codes", fix="encode it first"
        )
        return _export(codes, wanted, features, fmt, out, Path(run))


def _export(
    codes: Any, wanted: list[Any], features: str | None, fmt: str, out: str | None, run: Path
) -> Path:
    blocks: dict[str, dict[str, Any]] = {}
    for hook in wanted:
        hc = codes[hook.name]
        feats = parse_features(features, hc.d_sae) or hc.features
        if not feats:
            raise SaelabError(
                "--features is required (e.g. --features 645,1170): exporting every feature"
                " densely would be huge"
            )
        if hc.features is not None and not set(feats) <= set(hc.features):
            missing = sorted(set(feats) - set(hc.features))
            raise SaelabError(
                f"{hc.hook} was encoded with --features {_ids(hc.features)} only; feature"
                f" {missing[0]} was not kept. Encode again with it"
            )
        dense = hc.matrix()[:, feats].toarray().astype(np.float32)
        blocks[hc.hook] = {"features": feats, "values": dense, "codes": hc}
    path = Path(out) if out else Path(run) / f"export.{fmt}"
    if fmt == "npz":
        _write_npz(path, codes, blocks)
    else:
        _write_json(path, codes, blocks, Path(run))
    return path


def _ids(feats: list[int]) -> str:
    return ",".join(map(str, feats[:8])) + (",..." if len(feats) > 8 else "")


def _write_npz(path: Path, codes: Any, blocks: dict[str, dict[str, Any]]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for hook, b in blocks.items():
        hc = b["codes"]
        arrays[f"{hook}/values"] = b["values"]
        arrays[f"{hook}/features"] = np.asarray(b["features"], dtype=np.int64)
        arrays[f"{hook}/row_offsets"] = hc.row_offsets
        arrays[f"{hook}/prompt_index"] = hc.prompt_index
        arrays[f"{hook}/prompt_ids"] = np.asarray(codes.prompt_ids(hook), dtype=str)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _write_json(path: Path, codes: Any, blocks: dict[str, dict[str, Any]], run: Path) -> None:
    table = codes.prompts()
    store = _store_or_none(run)
    decode = _token_decoder(store)
    first = next(iter(blocks.values()))["codes"]
    out = []
    for j, p in enumerate(first.prompt_index):
        item: dict[str, Any] = {
            "id": table["id"][p],
            "text": table["text"][p],
            "group": table["group"][p],
        }
        if store is not None:
            ids = [int(t) for t in store.tokens(j)]
            item["token_ids"] = ids
            if decode is not None:
                item["tokens"] = [decode(t) for t in ids]
        item["positions"] = first.positions
        item["features"] = {}
        for hook, b in blocks.items():
            hc = b["codes"]
            lo, hi = int(hc.row_offsets[j]), int(hc.row_offsets[j + 1])
            vals = b["values"][lo:hi]
            item["features"][hook] = {
                str(f): [round(float(v), 6) for v in vals[:, i]]
                for i, f in enumerate(b["features"])
            }
        out.append(item)
    atomic_write_bytes(path, (json.dumps(out, indent=1) + "\n").encode())


def _store_or_none(run: Path) -> Any:
    try:
        return open_activations(run)
    except SaelabError:
        return None


def _token_decoder(store: Any) -> Any:
    """Token id -> text with the run's tokenizer when it is on this machine (else ids only)."""
    if store is None:
        return None
    try:
        tok = load_tokenizer(str(store.attrs.get("model") or "default"))
    except (ImportError, SaelabError, OSError):
        return None
    return lambda t: tok.decode([t])
