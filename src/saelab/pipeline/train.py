"""`saelab train`: SAEs on the run's activation store, or streamed from the model (--stream).

Per hook the result is `RUN/saes/<hook>/` in SAELens's layout, with its quality figures in
`cfg.json` metadata and in the manifest: L0, explained variance, MSE, cosine, dead and dense
features, a density histogram, and the cross-entropy loss recovered / KL when the SAE is
spliced into the model on held-out text. A result that is not sparse is said loudly.

The training itself (trainer, loop with held-out evaluation, early stopping, checkpoints,
quality figures) is `saelab.sae`'s; this stage feeds it: from the store one unit per hook,
streamed one unit for all the hooks (they train from the same forward pass). Each hook is a
section of the configuration, so more hooks can be trained into the same run later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import field_validator

from saelab.data.corpus import (
    HOLDOUT_CAP,
    STDLIB_SOURCE,
    holdout_count,
    iter_texts,
    pack_windows,
    parse_holdout,
    split_windows,
)
from saelab.errors import SaelabError
from saelab.models.adapters import adapter_for
from saelab.models.describe import describe_model
from saelab.models.hooks import hook_point, select_hooks
from saelab.models.loading import LoadedModel, load_tokenizer, local_folder, resolve_spec
from saelab.pipeline.driver import run_stage
from saelab.pipeline.extract_job import DEVICE_HELP, MODEL_HELP, TEXT_COLUMN_HELP
from saelab.pipeline.inputs import activations, model_depth, run_model
from saelab.pipeline.options import StageOptions, option
from saelab.pipeline.stage import Done, Finished, Stage, Unit, UnitResult, Worker, hashed
from saelab.progress import say
from saelab.sae.fit import loop_config, quality, report_lines, steps_for, trainer_config, verdict
from saelab.sae.loop import HookProgress, progress_dict, run_loop
from saelab.sae.metrics import spliced_loss
from saelab.sae.sources import StreamSource, store_source
from saelab.sae.train import SAETrainer
from saelab.sae.train import TrainConfig as TrainerConfig
from saelab.store import ActivationStore

SAES_DIR = "saes"
CKPT_DIR = "checkpoints/train"
STREAM_TOKENS = 250_000  # corpus tokens a stream reads when --tokens is not given
STREAM_CACHE_BYTES = 2**30  # --epochs > 1: a stream's rows up to this size are captured once


class TrainConfig(StageOptions):
    """Train SAEs (TopK, BatchTopK, JumpReLU, ReLU-L1) per hook; resumable; honest metrics."""

    hooks: str | None = option(None, "hooks to train (default: every stored hook)")
    arch: str = option("topk", "topk | batchtopk | jumprelu | relu")
    expansion: int | None = option(8, "d_sae = expansion x d_in", minimum=1)
    d_sae: int | None = option(None, "latents (overrides --expansion)", minimum=1)
    k: int | None = option(32, "active latents per token (topk, batchtopk)", minimum=1)
    l1: float = option(0.2, "relu: L1 coefficient")
    l0_coef: float = option(2e-3, "jumprelu: L0 coefficient")
    lr: float | None = option(None, "Adam learning rate (default: 0.03/sqrt(d_in) topk, else 4e-4)")
    batch_size: int = option(1024, "tokens per step", minimum=1)
    tokens: int | None = option(
        None,
        "training tokens (default: --epochs over the data; --stream reads tokens/epochs of"
        " the corpus, 250,000 without --tokens)",
        minimum=1,
    )
    epochs: int = option(1, "passes over the data", minimum=1)
    seed: int = option(0, "initialisation and data order")
    dtype: str = option("float32", "encoder matmul: float32 | bfloat16")
    device: str = option("cpu", DEVICE_HELP)
    patience: int | None = option(
        3, "stop after N evaluations without EV gain (0: never)", minimum=0
    )
    eval_every: int | None = option(None, "steps between evaluations", minimum=1)
    checkpoint_every: int | None = option(None, "steps between checkpoints", minimum=1)
    holdout: str = option(
        "0.1",
        "held out for evaluation: a fraction of the prompts/windows (at most 32) or a whole"
        " number of them",
    )
    stream: bool = option(False, "capture from the model over --corpus")
    corpus: str | None = option(None, "--stream text: txt/jsonl/parquet file or folder")
    model: str = option("default", MODEL_HELP)
    context: int = option(128, "--stream: tokens per window", minimum=2)
    text_column: str = option("text", TEXT_COLUMN_HELP)
    splice: bool = option(True, "measure CE loss recovered in the model")

    @field_validator("holdout", mode="before")
    @classmethod
    def _holdout_text(cls, v: Any) -> str:
        return str(v)  # 6 and "6" (a count), 0.1 and "0.1" (a fraction) are the same


@dataclass(frozen=True)
class HooksUnit(Unit):
    """SAEs trained together: one hook from the store, every hook of a stream."""

    hooks: tuple[str, ...] = ()


class TrainStage(Stage[TrainConfig]):
    name = "train"
    sections = True

    def prepare(self) -> dict[str, Any]:
        o = self.config
        if o.batch_size < 1:
            raise SaelabError(f"--batch-size {o.batch_size} must be at least 1")
        if o.epochs < 1:
            raise SaelabError(f"--epochs {o.epochs} must be at least 1")
        if o.stream:
            return self._prepare_stream()
        store = self.store
        depth = model_depth(self.run, store.attrs.get("model"), store.hooks)
        hooks = select_hooks(o.hooks, store.hooks, depth, where="the activation store",
                             fix="extract it first or pick a stored hook")  # fmt: skip
        self.hooks = [h.name for h in hooks]
        data = f"store:{store.n_rows}"
        binding = {}
        for hook in self.hooks:
            src = self._store_source(hook)
            if src.batches_per_epoch == 0:
                self._too_few_rows(hook, len(src.rows), len(src.held_out))
            cfg = self._trainer_config(store.d_model[hook], src.batches_per_epoch)
            binding[hook] = {**asdict(cfg), "data": data, "device": o.device}
        return binding

    def _prepare_stream(self) -> dict[str, Any]:
        o = self.config
        info = describe_model(o.model)
        adapter = adapter_for(info.adapter_config())
        hooks = select_hooks(o.hooks or "resid_post.6", None, info.shape.n_layers,
                             adapter.hook_for_module_path)  # fmt: skip
        self.hooks = [h.name for h in hooks]
        train_w, _, n_tokens = self.windows
        src = self._stream_source(None, train_w)
        cfg = self._trainer_config(info.shape.d_model, src.batches_per_epoch)
        data = f"stream:{o.corpus or STDLIB_SOURCE}:{n_tokens}"
        return {h: {**asdict(cfg), "data": data, "device": o.device} for h in self.hooks}

    def outputs(self, sections: list[str] | None = None) -> list[str]:
        if sections is None:
            return [SAES_DIR, CKPT_DIR]
        return [*(f"{SAES_DIR}/{h}" for h in sections),
                *(f"{CKPT_DIR}/{h}.pt" for h in sections), f"{CKPT_DIR}/stream.pt"]  # fmt: skip

    def units(self) -> list[Unit]:
        if self.config.stream:
            return [HooksUnit("stream:" + ",".join(self.hooks), 1, tuple(self.hooks))]
        return [HooksUnit(h, 1, (h,)) for h in self.hooks]

    def finish(self, done: Done) -> Finished:
        results: dict[str, dict[str, Any]] = {}
        for key, rec in done.records.items():
            for hook, h in rec["hooks"].items():
                results[hook] = h["metrics"]
                if key in done.ran:
                    for line in report_lines(hook, h["metrics"]):
                        print(line)
                else:
                    say(f"train: {hook} already trained", self.config.quiet)
        return Finished(results)

    # -- any process -----------------------------------------------------------------------
    @cached_property
    def store(self) -> ActivationStore:
        if not (self.run.path / "activations").is_dir():
            raise SaelabError(
                f"{self.run.path} has no activation store: run `saelab extract --run"
                f" {self.run.path}` first, or train with --stream"
            )
        return activations(self.run)

    @cached_property
    def windows(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(training windows, held-out windows, corpus tokens read) of a stream."""
        o = self.config
        local_folder(resolve_spec(o.model), quiet=o.quiet)  # a GGUF is converted once
        tokenizer = load_tokenizer(o.model)
        corpus = o.corpus or STDLIB_SOURCE
        # --tokens counts training tokens in both modes: a stream reads tokens/epochs
        distinct = -(-o.tokens // o.epochs) if o.tokens else STREAM_TOKENS
        holdout = parse_holdout(o.holdout)
        if isinstance(holdout, float):  # the windows to read so the fraction leaves `distinct`
            extra = min(HOLDOUT_CAP, round(distinct / o.context * holdout / (1 - holdout)))
            want = distinct + extra * o.context
        else:
            want = distinct + holdout * o.context
        say(f"train: reading {corpus} ({want:,} tokens)", o.quiet)
        texts = iter_texts(corpus, text_column=o.text_column)
        w = pack_windows(texts, tokenizer, context=o.context, max_tokens=want, source=corpus)
        n_hold = holdout_count(holdout, len(w.windows), cap=HOLDOUT_CAP)
        train_w, held_w = split_windows(w, n_hold, seed=o.seed)
        return train_w, held_w, w.n_tokens

    @property
    def n_hold(self) -> int:
        """Held-out prompts of the store: a fraction (at most 32) or a count."""
        holdout = parse_holdout(self.config.holdout)
        return holdout_count(holdout, self.store.n_prompts, cap=HOLDOUT_CAP)

    def _store_source(self, hook: str) -> Any:
        o = self.config
        return store_source(self.store, hook, o.batch_size, o.seed, self.n_hold)

    def _too_few_rows(self, hook: str, rows: int, held: int) -> None:
        """Refuse, naming the one option that would make training possible."""
        o, n_hold = self.config, self.n_hold
        msg = f"{hook}: {rows} training rows are fewer than one batch ({o.batch_size})"
        if rows + held >= o.batch_size and n_hold:
            raise SaelabError(
                f"{msg} because --holdout {o.holdout} holds out {n_hold} of"
                f" {self.store.n_prompts} prompts ({held} rows); hold out fewer (e.g. --holdout"
                " 0.1) or extract more prompts"
            )
        raise SaelabError(
            f"{msg}, even with nothing held out; lower --batch-size (at most {max(1, rows)})"
            " or extract more prompts"
        )

    def _stream_source(self, lm: LoadedModel | None, train_w: np.ndarray) -> StreamSource:
        o = self.config
        hooks = [hook_point(h) for h in self.hooks]
        per_buffer = max(1, 65536 // (o.context - 1))
        # later epochs read the rows of the first from memory when they fit (decided by the
        # configuration alone, so the bytes never depend on the machine)
        d_model = describe_model(o.model).shape.d_model
        rows = train_w.shape[0] * (train_w.shape[1] - 1) * len(hooks) * d_model * 4
        cache = o.epochs > 1 and rows <= STREAM_CACHE_BYTES
        return StreamSource(lm, hooks, train_w, o.batch_size, o.seed, per_buffer, cache=cache)

    def _trainer_config(self, d_in: int, per_epoch: int) -> TrainerConfig:
        o = self.config
        total = steps_for(o.tokens, o.epochs, o.batch_size, per_epoch)
        return trainer_config(
            d_in, total, arch=o.arch, d_sae=o.d_sae, expansion=o.expansion, k=o.k, l1=o.l1,
            l0_coef=o.l0_coef, lr=o.lr, batch_size=o.batch_size, seed=o.seed, dtype=o.dtype,
        )  # fmt: skip

    def _loop(self, total: int) -> Any:
        o = self.config
        return loop_config(total, o.eval_every, o.checkpoint_every, o.patience, o.quiet)

    def run_unit(self, unit: HooksUnit, worker: Worker) -> UnitResult:
        if self.config.stream:
            return self._train_stream(unit, worker)
        o, store, hook = self.config, self.store, unit.hooks[0]
        src = self._store_source(hook)
        cfg = self._trainer_config(store.d_model[hook], src.batches_per_epoch)
        held = src.heldout()  # checks (part of) the data before anything is written
        trainer = SAETrainer(cfg, store.d_model[hook], src.sample(8192), o.device)

        def batches(start: int) -> Any:
            return ({hook: b} for b in src.batches(start))

        prog = run_loop({hook: trainer}, batches, {hook: held}, self._loop(cfg.total_steps),
                        self._ckpt(hook))  # fmt: skip
        windows = _heldout_windows_from_store(store, self.n_hold, o.context)
        return self._results({hook: trainer}, {hook: held}, prog, windows, None, worker)

    def _train_stream(self, unit: HooksUnit, worker: Worker) -> UnitResult:
        o = self.config
        lm = worker.model(o.model, device=o.device, quiet=o.quiet)
        train_w, held_w, _ = self.windows
        src = self._stream_source(lm, train_w)
        held = src.capture(held_w[: max(1, 8192 // (held_w.shape[1] - 1))])
        sample = src.sample(8192)
        per_epoch = src.batches_per_epoch
        trainers = {
            h: SAETrainer(
                self._trainer_config(lm.d_model, per_epoch), lm.d_model, sample[h], o.device
            )  # fmt: skip
            for h in unit.hooks
        }
        total = next(iter(trainers.values())).cfg.total_steps
        prog = run_loop(trainers, src.batches, held, self._loop(total),
                        self._ckpt("stream"))  # fmt: skip
        return self._results(trainers, held, prog, held_w[:16], lm, worker)

    def _ckpt(self, name: str) -> Path:
        return self.run.path / CKPT_DIR / f"{name}.pt"

    def _results(
        self,
        trainers: dict[str, SAETrainer],
        held: dict[str, torch.Tensor],
        prog: dict[str, HookProgress],
        windows: np.ndarray | None,
        lm: LoadedModel | None,
        worker: Worker,
    ) -> UnitResult:
        """Final figures, the SAE folders, and the unit's record of them."""
        files, hooks = {}, {}
        for hook, trainer in trainers.items():
            metrics = self._finish(hook, trainer, held[hook], windows, lm, worker)
            folder = self.run.path / SAES_DIR / hook
            files.update(hashed(self.run, [p for p in folder.iterdir() if p.is_file()]))
            hooks[hook] = {"metrics": metrics, **progress_dict(prog[hook])}
        for name in (*trainers, "stream"):
            self._ckpt(name).unlink(missing_ok=True)
        return UnitResult(files, {"hooks": hooks})

    def _finish(self, hook: str, trainer: SAETrainer, held: torch.Tensor,
                windows: np.ndarray | None, lm: LoadedModel | None,
                worker: Worker) -> dict[str, Any]:  # fmt: skip
        o = self.config
        metrics, log_density = quality(trainer, held)
        if o.splice and windows is not None and len(windows):
            lm = lm or self._run_model(worker)
            if lm is not None:
                s = spliced_loss(lm, trainer.to_sae(), hook_point(hook), torch.as_tensor(windows),
                                 batch_size=4)  # fmt: skip
                keys = ("ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "kl_div")
                metrics.update({k: s[k] for k in keys})
        metrics["warnings"] = verdict(metrics, trainer.cfg.d_sae)
        meta = {
            "hook_name": hook,
            "model_name": getattr(lm, "name", None)
            or self.run.read_config().get("extract", {}).get("model", o.model),
            "context_size": o.context,
            "prepend_bos": True,
            "dataset_path": o.corpus or ("builtin:stdlib" if o.stream else "activation store"),
            "l0": metrics["l0"],
            "explained_variance": metrics["explained_variance"],
            "dead_features": metrics["dead_features"],
            "trained_tokens": trainer.state.tokens,
            **{k: metrics[k] for k in ("ce_loss_recovered", "kl_div") if k in metrics},
        }
        trainer.to_sae(meta).save(self.run.path / SAES_DIR / hook, log_density=log_density)
        return metrics

    def _run_model(self, worker: Worker) -> LoadedModel | None:
        model = run_model(self.run, self.config.model)
        try:
            return worker.model(model, quiet=True)
        except SaelabError:
            say(f"train: model {model} not available; CE loss recovered skipped",
                self.config.quiet)  # fmt: skip
            return None


def _heldout_windows_from_store(store: Any, n_prompts: int, context: int) -> np.ndarray | None:
    """Windows for the spliced loss: held-out prompts (each starts with its BOS, as in
    training), truncated to a common length; None when they are too short to measure."""
    seqs = [store.tokens(i) for i in range(max(0, store.n_prompts - n_prompts), store.n_prompts)]
    seqs = [s for s in seqs if len(s) >= 16]
    if not seqs:
        return None
    length = min(context, min(len(s) for s in seqs), 64)
    return np.stack([np.asarray(s[:length], dtype=np.int64) for s in seqs])[:32]


def run_train(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Train one SAE per hook; return the metrics per hook."""
    return run_stage(TrainStage(config))
