"""SAE training: sparse gradients equal dense ones, resume is exact, divergence is caught."""

from __future__ import annotations

import pytest
import torch

from saelab.errors import SaelabError
from saelab.sae.sparse_ops import sparse_recon
from saelab.sae.train import Diverged, SAETrainer, TrainConfig


def data(n=4096, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(200, d, generator=g)
    idx = torch.randint(0, 200, (n, 6), generator=g)
    w = torch.rand(n, 6, generator=g) * 4
    return (w.unsqueeze(-1) * dictionary[idx]).sum(1) + 2.0


@pytest.mark.parametrize("per_row", [True, False])
def test_sparse_gradients_equal_the_dense_model(per_row):
    torch.manual_seed(0)
    b, d, s, k = 12, 10, 40, 5
    x = torch.randn(b, d)
    params = [
        torch.randn(s, d, requires_grad=True),
        torch.randn(s, requires_grad=True),
        torch.randn(s, d, requires_grad=True),
        torch.randn(d, requires_grad=True),
    ]
    w_enc, b_enc, w_dec, b_dec = params
    xc = x - b_dec
    with torch.no_grad():
        pre = xc @ w_enc.t() + b_enc
        if per_row:
            cols = pre.topk(k, dim=-1).indices.reshape(-1)
            rows = torch.arange(b).repeat_interleave(k)
        else:  # batch-level selection, varying count per row
            top = pre.reshape(-1).topk(k * b).indices.sort().values
            rows, cols = top // s, top % s
    recon, _ = sparse_recon(xc, w_enc, b_enc, w_dec, pre, rows, cols)
    loss_sparse = ((recon + b_dec - x) ** 2).sum()
    g_sparse = torch.autograd.grad(loss_sparse, params)
    # dense reference: the same selection as a mask
    mask = torch.zeros(b, s)
    mask[rows, cols] = 1
    f = torch.relu((x - b_dec) @ w_enc.t() + b_enc) * mask
    loss_dense = ((f @ w_dec + b_dec - x) ** 2).sum()
    g_dense = torch.autograd.grad(loss_dense, params)
    torch.testing.assert_close(loss_sparse, loss_dense)
    for a, c in zip(g_sparse, g_dense, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_every_architecture_learns(arch):
    x = data()
    cfg = TrainConfig(
        architecture=arch,
        d_sae=128,
        k=8,
        total_steps=150,
        batch_size=256,
        lr=3e-3,
        l1_coef=0.05,
        l0_coef=1e-3,
    )
    tr = SAETrainer(cfg, 32, x[:1024])
    for step in range(150):
        tr.step(x[(step * 256) % 3840 : (step * 256) % 3840 + 256])
    sae = tr.to_sae()
    held = data(512, seed=1)
    with torch.no_grad():
        f = sae.encode(held)
        err = ((sae.decode(f) - held) ** 2).sum()
    ev = 1 - err / ((held - held.mean(0)) ** 2).sum()
    assert ev > 0.5, (arch, float(ev))
    assert float((f > 0).float().sum(-1).mean()) < 64


def test_resume_from_a_checkpoint_gives_identical_weights():
    x = data()
    cfg = TrainConfig(d_sae=96, k=6, total_steps=40, batch_size=128, lr=2e-3, dead_tokens=512)

    def batch(i):
        return x[(i * 128) % 3968 : (i * 128) % 3968 + 128]

    a = SAETrainer(cfg, 32, x[:512])
    for i in range(40):
        a.step(batch(i))
    b = SAETrainer(cfg, 32, x[:512])
    for i in range(17):
        b.step(batch(i))
    ck = b.checkpoint()
    c = SAETrainer(cfg, 32, x[:512])
    c.restore(ck)
    for i in range(17, 40):
        c.step(batch(i))
    for p, q in zip(a.params, c.params, strict=True):
        assert torch.equal(p, q)
    assert torch.equal(a.state.last_fired, c.state.last_fired)


def test_divergence_is_reported_not_hidden():
    x = data() * 1e4
    tr = SAETrainer(
        TrainConfig(
            architecture="relu",
            d_sae=64,
            total_steps=50,
            batch_size=256,
            lr=1e3,
            grad_clip=0,
            l1_coef=0.0,
        ),
        32,
        x[:512],
    )
    with pytest.raises(Diverged, match="diverged at step .* lower --lr"):
        for i in range(50):
            tr.step(x[i * 64 : i * 64 + 256] * (10.0**i))


def test_bad_settings():
    with pytest.raises(SaelabError, match="`k` 200 must be between 1 and d_sae"):
        SAETrainer(TrainConfig(d_sae=128, k=200), 32, data(64))
    with pytest.raises(SaelabError, match="--lr"):
        SAETrainer(TrainConfig(d_sae=128, k=8, lr=-1), 32, data(64))


def test_one_call_with_bags_equals_two_calls():
    """The trainer's main + AuxK selections through one call (bags) give the same outputs and
    gradients as two separate calls."""
    torch.manual_seed(1)
    b, d, s, k, ka = 9, 8, 30, 3, 4
    x = torch.randn(b, d)
    params = [
        torch.randn(s, d, requires_grad=True),
        torch.randn(s, requires_grad=True),
        torch.randn(s, d, requires_grad=True),
        torch.randn(d, requires_grad=True),
    ]
    w_enc, b_enc, w_dec, b_dec = params
    target = torch.randn(b, d)

    def loss_of(main, aux):
        return ((main + b_dec - x) ** 2).sum() + 0.3 * ((aux - target) ** 2).sum()

    xc = x - b_dec
    with torch.no_grad():
        pre = xc @ w_enc.t() + b_enc
        rows = torch.arange(b).repeat_interleave(k)
        cols = pre.topk(k, dim=-1).indices.reshape(-1)
        a_rows = torch.arange(b).repeat_interleave(ka)
        a_cols = torch.randint(0, s, (b * ka,))
    main, v1 = sparse_recon(xc, w_enc, b_enc, w_dec, pre, rows, cols)
    aux, _ = sparse_recon(xc, w_enc, b_enc, w_dec, pre, a_rows, a_cols)
    g_two = torch.autograd.grad(loss_of(main, aux), params)
    xc = x - b_dec
    out, v = sparse_recon(
        xc, w_enc, b_enc, w_dec, pre, torch.cat([rows, a_rows]), torch.cat([cols, a_cols]),
        bags=torch.cat([rows, a_rows + b]), bag_rows=torch.arange(b).repeat(2),
    )  # fmt: skip
    torch.testing.assert_close(out[:b], main)
    torch.testing.assert_close(out[b:], aux)
    torch.testing.assert_close(v[: len(rows)], v1)
    g_one = torch.autograd.grad(loss_of(out[:b], out[b:]), params)
    for one, two in zip(g_one, g_two, strict=True):
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
