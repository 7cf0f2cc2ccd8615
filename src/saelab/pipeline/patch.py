"""`saelab patch RUN`: edit SAE features during generation and measure what changes.

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
import io
import json
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from saelab.errors import SaelabError
from saelab.pipeline.patch_sets import EditSet, compile_outcomes, from_specs, from_sweep
from saelab.progress import Reporter, console, say
from saelab.run import RunFolder, atomic_write_bytes

STAGE = "patch"
DIR = "patch"


@dataclass
class PatchOptions:
    run: str
    edits: list[str] | None = None
    sweep: str | None = None
    values: str = "0"
    saes: str | None = None  # default: the SAEs `encode` used, else RUN/saes
    prompts: str | None = None  # default: the run's prompts
    generate: int = 16
    at: str = "last+generated"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    targets: str | None = None  # e.g. " yes, no": log p of each at the first answer position
    outcome: list[str] | None = None  # LABEL=REGEX
    batch_size: int = 32
    overwrite: bool = False
    quiet: bool = False


def run_patch(o: PatchOptions) -> dict[str, Any]:
    from saelab.models.loading import load_model

    run = RunFolder(o.run)
    if not run.path.is_dir():
        raise SaelabError(f"run folder {o.run} does not exist; check the path")
    if bool(o.edits) == bool(o.sweep):
        raise SaelabError("give either --edits SPEC... or --sweep top:N (one of them)")
    if o.generate < 1:
        raise SaelabError(f"--generate {o.generate} must be at least 1")
    if o.batch_size < 1:
        raise SaelabError(f"--batch-size {o.batch_size} must be at least 1")
    outcomes = compile_outcomes(o.outcome)
    ids, texts, groups = _prompts(o, run)
    model_name = str(run.read_config().get("extract", {}).get("model") or "default")
    sets = (
        from_specs(o.edits or [], 10_000)
        if o.edits
        else from_sweep(run.path, o.sweep or "", o.values)
    )
    saes = _saes(o, run, sets)
    from saelab.patch import check_edits

    check_edits([e for s in sets for e in s.edits], saes)
    _bind(o, run)
    spec = "default" if model_name == "HuggingFaceTB/SmolLM2-135M-Instruct" else model_name
    lm = load_model(spec, quiet=o.quiet)
    targets = _target_ids(lm, o.targets)
    parts = run.path / DIR / "parts"
    base = _generate(lm, o, texts, [EditSet("baseline", ())], saes, "baseline")
    todo = [(k, s) for k, s in enumerate(sets) if not (parts / f"{_key(s)}.json").is_file()]
    rows = len(todo) * len(texts)
    with Reporter("patch", total=rows, unit="rows", quiet=o.quiet) as rep:
        per_batch = max(1, o.batch_size // max(1, len(texts)))
        for i in range(0, len(todo), per_batch):
            chunk = [s for _, s in todo[i : i + per_batch]]
            gen = _generate(lm, o, texts, chunk, saes, "sweep")
            for j, s in enumerate(chunk):
                sl = slice(j * len(texts), (j + 1) * len(texts))
                rec = _records(s, ids, groups, gen, sl, base, targets, outcomes)
                atomic_write_bytes(parts / f"{_key(s)}.json", json.dumps(rec).encode())
            rep.advance(len(chunk) * len(texts), sum(len(t) for t in gen.token_ids))
    base_rec = _records(EditSet("baseline", ()), ids, groups, base, slice(0, len(texts)), base,
                        targets, outcomes)  # fmt: skip
    results = base_rec + [
        r for s in sets for r in json.loads((parts / f"{_key(s)}.json").read_text())
    ]
    from saelab.pipeline.patch_stats import summarise, write_tables

    summary = summarise(results, [t for t, _ in targets], [lab for lab, _ in outcomes])
    write_tables(run.path / DIR, results, summary)
    run.update_stage(STAGE, complete=True, edit_sets=len(sets), prompts=len(texts))
    _print(summary, o)
    return {"results": results, "summary": summary}


def _key(s: EditSet) -> str:
    return hashlib.sha256(s.name.encode()).hexdigest()[:16]


def _prompts(o: PatchOptions, run: RunFolder) -> tuple[list[str], list[str], list[Any]]:
    if o.prompts:
        from saelab.data import read_prompts

        t = read_prompts(o.prompts)
        return list(t.ids), list(t.texts), list(t.groups or [None] * len(t.ids))
    from saelab.store.codes import read_run_prompts

    p = read_run_prompts(run.path)
    return p["id"], p["text"], p["group"]


def _saes(o: PatchOptions, run: RunFolder, sets: list[EditSet]) -> dict[str, Any]:
    from saelab.models.hooks import parse_hooks
    from saelab.sae.pretrained import expand_saes, load_sae

    spec = o.saes or run.read_config().get("encode", {}).get("saes") or str(run.path / "saes")
    hooks = sorted({e.hook for s in sets for e in s.edits})
    try:
        points = [parse_hooks(h, 10_000)[0] for h in hooks]
        sources = expand_saes(spec, points)
    except SaelabError as e:
        raise SaelabError(f"no SAE for the edited hooks ({', '.join(hooks)}): {e}") from e
    return {
        src.hook or h: load_sae(src.location).sae for src, h in zip(sources, hooks, strict=True)
    }


def _bind(o: PatchOptions, run: RunFolder) -> None:
    conf = {k: v for k, v in asdict(o).items() if k not in ("quiet", "overwrite", "batch_size")}
    conf = json.loads(json.dumps(conf, default=str))
    old = run.read_config().get(STAGE)
    if old is not None and old != _clean(conf):
        if not o.overwrite:
            diffs = sorted(k for k in set(old) | set(conf) if old.get(k) != _clean(conf).get(k))
            raise SaelabError(
                f"{run.path} was patched with other settings ({', '.join(diffs[:3])} differ);"
                " use another --run or --overwrite"
            )
        shutil.rmtree(run.path / DIR, ignore_errors=True)
    run.bind_config(STAGE, _clean(conf), overwrite=True)


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _target_ids(lm: Any, targets: str | None) -> list[tuple[str, int]]:
    out = []
    for t in targets.split(",") if targets else []:
        if not t:
            continue
        ids = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SaelabError(f"--targets: {t!r} is no token")
        out.append((t, int(ids[0])))
    return out


def _generate(lm: Any, o: PatchOptions, texts: list[str], sets: list[EditSet], saes: dict,
              what: str) -> Any:  # fmt: skip
    from saelab.patch import generate_patched

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


def _print(summary: list[dict[str, Any]], o: PatchOptions) -> None:
    from rich.table import Table

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


def table_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
    return buf.getvalue()
