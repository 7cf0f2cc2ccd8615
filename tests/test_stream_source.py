"""The streaming source on the real default model: prefetching the next buffer on a second
thread gives exactly the batches of the one-thread order, and closing it leaves the model
without capture hooks."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from saelab.models import parse_hooks
from saelab.sae.sources import StreamSource


def _windows(smol, n: int, length: int) -> np.ndarray:
    from saelab.data.corpus import iter_texts

    stream: list[int] = []
    for text in iter_texts("builtin:stdlib"):
        stream += smol.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(stream) > n * length:
            break
    bos = smol.tokenizer.bos_token_id
    rows = [[bos] + stream[i * (length - 1) : (i + 1) * (length - 1)] for i in range(n)]
    return np.asarray(rows, dtype=np.int64)


def _hooks_on(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_prefetch_gives_the_same_batches_and_cleans_up(smol):
    hooks = parse_hooks("resid_post.1,resid_post.2", smol.n_layers)
    # transformers 5 records `output_hidden_states` through hooks it leaves installed, so an
    # earlier test may have put some there: count ours against that baseline.
    before = _hooks_on(smol.model)
    w = _windows(smol, 12, 17)  # 16 rows per window; buffers of 3 windows = 3 batches of 16
    kw = dict(batch_size=16, seed=3, windows_per_buffer=3, capture_batch=2)
    plain = StreamSource(smol, hooks, w, prefetch=False, **kw)
    ahead = StreamSource(smol, hooks, w, prefetch=True, **kw)
    assert plain.batches_per_epoch == 12  # 4 buffers of 3 batches: two epochs below
    n = 2 * plain.batches_per_epoch + 2
    want = list(itertools.islice(plain.batches(5), n))
    it = ahead.batches(5)
    got = list(itertools.islice(it, n))
    for a, b in zip(want, got, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert ahead._ahead is not None  # the next buffer is being captured
    it.close()
    assert ahead._ahead is None and _hooks_on(smol.model) == before


class _Counting(StreamSource):
    """Counts the windows run through the model (the real capture does the work)."""

    captured = 0

    def capture(self, windows, ids=None, stop=None):  # type: ignore[override]
        self.captured += len(windows)
        return super().capture(windows, ids, stop)


def test_cache_runs_each_window_once_and_resumes_to_the_same_batches(smol):
    """With `cache`, epochs after the first come from memory: the model sees each window
    once over three epochs, later epochs hold exactly the first epoch's rows (shuffled), and a
    source started fresh in epoch 2 (a resumed run) gives the uninterrupted batches."""
    hooks = parse_hooks("resid_post.1", smol.n_layers)
    w = _windows(smol, 13, 17)  # 4 buffers of 3 windows cover 12: one window only later
    kw = dict(batch_size=16, seed=5, windows_per_buffer=3, capture_batch=2, cache=True)
    src = _Counting(smol, hooks, w, **kw)
    per = src.batches_per_epoch
    every = list(itertools.islice(src.batches(0), 3 * per))
    assert src.captured == len(w)
    name = hooks[0].name
    rows = [torch.cat([b[name] for b in every[e * per : (e + 1) * per]]) for e in range(3)]
    plain = StreamSource(smol, hooks, w, batch_size=16, seed=5, windows_per_buffer=3,
                         capture_batch=2, prefetch=False)  # fmt: skip
    anew = list(itertools.islice(plain.batches(0), 3 * per))  # every epoch captured again
    want = [torch.cat([b[name] for b in anew[e * per : (e + 1) * per]]) for e in range(3)]
    torch.testing.assert_close(rows[0], want[0], rtol=0, atol=0)
    for e in (1, 2):  # the same rows in the same order; only the capture batches differed
        scale = float(want[e].abs().max())
        torch.testing.assert_close(rows[e], want[e], rtol=0, atol=1e-4 * scale)
        assert not torch.equal(rows[e], rows[0])  # and reshuffled
    resumed = _Counting(smol, hooks, w, **kw)
    again = list(itertools.islice(resumed.batches(2 * per + 1), per - 1))
    for a, b in zip(every[2 * per + 1 :], again, strict=True):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
