"""`saelab encode`: SAE codes of every prompt, layer-major, into `RUN/codes/` as CSR.

The schedule is what keeps disk and downloads bounded: the model runs once over all prompts,
capturing every needed hook into the run's activation store (the extract stage, run first
when the store is missing, or the store `extract` made is reused); then each hook is one unit:
its SAE is fetched once, applied to every prompt shard, and released (evicted from the hub
cache when the disk budget is tight) before the next hook's. A prompt-major loop would fetch
every SAE once per prompt. Killed at any time, `encode` resumes at the first missing
(hook, shard); a hook whose shards are all recorded is not fetched again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from saelab.atomic import is_debris, remove_debris
from saelab.errors import SaelabError
from saelab.hub import Fetcher
from saelab.models.hooks import HookPoint, select_hooks
from saelab.pipeline.driver import run_stage
from saelab.pipeline.extract import extract_stage
from saelab.pipeline.extract_job import MODEL_HELP, TEXT_COLUMN_HELP, ExtractConfig
from saelab.pipeline.inputs import activations, model_depth
from saelab.pipeline.options import StageOptions, option
from saelab.pipeline.stage import Done, Finished, Stage, Unit, UnitResult, Worker, hashed
from saelab.progress import Reporter, say
from saelab.sae.encode import encode_prompts
from saelab.sae.features import parse_features
from saelab.sae.pretrained import SAESource, expand_saes, is_remote, load_sae, sae_disk_report
from saelab.store import ActivationStore
from saelab.store.codes import CODES_DIR, POSITIONS, CodesWriter, hook_dir
from saelab.units import parse_size

FETCH_KEYS = ("downloads", "bytes_downloaded", "cache_hits")


class EncodeConfig(StageOptions):
    """SAE codes of every prompt, layer-major, as sparse CSR in RUN/codes/."""

    saes: str = option(
        ...,
        "SAE folder or file, a folder of per-hook SAEs (e.g. RUN/saes), or hf://ORG/NAME/PATH"
        " with {L} for the layer",
    )
    hooks: str | None = option(None, "hooks to encode (needed with {L} or without a store)")
    positions: str = option("all", "all | last | max | mean")
    features: str | None = option(None, "keep only these feature ids, e.g. 645,1170,3-7")
    prompts: str | None = option(None, "prompts to capture when the run has no store yet")
    model: str = option("default", MODEL_HELP)
    text_column: str = option("text", TEXT_COLUMN_HELP)
    batch_size: str = option("auto", "capture batch size or 'auto'")
    dtype: str | None = option(None, "SAE weights dtype (default: as stored)")
    evict: bool | None = option(
        None, "delete each SAE's files once its hook is done (default: when tight)"
    )
    strict: bool = option(False, "refuse an SAE made for another hook")


@dataclass(frozen=True)
class SAEUnit(Unit):
    """One hook's SAE: where it is, and the hook it is for (None: the SAE's own)."""

    location: str = ""
    hook: str | None = None


@dataclass
class EncodeResult:
    hooks: dict[str, dict[str, Any]]
    fetch: dict[str, Any]
    seconds: float


class EncodeStage(Stage[EncodeConfig]):
    name = "encode"

    def requires(self) -> list[Stage[Any]]:
        """The activation store, captured first (one pass, every hook) when missing."""
        o = self.config
        if (self.run.path / "activations").is_dir():
            if o.prompts:
                say(f"encode: {self.run.path} already has activations; --prompts is ignored",
                    o.quiet)  # fmt: skip
            return []
        if not o.hooks:
            raise SaelabError(
                f"{self.run.path} has no activation store: give --hooks (and --prompts) so"
                " encode can capture them, or run `saelab extract` first"
            )
        self._disk_first()
        return [
            extract_stage(
                ExtractConfig(
                    model=o.model,
                    prompts=o.prompts,
                    text_column=o.text_column,
                    hooks=o.hooks,
                    positions="last" if o.positions == "last" else "all",
                    batch_size=o.batch_size,
                    max_memory=o.max_memory,
                    run=str(self.run.path),
                    quiet=o.quiet,
                )
            )
        ]

    def _disk_first(self) -> None:
        """Before the capture pass loads the model (tens of seconds on a laptop): the disk the
        SAE downloads need, from the hub cache and HEAD requests, refused here when `max_disk`
        or the free disk cannot hold it, so a too-small budget costs seconds, not a capture."""
        o = self.config
        assert o.hooks is not None
        depth = model_depth(self.run, o.model, [])
        sources = expand_saes(o.saes, select_hooks(o.hooks, None, depth))
        if not any(is_remote(s.location) for s in sources):
            return
        report = sae_disk_report(
            sources, self.run.path, max_disk=parse_size(o.max_disk, "--max-disk"), evict=o.evict
        )
        for line in report.lines():
            say(f"encode: {line}", o.quiet)

    def prepare(self) -> dict[str, Any]:
        o = self.config
        if o.positions not in POSITIONS:
            raise SaelabError(f"--positions {o.positions!r} is not one of {', '.join(POSITIONS)}")
        store = self.store
        hooks: list[HookPoint] | None = None
        if o.hooks:
            depth = model_depth(self.run, store.attrs.get("model") or o.model, store.hooks)
            hooks = select_hooks(
                o.hooks,
                store.hooks,
                depth,
                where=f"the activation store of {o.run}",
                fix="extract it into another --run, or drop it",
            )
        sources = expand_saes(o.saes, hooks)
        for s in sources:
            if s.hook is not None and s.hook not in store.hooks:
                raise SaelabError(
                    f"the activation store of {o.run} has no {s.hook} (it holds"
                    f" {', '.join(store.hooks)}): extract it into another --run, or drop it"
                )
        if o.positions in ("max", "mean") and store.positions != "all":
            raise SaelabError(
                f"--positions {o.positions} needs every token's activations, but the store holds"
                f" positions={store.positions}; encode into a run extracted with --positions all"
            )
        if o.positions == "all" and store.positions != "all":
            raise SaelabError(
                f"the store holds positions={store.positions} only; use --positions"
                f" {store.positions} or a run extracted with --positions all"
            )
        parse_size(o.max_disk, "--max-disk")
        self.sources = sorted(
            sources, key=lambda s: (s.layer if s.layer is not None else -1, s.hook or "")
        )
        return {
            "saes": o.saes,
            "positions": o.positions,
            "features": o.features or "",
            "dtype": o.dtype or "",
        }

    def outputs(self, sections: list[str] | None = None) -> list[str]:
        return [CODES_DIR]

    def units(self) -> list[Unit]:
        return [SAEUnit(s.hook or s.location, 1, s.location, s.hook) for s in self.sources]

    def finish(self, done: Done) -> Finished:
        results = {str(r.get("hook") or k): r for k, r in done.records.items()}
        fetch = {
            k: sum(int(done.records[u].get("fetch", {}).get(k, 0)) for u in done.ran)
            for k in FETCH_KEYS
        }
        fetch["peak_cache_bytes"] = max(
            (int(done.records[u].get("fetch", {}).get("peak_cache_bytes", 0)) for u in done.ran),
            default=0,
        )
        return Finished(
            EncodeResult(results, fetch, float(done.measured.get("wall_seconds", 0.0))),
            {"fetch": fetch},
        )

    # -- any process -----------------------------------------------------------------------
    @cached_property
    def store(self) -> ActivationStore:
        return activations(self.run)

    def fetcher(self, worker: Worker) -> Fetcher:
        o = self.config
        max_disk = parse_size(o.max_disk, "--max-disk")
        key = ("fetcher", max_disk, o.evict, o.quiet)
        return worker.get(key, lambda: Fetcher(max_disk=max_disk, evict=o.evict, quiet=o.quiet))

    def run_unit(self, unit: SAEUnit, worker: Worker) -> UnitResult:
        fetcher = self.fetcher(worker)
        before = {k: getattr(fetcher.stats, k) for k in FETCH_KEYS}
        loaded = load_sae(unit.location, fetcher, dtype=self.config.dtype)
        try:
            info = self._encode(unit, loaded)
        finally:
            loaded.sae = None  # released before the next hook's SAE arrives
            for f in loaded.files:
                fetcher.release(f)
        st = fetcher.stats
        info["fetch"] = {k: getattr(st, k) - before[k] for k in FETCH_KEYS}
        info["fetch"]["peak_cache_bytes"] = st.peak_cache_bytes
        folder = hook_dir(self.run.path / CODES_DIR, info["hook"])
        files = [p for p in folder.iterdir() if p.is_file() and not is_debris(Path(p.name))]
        return UnitResult(hashed(self.run, files), info)

    def _encode(self, unit: SAEUnit, loaded: Any) -> dict[str, Any]:
        o, store, sae = self.config, self.store, loaded.sae
        hook = self._check_hook(unit, sae)
        # a writer killed mid-shard (this hook's previous try) left a temporary file
        remove_debris(hook_dir(self.run.path / CODES_DIR, hook))
        features = parse_features(o.features, sae.cfg.d_sae)
        writer = CodesWriter(
            self.run.path / CODES_DIR,
            hook,
            {
                "sae": unit.location,
                "sae_format": loaded.format,
                "sae_hook": sae.cfg.metadata.get("hook_name") or None,
                "d_sae": int(sae.cfg.d_sae),
                "positions": o.positions,
                "features": features,
                "values": "float32",
            },
        )
        skip_first = bool(store.attrs.get("prepend_bos", True)) and not store.attrs.get(
            "drop_bos", False
        )
        arr = store[hook]
        nnz = rows_out = 0
        t0 = time.perf_counter()
        with Reporter(f"encode {hook}", total=store.n_prompts, unit="prompts",
                      quiet=o.quiet) as rep:  # fmt: skip
            for sp in store.shards():
                n_prompts = sp.prompt_hi - sp.prompt_lo
                if writer.has_shard(sp.shard):
                    rep.advance(n_prompts)
                    continue
                rows = arr[sp.row_lo : sp.row_hi]
                offs = store.row_offsets[sp.prompt_lo : sp.prompt_hi + 1] - sp.row_lo
                csr = encode_prompts(sae, rows, offs, o.positions, features, skip_first)
                row_offsets = offs if o.positions == "all" else np.arange(n_prompts + 1)
                writer.write_shard(
                    sp.shard,
                    indptr=csr.indptr,
                    indices=csr.indices,
                    values=csr.values,
                    prompt_index=store.prompt_index[sp.prompt_lo : sp.prompt_hi],
                    row_offsets=row_offsets,
                )
                nnz += len(csr.values)
                rows_out += csr.n_rows
                rep.advance(n_prompts, sp.row_hi - sp.row_lo)
        return {
            "hook": hook,
            "sae": unit.location,
            "format": loaded.format,
            "d_sae": int(sae.cfg.d_sae),
            "rows": rows_out,
            "nnz": nnz,
            "mean_l0": nnz / rows_out if rows_out else None,
            "encode_seconds": round(time.perf_counter() - t0, 3),
        }

    def _check_hook(self, unit: SAEUnit, sae: Any) -> str:
        """The hook to encode: --hooks / the folder name, else the SAE's own; d_in must match."""
        o, store = self.config, self.store
        own = str(sae.cfg.metadata.get("hook_name") or "")
        hook = unit.hook or own
        if not hook:
            raise SaelabError(f"SAE {unit.location} does not say which hook it reads: give --hooks")
        if hook not in store.hooks:
            raise SaelabError(
                f"SAE {unit.location} reads {hook}, which the store of {o.run} does not hold (it"
                f" has {', '.join(store.hooks)}); extract it or give --hooks"
            )
        if own and own != hook:
            msg = f"SAE {unit.location} was trained on {own}, not {hook}"
            if o.strict:
                raise SaelabError(msg + "; drop --strict to use it anyway")
            say(f"[yellow]warning[/yellow]: {msg}; encoding {hook} with it anyway", o.quiet)
        d_store = int(store.d_model[hook])
        d_in = int(sae.cfg.d_in)
        if d_in != d_store:
            raise SaelabError(
                f"SAE {unit.location} expects d_in={d_in}, but {hook} has width {d_store}: it"
                " was made for another model or hook"
            )
        return hook


def describe_encode(res: EncodeResult, run: str) -> str:
    """What `saelab encode` prints: per hook its rows and sparsity, then the downloads."""
    lines = []
    for hook, info in res.hooks.items():
        l0 = info.get("mean_l0")
        what = f"{hook}: {info.get('rows', 0):,} rows, mean L0 {l0:.1f}" if l0 is not None else hook
        lines.append(f"{what} ({info.get('format', '')}, {info.get('bytes', 0):,} bytes)")
    f = res.fetch
    if f["downloads"] or f["cache_hits"]:
        lines.append(
            f"downloads: {f['downloads']} file(s), {f['bytes_downloaded']:,} bytes; peak cache"
            f" {f['peak_cache_bytes']:,} bytes"
        )
    lines.append(f"codes in {run}/codes; read them with saelab.store.open_codes({run!r})")
    return "\n".join(lines)


def run_encode(config: EncodeConfig) -> EncodeResult:
    """Encode the run's prompts with every SAE `config.saes` names (extracting first when
    the run has no activation store)."""
    return run_stage(EncodeStage(config))


__all__ = ["EncodeConfig", "EncodeResult", "EncodeStage", "SAESource", "run_encode"]
