"""Checking a run folder against its manifest, and clearing what is damaged so the same
stage command rebuilds exactly that (`saelab verify RUN [--repair]`, library level).

    report = verify_run("runs/x", workers=4)
    report.ok, report.problems()        # units damaged or missing, and how to rebuild them
    repair("runs/x", report)            # then e.g. `saelab extract` rebuilds those units

Units are found in the manifest, in whichever layout the stage recorded them:

  files   `{"files": {path from the run root: sha256}}`: every file re-hashed (in parallel)
  extract today's shards: `{"files": n, "sha256": digest of (path from the store root,
          sha256) pairs}` for RUN/activations or RUN/traces shards/NNNNN: the shard's files
          re-hashed and the digest recomputed, so a changed, missing or extra file shows
  encode  today's per-hook units (no hashes): every codes shard read through the checking
          reader (CRC-32C in the file, invariants, one file per activation-store shard)
  train   today's per-hook units (no hashes): the SAE folder loaded (CRC-32C in the file)

Statuses: `intact` (hashes match), `checked` (no hashes recorded; every file read back
clean), `damaged`, `missing`. Repair removes a bad unit's files and its record and marks
the stage incomplete, nothing else, so rerunning the stage's command rebuilds those units
alone (every stage resumes unit by unit and writes the same bytes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.atomic import file_digest
from saelab.errors import SaelabError
from saelab.run import RunFolder
from saelab.sae.model import SAE, SAES_DIR
from saelab.store.chunks import ChunkReader
from saelab.store.codes import CODES_DIR, expected_shards, hook_dir, read_meta, read_part

Progress = Callable[[int, int], None]  # (bytes hashed so far, bytes to hash)
INTACT, CHECKED, DAMAGED, MISSING = "intact", "checked", "damaged", "missing"
_STORES = ("activations", "traces")


@dataclass
class UnitCheck:
    """One recorded unit's verdict, the files behind it and what is wrong with them."""

    stage: str
    unit: str
    status: str
    files: list[str] = field(default_factory=list)  # from the run root; what repair removes
    damaged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    detail: str = ""
    command: str = ""  # what rebuilds it once `repair` has removed it


@dataclass
class VerifyReport:
    run: Path
    units: list[UnitCheck]
    files_hashed: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[UnitCheck]:
        return [u for u in self.units if u.status in (DAMAGED, MISSING)]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (INTACT, CHECKED, DAMAGED, MISSING)}
        for u in self.units:
            out[u.status] += 1
        return out

    def rebuild(self) -> dict[str, str]:
        """{stage: the command that rebuilds its damaged units after `repair`} (the last one
        recorded for that stage's damaged units; the plain `saelab STAGE --run RUN` for
        records older than the recorded commands)."""
        return {u.stage: u.command or f"saelab {u.stage} --run {self.run}" for u in self.problems()}


