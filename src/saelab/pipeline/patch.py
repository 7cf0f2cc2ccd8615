"""`saelab patch --run RUN`: edit SAE features during generation and measure what changes.

Every (edit set, prompt) pair is one batch row carrying its own edits, so a sweep of many
edits shares forward passes and KV caches; each prompt's unpatched baseline runs once. Results
are written per edit set (`RUN/patch/parts/`), so a killed sweep resumes at the first edit set
not written; `RUN/patch/results.parquet` (one row per edit set x prompt) and
`RUN/patch/summary.parquet` (per edit set and group: label rates with Fisher's exact test
against the baseline, mean change of the target log-prob difference with a 95% interval, mean
KL from the baseline's next-token distribution) are rebuilt from the parts at the end.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rich.table import Table

from saelab.atomic import atomic_write_bytes
from saelab.data import read_prompts
from saelab.errors import SaelabError
from saelab.models.hooks import hook_point
from saelab.models.loading import load_tokenizer
from saelab.patch import check_edits, generate_patched
from saelab.patch.apply import AT
from saelab.pipeline.driver import run_stage
from saelab.pipeline.inputs import model_depth, prompt_table, run_model
from saelab.pipeline.options import StageOptions, option
from saelab.pipeline.patch_sets import EditSet, compile_outcomes, from_specs, from_sweep
from saelab.pipeline.patch_stats import summarise, write_tables
from saelab.pipeline.stage import Done, Finished, Stage, Unit, UnitResult, Worker, hashed
from saelab.progress import console, say
from saelab.sae.pretrained import expand_saes, load_sae

DIR = "patch"
PARTS = f"{DIR}/parts"
BASELINE = EditSet("baseline", ())


class PatchConfig(StageOptions):
    """Set, scale, ablate or steer SAE features during generation; measure what changes."""

    edits: list[str] | None = option(
        None, "HOOK:F=V | HOOK:F*S | HOOK:F+=D | HOOK:F@A (repeatable; applied together)"
    )
    sweep: str | None = option(None, "top:N (strongest contrast features) or top:N/hook")
    values: str = option("0", "sweep values: 0,x2,mean_A,mean_B,@A,+=D")
    saes: str | None = option(None, "SAEs (default: those encode used)")
    prompts: str | None = option(None, "prompts (default: the run's)")
    generate: int = option(16, "new tokens per prompt", minimum=1)
    at: str = option("last+generated", "last | prompt | generated | all | last+generated")
    temperature: float = option(0.0, "0: greedy")
    top_p: float = option(1.0, "nucleus sampling")
    seed: int = option(0, "sampling seed")
    targets: str | None = option(None, "tokens whose log-probs to compare, e.g. ' yes, no'")
    outcome: list[str] | None = option(None, "LABEL=REGEX labelling each generation (repeatable)")
    batch_size: int = option(32, "rows per generation batch", minimum=1)


@dataclass(frozen=True)
class EditsUnit(Unit):
    """Edit sets generated together as rows of one batch (the baseline: no edit set)."""

    sets: tuple[EditSet, ...] = ()


class PatchStage(Stage[PatchConfig]):
    """Units: the unpatched baseline, then chunks of edit sets (each set x every prompt is a
    batch row); each unit writes one records file per set; `finish` builds the tables."""

    name = "patch"
    progress = "rows"

    def prepare(self) -> dict[str, Any]:
        o = self.config
        if not self.run.path.is_dir():
            raise SaelabError(f"run folder {o.run} does not exist; check the path")
        if bool(o.edits) == bool(o.sweep):
            raise SaelabError("give either --edits SPEC... or --sweep top:N (one of them)")
        if o.generate < 1:
            raise SaelabError(f"--generate {o.generate} must be at least 1")
        if o.batch_size < 1:
            raise SaelabError(f"--batch-size {o.batch_size} must be at least 1")
        if o.at not in AT:
            raise SaelabError(f"--at {o.at!r} is not one of {', '.join(AT)}")
        if o.temperature < 0:
            raise SaelabError(f"--temperature {o.temperature} must be >= 0 (0 = greedy)")
        if not 0 < o.top_p <= 1:
            raise SaelabError(f"--top-p {o.top_p} must be in (0, 1]")
        self.outcomes  # noqa: B018  (each check fails before anything is written)
        self.prompts  # noqa: B018
        check_edits([e for s in self.sets for e in s.edits], self.saes)
        self.targets  # noqa: B018
        keep = (
            "edits", "sweep", "values", "saes", "prompts", "generate", "at", "temperature",
            "top_p", "seed", "targets", "outcome",
        )  # fmt: skip
        return json.loads(json.dumps({k: getattr(o, k) for k in keep}, default=str))

    def outputs(self, sections: list[str] | None = None) -> list[str]:
        return [DIR]

    def units(self) -> list[Unit]:
        n = len(self.prompts[1])
        per_batch = max(1, self.config.batch_size // max(1, n))
        out: list[Unit] = [EditsUnit("baseline", n, ())]
        for i in range(0, len(self.sets), per_batch):
            chunk = tuple(self.sets[i : i + per_batch])
            key = hashlib.sha256("\n".join(s.name for s in chunk).encode()).hexdigest()[:16]
            out.append(EditsUnit(f"edits-{key}", n * len(chunk), chunk))
        return out

    def finish(self, done: Done) -> Finished:
        results = [r for s in (BASELINE, *self.sets) for r in self._read(s)]
        targets, outcomes = self.targets, self.outcomes
        summary = summarise(results, [t for t, _ in targets], [lab for lab, _ in outcomes])
        write_tables(self.run.path / DIR, results, summary)
        _print(summary, self.config)
        fields = {"edit_sets": len(self.sets), "prompts": len(self.prompts[1])}
        return Finished({"results": results, "summary": summary}, fields)

    # -- inputs (cheap ones recomputed where needed; the SAEs are loaded once) --------------
    @cached_property
    def outcomes(self) -> list[Any]:
        return compile_outcomes(self.config.outcome)

    @cached_property
    def prompts(self) -> tuple[list[str], list[str], list[Any]]:
        if self.config.prompts:
            t = read_prompts(self.config.prompts)
            return list(t.ids), list(t.texts), list(t.groups or [None] * len(t.ids))
        p = prompt_table(self.run)
        return p["id"], p["text"], p["group"]

    @cached_property
    def sets(self) -> list[EditSet]:
        o = self.config
        if o.edits:
            return from_specs(o.edits, model_depth(self.run, run_model(self.run)))
        return from_sweep(self.run.path, o.sweep or "", o.values)

    @cached_property
    def saes(self) -> dict[str, Any]:
        o, run = self.config, self.run
        spec = o.saes or run.read_config().get("encode", {}).get("saes") or str(run.path / "saes")
        hooks = sorted({e.hook for s in self.sets for e in s.edits})
        try:
            sources = expand_saes(spec, [hook_point(h) for h in hooks])
        except SaelabError as e:
            raise SaelabError(f"no SAE for the edited hooks ({', '.join(hooks)}): {e}") from e
        return {
            src.hook or h: load_sae(src.location).sae for src, h in zip(sources, hooks, strict=True)
        }

    @cached_property
    def targets(self) -> list[tuple[str, int]]:
        if not self.config.targets:
            return []
        return _target_ids(load_tokenizer(run_model(self.run)), self.config.targets)

    # -- any process -----------------------------------------------------------------------
    def run_unit(self, unit: EditsUnit, worker: Worker) -> UnitResult:
        lm = worker.model(run_model(self.run), quiet=self.config.quiet)
        saes = worker.get(("patch-saes", self.config.saes, str(self.run.path)), lambda: self.saes)
        ids, texts, groups = self.prompts
        base = worker.get(
            ("patch-baseline", str(self.run.path), json.dumps(self.binding, sort_keys=True)),
            lambda: _generate(lm, self.config, texts, [BASELINE], saes, "baseline"),
        )
        sets = list(unit.sets) or [BASELINE]
        gen = base if not unit.sets else _generate(lm, self.config, texts, sets, saes, "sweep")
        paths = []
        for j, s in enumerate(sets):
            sl = slice(j * len(texts), (j + 1) * len(texts))
            rec = _records(s, ids, groups, gen, sl, base, self.targets, self.outcomes)
            paths.append(self.run.path / _part(s))
            atomic_write_bytes(paths[-1], json.dumps(rec).encode())
        tokens = sum(len(t) for t in gen.token_ids) if unit.sets else 0
        return UnitResult(hashed(self.run, paths), {"tokens": tokens})

    def _read(self, s: EditSet) -> list[dict[str, Any]]:
        return json.loads((self.run.path / _part(s)).read_text())


def _part(s: EditSet) -> str:
    """One records file per edit set, named by a hash of its spec."""
    if s == BASELINE:
        return f"{DIR}/baseline.json"
    return f"{PARTS}/{hashlib.sha256(s.name.encode()).hexdigest()[:16]}.json"


def run_patch(config: PatchConfig) -> dict[str, Any]:
    """Run the edits (or the sweep) on the run's prompts; results and summary tables."""
    return run_stage(PatchStage(config))


