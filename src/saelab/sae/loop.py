"""The training loop shared by store and streaming data: steps, evaluation, early stopping,
checkpoints and resume.

A group of trainers (one per hook) advances together on batches that are a pure function of
the step number, so a checkpoint holds only weights, optimizer and trainer state: resuming
rebuilds the batch stream at the saved step and ends with the same weights an uninterrupted
run would have (same seed, same machine). Checkpoints are written atomically and only while
the loss is finite, so a diverging run leaves the last good one behind.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saelab.atomic import atomic_write_bytes
from saelab.progress import Reporter, say
from saelab.sae.metrics import ReconstructionStats
from saelab.sae.train import SAETrainer


@dataclass
class LoopConfig:
    total_steps: int
    eval_every: int
    checkpoint_every: int
    patience: int | None  # evaluations without improvement before a hook stops
    min_delta: float = 1e-3  # an improvement of explained variance smaller than this is none
    quiet: bool = False


@dataclass
class HookProgress:
    best_ev: float = float("-inf")
    bad_evals: int = 0
    stopped_at: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def heldout_ev(trainer: SAETrainer, x: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """Explained variance and L0 of the current weights on held-out rows (raw scale)."""
    sae = trainer.to_sae()
    stats = ReconstructionStats()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i : i + batch].float()
            f = sae.encode(xb)
            stats.update(xb, sae.decode(f), f)
    return stats.result()


def save_checkpoint(path: Path, trainers: dict[str, SAETrainer], prog: dict[str, HookProgress]):
    blob = {
        "trainers": {h: t.checkpoint() for h, t in trainers.items()},
        "progress": {
            h: {
                "best_ev": p.best_ev,
                "bad_evals": p.bad_evals,
                "stopped_at": p.stopped_at,
                "history": p.history,
            }
            for h, p in prog.items()
        },
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue(), what=f"training checkpoint {path.name}")


def load_checkpoint(
    path: Path, trainers: dict[str, SAETrainer], prog: dict[str, HookProgress]
) -> int:
    """Restore trainers and progress; return the step to continue from (0: none)."""
    if not path.is_file():
        return 0
    blob = torch.load(path, map_location="cpu", weights_only=True)
    for h, t in trainers.items():
        t.restore(blob["trainers"][h])
        p = blob["progress"][h]
        prog[h] = HookProgress(p["best_ev"], p["bad_evals"], p["stopped_at"], list(p["history"]))
    return min(t.state.step for t in trainers.values())


def run_loop(
    trainers: dict[str, SAETrainer],
    batches: Callable[[int], Iterator[dict[str, torch.Tensor]]],
    heldout: dict[str, torch.Tensor],
    cfg: LoopConfig,
    ckpt: Path | None,
) -> dict[str, HookProgress]:
    """Train until total_steps or until every hook stopped early; checkpoint as it goes
    (to `ckpt`, when given: a run killed mid-way resumes from it to the same weights)."""
    prog = {h: HookProgress() for h in trainers}
    start = load_checkpoint(ckpt, trainers, prog) if ckpt is not None else 0
    active = [h for h in trainers if prog[h].stopped_at is None]
    t0 = time.perf_counter()
    with Reporter("train", total=cfg.total_steps, unit="steps", quiet=cfg.quiet, done=start) as rep:
        if start >= cfg.total_steps or not active:
            return prog
        it = batches(start)
        for step in range(start, cfg.total_steps):
            data = next(it)
            last = {}
            for h in active:
                last[h] = trainers[h].step(data[h])
            n_tok = len(next(iter(data.values())))
            rep.advance(1, n_tok)
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.total_steps:
                for h in list(active):
                    r = heldout_ev(trainers[h], heldout[h])
                    t = trainers[h]
                    p = prog[h]
                    entry = {
                        "step": done,
                        "tokens": t.state.tokens,
                        "loss": last[h].loss,
                        "explained_variance": r["explained_variance"],
                        "l0": r["l0"],
                        "dead_fraction": float(t.dead_mask().float().mean()),
                        "seconds": time.perf_counter() - t0,
                    }
                    p.history.append(entry)
                    _status(h, entry, rep, cfg.quiet)
                    if r["explained_variance"] > p.best_ev + cfg.min_delta:
                        p.best_ev, p.bad_evals = r["explained_variance"], 0
                    else:
                        p.bad_evals += 1
                    if cfg.patience and p.bad_evals >= cfg.patience:
                        p.stopped_at = done
                        active.remove(h)
            due = done % cfg.checkpoint_every == 0 or done == cfg.total_steps or not active
            if due and ckpt is not None:
                save_checkpoint(ckpt, trainers, prog)
            if not active:
                break
    return prog


def _status(hook: str, e: dict[str, float], rep: Reporter, quiet: bool) -> None:
    if quiet:
        return
    say(
        f"  {hook} step {int(e['step'])}: {int(e['tokens']):,} tokens, loss {e['loss']:.4f},"
        f" held-out EV {e['explained_variance']:.3f}, L0 {e['l0']:.1f},"
        f" dead {100 * e['dead_fraction']:.1f}%, {rep.rate():,.0f} tok/s"
    )


def progress_dict(p: HookProgress) -> dict[str, Any]:
    return {
        "best_explained_variance": p.best_ev,
        "stopped_early_at": p.stopped_at,
        "history": p.history,
    }
