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
