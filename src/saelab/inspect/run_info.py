"""What a run already knows about a feature: its contrast row, its patch effects, and where
its SAE, model, prompts and groups are. Read-only; absent tables give None or empty lists."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from saelab.errors import SaelabError
from saelab.models.hooks import parse_hooks
from saelab.models.loading import DEFAULT_NAME
from saelab.run import RunFolder
from saelab.sae.pretrained import expand_saes
from saelab.store.codes import read_run_prompts

CONTRAST = Path("stats") / "contrast.parquet"
PATCH_SUMMARY = Path("patch") / "summary.parquet"


def model_spec(run: Path) -> str:
    """The model a run was extracted with, as a spec `load_model` accepts."""
    cfg = RunFolder(run).read_config()
    name = str(cfg.get("extract", {}).get("model") or "default")
    return "default" if name == DEFAULT_NAME else name


def contrast_pool(run: Path) -> str:
    """The pooling `contrast` used (group means use the same), else max."""
    pool = RunFolder(run).read_config().get("contrast", {}).get("pool")
    return str(pool) if pool in ("max", "mean", "last") else "max"


def sae_location(run: Path, hook: str, codes_meta: dict[str, Any] | None) -> str:
    """The SAE of `hook` in a run: the one its codes were made with, else encode's --saes,
    else the run's trained SAE."""
    if codes_meta and codes_meta.get("sae"):
        return str(codes_meta["sae"])
    spec = RunFolder(run).read_config().get("encode", {}).get("saes")
    if spec:
        try:
            return expand_saes(str(spec), parse_hooks(hook, 10_000))[0].location
        except SaelabError:
            pass
    trained = run / "saes" / hook
    if trained.is_dir():
        return str(trained)
    raise SaelabError(
        f"{run} has no SAE for {hook}: train one (saelab train --run {run} --hooks {hook}),"
        " encode the run with one, or pass the SAE to use"
    )


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "tolist"):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def contrast_rows(run: Path, hook: str, features: list[int]) -> dict[int, dict[str, Any]]:
    """The contrast statistics (SAE codes) of each feature, keyed by feature id."""
    p = run / CONTRAST
    if not p.is_file():
        return {}
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(p)
    mask = pc.and_(pc.equal(t["hook"], hook), pc.is_in(t["feature"], value_set=_pa_ints(features)))
    if "source" in t.column_names:
        mask = pc.and_(mask, pc.equal(t["source"], "codes"))
    rows = t.filter(mask).to_pylist()
    return {int(r["feature"]): {k: _clean(v) for k, v in r.items()} for r in rows}


def _pa_ints(values: list[int]) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.int64())


def patch_rows(run: Path, hook: str, features: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Patch summary rows of every edit set that edits the feature, keyed by feature id."""
    p = run / PATCH_SUMMARY
    if not p.is_file():
        return {}
    import pyarrow.parquet as pq

    rows = pq.read_table(p).to_pylist()
    out: dict[int, list[dict[str, Any]]] = {}
    for f in features:
        rx = re.compile(re.escape(f"{hook}:{f}") + r"(?!\d)")
        mine = [{k: _clean(v) for k, v in r.items()} for r in rows if rx.search(str(r["edit"]))]
        if mine:
            out[f] = mine
    return out


def run_groups(run: Path) -> list[Any] | None:
    """Group label per prompt-table index, or None when the run's prompts have no groups."""
    try:
        groups = read_run_prompts(run)["group"]
    except SaelabError:
        return None
    return groups if any(g is not None for g in groups) else None


def run_prompt_ids(run: Path) -> list[str]:
    return read_run_prompts(run)["id"]
