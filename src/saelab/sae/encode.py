"""Activations -> sparse codes (CSR), in row chunks sized so no dense block gets large.

Why chunks: a dense (rows x d_sae) block of a 32k-feature SAE is 128 KB per row; 4,096 rows
would be half a gigabyte. Chunks are sized to ~32 MB of codes whatever d_sae is, and only the
non-zeros leave each chunk.

Positions reduce a prompt's per-token codes: `last` encodes the last token, `max` and `mean`
take each feature's max / mean over the prompt's tokens (BOS excluded when the store has one:
its activations are outliers that light up unrelated features).

With `features` (a list of ids), a ReLU or JumpReLU SAE computes only those columns of the
encoder (cost ~len(features)/d_sae of the full product); TopK needs every column to choose its
k, so it encodes fully and keeps the chosen columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from saelab.errors import SaelabError
from saelab.sae.model import SAE

CHUNK_BYTES = 32 * 2**20


@dataclass
class CSR:
    indptr: np.ndarray  # int64 [rows+1]
    indices: np.ndarray  # int64 [nnz], the SAE's own feature ids
    values: np.ndarray  # float32 [nnz]

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def to_scipy(self, d_sae: int):  # noqa: ANN201
        import scipy.sparse as sp

        return sp.csr_matrix((self.values, self.indices, self.indptr), shape=(self.n_rows, d_sae))


def chunk_rows(d_sae: int) -> int:
    return int(max(16, min(8192, CHUNK_BYTES // (4 * max(d_sae, 1)))))


def _columns(sae: torch.nn.Module, features: Sequence[int] | None) -> torch.Tensor | None:
    if features is None:
        return None
    return torch.as_tensor(list(features), dtype=torch.long)


def _narrow(sae: torch.nn.Module, cols: torch.Tensor) -> torch.nn.Module | None:
    """The same SAE restricted to some features, for gate-per-feature architectures (ReLU,
    JumpReLU): each feature's code depends only on its own encoder column, so encoding the
    narrow SAE gives exactly those columns of the full codes. None for TopK (it needs all)."""
    cfg = sae.cfg
    if cfg.architecture not in ("relu", "jumprelu") or not isinstance(sae, SAE):
        return None
    d_sae = int(cfg.d_sae)
    axis = {"W_enc": 1, "b_enc": 0, "threshold": 0, "W_dec": 0}  # the feature axis
    state = {}
    for name, t in sae.named_parameters():
        t = t.detach()
        state[name] = t.index_select(axis[name], cols) if name in axis else t
        if name in axis and t.shape[axis[name]] != d_sae:
            return None  # a layout this function does not know: encode fully instead
    sub = dataclasses.replace(cfg, d_sae=len(cols), metadata=dict(cfg.metadata))
    return SAE.from_state(sub, state, "narrowed SAE")


def dense_codes(
    sae: torch.nn.Module, x: torch.Tensor, cols: torch.Tensor | None, narrow: torch.nn.Module | None
) -> torch.Tensor:
    """Codes of rows x: all features, or the columns `cols` (in that order)."""
    with torch.no_grad():
        if narrow is not None:
            return narrow.encode(x).float()
        f = sae.encode(x).float()
        return f if cols is None else f.index_select(1, cols)


def encode_rows(
    sae: torch.nn.Module,
    rows: np.ndarray | torch.Tensor,
    features: Sequence[int] | None = None,
) -> CSR:
    """CSR codes of every row (one row per token)."""
    cols = _columns(sae, features)
    narrow = _narrow(sae, cols) if cols is not None else None
    ids = cols.numpy() if cols is not None else None
    step = chunk_rows(sae.cfg.d_sae if cols is None else len(cols))
    x_all = torch.as_tensor(np.asarray(rows)) if not isinstance(rows, torch.Tensor) else rows
    counts, idx_parts, val_parts = [], [], []
    for i in range(0, len(x_all), step):
        x = x_all[i : i + step].float()
        fast = _nonzeros(narrow if narrow is not None else sae, x, None if narrow else cols)
        if fast is not None:
            r, c_np, v = fast
            counts.append(torch.bincount(r, minlength=len(x)).numpy())
            # a narrowed SAE numbers its columns 0..len(features)-1: map them back to ids
            idx_parts.append(ids[c_np] if narrow is not None and ids is not None else c_np)
            val_parts.append(v)
            continue
        f = dense_codes(sae, x, cols, narrow)
        r, c = f.nonzero(as_tuple=True)
        counts.append(torch.bincount(r, minlength=f.shape[0]).numpy())
        c_np = c.numpy()
        idx_parts.append(ids[c_np] if ids is not None else c_np)
        val_parts.append(f[r, c].numpy())
    return _assemble(counts, idx_parts, val_parts)


def _nonzeros(
    sae: torch.nn.Module, x: torch.Tensor, cols: torch.Tensor | None
) -> tuple[torch.Tensor, np.ndarray, np.ndarray] | None:
    """(row, feature id, value) of the non-zero codes straight from the pre-activations,
    without a dense code matrix: TopK keeps its k values (ReLU applied after the top-k picks
    the same positive values), a gate compares once against max(threshold, 0). Returns None
    for an SAE this does not know (the dense path handles it)."""
    if not isinstance(sae, SAE):
        return None
    arch = sae.cfg.architecture
    with torch.no_grad():
        pre = sae.pre_acts(x).float()
        if arch == "topk":
            vals, idx = pre.topk(int(sae.cfg.k), dim=-1)
            idx, order = idx.sort(dim=-1)
            vals = vals.gather(-1, order)
            keep = vals > 0
            if cols is not None:
                keep &= torch.isin(idx, cols)
            rows = torch.arange(len(x)).unsqueeze(1).expand_as(idx)[keep]
            return rows, idx[keep].numpy(), vals[keep].numpy()
        if arch in ("jumprelu", "batchtopk"):
            if sae.threshold is None:
                return None
            mask = pre > sae.threshold.float().clamp_min(0)
        elif arch == "relu":
            mask = pre > 0
        else:
            return None
        r, c = mask.nonzero(as_tuple=True)
        vals = pre[r, c]
        if cols is not None:  # a gate SAE that could not be narrowed
            keep = torch.isin(c, cols)
            r, c, vals = r[keep], c[keep], vals[keep]
        return r, c.numpy(), vals.numpy()


def _assemble(counts: list, idx_parts: list, val_parts: list) -> CSR:
    per_row = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    indptr = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(per_row, out=indptr[1:])
    indices = np.concatenate(idx_parts).astype(np.int64) if idx_parts else np.zeros(0, np.int64)
    values = np.concatenate(val_parts).astype(np.float32) if val_parts else np.zeros(0, np.float32)
    return CSR(indptr, indices, values)


def encode_prompts(
    sae: torch.nn.Module,
    rows: np.ndarray,
    row_offsets: np.ndarray,
    positions: str,
    features: Sequence[int] | None = None,
    skip_first: bool = False,
) -> CSR:
    """Codes of a block of prompts whose token rows are `rows` (prompt i: row_offsets[i] to
    row_offsets[i+1], relative to `rows`): per token (`all`) or one row per prompt."""
    if positions == "all":
        return encode_rows(sae, rows, features)
    if positions == "last":
        last = np.asarray(row_offsets[1:]) - 1
        if (np.diff(row_offsets) < 1).any():
            raise SaelabError("a stored prompt has no tokens; re-extract with longer prompts")
        return encode_rows(sae, rows[last], features)
    if positions not in ("max", "mean"):
        raise SaelabError(f"`positions` {positions!r} is not one of all, last, max, mean")
    cols = _columns(sae, features)
    narrow = _narrow(sae, cols) if cols is not None else None
    ids = cols.numpy() if cols is not None else None
    width = sae.cfg.d_sae if cols is None else len(cols)
    offs = np.asarray(row_offsets, dtype=np.int64)
    n = len(offs) - 1
    starts = offs[:-1] + (1 if skip_first else 0)
    starts = np.where(starts < offs[1:], starts, offs[:-1])  # a prompt of only BOS keeps it
    counts, idx_parts, val_parts = [], [], []
    for a, b in _prompt_groups(offs, chunk_rows(width)):
        keep = np.concatenate([np.arange(starts[q], offs[q + 1]) for q in range(a, b)])
        owner = torch.from_numpy(np.repeat(np.arange(b - a), offs[a + 1 : b + 1] - starts[a:b]))
        f = dense_codes(sae, torch.as_tensor(rows[keep]).float(), cols, narrow)
        out = torch.zeros(b - a, width)
        how = "amax" if positions == "max" else "mean"
        out.scatter_reduce_(0, owner[:, None].expand_as(f), f, how, include_self=False)
        r, c = out.nonzero(as_tuple=True)
        counts.append(torch.bincount(r, minlength=b - a).numpy())
        c_np = c.numpy()
        idx_parts.append(ids[c_np] if ids is not None else c_np)
        val_parts.append(out[r, c].numpy())
    if n == 0:
        return _assemble([], [], [])
    return _assemble(counts, idx_parts, val_parts)


def _prompt_groups(offs: np.ndarray, rows_per_group: int) -> list[tuple[int, int]]:
    """Consecutive prompts [a, b) holding about rows_per_group rows (at least one prompt)."""
    groups, a = [], 0
    n = len(offs) - 1
    while a < n:
        b = int(np.searchsorted(offs, offs[a] + rows_per_group, side="right")) - 1
        b = min(max(b, a + 1), n)
        groups.append((a, b))
        a = b
    return groups
