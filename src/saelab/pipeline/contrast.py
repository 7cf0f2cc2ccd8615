"""`saelab contrast --run RUN --groups A,B`: which features separate two groups of prompts.

Per hook the pooled codes (or raw activations, `--source activations`) stream shard by shard
into float64 group sums and a feature-major list of non-zeros (saelab.stats); every statistic
follows from those without a dense prompts x features matrix. Benjamini-Hochberg runs once over
every tested (hook, feature) of the run (and again within each hook); untested features (dead,
constant, or firing in fewer than --min-active prompts, a label-free filter that keeps BH
valid) are counted, kept in the table with NaN statistics, and never enter the correction.

Outputs: RUN/stats/contrast.parquet (one row per source x hook x feature: a `--source
activations` run replaces only its own rows, so both sit side by side),
RUN/stats/contrast_summary.json (per hook: counts and the top features;
contrast_summary_activations.json for raw activations), and a printed table.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saelab.atomic import atomic_write_bytes
from saelab.errors import SaelabError
from saelab.models.hooks import select_hooks
from saelab.pipeline.contrast_data import (
    POOLS,
    Labels,
    activation_blocks,
    code_blocks,
    read_labels,
)
from saelab.pipeline.contrast_report import (
    STATS_DIR,
    TABLE,
    build_table,
    print_table,
    summarise,
    summary_name,
    write_outputs,
)
from saelab.pipeline.driver import run_stage
from saelab.pipeline.inputs import model_depth
from saelab.pipeline.options import StageOptions, option
from saelab.pipeline.stage import Done, Finished, Stage, Unit, UnitResult, Worker, hashed
from saelab.stats import hook_tables
from saelab.store import open_activations
from saelab.store.codes import open_codes

SOURCES = ("codes", "activations")
PARTS_DIR = f"{STATS_DIR}/contrast_parts"


class ContrastConfig(StageOptions):
    """Which features separate two groups of prompts: Welch, Mann-Whitney, firing rates, BH."""

    groups: str = option(..., "the two groups to compare, e.g. formal,casual")
    group_column: str = option("group", "prompt column holding the group")
    pool: str = option("max", "token codes -> one value: last | max | mean")
    hooks: str | None = option(None, "hooks (default: all encoded)")
    min_active: int = option(
        5, "test a feature only if it fires in N+ prompts (both groups)", minimum=1
    )
    alpha: float = option(0.05, "false discovery rate")
    source: str = option("codes", "codes | activations (raw hidden dimensions, a baseline)")
    top: int = option(20, "strongest features to print and summarise", minimum=0)


@dataclass(frozen=True)
class HookUnit(Unit):
    """The statistics of one hook's features (`width` of them)."""

    width: int = 0
    hook: str = ""


