"""`saelab.sae.fit` from a notebook: arrays, stores and batches; held-out figures that a second
computation confirms; early stopping; resume from a checkpoint to the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.errors import SaelabError
from saelab.sae import SAE, fit
from saelab.store import ActivationWriter, open_activations

D = 32


def sparse_data(n: int, seed: int = 0) -> np.ndarray:
    """Rows that are sparse sums of 64 fixed directions: what an SAE can learn."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(64, D)).astype(np.float32)
    codes = rng.exponential(size=(n, 64)).astype(np.float32) * (rng.random((n, 64)) < 0.06)
    return codes @ dirs + 0.01 * rng.normal(size=(n, D)).astype(np.float32)


def explained_variance(sae: SAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        x_hat = sae(x)
    return float(1 - ((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_fit_on_an_array_reports_what_the_saved_sae_does(tmp_path):
    x = sparse_data(6000)
    res = fit(x, arch="topk", k=6, d_sae=128, batch_size=256, epochs=6, lr=3e-3, patience=0)
    held = torch.from_numpy(x[-600:])  # holdout 0.1: the last tenth of the rows
    assert res.metrics["heldout_tokens"] == 600
    assert res.metrics["explained_variance"] == pytest.approx(
        explained_variance(res.sae, held), abs=2e-3
    )
    assert res.metrics["explained_variance"] > 0.6 and res.metrics["l0"] == pytest.approx(6.0)
    assert res.metrics["warnings"] == []
    assert "explained variance" in res.report()
    folder = res.save(tmp_path / "sae")
    again = SAE.load(folder)
    assert torch.equal(again.W_enc, res.sae.W_enc)
    assert (folder / "sparsity.safetensors").is_file()


def test_a_result_that_is_not_sparse_says_how_to_fix_it():
    res = fit(sparse_data(3000), arch="topk", k=40, d_sae=64, batch_size=256, epochs=1)
    assert any("NOT SPARSE" in w for w in res.metrics["warnings"])
    assert "WARNING NOT SPARSE" in res.report() and "lower k" in res.report()


def test_patience_stops_training_early():
    x = sparse_data(4000)
    res = fit(x, k=6, d_sae=128, batch_size=128, epochs=20, lr=3e-3, patience=1, eval_every=1)
    total = 20 * (3600 // 128)
    assert res.stopped_early_at is not None and res.stopped_early_at < total
    assert res.metrics["steps"] == res.stopped_early_at


class Batches:
    """Batches read again on every iteration; the first iteration dies at batch `die_at`."""

    def __init__(self, x: np.ndarray, size: int, die_at: int | None) -> None:
        self.x, self.size, self.die_at = x, size, die_at

    def __iter__(self):  # noqa: ANN204
        for i in range(0, len(self.x) - self.size + 1, self.size):
            if self.die_at is not None and i // self.size == self.die_at:
                self.die_at = None
                raise KeyboardInterrupt
            yield torch.from_numpy(self.x[i : i + self.size])


def test_a_killed_fit_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    x = sparse_data(6000, seed=1)
    kw = dict(k=6, d_sae=96, batch_size=200, tokens=200 * 20, checkpoint_every=3, lr=2e-3)
    whole = fit(Batches(x, 200, None), checkpoint=tmp_path / "a.pt", **kw)
    data = Batches(x, 200, die_at=12)
    with pytest.raises(KeyboardInterrupt):
        fit(data, checkpoint=tmp_path / "b.pt", **kw)
    step = torch.load(tmp_path / "b.pt", weights_only=True)["trainers"]["sae"]["state"]["step"]
    assert 0 < step < 20
    resumed = fit(data, checkpoint=tmp_path / "b.pt", **kw)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(resumed.sae, name), getattr(whole.sae, name)), name
    with pytest.raises(SaelabError, match="`checkpoint` needs data that can be read again"):
        fit(iter(list(Batches(x, 200, None))), checkpoint=tmp_path / "c.pt", **kw)


def test_fit_on_a_store_holds_out_its_last_prompts(tmp_path):
    hook = "blocks.0.hook_resid_post"
    w = ActivationWriter(tmp_path, hooks=[hook], d_model={hook: D}, dtype="float32")
    x = sparse_data(40 * 50, seed=2)
    toks = [np.arange(1, 51) for _ in range(40)]
    w.write_shard(0, prompt_index=np.arange(40), token_ids=toks, acts={hook: x})
    store = open_activations(tmp_path)
    res = fit(store, hook=hook, k=6, d_sae=128, batch_size=128, epochs=3, lr=3e-3, holdout=4)
    # held out: the last 4 prompts, their BOS rows (the first of each) left out
    held = np.concatenate([x[p * 50 + 1 : (p + 1) * 50] for p in range(36, 40)])
    assert res.metrics["heldout_tokens"] == len(held)
    assert res.metrics["explained_variance"] == pytest.approx(
        explained_variance(res.sae, torch.from_numpy(held)), abs=2e-3
    )
    with pytest.raises(SaelabError, match="`hook` is needed"):
        fit(store, k=6, d_sae=128)
