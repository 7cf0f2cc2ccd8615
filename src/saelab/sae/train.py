"""Training one SAE: fast sparse TopK/BatchTopK steps, JumpReLU and ReLU-L1, resumable.

Why it is fast on a CPU: for TopK and BatchTopK only the selected latents matter. The dense
pre-activations are computed once without autograd to choose them; the chosen ones are then
recomputed with autograd from gathered encoder rows, and the decoder is an `embedding_bag`
over the chosen rows. Gradients are the same as the dense model's (the selection is piecewise
constant) but touch k of d_sae latents per token instead of all of them: the backward pass
and the decoder cost ~k/d_sae of their dense versions.

What decides quality (reference/training.md): b_dec starts at the data mean, inputs are
scaled to unit mean norm (folded back at save), gradient norms are clipped at 1, dead
latents are counted in tokens scaled to the run, and an auxiliary loss (AuxK) trains the
dead ones to explain the residual.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.sae.model import SAE, SAEConfig, init_weights
from saelab.sae.sparse_ops import sparse_recon


@dataclass
class TrainConfig:
    """How to train one SAE (the CLI's `saelab train` options)."""

    architecture: str = "topk"
    d_sae: int = 4608
    k: int | None = 32
    l1_coef: float = 0.2  # relu: L1 of f weighted by decoder row norms (inputs at unit mean norm)
    l0_coef: float = 2e-3  # jumprelu: L0 penalty
    lr: float | None = None  # None: default_lr(architecture, d_in)
    batch_size: int = 1024
    total_steps: int = 1000
    seed: int = 0
    warmup_frac: float = 0.02  # learning-rate warm-up, fraction of steps
    decay_frac: float = 0.2  # linear decay to zero over the last fraction of steps
    sparsity_warmup_frac: float = 0.05  # l1 / l0 coefficient warm-up
    aux_k: int | None = None  # AuxK latents (default min(512, d_sae // 2))
    aux_coef: float = 1 / 32
    dead_tokens: int | None = None  # a latent silent this many tokens is dead (default: scaled)
    grad_clip: float = 1.0
    jumprelu_bandwidth: float = 0.05
    init_threshold: float = 0.05
    compute_dtype: str = "float32"

    def check(self, d_in: int) -> None:
        SAEConfig(d_in=d_in, d_sae=self.d_sae, architecture=self.architecture, k=self.k)
        if self.lr is not None and (self.lr <= 0 or not math.isfinite(self.lr)):
            raise SaelabError(f"--lr {self.lr} must be a positive number")
        if self.batch_size < 1:
            raise SaelabError(f"--batch-size {self.batch_size} must be at least 1")

    @property
    def dead_window(self) -> int:
        if self.dead_tokens:
            return self.dead_tokens
        total = self.total_steps * self.batch_size
        return int(min(10_000_000, max(10_000, total // 5)))


#: TopK/BatchTopK default step size, in units of a unit-norm row's typical entry (1/sqrt(d_in))
TOPK_RELATIVE_LR = 0.03
#: JumpReLU/ReLU default learning rate (their sparsity penalties were tuned with it)
PENALTY_LR = 4e-4


def default_lr(architecture: str, d_in: int) -> float:
    """The learning rate used when none is given.

    Why 0.03/sqrt(d_in) for TopK and BatchTopK (1.25e-3 at d_in 576): inputs are scaled to unit
    mean norm and decoder rows kept at unit norm, so a weight entry is ~1/sqrt(d_in) and one
    Adam step moves it by ~lr. At the former 4e-4 a step was ~1% of an entry and a CPU-sized run
    (1e5-1e6 tokens) stopped far from converged: held-out EV 0.68 after 94k token-steps on
    SmolLM2 layer 7 (576 -> 4608, k 32) against 0.85 at 1.2e-3, and 0.88 vs 0.91 after 410k
    (benchmarks/peers/README.md has the controlled experiments). Scaling with 1/sqrt(d_in)
    keeps the relative step the same for wider models, whose entries are smaller.
    """
    if architecture in ("topk", "batchtopk"):
        return TOPK_RELATIVE_LR / math.sqrt(d_in)
    return PENALTY_LR


class Diverged(SaelabError):
    """The loss stopped being finite or exploded: the learning rate is too high."""


@dataclass
class StepStats:
    loss: float
    mse: float
    aux: float
    l0: float
    lr: float


@dataclass
class TrainState:
    """Everything beyond weights that a resumed run needs to continue identically."""

    step: int = 0
    tokens: int = 0
    scale: float = 1.0  # inputs are multiplied by this (unit mean norm); folded at save
    last_fired: torch.Tensor | None = None  # token count when each latent last fired
    bdec_threshold: float = 0.0  # BatchTopK: running threshold for inference
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["last_fired"] = self.last_fired
        return d


class SAETrainer:
    """Owns the trainable weights (latent-major layout), the optimizer and the state."""

    def __init__(self, cfg: TrainConfig, d_in: int, sample: torch.Tensor, device: str = "cpu"):
        cfg.check(d_in)
        self.cfg = cfg
        self.d_in = d_in
        self.device = torch.device(device)
        self.lr = cfg.lr if cfg.lr is not None else default_lr(cfg.architecture, d_in)
        self.state = TrainState()
        x = sample.float().to(self.device)
        norms = x.norm(dim=-1)
        self.state.scale = float(1.0 / norms.mean().clamp_min(1e-12))
        sae = SAE(SAEConfig(d_in=d_in, d_sae=cfg.d_sae, architecture=cfg.architecture, k=cfg.k))
        init_weights(sae, cfg.seed, b_dec=(x * self.state.scale).mean(0).cpu())
        # latent-major encoder (one contiguous row per latent): gathers of chosen rows are cheap
        self.W_enc = torch.nn.Parameter(sae.W_enc.detach().t().contiguous().to(self.device))
        self.b_enc = torch.nn.Parameter(sae.b_enc.detach().clone().to(self.device))
        self.W_dec = torch.nn.Parameter(sae.W_dec.detach().clone().to(self.device))
        self.b_dec = torch.nn.Parameter(sae.b_dec.detach().clone().to(self.device))
        params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.log_threshold: torch.nn.Parameter | None = None
        if cfg.architecture == "jumprelu":
            t = torch.full((cfg.d_sae,), math.log(cfg.init_threshold), device=self.device)
            self.log_threshold = torch.nn.Parameter(t)
            params.append(self.log_threshold)
        self.params = params
        try:
            self.opt = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999), fused=True)
        except (RuntimeError, TypeError):  # no fused Adam for this device/dtype
            self.opt = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999))
        self.state.last_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=self.device)
        self.aux_k = min(cfg.aux_k or 512, max(1, cfg.d_sae // 2))

    # -- schedules -----------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.cfg
        warm = max(1, int(c.warmup_frac * c.total_steps))
        decay_start = int((1 - c.decay_frac) * c.total_steps)
        if step < warm:
            return self.lr * (step + 1) / warm
        if step >= decay_start and c.decay_frac > 0:
            return self.lr * max(0.0, (c.total_steps - step) / max(1, c.total_steps - decay_start))
        return self.lr

    def sparsity_coef(self, step: int) -> float:
        c = self.cfg
        base = c.l1_coef if c.architecture == "relu" else c.l0_coef
        warm = max(1, int(c.sparsity_warmup_frac * c.total_steps))
        return base * min(1.0, (step + 1) / warm)

    # -- the step ------------------------------------------------------------------------
    def _select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of the active latents (no autograd)."""
        arch, k = self.cfg.architecture, self.cfg.k or 1
        if arch == "topk":
            idx = pre.topk(k, dim=-1).indices
            rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
            return rows, idx.reshape(-1)
        flat = pre.reshape(-1)  # batchtopk: k per token on average over the batch
        top = flat.topk(k * pre.shape[0]).indices.sort().values
        return top // pre.shape[1], top % pre.shape[1]

    def _sparse_recon(
        self, xc: torch.Tensor, pre: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction from chosen (row, latent) pairs; gradients reach only those latents."""
        return sparse_recon(xc, self.W_enc, self.b_enc, self.W_dec, pre, rows, cols)

    def step(self, x: torch.Tensor) -> StepStats:
        c, st = self.cfg, self.state
        x = x.to(self.device, torch.float32) * st.scale
        lr = self.lr_at(st.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        xc = x - self.b_dec
        aux = torch.zeros((), device=self.device)
        if c.architecture in ("topk", "batchtopk"):
            with torch.no_grad():
                pre = self._dense_pre(xc.detach())
                rows, cols = self._select(pre)
                aux_sel = self._aux_select(pre)
            if aux_sel is None:
                recon, vals = self._sparse_recon(xc, pre, rows, cols)
                aux_recon = None
            else:  # main and AuxK selections in one call: one sparse product per weight
                n = x.shape[0]
                a_rows, a_cols = aux_sel
                out, v = sparse_recon(
                    xc, self.W_enc, self.b_enc, self.W_dec, pre,
                    torch.cat([rows, a_rows]), torch.cat([cols, a_cols]),
                    bags=torch.cat([rows, a_rows + n]),
                    bag_rows=torch.arange(n, device=x.device).repeat(2),
                )  # fmt: skip
                recon, aux_recon, vals = out[:n], out[n:], v[: len(rows)]
            x_hat = recon + self.b_dec
            mse = (x_hat - x).pow(2).sum(-1).mean()
            fired_rows, fired_cols = rows[vals > 0], cols[vals > 0]
            if c.architecture == "batchtopk" and len(vals):
                with torch.no_grad():  # smallest kept activation, averaged: the inference threshold
                    m = float(vals.detach().min())
                    st.bdec_threshold = m if st.step == 0 else 0.99 * st.bdec_threshold + 0.01 * m
            if aux_recon is not None:
                aux = self._aux_loss(aux_recon, x, x_hat.detach())
            loss = mse + c.aux_coef * aux
            l0 = float(len(fired_cols)) / x.shape[0]
        else:
            pre = xc @ self.W_enc.t() + self.b_enc
            if c.architecture == "relu":
                f = torch.relu(pre)
                sparsity = (f * self.W_dec.norm(dim=1)).sum(-1).mean()
            else:
                f, sparsity = self._jumprelu(pre)
            x_hat = f @ self.W_dec + self.b_dec
            mse = (x_hat - x).pow(2).sum(-1).mean()
            loss = mse + self.sparsity_coef(st.step) * sparsity
            with torch.no_grad():
                active = f > 0
                fired_rows, fired_cols = active.nonzero(as_tuple=True)
                l0 = float(active.sum()) / x.shape[0]
        if not torch.isfinite(loss.detach()) or float(loss.detach()) > 1e6:
            raise Diverged(
                f"training diverged at step {st.step} (loss {float(loss.detach()):.3g}); lower --lr"
                f" (was {self.lr:g}) and run again: the last good checkpoint is kept"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.opt.step()
        if c.architecture != "relu":
            with torch.no_grad():  # unit-norm decoder rows
                self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        with torch.no_grad():
            st.tokens += x.shape[0]
            # repeated ids write the same value: no unique() (a sort) needed
            st.last_fired.index_fill_(0, fired_cols, st.tokens)
        st.step += 1
        return StepStats(float(loss.detach()), float(mse.detach()), float(aux.detach()), l0, lr)

    def _dense_pre(self, xc: torch.Tensor) -> torch.Tensor:
        if self.cfg.compute_dtype == "bfloat16":
            w = self.W_enc.detach().to(torch.bfloat16)
            return (xc.to(torch.bfloat16) @ w.t()).float() + self.b_enc.detach()
        return torch.addmm(self.b_enc.detach(), xc, self.W_enc.detach().t())

    def _aux_select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """AuxK's (rows, cols): each token's top dead latents (None when none is dead)."""
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0 or not self.cfg.aux_coef:
            return None
        k = min(self.aux_k, n_dead)
        # only the dead latents' columns are looked at: with few dead latents (the usual
        # case) all of them are taken and no top-k over d_sae columns is needed
        dead_idx = dead.nonzero().squeeze(1)
        if k == n_dead:
            idx = dead_idx.expand(pre.shape[0], k)
        else:
            idx = dead_idx[pre.index_select(1, dead_idx).topk(k, dim=-1).indices]
        rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
        return rows, idx.reshape(-1)

    def _aux_loss(self, recon: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """AuxK: the dead latents' top pre-activations reconstruct what the live ones missed
        (normalised by the residual's variance)."""
        err = x - x_hat
        denom = (err - err.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        return (recon - err).pow(2).sum(-1).mean() / denom

    def _jumprelu(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """JumpReLU with straight-through gradients for the threshold (rectangle kernel)."""
        assert self.log_threshold is not None
        theta = self.log_threshold.exp()
        f = _JumpReLU.apply(pre, theta, self.cfg.jumprelu_bandwidth)
        l0 = _Step.apply(pre, theta, self.cfg.jumprelu_bandwidth).sum(-1).mean()
        return f, l0

    def dead_mask(self) -> torch.Tensor:
        st = self.state
        assert st.last_fired is not None
        return (st.tokens - st.last_fired) >= self.cfg.dead_window

    # -- export and checkpoints ---------------------------------------------------------
    def to_sae(self, metadata: dict[str, Any] | None = None) -> SAE:
        """The trained SAE on raw activations (input scale folded into the weights)."""
        c = self.cfg
        sae = SAE(
            SAEConfig(
                d_in=self.d_in,
                d_sae=c.d_sae,
                architecture=c.architecture,
                k=c.k,
                metadata=dict(metadata or {}),
            )
        )
        with torch.no_grad():
            sae.W_enc.copy_(self.W_enc.detach().t().cpu())
            sae.b_enc.copy_(self.b_enc.detach().cpu())
            sae.W_dec.copy_(self.W_dec.detach().cpu())
            sae.b_dec.copy_(self.b_dec.detach().cpu())
            if c.architecture == "jumprelu":
                assert self.log_threshold is not None
                sae.threshold.copy_(self.log_threshold.detach().exp().cpu())
            elif c.architecture == "batchtopk":
                sae.threshold.fill_(self.state.bdec_threshold)
        sae.fold_input_scale(self.state.scale)
        return sae

    def checkpoint(self) -> dict[str, Any]:
        return {
            "params": [p.detach().cpu().clone() for p in self.params],
            "opt": self.opt.state_dict(),
            "state": self.state.to_dict(),
            "cfg": asdict(self.cfg),
        }

    def restore(self, ck: dict[str, Any]) -> None:
        with torch.no_grad():
            for p, saved in zip(self.params, ck["params"], strict=True):
                p.copy_(saved)
        self.opt.load_state_dict(ck["opt"])
        s = ck["state"]
        self.state = TrainState(
            step=int(s["step"]),
            tokens=int(s["tokens"]),
            scale=float(s["scale"]),
            last_fired=s["last_fired"].to(self.device),
            bdec_threshold=float(s["bdec_threshold"]),
            history=list(s["history"]),
        )


class _Step(torch.autograd.Function):
    """H(pre - theta) with a rectangle-kernel pseudo-gradient for theta (Rajamanoharan 2024)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < ctx.eps / 2).to(g.dtype)
        return None, (-g * near / ctx.eps).sum(0), None


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta): exact gradient for pre, pseudo-gradient for theta."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        on = (pre > theta).to(g.dtype)
        near = ((pre - theta).abs() < ctx.eps / 2).to(g.dtype)
        return g * on, (-g * theta * near / ctx.eps).sum(0), None


def recon_batch(trainer: SAETrainer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, f) of raw activations through the current weights, for evaluation."""
    sae = trainer.to_sae()
    with torch.no_grad():
        f = sae.encode(x.float())
        return sae.decode(f), f


__all__ = ["Diverged", "SAETrainer", "StepStats", "TrainConfig", "TrainState", "default_lr"]
