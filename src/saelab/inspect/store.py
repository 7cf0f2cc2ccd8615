"""Feature cards in the run: `RUN/inspect/HOOK/features.parquet` (one row per feature) and
`contexts.parquet` (one row per context), so the report shows them without recomputing.

Inspecting more features of a hook adds their rows; inspecting a feature again replaces its
rows. Each file is written whole and renamed into place (contexts first: a reader joins by
feature, so a kill between the two leaves old cards readable).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from saelab.inspect.card import FeatureCard
from saelab.run import atomic_write_bytes

INSPECT_DIR = "inspect"
FEATURES = "features.parquet"
CONTEXTS = "contexts.parquet"
_JSON_FIELDS = ("group_means", "group_sizes", "lens", "contrast", "patch")


def hook_folder(run: Path | str, hook: str) -> Path:
    return Path(run) / INSPECT_DIR / hook


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def save_cards(run: Path | str, cards: list[FeatureCard]) -> list[Path]:
    """Store cards (all of one hook or several) in the run; returns the files written."""
    written: list[Path] = []
    by_hook: dict[str, list[FeatureCard]] = {}
    for c in cards:
        by_hook.setdefault(c.hook, []).append(c)
    for hook, mine in by_hook.items():
        folder = hook_folder(run, hook)
        redo = {c.feature for c in mine}
        ctx = [r for r in _read(folder / CONTEXTS) if r["feature"] not in redo]
        feats = [r for r in _read(folder / FEATURES) if r["feature"] not in redo]
        for c in mine:
            d = c.to_dict()
            for cx in d.pop("contexts"):
                ctx.append({"hook": hook, "feature": c.feature, **cx})
            for k in _JSON_FIELDS:
                d[k] = json.dumps(d[k])
            feats.append(d)
        ctx.sort(key=lambda r: (r["feature"], r["kind"] != "top", r["rank"]))
        feats.sort(key=lambda r: r["feature"])
        _write(folder / CONTEXTS, ctx)
        _write(folder / FEATURES, feats)
        written += [folder / FEATURES, folder / CONTEXTS]
    return written


def load_cards(run: Path | str) -> dict[str, dict[int, dict[str, Any]]]:
    """Every stored card of the run: {hook: {feature: card dict with its contexts}}."""
    root = Path(run) / INSPECT_DIR
    out: dict[str, dict[int, dict[str, Any]]] = {}
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        cards: dict[int, dict[str, Any]] = {}
        for r in _read(folder / FEATURES):
            for k in _JSON_FIELDS:
                r[k] = json.loads(r[k]) if r.get(k) is not None else None
            r["contexts"] = []
            cards[int(r["feature"])] = r
        for cx in _read(folder / CONTEXTS):
            card = cards.get(int(cx["feature"]))
            if card is not None:
                card["contexts"].append(cx)
        if cards:
            out[folder.name] = cards
    return out
