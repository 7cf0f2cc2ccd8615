"""Feature cards in the run: `RUN/inspect/HOOK/features.parquet` (one row per feature) and
`contexts.parquet` (one row per context), so the report shows them without recomputing.

Inspecting more features of a hook adds their rows; inspecting a feature again replaces its
rows (`merge_rows`). Each file is written whole and renamed into place (contexts first: a
reader joins by feature, so a kill between the two leaves old cards readable). The same two
files in any folder hold one computation's cards (`write_rows`): the inspect stage keeps each
section's there and merges them into the hook's.
"""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from saelab.atomic import atomic_write_bytes
from saelab.inspect.card import FeatureCard

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


def card_rows(hook: str, cards: list[FeatureCard]) -> tuple[list[dict], list[dict]]:
    """(feature rows, context rows) of cards of one hook, as the files store them."""
    feats: list[dict[str, Any]] = []
    ctx: list[dict[str, Any]] = []
    for c in cards:
        d = c.to_dict()
        for cx in d.pop("contexts"):
            ctx.append({"hook": hook, "feature": c.feature, **cx})
        for k in _JSON_FIELDS:
            d[k] = json.dumps(d[k])
        feats.append(d)
    return feats, ctx


def read_rows(folder: Path) -> tuple[list[dict], list[dict]]:
    """(feature rows, context rows) stored in a folder (empty lists where no file is)."""
    return _read(folder / FEATURES), _read(folder / CONTEXTS)


def merge_rows(
    old: tuple[list[dict], list[dict]], new: tuple[list[dict], list[dict]]
) -> tuple[list[dict], list[dict]]:
    """`old` with every feature of `new` replaced by its rows there, sorted as stored."""
    redo = {r["feature"] for r in new[0]}
    feats = [r for r in old[0] if r["feature"] not in redo] + list(new[0])
    ctx = [r for r in old[1] if r["feature"] not in redo] + list(new[1])
    ctx.sort(key=lambda r: (r["feature"], r["kind"] != "top", r["rank"]))
    feats.sort(key=lambda r: r["feature"])
    return feats, ctx


def write_rows(folder: Path, rows: tuple[list[dict], list[dict]]) -> list[Path]:
    """Write (feature rows, context rows) into `folder`, each file atomically (contexts
    first: a reader joins by feature, so a kill between the two leaves old cards readable);
    returns [features file, contexts file]."""
    _write(folder / CONTEXTS, rows[1])
    _write(folder / FEATURES, rows[0])
    return [folder / FEATURES, folder / CONTEXTS]


def save_cards(run: Path | str, cards: list[FeatureCard]) -> list[Path]:
    """Store cards (all of one hook or several) in the run; returns the files written."""
    written: list[Path] = []
    by_hook: dict[str, list[FeatureCard]] = {}
    for c in cards:
        by_hook.setdefault(c.hook, []).append(c)
    for hook, mine in by_hook.items():
        folder = hook_folder(run, hook)
        rows = merge_rows(read_rows(folder), card_rows(hook, mine))
        written += write_rows(folder, rows)
    return written


def cards_from_rows(rows: tuple[list[dict], list[dict]]) -> list[FeatureCard]:
    """Stored rows back as cards (in feature order), e.g. to print them again."""
    names = {f.name for f in fields(FeatureCard)}
    by_feature = _as_cards(rows)
    return [FeatureCard(**{k: v for k, v in d.items() if k in names})
            for _, d in sorted(by_feature.items())]  # fmt: skip


def _as_cards(rows: tuple[list[dict], list[dict]]) -> dict[int, dict[str, Any]]:
    cards: dict[int, dict[str, Any]] = {}
    for r in rows[0]:
        r = dict(r)
        for k in _JSON_FIELDS:
            r[k] = json.loads(r[k]) if r.get(k) is not None else None
        r["contexts"] = []
        cards[int(r["feature"])] = r
    for cx in rows[1]:
        card = cards.get(int(cx["feature"]))
        if card is not None:
            card["contexts"].append(cx)
    return cards


def load_cards(run: Path | str) -> dict[str, dict[int, dict[str, Any]]]:
    """Every stored card of the run: {hook: {feature: card dict with its contexts}}."""
    root = Path(run) / INSPECT_DIR
    out: dict[str, dict[int, dict[str, Any]]] = {}
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        cards = _as_cards(read_rows(folder))
        if cards:
            out[folder.name] = cards
    return out