# -- hashing --------------------------------------------------------------------------------
def _hash_all(
    paths: list[Path], workers: int | None, progress: Progress | None
) -> dict[Path, str | None]:
    """sha256 of every path (None when missing), `workers` files at a time: hashlib
    releases the GIL, so threads keep several cores (and disk queues) busy."""
    sizes = {}
    for p in paths:
        try:
            sizes[p] = p.stat().st_size
        except OSError:
            sizes[p] = 0
    total, done = sum(sizes.values()), [0]

    def one(p: Path) -> tuple[Path, str | None]:
        try:
            digest = file_digest(p)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            digest = None
        done[0] += sizes[p]
        if progress is not None:
            progress(done[0], total)
        return p, digest

    n = max(1, workers or min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(n) as pool:
        return dict(pool.map(one, paths))


def _legacy_digest(files: dict[str, str]) -> str:
    """extract's per-shard digest (pipeline/extract.py `_unit_digest`): its two layouts must
    stay in step until the manifest records files one by one."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


# -- the units of each layout ---------------------------------------------------------------
@dataclass
class _Plan:
    """A unit to check: files to hash and how to judge them once hashed."""

    check: UnitCheck
    paths: list[Path]
    judge: Callable[[dict[Path, str | None]], None]


def _files_unit(run: Path, check: UnitCheck, recorded: dict[str, str]) -> _Plan:
    check.files = sorted(recorded)
    paths = [run / rel for rel in check.files]

    def judge(h: dict[Path, str | None]) -> None:
        for rel, p in zip(check.files, paths, strict=True):
            if h[p] is None:
                check.missing.append(rel)
            elif h[p] != recorded[rel]:
                check.damaged.append(rel)
        check.status = MISSING if check.missing else DAMAGED if check.damaged else INTACT

    return _Plan(check, paths, judge)


def _extract_unit(run: Path, check: UnitCheck, rec: dict[str, Any]) -> _Plan:
    shard = check.unit.removeprefix("shard-")
    found = [run / s for s in _STORES if (run / s / "shards" / shard).is_dir()]
    if not found:  # nothing on disk to remove: repair drops the record
        check.status, check.missing = MISSING, [f"shards/{shard}"]
        return _Plan(check, [], lambda h: None)
    root = found[0]
    folder = root / "shards" / shard
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    check.files = [folder.relative_to(run).as_posix()]

    def judge(h: dict[Path, str | None]) -> None:
        digests = {p.relative_to(root).as_posix(): h[p] or "" for p in paths}
        if _legacy_digest(digests) == rec.get("sha256"):
            check.status = INTACT
            return
        lost = int(rec.get("files", len(paths))) - len(paths)
        check.status = MISSING if lost > 0 else DAMAGED
        where = _which_damaged(folder, run)
        (check.missing if lost > 0 else check.damaged).extend(where)
        check.detail = (
            f"{lost} of the shard's files missing"
            if lost > 0
            else "its files differ from the sha256 recorded"
        )

    return _Plan(check, paths, judge)


def _which_damaged(folder: Path, run: Path) -> list[str]:
    """Files of a damaged shard whose own CRC-32C fails (the manifest has only the shard's
    digest); the whole shard when none does (a JSON change, or a store without CRCs)."""
    bad = []
    for meta in sorted(folder.rglob("zarr.json")):
        if meta.parent == folder:
            continue
        try:
            reader = ChunkReader(meta.parent)
            reader.rows(0, reader.shape[0])
        except SaelabError:
            bad.append(meta.parent.relative_to(run).as_posix())
    return bad or [folder.relative_to(run).as_posix()]


def _read_check(check: UnitCheck, fn: Callable[[], None]) -> _Plan:
    def judge(_: dict[Path, str | None]) -> None:
        try:
            fn()
            check.status = CHECKED
        except SaelabError as e:
            check.status = MISSING if "missing" in str(e) or "has no" in str(e) else DAMAGED
            check.detail = str(e)

    return _Plan(check, [], judge)


def _encode_unit(run: Path, check: UnitCheck) -> _Plan:
    """Each codes shard read on its own, so repair removes only the bad ones (encode writes
    the shards that are not there)."""
    folder = hook_dir(run / CODES_DIR, check.unit)

    def judge(_: dict[Path, str | None]) -> None:
        try:
            meta = read_meta(folder)
        except SaelabError as e:
            meta, check.detail = None, str(e)
        if meta is None:
            check.status = DAMAGED if folder.is_dir() else MISSING
            check.files = [folder.relative_to(run).as_posix()]
            check.detail = check.detail or f"{folder / 'meta.json'} is missing"
            return
        present = sorted(int(f.stem) for f in folder.glob("*.safetensors") if f.stem.isdigit())
        for shard in sorted(set(present) | set(expected_shards(folder, present))):
            f = folder / f"{shard:05d}.safetensors"
            rel = f.relative_to(run).as_posix()
            if not f.is_file():
                check.missing.append(rel)
                continue
            try:
                read_part(f, int(meta["d_sae"]))
            except SaelabError as e:
                check.damaged.append(rel)
                check.detail = check.detail or str(e)
        check.files = check.damaged + check.missing
        check.status = MISSING if check.missing else DAMAGED if check.damaged else CHECKED

    return _Plan(check, [], judge)


def _train_unit(run: Path, check: UnitCheck) -> _Plan:
    folder = run / SAES_DIR / check.unit
    check.files = [folder.relative_to(run).as_posix()]

    def read() -> None:
        if not folder.is_dir():
            raise SaelabError(f"SAE folder {folder} is missing")
        SAE.load(folder)

    return _read_check(check, read)


#: the name under which a stage's own files (written before its units: extract's prompt
#: table) are checked; repair removes them and the stage's next run writes them again
STAGE_FILES = "(stage files)"


def _plan(run: Path, stage: str, unit: str, rec: Any) -> _Plan:
    command = rec.get("command") if isinstance(rec, dict) else None
    check = UnitCheck(stage, unit, CHECKED, command=command if isinstance(command, str) else "")
    if isinstance(rec, dict) and isinstance(rec.get("files"), dict):
        return _files_unit(run, check, rec["files"])
    if isinstance(rec, dict) and stage == "extract" and "sha256" in rec:
        return _extract_unit(run, check, rec)
    if stage == "encode":
        return _encode_unit(run, check)
    if stage == "train":
        return _train_unit(run, check)
    check.detail = "no files recorded for this unit"
    return _Plan(check, [], lambda h: None)


def _units_of(info: dict[str, Any]) -> dict[str, Any]:
    """A stage's unit records, with its own files as one more unit."""
    units = dict(info.get("units") or {})
    if isinstance(info.get("files"), dict) and info["files"]:
        units[STAGE_FILES] = {"files": info["files"], "command": info.get("command")}
    return units


# -- the public API -----------------------------------------------------------------------
def verify_run(
    path: Path | str, *, workers: int | None = None, progress: Progress | None = None
) -> VerifyReport:
    """Check every unit the manifest records (see the module docstring); never writes."""
    t0 = time.perf_counter()
    folder = RunFolder(path)
    if not folder.path.is_dir():
        raise SaelabError(f"run folder {folder.path} does not exist; check the path")
    if not folder.manifest_path.is_file():
        raise SaelabError(f"{folder.path} has no manifest.json: it is not a saelab run folder")
    stages = folder.read_manifest().get("stages", {})
    if not isinstance(stages, dict):
        raise SaelabError(f"{folder.manifest_path} has no stages map; the manifest is damaged")
    plans = [
        _plan(folder.path, stage, unit, rec)
        for stage, info in stages.items()
        if isinstance(info, dict)
        for unit, rec in sorted(_units_of(info).items())
    ]
    paths = sorted({p for plan in plans for p in plan.paths})
    hashes = _hash_all(paths, workers, progress)
    for plan in plans:
        plan.judge(hashes)
    return VerifyReport(
        folder.path,
        [p.check for p in plans],
        files_hashed=len(paths),
        bytes_hashed=sum(p.stat().st_size for p in paths if hashes[p] is not None),
        seconds=time.perf_counter() - t0,
    )


def repair(path: Path | str, report: VerifyReport) -> list[str]:
    """Remove each damaged or missing unit's files and manifest record and mark its stage
    incomplete, so the stage's own command rebuilds exactly those units; returns what was
    removed (paths from the run root)."""
    folder = RunFolder(path)
    bad = report.problems()
    if not bad:
        return []
    removed = []
    for u in bad:
        for rel in u.files:
            p = folder.path / rel
            if p.is_dir():
                shutil.rmtree(p)
                removed.append(rel)
            elif p.exists():
                p.unlink()
                removed.append(rel)
    manifest = folder.read_manifest()
    for u in bad:
        st = manifest.get("stages", {}).get(u.stage)
        if isinstance(st, dict):
            if u.unit == STAGE_FILES:
                st.pop("files", None)
            (st.get("units") or {}).pop(u.unit, None)
            st["complete"] = False
    folder.write_manifest(manifest)
    return removed
