"""`saelab train`: SAEs on the run's activation store, or streamed from the model (--stream).

Per hook the result is `RUN/saes/<hook>/` in SAELens's layout, with its quality figures in
`cfg.json` metadata and in the manifest: L0, explained variance, MSE, cosine, dead and dense
features, a density histogram, and the cross-entropy loss recovered / KL when the SAE is
spliced into the model on held-out text. A result that is not sparse is said loudly.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab.data.corpus import HOLDOUT_CAP, holdout_count, parse_holdout
from saelab.errors import SaelabError
from saelab.models.hooks import HookPoint, parse_hooks
from saelab.pipeline.train_loop import LoopConfig, progress_dict, run_loop
from saelab.progress import say
from saelab.run import RunFolder, config_hash
from saelab.sae.metrics import FeatureFiring, evaluate_sae, sparsity_verdict, spliced_loss
from saelab.sae.model import ARCHITECTURES
from saelab.sae.sources import StreamSource, store_source
from saelab.sae.train import SAETrainer, TrainConfig

STAGE = "train"
SAES_DIR = "saes"
CKPT_DIR = "checkpoints/train"
STREAM_TOKENS = 250_000  # corpus tokens a stream reads when --tokens is not given


@dataclass
class TrainOptions:
    """Options of `saelab train`, as given."""

    run: str
    hooks: str | list[str] | None = None  # default: every hook of the store
    arch: str = "topk"
    expansion: int | None = 8  # d_sae = expansion * d_in, unless d_sae is given
    d_sae: int | None = None
    k: int | None = 32
    l1: float = 0.2
    l0_coef: float = 2e-3
    lr: float | None = None  # None: saelab.sae.train.default_lr (0.03/sqrt(d_in) for topk)
    batch_size: int = 1024
    tokens: int | None = None  # training tokens (default: --epochs over the data)
    epochs: int = 1
    seed: int = 0
    dtype: str = "float32"  # compute dtype of the encoder matmul: float32 | bfloat16
    device: str = "cpu"
    patience: int | None = 3
    eval_every: int | None = None
    checkpoint_every: int | None = None
    holdout: float | int = 0.1  # held out: a fraction (at most 32) or a count of prompts/windows
    stream: bool = False
    corpus: str | None = None  # --stream text; default builtin:stdlib
    model: str = "default"  # --stream model
    context: int = 128
    text_column: str = "text"
    splice: bool = True  # measure CE loss recovered with the model
    overwrite: bool = False
    quiet: bool = False


def _train_config(o: TrainOptions, d_in: int, total_steps: int) -> TrainConfig:
    if o.arch not in ARCHITECTURES:
        raise SaelabError(f"--arch {o.arch!r} is not one of {', '.join(ARCHITECTURES)}")
    d_sae = o.d_sae or (o.expansion or 8) * d_in
    k = o.k if o.arch in ("topk", "batchtopk") else None
    if o.dtype not in ("float32", "bfloat16"):
        raise SaelabError(f"--dtype {o.dtype!r}: training computes in float32 or bfloat16")
    cfg = TrainConfig(
        architecture=o.arch,
        d_sae=d_sae,
        k=k,
        l1_coef=o.l1,
        l0_coef=o.l0_coef,
        lr=o.lr,
        batch_size=o.batch_size,
        total_steps=total_steps,
        seed=o.seed,
        compute_dtype=o.dtype,
    )
    cfg.check(d_in)  # bad settings are refused before anything is written
    return cfg


def _loop_config(o: TrainOptions, total: int) -> LoopConfig:
    every = max(1, total // 10)
    return LoopConfig(
        total_steps=total,
        eval_every=o.eval_every or every,
        checkpoint_every=o.checkpoint_every or every,
        patience=o.patience or None,
        quiet=o.quiet,
    )


def _steps(o: TrainOptions, per_epoch: int) -> int:
    if o.epochs < 1:
        raise SaelabError(f"--epochs {o.epochs} must be at least 1")
    if o.tokens:
        return max(1, o.tokens // o.batch_size)
    return max(1, per_epoch * o.epochs)


def run_train(o: TrainOptions) -> dict[str, dict[str, Any]]:
    """Train one SAE per hook; return the metrics per hook."""
    run = RunFolder(o.run)
    o.holdout = parse_holdout(o.holdout)
    if o.batch_size < 1:
        raise SaelabError(f"--batch-size {o.batch_size} must be at least 1")
    if o.stream:
        return _train_stream(o, run)
    return _train_store(o, run)


# -- from the store ----------------------------------------------------------------------
def _train_store(o: TrainOptions, run: RunFolder) -> dict[str, dict[str, Any]]:
    from saelab.store import open_activations

    if not (run.path / "activations").is_dir():
        raise SaelabError(
            f"{run.path} has no activation store: run `saelab extract --run {run.path}` first,"
            " or train with --stream"
        )
    store = open_activations(run.path)
    hooks = _store_hooks(o.hooks, store.hooks)
    n_hold = holdout_count(parse_holdout(o.holdout), store.n_prompts, cap=HOLDOUT_CAP)
    results = {}
    for hook in hooks:
        src = store_source(store, hook, o.batch_size, o.seed, n_hold)
        if src.batches_per_epoch == 0:
            _too_few_rows(o, hook, len(src.rows), len(src.held_out), n_hold, store.n_prompts)
        total = _steps(o, src.batches_per_epoch)
        cfg = _train_config(o, store.d_model[hook], total)
        data = f"store:{store.n_rows}"
        done = run.done_units(STAGE).get(hook)
        if (
            done
            and done.get("config_hash") == _conf_key(o, cfg, data)
            and (run.path / SAES_DIR / hook).is_dir()
        ):
            say(f"train: {hook} already trained", o.quiet)
            results[hook] = done["metrics"]
            continue
        _check_bindable(run, o, hook, cfg, data)
        held = src.heldout()  # checks (part of) the data before anything is written
        sample = src.sample(8192)
        key = _bind(run, o, hook, cfg, data=data)
        trainer = SAETrainer(cfg, store.d_model[hook], sample, o.device)

        def batches(start: int, src=src, hook=hook):  # noqa: ANN202
            return ({hook: b} for b in src.batches(start))

        prog = run_loop(
            {hook: trainer}, batches, {hook: held}, _loop_config(o, total), _ckpt(run, hook)
        )
        windows = _heldout_windows_from_store(store, n_hold, o.context)
        results[hook] = _finish(o, run, hook, trainer, held, prog[hook], key, windows, None)
    return results


def _too_few_rows(
    o: TrainOptions, hook: str, rows: int, held: int, n_hold: int, n_prompts: int
) -> None:
    """Refuse, naming the one option that would make training possible."""
    msg = f"{hook}: {rows} training rows are fewer than one batch ({o.batch_size})"
    if rows + held >= o.batch_size and n_hold:
        raise SaelabError(
            f"{msg} because --holdout {o.holdout} holds out {n_hold} of {n_prompts} prompts"
            f" ({held} rows); hold out fewer (e.g. --holdout 0.1) or extract more prompts"
        )
    raise SaelabError(
        f"{msg}, even with nothing held out; lower --batch-size (at most {max(1, rows)})"
        " or extract more prompts"
    )


def _store_hooks(spec: Any, stored: list[str]) -> list[str]:
    if not spec:
        return list(stored)
    wanted = [h.name for h in parse_hooks(spec, 10_000)]
    missing = [h for h in wanted if h not in stored]
    if missing:
        raise SaelabError(
            f"the activation store has no {missing[0]} (it holds {', '.join(stored)}):"
            " extract it first or pick a stored hook"
        )
    return wanted


def _heldout_windows_from_store(store: Any, n_prompts: int, context: int) -> np.ndarray | None:
    """Windows for the spliced loss: held-out prompts (each starts with its BOS, as in
    training), truncated to a common length; None when they are too short to measure."""
    seqs = [store.tokens(i) for i in range(max(0, store.n_prompts - n_prompts), store.n_prompts)]
    seqs = [s for s in seqs if len(s) >= 16]
    if not seqs:
        return None
    length = min(context, min(len(s) for s in seqs), 64)
    return np.stack([np.asarray(s[:length], dtype=np.int64) for s in seqs])[:32]


# -- streamed from the model ---------------------------------------------------------------
def _train_stream(o: TrainOptions, run: RunFolder) -> dict[str, dict[str, Any]]:
    from saelab.data.corpus import STDLIB_SOURCE, iter_texts, pack_windows, split_windows
    from saelab.models.loading import load_model

    lm = load_model(o.model, device=o.device, quiet=o.quiet)
    hooks: list[HookPoint] = parse_hooks(
        o.hooks or "resid_post.6", lm.n_layers, lm.hook_for_module_path
    )
    corpus = o.corpus or STDLIB_SOURCE
    if o.epochs < 1:
        raise SaelabError(f"--epochs {o.epochs} must be at least 1")
    # --tokens counts training tokens in both modes: a stream reads tokens/epochs of the corpus
    distinct = -(-o.tokens // o.epochs) if o.tokens else STREAM_TOKENS
    holdout = parse_holdout(o.holdout)
    if isinstance(holdout, float):  # the windows to read so that the fraction leaves `distinct`
        extra = min(HOLDOUT_CAP, round(distinct / o.context * holdout / (1 - holdout)))
        want = distinct + extra * o.context
    else:
        want = distinct + holdout * o.context
    say(f"train: reading {corpus} ({want:,} tokens)", o.quiet)
    w = pack_windows(
        iter_texts(corpus, text_column=o.text_column),
        lm.tokenizer,
        context=o.context,
        max_tokens=want,
        source=corpus,
    )
    n_hold = holdout_count(holdout, len(w.windows), cap=HOLDOUT_CAP)
    train_w, held_w = split_windows(w, n_hold, seed=o.seed)
    src = StreamSource(
        lm,
        hooks,
        train_w,
        o.batch_size,
        o.seed,
        windows_per_buffer=max(1, 65536 // (o.context - 1)),
    )
    total = _steps(o, src.batches_per_epoch)
    cfg = _train_config(o, lm.d_model, total)
    data = f"stream:{corpus}:{w.n_tokens}"
    done = run.done_units(STAGE)
    if all(
        done.get(h.name, {}).get("config_hash") == _conf_key(o, cfg, data)
        and (run.path / SAES_DIR / h.name).is_dir()
        for h in hooks
    ):
        say(f"train: {', '.join(h.name for h in hooks)} already trained", o.quiet)
        return {h.name: done[h.name]["metrics"] for h in hooks}
    for h in hooks:
        _check_bindable(run, o, h.name, cfg, data)
    held = _capture_heldout(src, held_w)
    sample = src.sample(8192)
    trainers, keys = {}, {}
    for h in hooks:
        keys[h.name] = _bind(run, o, h.name, cfg, data=data)
        trainers[h.name] = SAETrainer(
            _train_config(o, lm.d_model, total), lm.d_model, sample[h.name], o.device
        )
    prog = run_loop(trainers, src.batches, held, _loop_config(o, total), _ckpt(run, "stream"))
    return {
        h: _finish(o, run, h, trainers[h], held[h], prog[h], keys[h], held_w[:16], lm)
        for h in trainers
    }


def _capture_heldout(src: StreamSource, held_w: np.ndarray) -> dict[str, torch.Tensor]:
    return src.capture(held_w[: max(1, 8192 // (held_w.shape[1] - 1))])


# -- shared ------------------------------------------------------------------------------
def _conf(o: TrainOptions, cfg: TrainConfig, data: str) -> dict[str, Any]:
    return {**asdict(cfg), "data": data, "device": o.device}


def _conf_key(o: TrainOptions, cfg: TrainConfig, data: str) -> str:
    return config_hash(_conf(o, cfg, data))


def _check_bindable(
    run: RunFolder, o: TrainOptions, hook: str, cfg: TrainConfig, data: str
) -> dict[str, Any]:
    """Refuse (before any work) a configuration that differs from the one a hook was
    trained with, unless --overwrite; return the run's current train section."""
    conf = _clean(_conf(o, cfg, data))
    current = run.read_config().get(STAGE, {})
    old = current.get(hook)
    if old is not None and old != conf and not o.overwrite:
        diffs = sorted(k for k in set(old) | set(conf) if old.get(k) != conf.get(k))
        raise SaelabError(
            f"{run.path}: {hook} was trained with another configuration ({', '.join(diffs[:3])}"
            " differ); use another --run or --overwrite"
        )
    return current


