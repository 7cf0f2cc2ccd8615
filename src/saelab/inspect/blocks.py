"""Where a feature card's token codes come from, one block at a time.

Three sources give the same `TokenBlock`s (token rows x chosen features, CSR):

- a run's stored codes (`encode --positions all`) with the token ids of its activation store;
- a run's activation store (every token) put through the SAE, when the codes hold one row per
  prompt (positions last/max/mean) or were not made;
- texts (a prompt table or a corpus's windows) put through the model and the SAE, capturing
  only the SAE's hook and stopping the forward pass there.

Only the chosen features' columns are kept from each block, so a block is small whatever the
SAE's width.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from saelab.inspect.accumulate import TokenBlock
from saelab.models.capture import capture_prompts
from saelab.models.hooks import HookPoint
from saelab.sae.encode import encode_rows


def select_columns(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, features: Sequence[int], d_sae: int
) -> sp.csr_matrix:
    """CSR codes (feature ids as columns) -> rows x len(features), column j = features[j]."""
    where = np.full(int(d_sae), -1, dtype=np.int64)
    where[np.asarray(features, dtype=np.int64)] = np.arange(len(features))
    col = where[np.asarray(indices, dtype=np.int64)]
    keep = col >= 0
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))[keep]
    return sp.csr_matrix(
        (np.asarray(values, dtype=np.float32)[keep], (rows, col[keep])),
        shape=(len(indptr) - 1, len(features)),
    )


def _row_tokens(store: Any, first: int, row_offsets: np.ndarray) -> np.ndarray:
    """Token ids of the rows of stored prompts first.. (each prompt's rows are its last
    tokens: a store made with drop_bos keeps the token ids but not the BOS row)."""
    parts = []
    for k in range(len(row_offsets) - 1):
        n = int(row_offsets[k + 1] - row_offsets[k])
        toks = np.asarray(store.tokens(first + k))
        parts.append(toks[len(toks) - n :])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def code_blocks(
    codes: Any, store: Any, features: Sequence[int], skip_first: bool, groups: list[Any] | None
) -> Iterator[TokenBlock]:
    """Blocks of a hook's stored codes (positions all), shard by shard."""
    done = 0
    for part in codes.iter_parts():
        offs = part["row_offsets"]
        x = select_columns(part["indptr"], part["indices"], part["values"], features, codes.d_sae)
        pidx = part["prompt_index"]
        yield TokenBlock(
            codes=x,
            offsets=offs,
            prompt=pidx,
            token_ids=_row_tokens(store, done, offs),
            skip_first=skip_first,
            groups=[groups[i] for i in pidx] if groups is not None else None,
        )
        done += len(pidx)


def store_blocks(
    store: Any,
    hook: str,
    sae: torch.nn.Module,
    features: Sequence[int],
    skip_first: bool,
    groups: list[Any] | None,
) -> Iterator[TokenBlock]:
    """Blocks of a run's stored activations (positions all) put through the SAE."""
    arr = store[hook]
    for s in store.shards():
        rows = np.asarray(arr[s.row_lo : s.row_hi], dtype=np.float32)
        csr = encode_rows(sae, rows, features)
        offs = store.row_offsets[s.prompt_lo : s.prompt_hi + 1] - s.row_lo
        pidx = store.prompt_index[s.prompt_lo : s.prompt_hi]
        yield TokenBlock(
            codes=select_columns(csr.indptr, csr.indices, csr.values, features, sae.cfg.d_sae),
            offsets=offs,
            prompt=pidx,
            token_ids=_row_tokens(store, s.prompt_lo, offs),
            skip_first=skip_first,
            groups=[groups[i] for i in pidx] if groups is not None else None,
        )


def model_blocks(
    lm: Any,
    hook: HookPoint,
    sae: torch.nn.Module,
    token_lists: Sequence[Sequence[int]],
    features: Sequence[int],
    *,
    skip_first: bool,
    groups: list[Any] | None = None,
    batch_size: int = 8,
    on_batch: Any = None,
) -> Iterator[TokenBlock]:
    """Blocks of texts run through the model (up to the hook) and the SAE, batch by batch.
    Prompt numbers are positions in `token_lists`."""
    sae_dtype = next(sae.parameters()).dtype
    for idx, out in capture_prompts(
        lm.model,
        lm.adapter,
        [hook],
        token_lists,
        pad_id=lm.pad_id,
        batch_size=batch_size,
        positions="all",
        device=lm.device,
    ):
        order = np.argsort(idx, kind="stable")  # prompts in their own order within a block
        per = [out[hook][k] for k in order]
        pidx = np.asarray(idx, dtype=np.int64)[order]
        lengths = np.array([len(t) for t in per], dtype=np.int64)
        offs = np.zeros(len(per) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offs[1:])
        rows = torch.cat(per).to(device="cpu", dtype=sae_dtype)
        csr = encode_rows(sae, rows, features)
        toks = np.concatenate([np.asarray(token_lists[i], dtype=np.int64) for i in pidx])
        yield TokenBlock(
            codes=select_columns(csr.indptr, csr.indices, csr.values, features, sae.cfg.d_sae),
            offsets=offs,
            prompt=pidx,
            token_ids=toks,
            skip_first=skip_first,
            groups=[groups[i] for i in pidx] if groups is not None else None,
        )
        if on_batch is not None:
            on_batch(len(pidx), int(lengths.sum()))