def _target_ids(tokenizer: Any, targets: str | None) -> list[tuple[str, int]]:
    out = []
    for t in targets.split(",") if targets else []:
        if not t:
            continue
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SaelabError(f"--targets: {t!r} is no token")
        out.append((t, int(ids[0])))
    return out


def _generate(lm: Any, o: PatchConfig, texts: list[str], sets: list[EditSet], saes: dict,
              what: str) -> Any:  # fmt: skip
    prompts = [t for _ in sets for t in texts]
    rows = [list(s.edits) for s in sets for _ in texts]
    used = {e.hook for r in rows for e in r}
    return generate_patched(lm, prompts, rows, {h: saes[h] for h in used} if used else {},
                            max_new_tokens=o.generate, at=o.at, temperature=o.temperature,
                            top_p=o.top_p, seed=o.seed)  # fmt: skip


def _records(s: EditSet, ids: list[str], groups: list[Any], gen: Any, sl: slice, base: Any,
             targets: list[tuple[str, int]], outcomes: list) -> list[dict[str, Any]]:  # fmt: skip
    lp = gen.first_logprobs[sl].double()
    blp = base.first_logprobs.double()
    kl = (blp.exp() * (blp - lp)).sum(-1).clamp_min(0).tolist()
    out = []
    for i, text in enumerate(gen.texts[sl]):
        rec: dict[str, Any] = {
            "edit": s.name,
            "prompt_id": ids[i],
            "group": groups[i],
            "text": text,
            "kl": float(kl[i]),
            "label": next((lab for lab, rx in outcomes if rx.search(text)), "other"),
            "applied": int(gen.applied[sl][i]),  # positions the row's edits were applied at
        }
        for name, tid in targets:
            rec[f"logp[{name}]"] = float(lp[i, tid])
        if len(targets) >= 2:
            rec["logp_diff"] = float(lp[i, targets[0][1]] - lp[i, targets[1][1]])
        out.append(rec)
    return out


def _print(summary: list[dict[str, Any]], o: PatchConfig) -> None:
    rows = [s for s in summary if s["edit"] != "baseline" and s["group"] == "all"]
    key = "delta_logp_diff" if rows and "delta_logp_diff" in rows[0] else "mean_kl"
    rows.sort(key=lambda s: -abs(s.get(key) or 0.0))
    t = Table(title=f"edits with the largest effect ({key})", title_justify="left")
    cols = ["edit", "n", "mean_kl", "delta_logp_diff", "ci95", "label_changes", "min_fisher_p"]
    for c in cols:
        t.add_column(c, justify="left" if c == "edit" else "right")
    for s in rows[:15]:
        t.add_row(*[_fmt(s.get(c)) for c in cols])
    console().print(t)
    say(f"results: {o.run}/patch/results.parquet, {o.run}/patch/summary.parquet (saelab query)",
        o.quiet)  # fmt: skip


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(f"{x:.3g}" for x in v) + "]"
    return str(v)
