"""Whether an SAE is any good: reconstruction, sparsity, feature health and spliced-in loss.

A real run once ended with 99% of features firing on every token and nobody noticed: the
loss looked fine. So every evaluation here reports sparsity next to reconstruction, and
`sparsity_verdict` turns a non-sparse result into loud warnings that name the fix.

The SAE is duck-typed: an `nn.Module` with `encode(x) -> f` (n, d_sae), `decode(f) -> x_hat`
and `d_sae`; nothing else about it is assumed, so pretrained SAEs from other libraries can be
measured with the same code.

Numerics: residual-stream activations of small models reach ~2.6e4, whose squares (7e8) lose
every digit of a small error in float16 and most in float32 once summed over millions of
tokens. All sums are float64; the variance is merged batch by batch (Chan et al.), never as
sum(x^2) - n*mean^2.

"Active" / "fires" means a code entry is non-zero. Every supported architecture produces
non-negative codes, where this equals f > 0; for a signed code it counts negative entries
too rather than hiding them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from saelab.errors import SaelabError
from saelab.models.adapters import Adapter
from saelab.models.hooks import HookPoint
from saelab.models.interventions import replace_activations


@dataclass
class ReconstructionStats:
    """Reconstruction quality and L0 accumulated over batches, in float64.

    explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, with mean(x) the
    mean over *all* tokens seen (not per batch), so the figure does not depend on batch size.
    """

    n_tokens: int = 0
    sum_l0: float = 0.0
    sum_sq_err: float = 0.0
    sum_cos: float = 0.0
    n_elements: int = 0
    mean: torch.Tensor | None = field(default=None, repr=False)  # running mean of x (float64)
    m2: float = 0.0  # sum of ||x - mean||^2 over tokens seen

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        """Add a batch: x and x_hat (..., d), f (..., d_sae) with the same leading shape."""
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ")
        xd = x.detach().reshape(-1, x.shape[-1]).double()
        xh = x_hat.detach().reshape(-1, x.shape[-1]).to(xd.device, torch.float64)
        fd = f.detach().reshape(-1, f.shape[-1])
        n = xd.shape[0]
        if fd.shape[0] != n:
            raise ValueError(f"f has {fd.shape[0]} rows for {n} tokens")
        if n == 0:
            return
        err = xd - xh
        self.sum_sq_err += float((err * err).sum())
        self.sum_cos += float(F.cosine_similarity(xd, xh, dim=-1, eps=1e-12).sum())
        self.sum_l0 += float((fd != 0).sum(dim=-1, dtype=torch.float64).sum())
        self.n_elements += xd.numel()
        mean_b = xd.mean(dim=0)
        dev = xd - mean_b
        m2_b = float((dev * dev).sum())
        if self.mean is None:
            self.mean, self.m2 = mean_b, m2_b
        else:
            n_a = self.n_tokens
            total = n_a + n
            delta = mean_b - self.mean.to(mean_b.device)
            self.m2 += m2_b + float((delta * delta).sum()) * n_a * n / total
            self.mean = self.mean.to(mean_b.device) + delta * (n / total)
        self.n_tokens += n

    def result(self) -> dict[str, float]:
        """l0, explained_variance, mse (per element), cosine (per token), n_tokens."""
        n = self.n_tokens
        if n == 0:
            nan = float("nan")
            return dict(l0=nan, explained_variance=nan, mse=nan, cosine=nan, n_tokens=0.0)
        ev = 1.0 - self.sum_sq_err / self.m2 if self.m2 > 0 else float("nan")
        return {
            "l0": self.sum_l0 / n,
            "explained_variance": ev,
            "mse": self.sum_sq_err / self.n_elements,
            "cosine": self.sum_cos / n,
            "n_tokens": float(n),
        }


class FeatureFiring:
    """Per-feature firing counts over the most recent tokens, for dead and dense features.

    With `window_tokens=None` counts run from the start. With a window, tokens are kept in
    buckets of about window/8 tokens (so memory stays at ~9 count vectors however small the
    batches) and the oldest bucket is dropped once the rest still cover the window: dead and
    density then refer to the last `window_tokens` tokens rounded up to whole buckets (at most
    one bucket plus one batch more); `n_tokens` says how many exactly. A batch longer than the
    window contributes only its last `window_tokens` rows.
    """

    def __init__(self, d_sae: int, window_tokens: int | None = None) -> None:
        if d_sae < 1:
            raise ValueError("d_sae must be positive")
        if window_tokens is not None and window_tokens < 1:
            raise ValueError("window_tokens must be positive (or None for no window)")
        self.d_sae = d_sae
        self.window_tokens = window_tokens
        self._bucket_tokens = max(1, window_tokens // 8) if window_tokens else 0
        self._buckets: deque[list[Any]] = deque()  # [n_tokens, counts int64]
        self._counts = torch.zeros(d_sae, dtype=torch.int64)
        self._tokens = 0

    @torch.no_grad()
    def update(self, f: torch.Tensor) -> None:
        """Add codes f (..., d_sae): counts the tokens where each feature is non-zero."""
        fd = f.detach().reshape(-1, f.shape[-1])
        if fd.shape[1] != self.d_sae:
            raise ValueError(f"codes have {fd.shape[1]} features, expected {self.d_sae}")
        if self.window_tokens is not None and fd.shape[0] > self.window_tokens:
            fd = fd[-self.window_tokens :]
        n = fd.shape[0]
        if n == 0:
            return
        counts = (fd != 0).sum(dim=0, dtype=torch.int64).cpu()
        self._counts += counts
        self._tokens += n
        if self.window_tokens is None:
            return
        if self._buckets and self._buckets[-1][0] < self._bucket_tokens:
            self._buckets[-1][0] += n
            self._buckets[-1][1] += counts
        else:
            self._buckets.append([n, counts])
        while len(self._buckets) > 1 and self._tokens - self._buckets[0][0] >= self.window_tokens:
            old_n, old_counts = self._buckets.popleft()
            self._tokens -= old_n
            self._counts -= old_counts

    @property
    def n_tokens(self) -> int:
        """Tokens the current counts cover."""
        return self._tokens

    def counts(self) -> torch.Tensor:
        """Tokens on which each feature fired, within the window (int64, d_sae)."""
        return self._counts.clone()

    def dead(self) -> torch.Tensor:
        """Features that never fired within the window (bool, d_sae)."""
        return self._counts == 0

    def density(self) -> torch.Tensor:
        """Fraction of tokens on which each feature fired (float64, d_sae); 0 before data."""
        return self._counts.double() / max(self._tokens, 1)

    def summary(self, dense_threshold: float = 0.1) -> dict[str, Any]:
        """Dead and dense counts, a log10-density histogram and the median density.

        `firing_tokens` is the number of tokens the counts cover (the window).

        `density_histogram` is a list of (lo, hi, count) in log10(density): first the dead
        features as (-inf, -inf, n_dead), then (-inf, -8) for densities below 1e-8, then one
        bin per decade [-8, -7), ..., [-1, 0], the last including density 1. (-inf is not
        valid strict JSON; write it with json's default allow_nan or map it before storing.)
        """
        dens = self.density()
        d = self.d_sae
        n_dead = int(self.dead().sum())
        n_dense = int((dens > dense_threshold).sum())
        alive = dens[dens > 0]
        logd = torch.log10(alive)
        edges = [-math.inf] + [float(e) for e in range(-8, 1)]
        hist: list[tuple[float, float, int]] = [(-math.inf, -math.inf, n_dead)]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            last = hi == 0.0
            sel = (logd >= lo) & ((logd <= hi) if last else (logd < hi))
            hist.append((lo, hi, int(sel.sum())))
        return {
            "firing_tokens": self._tokens,
            "d_sae": d,
            "dead": n_dead,
            "dead_fraction": n_dead / d,
            "dense": n_dense,
            "dense_fraction": n_dense / d,
            "dense_threshold": dense_threshold,
            "median_density": float(torch.quantile(dens, 0.5)),
            "density_histogram": hist,
        }


def _param_dtype_device(module: nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype/device of a module's first parameter (None, None when it has none)."""
    for p in module.parameters():
        return p.dtype, p.device
    return None, None


def _to_sae(sae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dtype, device = _param_dtype_device(sae)
    if dtype is None or not dtype.is_floating_point:
        return x
    return x.to(device=device, dtype=dtype)


@torch.no_grad()
def evaluate_sae(
    sae: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    window_tokens: int | None = None,
    dense_threshold: float = 0.1,
) -> dict[str, Any]:
    """Reconstruction and firing statistics over held-out activation batches (n, d).

    Returns one flat dict: ReconstructionStats.result() keys plus FeatureFiring.summary()
    keys (`n_tokens`: tokens evaluated; `firing_tokens`: tokens the dead/dense counts cover,
    fewer with a window), ready for `sparsity_verdict`.
    """
    rec = ReconstructionStats()
    firing = FeatureFiring(int(sae.d_sae), window_tokens)
    for x in batches:
        xs = _to_sae(sae, x.reshape(-1, x.shape[-1]))
        f = sae.encode(xs)
        x_hat = sae.decode(f)
        rec.update(xs, x_hat, f)
        firing.update(f)
    if rec.n_tokens == 0:
        raise SaelabError("evaluate_sae got no activations: pass at least one non-empty batch")
    return {**firing.summary(dense_threshold), **rec.result()}


def sparsity_verdict(summary: dict[str, Any], d_sae: int) -> list[str]:
    """Loud warnings when the result is not sparse (an empty list when it is).

    Reads `l0`, `dense_fraction` (+ `dense_threshold`), `dead_fraction` and `firing_tokens` from an
    `evaluate_sae` dict (or a FeatureFiring summary, which has no l0: that check is skipped).
    Thresholds: mean L0 above 10% of d_sae; more than half the features dense; more than
    half dead.
    """
    out: list[str] = []
    l0 = summary.get("l0")
    if l0 is not None and not math.isnan(l0) and l0 > 0.1 * d_sae:
        out.append(
            f"NOT SPARSE: mean L0 is {l0:.1f} active features per token, {l0 / d_sae:.0%} of"
            f" d_sae={d_sae} (want well under 10%): lower k (topk/batchtopk) or raise the"
            " sparsity penalty (`l1` / `l0_coef`)"
        )
    dense = summary.get("dense_fraction")
    thr = summary.get("dense_threshold", 0.1)
    if dense is not None and dense > 0.5:
        out.append(
            f"DENSE: {dense:.0%} of features fire on more than {thr:.0%} of tokens: lower k or"
            " raise `l1` / `l0_coef`, and lengthen the lr warm-up so the penalty is not"
            " overwhelmed early"
        )
    dead = summary.get("dead_fraction")
    if dead is not None and dead > 0.5:
        n = summary.get("firing_tokens", summary.get("n_tokens"))
        seen = f" in {int(n):,} tokens" if n is not None else ""
        out.append(
            f"DEAD: {dead:.0%} of features never fired{seen}: train on more tokens, enable"
            " AuxK (topk), lengthen the lr warm-up or lower the lr, or use a smaller d_sae"
            " (also check that the evaluation saw enough tokens)"
        )
    return out


class LanguageModel(Protocol):
    """What spliced_loss needs of a `LoadedModel`."""

    model: nn.Module
    adapter: Adapter


@torch.no_grad()
def spliced_loss(
    lm: LanguageModel,
    sae: nn.Module,
    hook: HookPoint,
    windows: torch.Tensor,
    batch_size: int = 8,
    skip_first: bool = True,
) -> dict[str, float]:
    """Next-token loss with the SAE's reconstruction spliced in at `hook`, against clean
    and zero-ablated runs, on held-out token windows (n, T) without padding.

    Positions: the loss and KL use every position's next-token prediction except the last
    token's (which has no target): T-1 predictions per window. With `skip_first`, position 0
    of each window is left clean in both the SAE and the zero-ablated pass (SAELens
    convention: BOS activations are huge and excluded from training, so the SAE was never
    meant to reconstruct them); its prediction is then identical in all three passes, which
    dilutes CE differences and KL by 1/(T-1) but leaves ce_loss_recovered unchanged.

    ce_loss_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean): 1 is a perfect splice, 0
    no better than deleting the activation (nan when zero-ablation does not change the loss).
    kl_div is the mean over predictions of KL(clean || spliced). Sums are float64.
    """
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise SaelabError(
            f"spliced_loss needs token windows of shape (n, T) with T >= 2, got"
            f" {tuple(windows.shape)}"
        )
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    model, adapter = lm.model, lm.adapter
    device = next(model.parameters()).device
    start = 1 if skip_first else 0

    def splice(recon: Any) -> Any:
        def edit(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            part = x[:, start:]
            if part.numel():
                flat = part.reshape(-1, part.shape[-1])
                out[:, start:] = recon(flat).reshape(part.shape).to(x.dtype)
            return out

        return edit

    def reconstruct(flat: torch.Tensor) -> torch.Tensor:
        return sae.decode(sae.encode(_to_sae(sae, flat))).to(flat.device)

    sae_edit = splice(reconstruct)
    zero_edit = splice(torch.zeros_like)

    def log_probs(ids: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        return torch.log_softmax(logits.float(), dim=-1)

    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    n_pred = 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i : i + batch_size].to(device=device, dtype=torch.long)
        targets = ids[:, 1:].unsqueeze(-1)
        lp_clean = log_probs(ids)
        sums["clean"] -= float(lp_clean.gather(-1, targets).sum(dtype=torch.float64))
        for name, edit in (("sae", sae_edit), ("zero", zero_edit)):
            with replace_activations(model, adapter, {hook: edit}):
                lp = log_probs(ids)
            sums[name] -= float(lp.gather(-1, targets).sum(dtype=torch.float64))
            if name == "sae":
                kl = lp_clean.exp() * (lp_clean - lp)
                sums["kl"] += float(kl.sum(dtype=torch.float64))
            del lp
        n_pred += targets.numel()
        del lp_clean
    ce_clean, ce_sae, ce_zero = (sums[k] / n_pred for k in ("clean", "sae", "zero"))
    denom = ce_zero - ce_clean
    recovered = (ce_zero - ce_sae) / denom if denom != 0 else float("nan")
    return {
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "ce_zero": ce_zero,
        "ce_loss_recovered": recovered,
        "kl_div": sums["kl"] / n_pred,
        "n_tokens": float(n_pred),
    }
