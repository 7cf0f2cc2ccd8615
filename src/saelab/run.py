"""The run folder: resolved configuration, manifest, atomic writes and resume bookkeeping.

Every unit of work is written under a temporary name in the same folder and renamed into place
when complete; only then is it recorded in the manifest. The manifest is therefore the truth
about what is done: anything on disk that it does not list is debris from a killed run and is
removed before the unit is redone. Because units are deterministic, a resumed run ends with the
same bytes as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w

from saelab.errors import SaelabError
from saelab.nospace import disk_space_for

MANIFEST = "manifest.json"
CONFIG = "run.toml"
TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes, what: str | None = None) -> None:
    """Write a file so that readers see either the old content or the new, never half.

    A full disk removes the temporary file and is one SaelabError naming `what` (default:
    the file's name) and the bytes it needed."""
    path = Path(path)
    with disk_space_for(what or path.name, path.parent, len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary folder that becomes `final` only if the block completes.

    An existing `final` is replaced. On any exception (including KeyboardInterrupt) the
    temporary folder is removed, so a failed unit leaves nothing behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + "-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_debris(folder: Path) -> None:
    """Delete temporary files and folders a killed writer left in `folder` (not recursive)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digests(root: Path, base: Path | None = None) -> dict[str, str]:
    """sha256 of every file below `root`, keyed by path relative to `base` (default: root)."""
    base = base or root
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[p.relative_to(base).as_posix()] = file_digest(p)
    return out


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

    def bind_config(self, stage: str, cfg: dict[str, Any], *, overwrite: bool = False) -> None:
        """Record a stage's resolved configuration, or refuse if the folder holds another one.

        Resuming is only correct when the same configuration produced the units already on disk,
        so a different configuration must pick a new folder or ask to overwrite explicitly.
        """
        clean = _toml_clean(cfg)
        current = self.read_config()
        old = current.get(stage)
        if old is not None and old != clean and not overwrite:
            diffs = sorted(k for k in set(old) | set(clean) if old.get(k) != clean.get(k))
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {clean.get(k)!r}" for k in diffs[:3])
            raise SaelabError(
                f"run folder {self.path} was made by a different {stage} configuration ({shown});"
                " use another --run folder, or --overwrite to start this one again"
            )
        if old != clean:
            current[stage] = clean
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.config_path, tomli_w.dumps(current))

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

    def reset_stage(self, stage: str) -> None:
        m = self.read_manifest()
        m["stages"].pop(stage, None)
        self.write_manifest(m)


def _toml_clean(obj: Any) -> Any:
    """TOML has no null: drop None values so configs round-trip unchanged."""
    if isinstance(obj, dict):
        return {str(k): _toml_clean(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_toml_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
