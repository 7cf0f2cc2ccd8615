"""The stage contract: every stage is a documented config, a list of units, `run_unit` and a
`finish`, so one driver (`pipeline.driver.run_stage`) and any executor can run any stage.

    stage = EncodeStage(EncodeConfig(run="runs/x", saes="runs/x/saes"))
    result = run_stage(stage, LocalExecutor())

What runs where, so that units can run in other processes (a Ray actor per worker):

- driver only: `prepare` (check inputs, return the *binding*: the resolved configuration that
  decides the bytes, recorded in run.toml), `requires` (stages whose outputs this one reads;
  run first through the same executor), `outputs` (what `--overwrite` removes), `setup`
  (shared folders, before any unit), `units`, `finish` (read what the units wrote, write the
  stage's summary files, return the result). The driver alone writes manifest.json.
- any process: `run_unit(unit, worker)`. A unit is a small picklable value; the stage is
  rebuilt in the worker from `(type(stage), stage.config, run path)` alone (`Stage.parts`),
  reads the binding back from run.toml, and gets heavy resources (the model, an SAE) from
  the `Worker`, which loads each once per process and keeps it across units. `run_unit`
  writes its files atomically under the run folder and returns their paths and sha256
  hashes plus a small info dict (`UnitResult`), never tensors.

Every unit record in manifest.json has the same shape, so anything can re-hash every file of
every stage: `{"files": {relpath: sha256}, "bytes": int, "seconds": float, "peak_rss": int,
"worker": str, "command": the `saelab ...` line that rebuilds it, ...info}`; files the
driver wrote in `setup` are the stage's own `files`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from saelab.atomic import file_digest
from saelab.errors import SaelabError
from saelab.models.loading import LoadedModel, load_model, resolve_device, resolve_spec
from saelab.pipeline.options import StageOptions
from saelab.run import RunFolder

C = TypeVar("C", bound=StageOptions)
T = TypeVar("T")

#: the keys every unit record has; a stage's info may not use them
RECORD_KEYS = ("files", "bytes", "seconds", "peak_rss", "worker", "command")


@dataclass(frozen=True)
class Unit:
    """One piece of work: its name in the manifest, and how much of the stage it is (for the
    progress bar). Stages subclass it with the few plain values their `run_unit` needs."""

    key: str
    size: int = 1


@dataclass
class UnitResult:
    """What a unit wrote (paths relative to the run folder -> sha256) and a small info dict."""

    files: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.info) & set(RECORD_KEYS))
        if clash:
            raise ValueError(f"unit info may not use the record keys {clash}")


def hashed(run: RunFolder, paths: list[Path]) -> dict[str, str]:
    """{path relative to the run folder: sha256} of files a unit wrote."""
    return {p.relative_to(run.path).as_posix(): file_digest(p) for p in sorted(paths)}


@dataclass
class Finished:
    """What `finish` hands back: the stage's result, and fields for its manifest section."""

    value: Any
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Done:
    """The units' records as the driver saw them, for `finish`."""

    records: dict[str, dict[str, Any]]  # unit key -> record, every unit of this call
    ran: list[str]  # units run by this call (the rest were already done)
    already: bool  # nothing ran: the stage was complete with this configuration
    measured: dict[str, Any]  # wall time, peak memory and disk of this call


class Worker:
    """One process's heavy resources, loaded once and kept across units.

    The local executor has one; a Ray executor keeps one per actor. `get` loads a value the
    first time its key is asked for; `drop` releases it (an SAE once its layer is done).
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._cache: dict[Hashable, Any] = {}

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def has(self, key: Hashable) -> bool:
        return key in self._cache

    def drop(self, key: Hashable) -> None:
        self._cache.pop(key, None)

    @staticmethod
    def _model_key(spec: str, dtype: str, device: str) -> tuple[str, ...]:
        src = resolve_spec(spec)
        return ("model", src.kind, src.location, dtype, resolve_device(device).type)

    def model(
        self, spec: str, *, dtype: str = "float32", device: str = "cpu", quiet: bool = True
    ) -> LoadedModel:
        """The model, loaded once per worker for each (spec, dtype, device)."""
        key = self._model_key(spec, dtype, device)
        return self.get(key, lambda: load_model(spec, dtype=dtype, device=device, quiet=quiet))

    def has_model(self, spec: str, *, dtype: str = "float32", device: str = "cpu") -> bool:
        return self.has(self._model_key(spec, dtype, device))

    def adopt(self, lm: LoadedModel) -> None:
        """Use a model the caller already loaded (a notebook, a test) instead of loading it."""
        src = lm.source
        self._cache[("model", src.kind, src.location, lm.dtype, lm.device.type)] = lm


class Stage(Generic[C]):
    """Base of every stage; see the module docstring for what runs where."""

    name: ClassVar[str]  # its section in run.toml and manifest.json
    #: the binding is {section: config} and each section is bound on its own (train: one
    #: per hook, contrast: one per source), so a run can grow by sections
    sections: ClassVar[bool] = False
    #: what a unit's `size` counts, for the driver's progress bar (None: no bar)
    progress: ClassVar[str | None] = None

    #: False where the stage finds a run folder of its own (extract names one by default)
    needs_run: ClassVar[bool] = True
    #: True where the binding is what the stage reads rather than what the user chose (the
    #: report: other stages' records): a different one rebuilds the stage, it is not refused
    derived: ClassVar[bool] = False

    def __init__(self, config: C, run: str | Path | None = None) -> None:
        self.config = config
        if run is None and config.run is None and self.needs_run:
            raise SaelabError(f"--run is needed: name the run folder {self.name} works on")
        self.run = RunFolder(run if run is not None else (config.run or "."))
        self.fields: dict[str, Any] = {}  # manifest fields `prepare` sets (extract: the plan)
        self._binding: dict[str, Any] | None = None

    def parts(self) -> tuple[type[Stage[C]], C, str]:
        """What travels to a worker: the stage is rebuilt there as `cls(config, run)`."""
        return type(self), self.config, str(self.run.path)

    @property
    def binding(self) -> dict[str, Any]:
        """The resolved configuration: set by `prepare` on the driver, read back from run.toml
        in a worker (the driver records it before any unit runs)."""
        if self._binding is None:
            self._binding = dict(self.run.read_config().get(self.name, {}))
        return self._binding

    # -- driver ----------------------------------------------------------------------------
    def requires(self) -> list[Stage[Any]]:
        """Stages whose outputs this one reads and that are not in the run folder yet."""
        return []

    def prepare(self) -> dict[str, Any]:
        """Check every input that can be checked before work starts (nothing is written);
        return the binding."""
        raise NotImplementedError

    def outputs(self, sections: list[str] | None = None) -> list[str]:
        """Paths (relative to the run folder) this stage owns, of some sections or all;
        `--overwrite` removes them."""
        raise NotImplementedError

    def setup(self) -> dict[str, str]:
        """Driver-side preparation before any unit runs: shared places (a store's root) and
        small files every unit reads (extract's prompt table). Returns the files it wrote
        ({path in the run: sha256}), recorded as the stage's own `files`."""
        return {}

    def units(self) -> list[Unit]:
        raise NotImplementedError

    def finish(self, done: Done) -> Finished:
        raise NotImplementedError

    # -- any process -----------------------------------------------------------------------
    def run_unit(self, unit: Any, worker: Worker) -> UnitResult:
        raise NotImplementedError
