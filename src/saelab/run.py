"""The run folder: resolved configuration (run.toml), manifest and resume bookkeeping.

Every unit of work is written under a temporary name in the same folder and renamed into place
when complete; only then is it recorded in the manifest. The manifest is therefore the truth
about what is done: anything on disk that it does not list is debris from a killed run and is
removed before the unit is redone. Because units are deterministic, a resumed run ends with the
same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from saelab.atomic import atomic_write_json, atomic_write_text, file_digest
from saelab.errors import SaelabError

MANIFEST = "manifest.json"
CONFIG = "run.toml"
#: draws the data file a resume re-hashes per skipped unit (a different one each resume)
_SAMPLER = random.SystemRandom()


def config_hash(cfg: dict[str, Any]) -> str:
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class RunFolder:
    """A run folder: `run.toml` (resolved config per stage) and `manifest.json` (what is done)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    def exists(self) -> bool:
        return self.manifest_path.exists()

    # -- configuration -------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            return {}
        with open(self.config_path, "rb") as f:
            return tomllib.load(f)

    def config_changes(
        self, stage: str, binding: dict[str, Any], *, sections: bool = False
    ) -> dict[str, list[str]]:
        """What differs between the recorded configuration of `stage` and `binding`: per
        section (one section, "", unless `sections`), the first differing keys shown as
        `key: old -> new`. Only sections both hold are compared: a run grows by sections."""
        old = self.read_config().get(stage)
        new = _toml_clean(binding)
        if old is None:
            return {}
        pairs = (
            [(s, old[s], c) for s, c in new.items() if s in old] if sections else [("", old, new)]
        )
        out = {}
        for section, a, b in pairs:
            if a != b:
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                out[section] = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]
        return out

    def refuse_changes(self, stage: str, changes: dict[str, list[str]]) -> None:
        """The one rule for every stage: a run folder keeps the configuration that made it,
        because resuming is only correct when that configuration produced what is on disk."""
        if not changes:
            return
        shown = "; ".join(
            (f"{s}: " if s else "") + ", ".join(diffs[:3]) for s, diffs in changes.items()
        )
        raise SaelabError(
            f"run folder {self.path} was made by a different {stage} configuration ({shown});"
            " to use another configuration, pick another --run folder or add --overwrite"
        )

    def write_binding(self, stage: str, binding: dict[str, Any], *, sections: bool) -> None:
        """Record the configuration (merged into the recorded sections when `sections`)."""
        current = self.read_config()
        clean = _toml_clean(binding)
        new = {**current.get(stage, {}), **clean} if sections else clean
        if current.get(stage) != new:
            current[stage] = new
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.config_path, tomli_w.dumps(current))

    def bind_config(self, stage: str, cfg: dict[str, Any], *, overwrite: bool = False) -> None:
        """Record a configuration outside the stage driver (a plan), with the same rule."""
        if not overwrite:
            self.refuse_changes(stage, self.config_changes(stage, cfg))
        self.write_binding(stage, cfg, sections=False)

    # -- manifest ------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"saelab_manifest": 1, "stages": {}}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise SaelabError(
                f"{self.manifest_path} is not valid JSON ({e});"
                " delete the run folder and start again"
            ) from e

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest_path, manifest)

    def stage(self, name: str) -> dict[str, Any]:
        return self.read_manifest()["stages"].get(name, {})

    def update_stage(self, name: str, **fields: Any) -> dict[str, Any]:
        m = self.read_manifest()
        st = m["stages"].setdefault(name, {"units": {}})
        st.update(fields)
        st["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.write_manifest(m)
        return st

    def record_unit(self, stage: str, unit: str, info: dict[str, Any]) -> None:
        m = self.read_manifest()
        st = m["stages"].setdefault(stage, {"units": {}})
        st.setdefault("units", {})[unit] = info
        self.write_manifest(m)

    def done_units(self, stage: str) -> dict[str, Any]:
        return dict(self.stage(stage).get("units", {}))

    def verified_unit(self, stage: str, unit: str) -> dict[str, Any] | None:
        """The unit's record if it is recorded, its files are all there with the recorded
        total size and a cheap spot check of their hashes holds; None means: run it (again).

        The spot check (resume must not cost a full re-hash; `saelab verify` does that):
        the sha256 of every metadata file (`.json`, small) and of one data file drawn at
        random. A file that is there with the right size but other bytes is damage, not a
        killed writer's debris (units are recorded only once their files are in place): it
        is refused, naming the file and the repair, rather than read or silently redone."""
        rec = self.done_units(stage).get(unit)
        if not isinstance(rec, dict) or not isinstance(rec.get("files"), dict):
            return None
        size = 0
        for rel in rec["files"]:
            p = self.path / rel
            if not p.is_file():
                return None
            size += p.stat().st_size
        if size != rec.get("bytes"):
            return None
        files: dict[str, str] = rec["files"]
        meta = [rel for rel in files if rel.endswith(".json")]
        data = sorted(set(files) - set(meta))
        for rel in [*meta, *([_SAMPLER.choice(data)] if data else [])]:
            if file_digest(self.path / rel) != files[rel]:
                raise SaelabError(
                    f"{self.path / rel} does not match the sha256 {stage} recorded for it"
                    f" (unit {unit}): the file is damaged; run `saelab verify {self.path}"
                    " --repair`, then this command again to rebuild it"
                )
        return rec

    def drop_units(self, stage: str, under: list[str]) -> None:
        """Forget the units that recorded files below any of `under` (paths in the run)."""
        m = self.read_manifest()
        units = m["stages"].get(stage, {}).get("units", {})
        prefixes = [u.rstrip("/") for u in under]
        for key in [k for k, r in units.items() if _touches(r, prefixes)]:
            del units[key]
        self.write_manifest(m)

    def reset_stage(self, stage: str) -> None:
        m = self.read_manifest()
        m["stages"].pop(stage, None)
        self.write_manifest(m)


def _touches(record: Any, prefixes: list[str]) -> bool:
    files = record.get("files") if isinstance(record, dict) else None
    return isinstance(files, dict) and any(
        f == p or f.startswith(p + "/") for f in files for p in prefixes
    )


def _toml_clean(obj: Any) -> Any:
    """TOML has no null: drop None values so configs round-trip unchanged."""
    if isinstance(obj, dict):
        return {str(k): _toml_clean(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_toml_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
