"""Train an SAE from a notebook: `fit(data, arch=..., k=..., d_sae=...)` on a numpy array, a
torch tensor, an activation store (with `hook=`) or an iterable of batches, with held-out
evaluation, early stopping, checkpoints and resume, and the quality report `saelab train`
prints.

    from saelab.sae import fit
    res = fit(x, arch="topk", k=32, d_sae=4608, tokens=400_000, checkpoint="ckpt.pt")
    res.sae.save("my_sae"); print(res.report())

What decides the weights (same seed, same machine, same result; a run killed and resumed from
its checkpoint ends with the same weights): the batches are a pure function of the step (rows
of an array are shuffled per epoch from the seed; a store is read block by block, blocks and
rows shuffled from the seed; an iterable is read in order), and the trainer and loop are the
ones `saelab train` uses (`sae.train`, `sae.loop`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab.data.corpus import holdout_count
from saelab.errors import SaelabError
from saelab.sae.loop import LoopConfig, progress_dict, run_loop
from saelab.sae.metrics import FeatureFiring, evaluate_sae, sparsity_verdict
from saelab.sae.model import ARCHITECTURES, SAE
from saelab.sae.sources import check_finite, store_source
from saelab.sae.train import SAETrainer, TrainConfig

HELDOUT_ROWS = 8192  # evaluation rows (and initialisation sample) at most


def trainer_config(
    d_in: int,
    total_steps: int,
    *,
    arch: str = "topk",
    d_sae: int | None = None,
    expansion: int | None = 8,
    k: int | None = 32,
    l1: float = 0.2,
    l0_coef: float = 2e-3,
    lr: float | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    dtype: str = "float32",
) -> TrainConfig:
    """The trainer's configuration from the settings users give (`saelab train`'s options and
    `fit`'s arguments); bad settings are refused here, before anything runs."""
    if arch not in ARCHITECTURES:
        raise SaelabError(f"`arch` {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    if dtype not in ("float32", "bfloat16"):
        raise SaelabError(f"`dtype` {dtype!r}: training computes in float32 or bfloat16")
    cfg = TrainConfig(
        architecture=arch,
        d_sae=d_sae or (expansion or 8) * d_in,
        k=k if arch in ("topk", "batchtopk") else None,
        l1_coef=l1,
        l0_coef=l0_coef,
        lr=lr,
        batch_size=batch_size,
        total_steps=total_steps,
        seed=seed,
        compute_dtype=dtype,
    )
    cfg.check(d_in)
    return cfg


def loop_config(
    total: int,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    patience: int | None = 3,
    quiet: bool = False,
) -> LoopConfig:
    """Evaluation and checkpoints every tenth of the run unless given; patience 0: never stop."""
    every = max(1, total // 10)
    return LoopConfig(
        total_steps=total,
        eval_every=eval_every or every,
        checkpoint_every=checkpoint_every or every,
        patience=patience or None,
        quiet=quiet,
    )


def steps_for(tokens: int | None, epochs: int, batch_size: int, per_epoch: int) -> int:
    """Training steps: `tokens` of training, else `epochs` passes over the data."""
    if epochs < 1:
        raise SaelabError(f"`epochs` {epochs} must be at least 1")
    if tokens:
        return max(1, tokens // batch_size)
    return max(1, per_epoch * epochs)


def quality(trainer: SAETrainer, held: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """The final figures on held-out rows (L0, explained variance, MSE, cosine, dead and dense
    features, the density histogram) and each feature's log10 firing density."""
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
    firing = FeatureFiring(trainer.cfg.d_sae)
    with torch.no_grad():
        for xb in batches:
            firing.update(sae.encode(xb.float()))
    log_density = torch.log10(firing.density().clamp_min(1e-10)).float()
    metrics["_summary"] = m  # for `verdict`; dropped before anything is recorded
    return metrics, log_density


def verdict(metrics: dict[str, Any], d_sae: int) -> list[str]:
    """Loud warnings (with the settings that fix them) when the result is not sparse."""
    m = metrics.pop("_summary")
    return sparsity_verdict({**m, "l0": m["l0"]}, d_sae)


def report_lines(name: str, m: dict[str, Any]) -> list[str]:
    """What `saelab train` prints per SAE: the figures, then each warning."""
    line = (
        f"{name}: explained variance {m['explained_variance']:.3f}, L0 {m['l0']:.1f},"
        f" cosine {m['cosine']:.3f}, dead {m['dead_features']} ({100 * m['dead_fraction']:.1f}%),"
        f" dense {m['dense_features']}"
    )
    if "ce_loss_recovered" in m:
        line += f", CE loss recovered {m['ce_loss_recovered']:.3f}, KL {m['kl_div']:.4f}"
    return [line, *(f"  WARNING {w}" for w in m.get("warnings", []))]


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass
class Fitted:
    """A trained SAE (on raw activations: input scaling folded in) and its figures."""

    sae: SAE
    metrics: dict[str, Any]
    log_density: torch.Tensor  # log10 firing density per feature on the held-out rows
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early_at: int | None = None

    def report(self, name: str = "sae") -> str:
        return "\n".join(report_lines(name, self.metrics))

    def save(self, folder: str | Path) -> Path:
        """SAELens's layout: cfg.json, sae_weights.safetensors, sparsity.safetensors."""
        return self.sae.save(folder, log_density=self.log_density)


class _ArrayBatches:
    """Rows of an in-memory matrix: the last `n_hold` held out, the rest shuffled per epoch."""

    def __init__(self, x: torch.Tensor, n_hold: int, batch_size: int, seed: int) -> None:
        self.train, self.held = x[: len(x) - n_hold], x[len(x) - n_hold :]
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = len(self.train) // batch_size

    def __call__(self, start: int) -> Iterator[torch.Tensor]:
        step = start
        while True:
            epoch, i = divmod(step, self.batches_per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.train))
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.train[torch.from_numpy(np.sort(idx))]
            step += 1


class _IterableBatches:
    """Batches of an iterable, re-chunked to `batch_size` rows; the first `n_hold` batches are
    held out and the next one is the initialisation sample (and the first training batch).
    Resuming re-iterates and skips what was trained, so the iterable must give the same
    batches each time (a list, a DataLoader without shuffling); a one-shot iterator cannot
    resume."""

    def __init__(self, data: Iterable[Any], n_hold: int, batch_size: int) -> None:
        self.data, self.batch_size, self.n_hold = data, batch_size, n_hold
        self.one_shot = iter(data) is data
        it = self._rows()
        try:
            held = [next(it) for _ in range(n_hold)]
            self.sample = next(it)
        except StopIteration:
            raise SaelabError(
                f"the batches given hold fewer than {n_hold + 1} x {batch_size} rows: give"
                " more data, a smaller `batch_size` or `holdout`"
            ) from None
        self.held = torch.cat(held)
        self._live: Iterator[torch.Tensor] | None = itertools.chain([self.sample], it)

    def _rows(self) -> Iterator[torch.Tensor]:
        buf: list[torch.Tensor] = []
        have = 0
        for b in self.data:
            t = torch.as_tensor(b).float()
            buf.append(t.reshape(-1, t.shape[-1]))
            have += len(buf[-1])
            while have >= self.batch_size:
                rows = torch.cat(buf)
                yield rows[: self.batch_size]
                buf, have = [rows[self.batch_size :]], have - self.batch_size

    def __call__(self, start: int) -> Iterator[torch.Tensor]:
        if self._live is not None:
            it, self._live = self._live, None
        else:
            it = self._rows()
            for _ in range(self.n_hold):
                next(it)
        for _ in range(start):
            next(it)
        return it


def fit(
    data: Any,
    *,
    arch: str = "topk",
    k: int | None = 32,
    d_sae: int | None = None,
    expansion: int | None = 8,
    l1: float = 0.2,
    l0_coef: float = 2e-3,
    lr: float | None = None,
    batch_size: int = 1024,
    tokens: int | None = None,
    epochs: int = 1,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    holdout: float | int = 0.1,
    patience: int | None = 3,
    eval_every: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    hook: str | None = None,
    quiet: bool = True,
) -> Fitted:
    """Train one SAE on `data` and evaluate it on held-out rows.

    `data`: a (rows x d_in) numpy array or torch tensor (the last `holdout` rows held out: a
    fraction, at most 8192 rows, or a count); an activation store with `hook` (the last
    `holdout` prompts held out, BOS rows left out, as `saelab train` does); or an iterable of
    (rows x d_in) batches (its first `holdout` batches, a count, held out; give `tokens`).
    `tokens` is the training length (default: `epochs` passes over the data); `patience`
    stops after that many evaluations without explained-variance gain (0 or None: never);
    with `checkpoint`, progress is saved there and a rerun resumes to the same weights.
    """
    t0 = time.perf_counter()
    source: Any
    if hasattr(data, "row_offsets") and hasattr(data, "d_model"):
        if hook is None:
            raise SaelabError(f"`hook` is needed to train on a store (it has {data.hooks})")
        n_prompts = len(data.row_offsets) - 1
        n_hold = holdout_count(holdout, n_prompts, cap=32)
        src = store_source(data, hook, batch_size, seed, n_hold)
        held, d_in, per_epoch = src.heldout(), int(data.d_model[hook]), src.batches_per_epoch
        sample, batches = src.sample(HELDOUT_ROWS), src.batches
    elif isinstance(data, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(data).float()
        if x.ndim != 2 or len(x) < 2:
            raise SaelabError(f"`data` of shape {tuple(x.shape)}: give rows x d_in")
        check_finite(x, hook or "data", "the rows given")
        cap = HELDOUT_ROWS if isinstance(holdout, float) else None
        source = _ArrayBatches(x, holdout_count(holdout, len(x), cap=cap), batch_size, seed)
        held, d_in, per_epoch = source.held, x.shape[1], source.batches_per_epoch
        sample, batches = source.train[:HELDOUT_ROWS], source
    else:
        if not tokens:
            raise SaelabError("`tokens` is needed with an iterable of batches (its length)")
        n_hold = max(1, int(holdout)) if isinstance(holdout, int) else 1
        source = _IterableBatches(data, n_hold, batch_size)
        if checkpoint is not None and source.one_shot:
            raise SaelabError("`checkpoint` needs data that can be read again, not an iterator")
        held, sample, batches = source.held, source.sample, source
        d_in, per_epoch = held.shape[1], 1
    if per_epoch == 0:
        raise SaelabError(
            f"fewer training rows than one batch ({batch_size}); lower `batch_size` or `holdout`"
        )
    total = steps_for(tokens, epochs, batch_size, per_epoch)
    cfg = trainer_config(
        d_in, total, arch=arch, d_sae=d_sae, expansion=expansion, k=k, l1=l1,
        l0_coef=l0_coef, lr=lr, batch_size=batch_size, seed=seed, dtype=dtype,
    )  # fmt: skip
    trainer = SAETrainer(cfg, d_in, sample, device)
    name = hook or "sae"
    prog = run_loop(
        {name: trainer},
        lambda start: ({name: b} for b in batches(start)),
        {name: held},
        loop_config(total, eval_every, checkpoint_every, patience, quiet),
        Path(checkpoint) if checkpoint is not None else None,
    )[name]
    metrics, log_density = quality(trainer, held)
    metrics["warnings"] = verdict(metrics, cfg.d_sae)
    metrics["seconds"] = time.perf_counter() - t0
    meta = {
        "hook_name": hook or "",
        "l0": metrics["l0"],
        "explained_variance": metrics["explained_variance"],
        "dead_features": metrics["dead_features"],
        "trained_tokens": trainer.state.tokens,
    }
    extra = progress_dict(prog)
    return Fitted(
        trainer.to_sae(meta), metrics, log_density, extra["history"], extra["stopped_early_at"]
    )
