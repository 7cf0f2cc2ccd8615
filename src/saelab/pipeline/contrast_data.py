"""What `contrast` tests: one value per prompt and feature (pooled from token codes, or raw
activations), shard by shard, with each prompt's group label.

Pooling stays sparse: `last` picks rows, `mean` is one sparse product with a (prompts x rows)
weight matrix, `max` reduces the non-zeros per (prompt, feature) and counts a feature that is
silent at some token as 0 there. BOS rows are left out of `max` and `mean` (as in `encode`):
the first token's outlier activations light up unrelated features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from saelab.data import read_prompts
from saelab.errors import SaelabError
from saelab.pipeline.inputs import prompt_table
from saelab.run import RunFolder

POOLS = ("last", "max", "mean")


@dataclass
class Labels:
    """Per stored prompt (by prompt-table index): True = group A, False = B, None = neither."""

    a: str
    b: str
    in_a: np.ndarray  # bool per prompt-table index
    in_b: np.ndarray

    @property
    def sizes(self) -> tuple[int, int]:
        return int(self.in_a.sum()), int(self.in_b.sum())


def read_labels(run: Path, groups: str, column: str = "group") -> Labels:
    """Group labels of the run's prompts; the two groups must exist and hold 2+ prompts each."""
    names = [g.strip() for g in groups.split(",")] if groups else []
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise SaelabError(f"--groups {groups!r}: name two different groups, e.g. --groups a,b")
    if column == "group":
        values = prompt_table(RunFolder(run))["group"]
    else:
        values = _column_from_source(run, column)
    arr = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
    in_a, in_b = arr == names[0], arr == names[1]
    found = sorted(set(arr) - {""})
    for name, mask in zip(names, (in_a, in_b), strict=True):
        if mask.sum() < 2 and not found:
            raise SaelabError(
                f"the run's prompts have no values in column {column!r}, so there are no groups"
                f" to contrast; extract from a prompts file (.jsonl/.csv/.parquet) whose {column!r}"
                f" column holds {names[0]!r} and {names[1]!r}, or name the column that holds"
                " them with --group-column"
            )
        if mask.sum() < 2:
            counts = ", ".join(f"{g} ({int((arr == g).sum())})" for g in found[:8]) or "none"
            raise SaelabError(
                f"group {name!r} has {int(mask.sum())} prompt(s) in column {column!r}; each group"
                f" needs at least 2 (groups found: {counts})"
            )
    return Labels(names[0], names[1], in_a, in_b)


def _column_from_source(run: Path, column: str) -> list[Any]:
    """Another column of the prompts file the run was extracted from."""
    src = RunFolder(run).read_config().get("extract", {}).get("prompts")
    if not src:
        raise SaelabError(
            f"--group-column {column}: the run does not record its prompts file; use the"
            " `group` column"
        )
    try:
        table = read_prompts(src, group_column=column)
    except SaelabError as e:
        raise SaelabError(f"--group-column {column}: {e}") from e
    return list(table.groups or [])


def pool_csr(x: sp.csr_matrix, offsets: np.ndarray, how: str, skip_first: bool) -> sp.csr_matrix:
    """Token rows (prompt p: offsets[p]..offsets[p+1]) -> one row per prompt."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    if how == "last":
        if (lengths < 1).any():
            raise SaelabError("a stored prompt has no tokens; it cannot be pooled")
        return x[offsets[1:] - 1]
    start = offsets[:-1] + (1 if skip_first else 0)
    start = np.where(start < offsets[1:], start, offsets[:-1])  # only a BOS: keep it
    counts = offsets[1:] - start
    rows = np.concatenate([np.arange(a, b) for a, b in zip(start, offsets[1:], strict=True)])
    owner = np.repeat(np.arange(n), counts)
    if how == "mean":
        w = sp.csr_matrix(
            (1.0 / np.repeat(np.maximum(counts, 1), counts), (owner, rows)),
            shape=(n, x.shape[0]),
        )
        return (w @ x.astype(np.float64)).tocsr()
    if how != "max":
        raise SaelabError(f"--pool {how!r} is not one of {', '.join(POOLS)}")
    sub = x[rows].tocoo()
    prompt = owner[sub.row]
    key = prompt.astype(np.int64) * x.shape[1] + sub.col
    order = np.argsort(key, kind="stable")
    key, vals = key[order], sub.data[order].astype(np.float64)
    if not len(key):
        return sp.csr_matrix((n, x.shape[1]), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    best = np.maximum.reduceat(vals, starts)
    k = key[starts]
    p, c = k // x.shape[1], k % x.shape[1]
    silent_somewhere = np.diff(np.r_[starts, len(key)]) < counts[p]
    best = np.where(silent_somewhere, np.maximum(best, 0.0), best)
    return sp.csr_matrix((best, (p, c)), shape=(n, x.shape[1]))


@dataclass
class Block:
    """Pooled values of some prompts (rows in the order of `prompt_index`)."""

    x: sp.csr_matrix
    prompt_index: np.ndarray


def code_blocks(codes: Any, hook: str, pool: str, skip_first: bool) -> Iterator[Block]:
    """Per prompt shard of a hook's codes, pooled to one row per prompt."""
    hc = codes[hook]
    if hc.positions != "all" and hc.positions != pool:
        raise SaelabError(
            f"{hook} was encoded with --positions {hc.positions}; --pool {pool} needs codes of"
            f" every token (encode with --positions all) or use --pool {hc.positions}"
        )
    for part in hc.iter_parts():
        x = sp.csr_matrix(
            (part["values"], part["indices"].astype(np.int64), part["indptr"]),
            shape=(len(part["indptr"]) - 1, hc.d_sae),
        )
        if hc.positions == "all":
            x = pool_csr(x, part["row_offsets"], pool, skip_first)
        yield Block(x, part["prompt_index"])


def activation_blocks(store: Any, hook: str, pool: str, skip_first: bool) -> Iterator[Block]:
    """Per store shard, raw activations of a hook pooled to one row per prompt (dense
    d_model columns held as CSR so both sources share the statistics code)."""
    arr = store[hook]
    for s in store.shards():
        rows = np.asarray(arr[s.row_lo : s.row_hi], dtype=np.float64)
        if store.positions != "all":
            if store.positions != pool:
                raise SaelabError(
                    f"the store holds positions={store.positions}; use --pool {store.positions}"
                )
            pooled = rows
        else:
            offs = store.row_offsets[s.prompt_lo : s.prompt_hi + 1] - s.row_lo
            pooled = _pool_dense(rows, offs, pool, skip_first)
        yield Block(sp.csr_matrix(pooled), store.prompt_index[s.prompt_lo : s.prompt_hi])


def _pool_dense(rows: np.ndarray, offs: np.ndarray, how: str, skip_first: bool) -> np.ndarray:
    out = np.zeros((len(offs) - 1, rows.shape[1]))
    for p in range(len(offs) - 1):
        lo, hi = int(offs[p]), int(offs[p + 1])
        if how == "last":
            out[p] = rows[hi - 1]
            continue
        lo2 = lo + 1 if skip_first and hi - lo > 1 else lo
        out[p] = rows[lo2:hi].max(0) if how == "max" else rows[lo2:hi].mean(0)
    return out