class ContrastStage(Stage[ContrastConfig]):
    """Units: one hook each (its statistics, saved as a part); `finish` corrects across every
    hook (BH needs them all) and writes the table and summary. Each source (codes, raw
    activations) is a section of its own, so both results sit side by side."""

    name = "contrast"
    sections = True
    progress = "hooks"

    def prepare(self) -> dict[str, Any]:
        o = self.config
        if not self.run.path.is_dir():
            raise SaelabError(f"run folder {o.run} does not exist; check the path")
        if o.pool not in POOLS:
            raise SaelabError(f"--pool {o.pool!r} is not one of {', '.join(POOLS)}")
        if o.source not in SOURCES:
            raise SaelabError(f"--source {o.source!r} is not one of {', '.join(SOURCES)}")
        if not 0 < o.alpha < 1:
            raise SaelabError(f"--alpha {o.alpha} must be between 0 and 1, e.g. 0.05")
        if o.min_active < 1:
            raise SaelabError(f"--min-active {o.min_active} must be at least 1")
        self.labels  # noqa: B018  (the groups must exist before anything is written)
        self.hooks = self._hooks()
        return {
            o.source: {
                "groups": o.groups,
                "group_column": o.group_column,
                "pool": o.pool,
                "hooks": o.hooks or "",
                "min_active": o.min_active,
                "alpha": o.alpha,
            }
        }

    def outputs(self, sections: list[str] | None = None) -> list[str]:
        chosen = sections if sections is not None else list(SOURCES)
        out = [f"{PARTS_DIR}/{s}" for s in chosen]
        out += [f"{STATS_DIR}/{summary_name(s)}" for s in chosen]
        return out if sections is not None else [*out, f"{STATS_DIR}/{TABLE}"]

    def units(self) -> list[Unit]:
        source = self.config.source  # keys stay apart across sources: one manifest section
        return [HookUnit(f"{source}:{hook}", 1, width, hook) for hook, width in self.hooks]

    def finish(self, done: Done) -> Finished:
        o = self.config
        per_hook = {hook: self._read_part(hook) for hook, _ in self.hooks}
        table = build_table(o, per_hook)
        summary = summarise(o, self.labels, per_hook, table)
        write_outputs(self.run, table, summary)
        print_table(o, self.labels, table, summary)  # the result itself: printed even quiet
        return Finished(summary)

    # -- any process -----------------------------------------------------------------------
    @cached_property
    def labels(self) -> Labels:
        return read_labels(self.run.path, self.config.groups, self.config.group_column)

    def run_unit(self, unit: HookUnit, worker: Worker) -> UnitResult:
        o, labels = self.config, self.labels

        def labelled(hook: str) -> Any:  # the hook's blocks, reduced to the two groups' prompts
            for block in self._blocks(hook):
                a = labels.in_a[block.prompt_index]
                keep = a | labels.in_b[block.prompt_index]
                if keep.any():
                    yield block.x[np.flatnonzero(keep)], a[keep]

        hooks = [(unit.hook, unit.width)]
        stats = hook_tables(hooks, labelled, min_active=o.min_active, workers=1)[unit.hook]
        path = self.run.path / self._part(unit.hook)
        buf = io.BytesIO()
        pq.write_table(pa.table({k: pa.array(v) for k, v in stats.items()}), buf)
        atomic_write_bytes(path, buf.getvalue())
        return UnitResult(hashed(self.run, [path]))

    def _part(self, hook: str) -> str:
        return f"{PARTS_DIR}/{self.config.source}/{hook}.parquet"

    def _read_part(self, hook: str) -> dict[str, np.ndarray]:
        t = pq.read_table(self.run.path / self._part(hook))
        out = {}
        for name in t.column_names:
            col = t.column(name).to_numpy(zero_copy_only=False)
            out[name] = col.astype(str) if col.dtype == object else col
        return out

    def _skip_first(self) -> bool:
        store = self._store
        return bool(store and store.attrs.get("prepend_bos", True)) and not (
            store and store.attrs.get("drop_bos", False)
        )

    @cached_property
    def _store(self) -> Any:
        try:
            return open_activations(self.run.path)
        except SaelabError:
            if self.config.source == "activations":
                raise
            return None

    def _blocks(self, hook: str) -> Any:
        o = self.config
        if o.source == "activations":
            return activation_blocks(self._store, hook, o.pool, self._skip_first())
        return code_blocks(open_codes(self.run.path), hook, o.pool, self._skip_first())

    def _hooks(self) -> list[tuple[str, int]]:
        """(hook, width) pairs to test: by name unless --hooks names them (then forward-pass
        order)."""
        o = self.config
        if o.source == "activations":
            store = self._store
            names = self._pick(sorted(store.hooks), "activation store", "extract it first")
            return [(h, int(store.d_model[h])) for h in names]
        codes = open_codes(self.run.path)
        names = self._pick(codes.hooks, "codes", "encode it first or pick one it has")
        return [(h, codes[h].d_sae) for h in names]

    def _pick(self, available: list[str], what: str, fix: str) -> list[str]:
        depth = model_depth(self.run, hooks=available)
        chosen = select_hooks(
            self.config.hooks, available, depth, where=f"the run's {what}", fix=fix
        )
        return [h.name for h in chosen]


def run_contrast(config: ContrastConfig) -> dict[str, Any]:
    """Test every feature of the run's codes (or raw activations) between two groups."""
    return run_stage(ContrastStage(config))
