"""`saelab report`: the run's HTML page, as a stage of one unit.

The page shows what the other stages wrote, so its binding is what it reads: the output path
and, per stage in the manifest, a digest of its configuration hash and of every file it
recorded, plus the stored feature cards (which a notebook's `inspect_features` may write
outside the manifest). The stage is `derived`: when any of that changed, the report is built
again (not refused as a changed configuration); when nothing did, the page on disk is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from saelab.atomic import file_digest
from saelab.errors import SaelabError
from saelab.inspect.store import INSPECT_DIR
from saelab.pipeline.driver import run_stage
from saelab.pipeline.options import StageOptions, option
from saelab.pipeline.stage import Done, Finished, Stage, Unit, UnitResult, Worker
from saelab.progress import say
from saelab.report import build_report
from saelab.report.build import REPORT_DIR

PAGE = "index.html"


class ReportConfig(StageOptions):
    """One self-contained HTML page of the run (opens from disk, no network)."""

    out: str | None = option(None, "output file (default RUN/report/index.html)")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ReportStage(Stage[ReportConfig]):
    """One unit, the page; its binding is what the page shows (see the module doc)."""

    name = "report"
    derived = True

    @property
    def out(self) -> Path:
        o = self.config
        return Path(o.out) if o.out else self.run.path / REPORT_DIR / PAGE

    @property
    def recorded_path(self) -> str:
        """The page as the manifest names it: from the run folder when it is inside it,
        else absolute (`--out` elsewhere)."""
        out, root = Path(os.path.abspath(self.out)), Path(os.path.abspath(self.run.path))
        try:
            return out.relative_to(root).as_posix()
        except ValueError:
            return out.as_posix()

    def prepare(self) -> dict[str, Any]:
        run = self.run
        if not run.path.is_dir():
            raise SaelabError(f"run folder {run.path} does not exist; check the path")
        if not run.manifest_path.is_file() and not run.config_path.is_file():
            raise SaelabError(
                f"{run.path} is not a saelab run folder (no manifest.json or run.toml)"
            )
        inputs: dict[str, str] = {}
        for name, st in sorted(run.read_manifest().get("stages", {}).items()):
            if name == self.name or not isinstance(st, dict):
                continue
            files = dict(st.get("files") or {})
            for rec in (st.get("units") or {}).values():
                if isinstance(rec, dict) and isinstance(rec.get("files"), dict):
                    files.update(rec["files"])
            inputs[name] = _digest([st.get("config_hash"), st.get("complete"), files])
        cards = sorted(run.path.glob(f"{INSPECT_DIR}/*/*.parquet"))
        if cards:  # written by the inspect stage or by a notebook: size and time tell
            inputs["cards"] = _digest([(p.relative_to(run.path).as_posix(), p.stat().st_size,
                                        p.stat().st_mtime_ns) for p in cards])  # fmt: skip
        return {"out": self.recorded_path, "inputs": inputs}

    def outputs(self, sections: list[str] | None = None) -> list[str]:
        return [self.recorded_path]

    def units(self) -> list[Unit]:
        return [Unit(PAGE)]

    def finish(self, done: Done) -> Finished:
        path = self.out
        if done.already:
            say(f"{path} is up to date with the run; open it in a browser", self.config.quiet)
        else:
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); open it in a browser")
        return Finished(path)

    # -- any process -----------------------------------------------------------------------
    def run_unit(self, unit: Unit, worker: Worker) -> UnitResult:
        path = build_report(self.run.path, self.out)
        return UnitResult({self.recorded_path: file_digest(path)})


def run_report(c: ReportConfig) -> Path:
    """Build (or keep, when nothing it shows changed) the run's report; returns its path."""
    return Path(run_stage(ReportStage(c)))
