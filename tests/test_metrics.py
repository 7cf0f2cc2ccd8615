"""SAE metrics against brute force, on constructed firing patterns, and spliced into models.

The spliced-loss checks use SAEs whose answer is known exactly: an identity "SAE" must
recover all of the loss (its splice leaves the model bit-identical), a zero-output one none.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from saelab.models.adapters import adapter_for
from saelab.models.hooks import HookPoint
from saelab.sae.metrics import (
    FeatureFiring,
    ReconstructionStats,
    evaluate_sae,
    sparsity_verdict,
    spliced_loss,
)
from tests.test_adapters_tiny import build


class IdentitySAE(nn.Module):
    """decode(encode(x)) == x exactly."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d_sae = d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class ZeroSAE(IdentitySAE):
    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(f)


class ReluSAE(nn.Module):
    def __init__(self, d: int, d_sae: int, bias: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.d_sae = d_sae
        self.W_enc = nn.Parameter(torch.randn(d, d_sae, generator=g) / d**0.5)
        self.b_enc = nn.Parameter(torch.full((d_sae,), bias))
        self.W_dec = nn.Parameter(self.W_enc.detach().T.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# ---------------------------------------------------------------- ReconstructionStats


def brute(xs, xhs, fs) -> dict[str, float]:
    x = torch.cat(xs).double()
    xh = torch.cat(xhs).double()
    f = torch.cat(fs)
    err = ((x - xh) ** 2).sum()
    var = ((x - x.mean(0)) ** 2).sum()
    cos = (x * xh).sum(-1) / (x.norm(dim=-1) * xh.norm(dim=-1))
    return {
        "l0": float((f != 0).sum(-1).double().mean()),
        "explained_variance": float(1 - err / var),
        "mse": float(err / x.numel()),
        "cosine": float(cos.mean()),
        "n_tokens": float(len(x)),
    }


def test_reconstruction_stats_match_float64_brute_force():
    g = torch.Generator().manual_seed(1)
    stats = ReconstructionStats()
    xs, xhs, fs = [], [], []
    for n in (100, 37, 250, 1):
        x = (torch.randn(n, 48, generator=g) * 3e3 + 2e4).float()  # values ~2e4, like BOS
        xh = (x + torch.randn(n, 48, generator=g) * 50).float()
        f = torch.relu(torch.randn(n, 96, generator=g) - 1.0)
        stats.update(x, xh, f)
        xs.append(x)
        xhs.append(xh)
        fs.append(f)
    got, want = stats.result(), brute(xs, xhs, fs)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-10, abs=1e-12), k
    assert 0.9 < got["explained_variance"] < 1.0


def test_perfect_reconstruction():
    x = torch.randn(64, 3, 16) * 2e4
    stats = ReconstructionStats()
    stats.update(x, x.clone(), torch.zeros(64, 3, 8))
    r = stats.result()
    assert r["explained_variance"] == 1.0 and r["mse"] == 0.0 and r["l0"] == 0.0
    assert r["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert r["n_tokens"] == 64 * 3


def test_empty_stats_are_nan():
    r = ReconstructionStats().result()
    assert math.isnan(r["explained_variance"]) and r["n_tokens"] == 0


# ---------------------------------------------------------------- FeatureFiring


def pattern(n: int) -> torch.Tensor:
    """Feature 0 always, 1 on 5% of tokens, 2 never, 3 on 0.1%."""
    f = torch.zeros(n, 4)
    f[:, 0] = 1.0
    f[::20, 1] = 0.5
    f[::1000, 3] = 2.0
    return f


def test_feature_firing_dead_dense_histogram():
    ff = FeatureFiring(4)
    f = pattern(2000)
    for chunk in f.split(300):
        ff.update(chunk)
    assert ff.n_tokens == 2000
    assert ff.dead().tolist() == [False, False, True, False]
    assert ff.density().dtype == torch.float64
    assert ff.density().tolist() == pytest.approx([1.0, 0.05, 0.0, 0.001])
    s = ff.summary()
    assert (s["dead"], s["dense"]) == (1, 1)
    assert s["dead_fraction"] == 0.25 and s["dense_fraction"] == 0.25
    hist = {(lo, hi): c for lo, hi, c in s["density_histogram"]}
    assert len(s["density_histogram"]) == 10
    assert hist[(-math.inf, -math.inf)] == 1  # dead
    assert hist[(-1.0, 0.0)] == 1  # density 1 is in the last bin
    assert hist[(-2.0, -1.0)] == 1  # 0.05
    assert hist[(-3.0, -2.0)] == 1  # 1e-3 exactly: bins are [lo, hi)
    assert sum(c for _, _, c in s["density_histogram"]) == 4
    assert s["median_density"] == pytest.approx((0.05 + 0.001) / 2)
    assert ff.summary(dense_threshold=0.01)["dense"] == 2


def test_feature_firing_window_forgets_old_tokens():
    windowed, forever = FeatureFiring(3, window_tokens=100), FeatureFiring(3)
    for step in range(30):  # 300 tokens in batches of 10
        f = torch.zeros(10, 3)
        if step < 10:
            f[:, 0] = 1.0  # fires only in the first 100 tokens
        f[3, 1] = 1.0  # fires throughout
        if step == 29:
            f[9, 2] = 1.0  # fires once, at the very end
        windowed.update(f)
        forever.update(f)
    assert windowed.dead().tolist() == [True, False, False]
    assert forever.dead().tolist() == [False, False, False]
    assert 100 <= windowed.n_tokens <= 100 + 12 + 10
    assert windowed.density()[1] == pytest.approx(0.1)
    # a batch longer than the window keeps only its last window_tokens rows
    big = FeatureFiring(2, window_tokens=100)
    f = torch.zeros(500, 2)
    f[0, 0] = 1.0
    f[-1, 1] = 1.0
    big.update(f)
    assert big.n_tokens == 100 and big.dead().tolist() == [True, False]


# ---------------------------------------------------------------- verdict and evaluate


def test_sparsity_verdict_flags_dense_and_dead_and_stays_quiet_when_sparse():
    d_sae = 64
    dense = evaluate_sae(ReluSAE(16, d_sae, bias=5.0), [torch.randn(200, 16)])
    warnings = sparsity_verdict(dense, d_sae)
    assert dense["dense_fraction"] > 0.9 and dense["l0"] > 50
    assert any("NOT SPARSE" in w and "lower k" in w for w in warnings)
    assert any("DENSE" in w and "warm-up" in w for w in warnings)

    ff = FeatureFiring(d_sae)
    f = torch.zeros(640, d_sae)
    f[torch.arange(640), torch.arange(640) % d_sae] = 1.0  # one feature per token
    f[torch.arange(640), (torch.arange(640) * 7 + 3) % d_sae] = 1.0
    ff.update(f)
    sparse = {**ff.summary(), "l0": float((f != 0).sum(-1).double().mean())}
    assert sparse["l0"] == 2.0
    assert sparsity_verdict(sparse, d_sae) == []

    ff = FeatureFiring(d_sae)
    ff.update(f[:, :8].repeat(1, 8) * (torch.arange(d_sae) < 8))
    dead = sparsity_verdict(ff.summary(), d_sae)
    assert len(dead) == 1 and "DEAD" in dead[0] and "AuxK" in dead[0]


def test_evaluate_sae_casts_to_the_sae_dtype():
    sae = ReluSAE(16, 32)
    batches = [torch.randn(50, 16).half(), torch.randn(3, 10, 16).half()]
    r = evaluate_sae(sae, batches)
    assert r["n_tokens"] == 80
    for key in ("l0", "explained_variance", "mse", "cosine", "dead", "density_histogram"):
        assert key in r
    windowed = evaluate_sae(sae, [torch.randn(50, 16)] * 4, window_tokens=60)
    assert windowed["n_tokens"] == 200 and 60 <= windowed["firing_tokens"] < 200
    perfect = evaluate_sae(IdentitySAE(16), [torch.randn(40, 16)])
    assert perfect["explained_variance"] == 1.0 and perfect["l0"] == pytest.approx(40 * 16 / 40)


# ---------------------------------------------------------------- spliced_loss


@pytest.fixture(scope="module")
def tiny_llama():
    model = build("llama")
    return SimpleNamespace(model=model, adapter=adapter_for(model.config))


@pytest.mark.parametrize("skip_first", [True, False])
def test_spliced_loss_identity_and_zero_on_tiny_llama(tiny_llama, skip_first):
    g = torch.Generator().manual_seed(3)
    windows = torch.randint(0, 128, (5, 12), generator=g)
    hook = HookPoint(1, "resid_post")
    ident = spliced_loss(
        tiny_llama, IdentitySAE(64), hook, windows, batch_size=2, skip_first=skip_first
    )
    assert ident["n_tokens"] == 5 * 11
    assert ident["ce_sae"] == pytest.approx(ident["ce_clean"], abs=1e-6)
    assert ident["kl_div"] == pytest.approx(0.0, abs=1e-9)
    assert ident["ce_loss_recovered"] == pytest.approx(1.0)
    assert ident["ce_zero"] != ident["ce_clean"]
    zero = spliced_loss(tiny_llama, ZeroSAE(64), hook, windows, batch_size=3, skip_first=skip_first)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-12)
    assert zero["ce_zero"] == pytest.approx(ident["ce_zero"], rel=1e-12)
    assert zero["kl_div"] > 0


def test_spliced_loss_noisy_sae_is_between(tiny_llama):
    windows = torch.randint(0, 128, (4, 10), generator=torch.Generator().manual_seed(4))
    hook = HookPoint(0, "resid_post")
    r = spliced_loss(tiny_llama, ReluSAE(64, 256), hook, windows)
    assert r["kl_div"] > 0 and r["ce_sae"] != r["ce_clean"]
    assert set(r) == {"ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "kl_div", "n_tokens"}


def test_spliced_loss_identity_on_default_model(smol):
    text = (
        "Sparse autoencoders split a language model's activations into features that are"
        " easier to read, and the spliced loss says how much of the model survives."
    )
    ids = smol.tokenizer(text, return_tensors="pt").input_ids[0]
    assert len(ids) >= 32
    windows = ids[:32].reshape(2, 16)
    hook = HookPoint(5, "resid_post")
    r = spliced_loss(smol, IdentitySAE(smol.d_model), hook, windows)
    assert r["n_tokens"] == 30
    assert r["ce_sae"] == pytest.approx(r["ce_clean"], abs=1e-6)
    assert r["kl_div"] == pytest.approx(0.0, abs=1e-9)
    assert r["ce_loss_recovered"] == pytest.approx(1.0)
    assert r["ce_zero"] > r["ce_clean"]
