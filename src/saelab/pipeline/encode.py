"""`saelab encode`: SAE codes of every prompt, layer-major, into `RUN/codes/` as CSR.

The schedule is what keeps disk and downloads bounded: the model runs once over all prompts,
capturing every needed hook into the run's activation store (or the store `extract` made is
reused); then for each hook its SAE is fetched once, applied to every prompt shard, and
released (evicted from the hub cache when the disk budget is tight) before the next hook's.
A prompt-major loop would fetch every SAE once per prompt. Killed at any time, `encode`
resumes at the first missing (hook, shard); a hook whose shards are all written is not
fetched again.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from saelab.errors import SaelabError
from saelab.models.hooks import HookPoint, select_hooks
from saelab.pipeline.flags import flags_in_errors
from saelab.pipeline.inputs import model_depth
from saelab.progress import Reporter, say
from saelab.run import RunFolder
from saelab.sae.encode import encode_prompts
from saelab.sae.pretrained import SAESource, expand_saes, load_sae
from saelab.store.codes import (
    CODES_DIR,
    POSITIONS,
    CodesWriter,
    hook_dir,
    parse_features,
    read_meta,
)

STAGE = "encode"


@dataclass
class EncodeOptions:
    """Options of `saelab encode`, as given."""

    saes: str
    run: str
    hooks: str | None = None
    positions: str = "all"
    features: str | None = None
    prompts: str | None = None  # when the run has no store yet: what to capture
    model: str = "default"
    text_column: str = "text"
    batch_size: str = "auto"
    max_memory: str | None = None
    dtype: str | None = None  # SAE weights: as stored by default
    max_disk: str | None = None  # hub cache budget for SAE files
    evict: bool | None = None  # delete each SAE's files once its hook is done
    strict: bool = False  # an SAE made for another hook is an error, not a warning
    overwrite: bool = False
    quiet: bool = False


@dataclass
class EncodeResult:
    hooks: dict[str, dict[str, Any]]
    fetch: dict[str, Any]
    seconds: float


def run_encode(o: EncodeOptions) -> EncodeResult:
    with flags_in_errors(f.name for f in dataclasses.fields(o)):
        return _run_encode(o)


def _run_encode(o: EncodeOptions) -> EncodeResult:
    t0 = time.perf_counter()
    if o.positions not in POSITIONS:
        raise SaelabError(f"--positions {o.positions!r} is not one of {', '.join(POSITIONS)}")
    run = RunFolder(o.run)
    store = _store(o, run)
    sources = _sources(o, store)
    _check_config(o, run)
    from saelab.hub import Fetcher
    from saelab.units import parse_size

    fetcher = Fetcher(max_disk=parse_size(o.max_disk, "--max-disk"), evict=o.evict, quiet=o.quiet)
    results: dict[str, dict[str, Any]] = {}
    for src in sources:
        results[src.hook or "?"] = _encode_hook(o, run, store, src, fetcher)
    st = fetcher.stats
    fetch = {
        "downloads": st.downloads,
        "bytes_downloaded": st.bytes_downloaded,
        "cache_hits": st.cache_hits,
        "peak_cache_bytes": st.peak_cache_bytes,
    }
    run.update_stage(STAGE, complete=True, fetch=fetch)
    return EncodeResult(results, fetch, time.perf_counter() - t0)


# -- inputs ------------------------------------------------------------------------------
def _store(o: EncodeOptions, run: RunFolder) -> Any:
    """The run's activation store; made first (one model pass, every hook) when missing."""
    from saelab.store import open_activations

    if (run.path / "activations").is_dir():
        if o.prompts:
            say(f"encode: {run.path} already has activations; --prompts is ignored", o.quiet)
        return open_activations(run.path)
    if not o.hooks:
        raise SaelabError(
            f"{run.path} has no activation store: give --hooks (and --prompts) so encode can"
            " capture them, or run `saelab extract` first"
        )
    from saelab.pipeline.extract import run_extract
    from saelab.pipeline.extract_job import ExtractOptions

    say("[bold]encode: capturing activations (one pass over the prompts)[/bold]", o.quiet)
    run_extract(
        ExtractOptions(
            model=o.model,
            prompts=o.prompts,
            text_column=o.text_column,
            hooks=o.hooks,
            positions="last" if o.positions == "last" else "all",
            batch_size=o.batch_size,
            max_memory=o.max_memory,
            run=o.run,
            quiet=o.quiet,
        )
    )
    return open_activations(run.path)


def _sources(o: EncodeOptions, store: Any) -> list[SAESource]:
    hooks: list[HookPoint] | None = None
    if o.hooks:
        depth = model_depth(RunFolder(o.run), store.attrs.get("model") or o.model, store.hooks)
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
    return sorted(sources, key=lambda s: (s.layer if s.layer is not None else -1, s.hook or ""))