def _bind(run: RunFolder, o: TrainOptions, hook: str, cfg: TrainConfig, data: str) -> str:
    """Record the configuration; a different one for a hook already trained is refused."""
    conf = _conf(o, cfg, data)
    key = config_hash(conf)
    current = _check_bindable(run, o, hook, cfg, data)
    old = current.get(hook)
    if old != _clean(conf):
        if o.overwrite:
            shutil.rmtree(run.path / SAES_DIR / hook, ignore_errors=True)
            _ckpt(run, hook).unlink(missing_ok=True)
            _ckpt(run, "stream").unlink(missing_ok=True)
        run.bind_config(STAGE, {**current, hook: conf}, overwrite=True)
    return key


def _clean(conf: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in conf.items() if v is not None}


def _ckpt(run: RunFolder, name: str) -> Path:
    return run.path / CKPT_DIR / f"{name}.pt"


def _finish(
    o: TrainOptions,
    run: RunFolder,
    hook: str,
    trainer: SAETrainer,
    held: torch.Tensor,
    prog: Any,
    key: str,
    windows: np.ndarray | None,
    lm: Any | None,
) -> dict[str, Any]:
    """Final metrics, the SAE folder, the manifest entry, and a loud verdict if not sparse."""
    t0 = time.perf_counter()
    sae = trainer.to_sae()
    batches = [held[i : i + 4096] for i in range(0, len(held), 4096)]
    m = evaluate_sae(sae, batches)
    dead = int(trainer.dead_mask().sum())
    metrics: dict[str, Any] = {
        "l0": m["l0"],
        "explained_variance": m["explained_variance"],
        "mse": m["mse"],
        "cosine": m["cosine"],
        "dead_features": dead,
        "dead_fraction": dead / trainer.cfg.d_sae,
        "dead_window_tokens": trainer.cfg.dead_window,
        "dense_features": m["dense"],
        "dense_fraction": m["dense_fraction"],
        "density_histogram": [[_finite(a), _finite(b), c] for a, b, c in m["density_histogram"]],
        "heldout_tokens": m["n_tokens"],
        "train_tokens": trainer.state.tokens,
        "steps": trainer.state.step,
    }
    if o.splice and windows is not None and len(windows):
        lm = lm or _load_run_model(run, o)
        if lm is not None:
            hp = parse_hooks(hook, lm.n_layers)[0]
            s = spliced_loss(lm, sae, hp, torch.as_tensor(windows), batch_size=4)
            metrics.update(
                {k: s[k] for k in ("ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "kl_div")}
            )
    warnings = sparsity_verdict({**m, "l0": m["l0"]}, trainer.cfg.d_sae)
    metrics["warnings"] = warnings
    meta = {
        "hook_name": hook,
        "model_name": getattr(lm, "name", None)
        or run.read_config().get("extract", {}).get("model", o.model),
        "context_size": o.context,
        "prepend_bos": True,
        "dataset_path": o.corpus or ("builtin:stdlib" if o.stream else "activation store"),
        "l0": metrics["l0"],
        "explained_variance": metrics["explained_variance"],
        "dead_features": dead,
        "trained_tokens": trainer.state.tokens,
        **{k: metrics[k] for k in ("ce_loss_recovered", "kl_div") if k in metrics},
    }
    final = trainer.to_sae(meta)
    firing = FeatureFiring(trainer.cfg.d_sae)
    with torch.no_grad():
        for xb in batches:
            firing.update(sae.encode(xb.float()))
    log_density = torch.log10(firing.density().clamp_min(1e-10)).float()
    final.save(run.path / SAES_DIR / hook, log_density=log_density)
    metrics["seconds_eval"] = time.perf_counter() - t0
    run.record_unit(STAGE, hook, {"config_hash": key, "metrics": metrics, **progress_dict(prog)})
    trained = set(run.done_units(STAGE))
    run.update_stage(STAGE, complete=set(run.read_config().get(STAGE, {})) <= trained)
    _ckpt(run, hook).unlink(missing_ok=True)
    _report(hook, metrics, o.quiet)
    return metrics


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _load_run_model(run: RunFolder, o: TrainOptions) -> Any | None:
    spec = run.read_config().get("extract", {}).get("model_key")
    model = run.read_config().get("extract", {}).get("model", o.model)
    try:
        from saelab.models.loading import load_model

        name = "default" if model == "HuggingFaceTB/SmolLM2-135M-Instruct" else model
        return load_model(name, quiet=True)
    except SaelabError:
        say(f"train: model {model} ({spec}) not available; CE loss recovered skipped", o.quiet)
        return None


def _report(hook: str, m: dict[str, Any], quiet: bool) -> None:
    line = (
        f"{hook}: explained variance {m['explained_variance']:.3f}, L0 {m['l0']:.1f},"
        f" cosine {m['cosine']:.3f}, dead {m['dead_features']} ({100 * m['dead_fraction']:.1f}%),"
        f" dense {m['dense_features']}"
    )
    if "ce_loss_recovered" in m:
        line += f", CE loss recovered {m['ce_loss_recovered']:.3f}, KL {m['kl_div']:.4f}"
    print(line)
    for w in m["warnings"]:
        print(f"  WARNING {w}")
