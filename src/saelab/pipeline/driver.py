"""The one loop every stage runs through: bind the configuration, skip what is done, run the
rest on an executor, record each unit, finish.

    run_stage(stage)                       # local executor
    run_stage(stage, LocalExecutor(worker))

The rules, the same for every stage:
- a run folder keeps the configuration that made each stage: another one is refused, naming
  what differs, unless `--overwrite`, which removes the stage's outputs first (`RunFolder`);
  a `derived` stage (the report), whose binding is what it reads, is rebuilt instead;
- a unit counts as done when its record is in the manifest and its files are all there with
  the recorded size; anything else runs (again), so a killed run resumes;
- the driver alone writes manifest.json: a unit's record (files and hashes, bytes, seconds,
  peak RSS, worker, the command that rebuilds it, and the stage's info) once it is complete,
  the stage's wall time, peak memory and disk at the end;
- a stage that fails before any of its units is recorded leaves run.toml and manifest.json
  as they were (a refused command changes nothing there; `--overwrite` has removed outputs);
- a stage's errors speak of its options as flags (its config is its command line).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import saelab.pipeline.executors_ray  # noqa: F401  (registers --executor ray)
from saelab import __version__
from saelab.atomic import TMP_PREFIX, atomic_write_bytes, remove_debris
from saelab.budget.measure import PeakSampler, dir_size, gpu_peak_bytes, process_peak_rss
from saelab.pipeline.executors import Executor, make_executor
from saelab.pipeline.flags import command_line, flags_in_errors
from saelab.pipeline.stage import Done, Stage
from saelab.progress import Reporter, WorkerRates, say
from saelab.run import RunFolder, config_hash


def run_stage(stage: Stage[Any], executor: Executor | None = None) -> Any:
    """Run `stage` (after the stages it requires) and return its result; an executor made
    here (from the stage's options) is closed at the end."""
    with flags_in_errors(stage.config.field_names()):
        if executor is not None:
            return _run(stage, executor)
        made = make_executor(stage.config)
        try:
            return _run(stage, made)
        finally:
            made.close()


def _run(stage: Stage[Any], executor: Executor) -> Any:
    t0 = time.perf_counter()
    stage.config.budget()  # every stage takes the budget flags: a typo fails before any work
    for dep in stage.requires():
        say(f"[bold]{stage.name}: first {dep.name} (its input)[/bold]", stage.config.quiet)
        run_stage(dep, executor)
    with PeakSampler() as sampler:
        binding = stage.prepare()
        stage._binding = binding
        run = stage.run
        changes = run.config_changes(stage.name, binding, sections=stage.sections)
        rebuild = stage.config.overwrite or (stage.derived and bool(changes))
        if not rebuild:
            run.refuse_changes(stage.name, changes)
        with _rollback_unless_recorded(run) as progress:
            if rebuild:
                _clear(stage, list(binding) if stage.sections else None)
            run.write_binding(stage.name, binding, sections=stage.sections)
            _tidy(stage)
            units = stage.units()
            records = {u.key: r for u in units if (r := run.verified_unit(stage.name, u.key))}
            todo = [u for u in units if u.key not in records]
            if not todo and run.stage(stage.name).get("complete"):
                measured = run.stage(stage.name).get("measured", {})
                return stage.finish(Done(records, [], True, measured)).value
            command = command_line(stage.name, stage.config, str(run.path))
            run.update_stage(
                stage.name,
                complete=False,
                command=command,
                config_hash=config_hash(binding),
                saelab=__version__,
                **stage.fields,
            )
            files = stage.setup()
            if files:
                run.update_stage(stage.name, files=files)
            total = sum(u.size for u in units)
            done = sum(u.size for u in units if u.key in records)
            with Reporter(
                stage.name,
                total=total,
                unit=stage.progress or "units",
                quiet=stage.config.quiet or stage.progress is None,
                done=done,
            ) as rep:
                rates = WorkerRates(stage.progress or "units")
                for unit, rec in executor.run(stage, todo):
                    rec["command"] = command  # what rebuilds it (`saelab verify` prints it)
                    run.record_unit(stage.name, unit.key, rec)
                    records[unit.key] = rec
                    progress.append(unit.key)
                    rates.add(str(rec.get("worker")), unit.size, float(rec.get("seconds", 0)))
                    rep.advance(unit.size, int(rec.get("tokens", 0)), note=rates.note())
            # every unit is back: a worker that died mid-unit (a Ray actor killed while
            # writing) left its temporary files, and no writer of this stage is alive now
            _tidy(stage)
        wall = time.perf_counter() - t0
    measured = {
        "wall_seconds": wall,
        "peak_rss_bytes": process_peak_rss(),
        "peak_rss_sampled_bytes": sampler.peak,
        "peak_gpu_bytes": gpu_peak_bytes(),
        "disk_bytes": _disk(stage),
    }
    ordered = {u.key: records[u.key] for u in units}
    finished = stage.finish(Done(ordered, progress, False, measured))
    run.update_stage(stage.name, complete=True, measured=measured, **finished.fields)
    return finished.value


def _disk(stage: Stage[Any]) -> int:
    """Bytes of everything the stage owns in the run folder."""
    total = 0
    for rel in stage.outputs():
        p = stage.run.path / rel
        total += dir_size(p) if p.is_dir() else (p.stat().st_size if p.is_file() else 0)
    return total


def _tidy(stage: Stage[Any]) -> None:
    """Remove what killed writers of this run left (`.tmp-*`, `atomic`): in the run folder
    itself (manifest.json, run.toml, setup's files) and anywhere below the stage's outputs.
    The driver does it before any unit runs and after the last one is back, when no writer of
    this stage can be alive, so a resumed or retried run ends with exactly the files of an
    uninterrupted one."""
    root = stage.run.path
    remove_debris(root)
    for rel in stage.outputs():
        top = root / rel
        if not top.is_dir():
            continue
        for folder, dirs, files in os.walk(top):
            here = Path(folder)
            if any(n.startswith(TMP_PREFIX) for n in (*dirs, *files)):
                remove_debris(here)
            dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]


def _clear(stage: Stage[Any], sections: list[str] | None) -> None:
    """`--overwrite`: remove the stage's outputs (of these sections) and forget their units."""
    run = stage.run
    paths = stage.outputs(sections)
    for rel in paths:
        p = run.path / rel
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    if sections is None:
        run.reset_stage(stage.name)
    else:
        run.drop_units(stage.name, paths)


@contextlib.contextmanager
def _rollback_unless_recorded(run: RunFolder):  # noqa: ANN202
    """Restore run.toml and manifest.json if the block fails before recording any unit."""
    files = (run.config_path, run.manifest_path)
    saved = {p: p.read_bytes() if p.is_file() else None for p in files}
    recorded: list[str] = []
    try:
        yield recorded
    except BaseException:
        if not recorded:
            for p, data in saved.items():
                if data is None:
                    p.unlink(missing_ok=True)
                else:
                    atomic_write_bytes(p, data)
        raise