def _conf(o: EncodeOptions) -> dict[str, Any]:
    return {
        "saes": o.saes,
        "positions": o.positions,
        "features": o.features or "",
        "dtype": o.dtype or "",
    }


def _check_config(o: EncodeOptions, run: RunFolder) -> None:
    """Refuse another configuration before any work (unless --overwrite)."""
    old = run.read_config().get(STAGE)
    conf = _conf(o)
    if old is not None and old != conf and not o.overwrite:
        diffs = sorted(k for k in conf if old.get(k) != conf[k])
        raise SaelabError(
            f"{run.path} was encoded with another configuration ({', '.join(diffs)} differ);"
            " use another --run or --overwrite"
        )


def _bind(o: EncodeOptions, run: RunFolder) -> None:
    """Record the configuration once the first SAE passed its checks; --overwrite clears
    the old codes only then, so a refused command changes nothing."""
    if run.read_config().get(STAGE) == _conf(o) and not o.overwrite:
        return
    if o.overwrite and not getattr(o, "_cleared", False):
        shutil.rmtree(run.path / CODES_DIR, ignore_errors=True)
        run.reset_stage(STAGE)
        o._cleared = True  # type: ignore[attr-defined]
    run.bind_config(STAGE, _conf(o), overwrite=True)


# -- one hook ------------------------------------------------------------------------------
def _encode_hook(
    o: EncodeOptions, run: RunFolder, store: Any, src: SAESource, fetcher: Any
) -> dict[str, Any]:
    shards = store.shards()
    if src.hook is not None and not o.overwrite:
        done = run.done_units(STAGE).get(src.hook)
        meta = read_meta(hook_dir(run.path, src.hook))
        if (
            done
            and meta
            and meta.get("sae") == src.location
            and all(CodesWriter.exists(run.path, src.hook, s.shard) for s in shards)
        ):
            say(f"encode: {src.hook} already encoded", o.quiet)
            return done
    loaded = load_sae(src.location, fetcher, dtype=o.dtype)
    sae = loaded.sae
    try:
        hook = _check_hook(o, src, sae, store)
        features = parse_features(o.features, sae.cfg.d_sae)
        _bind(o, run)
        writer = CodesWriter(
            run.path,
            hook,
            {
                "sae": src.location,
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
        nnz = rows_out = bytes_out = 0
        t0 = time.perf_counter()
        with Reporter(
            f"encode {hook}", total=store.n_prompts, unit="prompts", quiet=o.quiet
        ) as rep:
            for sp in shards:
                n_prompts = sp.prompt_hi - sp.prompt_lo
                if writer.has_shard(sp.shard):
                    rep.advance(n_prompts)
                    continue
                rows = arr[sp.row_lo : sp.row_hi]
                offs = store.row_offsets[sp.prompt_lo : sp.prompt_hi + 1] - sp.row_lo
                csr = encode_prompts(sae, rows, offs, o.positions, features, skip_first)
                row_offsets = offs if o.positions == "all" else np.arange(n_prompts + 1)
                bytes_out += writer.write_shard(
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
        info = {
            "sae": src.location,
            "format": loaded.format,
            "d_sae": int(sae.cfg.d_sae),
            "rows": rows_out,
            "nnz": nnz,
            "mean_l0": nnz / rows_out if rows_out else None,
            "bytes": bytes_out,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        run.record_unit(STAGE, hook, info)
        return info
    finally:
        del sae
        for f in loaded.files:
            fetcher.release(f)


def _check_hook(o: EncodeOptions, src: SAESource, sae: Any, store: Any) -> str:
    """The hook to encode: --hooks / the folder name, else the SAE's own; d_in must match."""
    own = str(sae.cfg.metadata.get("hook_name") or "")
    hook = src.hook or own
    if not hook:
        raise SaelabError(f"SAE {src.location} does not say which hook it reads: give --hooks")
    if hook not in store.hooks:
        raise SaelabError(
            f"SAE {src.location} reads {hook}, which the store of {o.run} does not hold (it has"
            f" {', '.join(store.hooks)}); extract it or give --hooks"
        )
    if own and own != hook:
        msg = f"SAE {src.location} was trained on {own}, not {hook}"
        if o.strict:
            raise SaelabError(msg + "; drop --strict to use it anyway")
        say(f"[yellow]warning[/yellow]: {msg}; encoding {hook} with it anyway", o.quiet)
    d_store = int(store.d_model[hook])
    d_in = int(sae.cfg.d_in)
    if d_in != d_store:
        raise SaelabError(
            f"SAE {src.location} expects d_in={d_in}, but {hook} has width {d_store}: it was"
            " made for another model or hook"
        )
    return hook


def options_dict(o: EncodeOptions) -> dict[str, Any]:
    return asdict(o)
