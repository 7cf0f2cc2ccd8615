"""Streaming per-feature summaries over token codes: what a feature card needs, in one pass.

Blocks of token codes (rows = tokens, columns = the chosen features) arrive one prompt shard
(or one corpus batch) at a time; nothing larger than a block is ever held, and never a dense
prompts x features matrix. Per feature this keeps:

- firing counts (tokens where the code is non-zero, BOS rows left out: the first token's
  outlier activations light up unrelated features, as `encode` and `contrast` also assume);
- a histogram of the non-zero activations whose range doubles as larger values arrive. Bins
  are [0, hi) cut into `n_bins` equal parts with `hi` a power of two and `n_bins` a power of
  two, so a value's bin is floor(v * n_bins / hi) exactly in floating point and doubling `hi`
  merges neighbouring pairs exactly: the result equals `np.histogram` over the final edges;
- the top-N contexts: each prompt's peak token (the first position holding the prompt's largest
  value), the N prompts with the largest peaks (ties: lower prompt number first), each with a
  window of token ids and the feature's activation at every token of the window;
- a uniform sample of firing prompts without replacement (the `n_sample` smallest values of a
  fixed hash of (prompt, feature)), independent of block order and sharding, from which
  contexts at lower activation quantiles are picked;
- per group, the sum of each prompt's pooled value (max, mean or last token) and the prompt
  count, for the feature's mean per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

N_BINS = 64
POOLS = ("max", "mean", "last")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class TokenBlock:
    """Codes of some prompts' tokens, restricted to the chosen features.

    codes: CSR, rows = tokens, column j = the j-th chosen feature.
    offsets: prompt p owns rows offsets[p]..offsets[p+1] (local to the block).
    prompt: the global number of each prompt (run prompt-table index, corpus window number).
    token_ids: the token id of each row.
    skip_first: each prompt's first row is BOS and is left out of every summary.
    groups: each prompt's group label (None: no groups).
    """

    codes: sp.csr_matrix
    offsets: np.ndarray
    prompt: np.ndarray
    token_ids: np.ndarray
    skip_first: bool = False
    groups: list[Any] | None = None


def sample_key(prompt: np.ndarray, feature: int) -> np.ndarray:
    """A fixed pseudo-random uint64 per (prompt, feature) (splitmix64 of both): the sample of
    a feature's firing prompts is those with the smallest keys, whatever the block order."""
    with np.errstate(over="ignore"):
        z = np.asarray(prompt, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z + np.uint64(feature) * np.uint64(0xD1B54A32D192ED03) + np.uint64(1)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


class DoublingHistogram:
    """Histogram of positive values on [0, hi), hi a power of two that doubles as needed."""

    def __init__(self, n_bins: int = N_BINS) -> None:
        if n_bins < 2 or n_bins & (n_bins - 1):
            raise ValueError(f"n_bins must be a power of two, got {n_bins}")
        self.n_bins = n_bins
        self.counts = np.zeros(n_bins, dtype=np.int64)
        self.hi = 0.0  # 0 until the first value
        self.negative = 0  # values below zero (not binned; SAE codes are non-negative)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        self.negative += int((v < 0).sum())
        v = v[v > 0]
        if not len(v):
            return
        top = float(v.max())
        if top >= self.hi:
            new_hi = float(2.0 ** np.frexp(top)[1])  # smallest power of two > top
            if self.hi > 0:
                shift = int(round(np.log2(new_hi / self.hi)))
                merged = np.zeros_like(self.counts)
                idx = np.arange(self.n_bins) >> shift
                np.add.at(merged, idx, self.counts)
                self.counts = merged
            self.hi = new_hi
        idx = np.floor(v * (self.n_bins / self.hi)).astype(np.int64)
        self.counts += np.bincount(idx, minlength=self.n_bins)

    def result(self) -> tuple[list[float], list[int]]:
        """(edges, counts) with trailing empty bins trimmed; empty lists before any value."""
        if self.hi == 0:
            return [], []
        used = int(np.flatnonzero(self.counts).max()) + 1
        edges = np.linspace(0.0, self.hi, self.n_bins + 1)[: used + 1]
        return [float(e) for e in edges], [int(c) for c in self.counts[:used]]


@dataclass
class Context:
    """One context of a feature: a window of tokens around a prompt's peak."""

    kind: str  # "top" | "quantile"
    rank: int
    prompt: int
    position: int  # the peak token's position in its prompt (0 = first token, BOS included)
    value: float  # the feature's activation there
    start: int  # position of the window's first token
    token_ids: list[int]
    acts: list[float]
    quantile: float | None = None
    key: int = 0  # sample key (quantile contexts)


@dataclass
class _FeatureState:
    hist: DoublingHistogram
    n_fire: int = 0
    n_prompts_fire: int = 0
    max_value: float = 0.0
    top: list[Context] = field(default_factory=list)
    sample: list[Context] = field(default_factory=list)
    group_sum: dict[Any, float] = field(default_factory=dict)


class FeatureAccumulator:
    """Streams TokenBlocks into per-feature summaries (see the module doc)."""

    def __init__(
        self,
        features: list[int],
        *,
        top: int = 20,
        window: tuple[int, int] = (12, 4),
        n_sample: int = 64,
        n_bins: int = N_BINS,
        pool: str = "max",
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.features = list(features)
        self.top_n = int(top)
        self.before, self.after = window
        self.n_sample = int(n_sample)
        self.pool = pool
        self.n_tokens = 0
        self.n_prompts = 0
        self.group_n: dict[Any, int] = {}
        self.state = [_FeatureState(DoublingHistogram(n_bins)) for _ in self.features]

    def add(self, b: TokenBlock) -> None:
        x = sp.csc_matrix(b.codes)
        x.sort_indices()
        offs = np.asarray(b.offsets, dtype=np.int64)
        n_p = len(offs) - 1
        lengths = np.diff(offs)
        first = offs[:-1] + ((lengths > 1) if b.skip_first else 0)  # first kept row
        kept = lengths - (first - offs[:-1])
        row_prompt = np.repeat(np.arange(n_p), lengths)
        kept_row = np.ones(x.shape[0], dtype=bool)
        kept_row[offs[:-1][first > offs[:-1]]] = False
        self.n_tokens += int(kept.sum())
        self.n_prompts += n_p
        labels = list(b.groups) if b.groups is not None else None
        if labels is not None:
            for g in labels:
                if g is not None:  # prompts without a group count in no group's mean
                    self.group_n[g] = self.group_n.get(g, 0) + 1
        for j, f in enumerate(self.features):
            rows = x.indices[x.indptr[j] : x.indptr[j + 1]]
            vals = x.data[x.indptr[j] : x.indptr[j + 1]].astype(np.float64)
            keep = kept_row[rows] & (vals != 0)
            rows, vals = rows[keep], vals[keep]
            self._add_feature(j, int(f), b, rows, vals, row_prompt, offs, first, kept, labels)

    def _add_feature(
        self,
        j: int,
        f: int,
        b: TokenBlock,
        rows: np.ndarray,
        vals: np.ndarray,
        row_prompt: np.ndarray,
        offs: np.ndarray,
        first: np.ndarray,
        kept: np.ndarray,
        labels: list[Any] | None,
    ) -> None:
        st = self.state[j]
        st.hist.add(vals)
        st.n_fire += len(vals)
        if not len(vals):
            return
        st.max_value = max(st.max_value, float(vals.max()))
        p = row_prompt[rows]
        starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
        prompts = p[starts]
        peak = np.maximum.reduceat(vals, starts)
        # the first row of each prompt holding its peak
        is_peak = vals == np.repeat(peak, np.diff(np.r_[starts, len(vals)]))
        peak_row = np.array(
            [
                rows[s + int(np.argmax(is_peak[s:e]))]
                for s, e in zip(starts, np.r_[starts[1:], len(vals)], strict=True)
            ]
        )
        st.n_prompts_fire += len(prompts)
        if labels is not None:
            pooled = self._pooled(vals, starts, prompts, rows, offs, kept, peak)
            for q, v in zip(prompts, pooled, strict=True):
                if labels[q] is not None:
                    st.group_sum[labels[q]] = st.group_sum.get(labels[q], 0.0) + float(v)
        gprompt = np.asarray(b.prompt, dtype=np.int64)[prompts]
        # top-N by (value desc, global prompt asc) over kept and new candidates
        if self.top_n > 0:
            cand = [(-c.value, c.prompt, -1) for c in st.top]
            cand += [
                (-float(v), int(g), k) for k, (v, g) in enumerate(zip(peak, gprompt, strict=True))
            ]
            cand.sort()
            old = {c.prompt: c for c in st.top}
            new_top = []
            for neg, g, k in cand[: self.top_n]:
                if k < 0:
                    new_top.append(old[g])
                else:
                    new_top.append(
                        self._context(
                            "top",
                            b,
                            rows,
                            vals,
                            int(prompts[k]),
                            g,
                            int(peak_row[k]),
                            -neg,
                            offs,
                            first,
                        )
                    )
            st.top = new_top
        if self.n_sample > 0:
            keys = sample_key(gprompt, f)
            cand_s = [(c.key, -1) for c in st.sample] + [(int(k), i) for i, k in enumerate(keys)]
            cand_s.sort()
            olds = {c.key: c for c in st.sample}
            new_s = []
            for key, i in cand_s[: self.n_sample]:
                if i < 0:
                    new_s.append(olds[key])
                else:
                    c = self._context(
                        "quantile",
                        b,
                        rows,
                        vals,
                        int(prompts[i]),
                        int(gprompt[i]),
                        int(peak_row[i]),
                        float(peak[i]),
                        offs,
                        first,
                    )
                    c.key = key
                    new_s.append(c)
            st.sample = new_s

    def _pooled(
        self,
        vals: np.ndarray,
        starts: np.ndarray,
        prompts: np.ndarray,
        rows: np.ndarray,
        offs: np.ndarray,
        kept: np.ndarray,
        peak: np.ndarray,
    ) -> np.ndarray:
        """Each firing prompt's pooled value (silent prompts pool to 0)."""
        if self.pool == "max":
            fires_everywhere = np.diff(np.r_[starts, len(vals)]) == kept[prompts]
            return np.where(fires_everywhere, peak, np.maximum(peak, 0.0))
        if self.pool == "mean":
            return np.add.reduceat(vals, starts) / np.maximum(kept[prompts], 1)
        last_row = offs[1:][prompts] - 1
        ends = np.r_[starts[1:], len(vals)] - 1
        return np.where(rows[ends] == last_row, vals[ends], 0.0)

    def _context(
        self,
        kind: str,
        b: TokenBlock,
        rows: np.ndarray,
        vals: np.ndarray,
        local: int,
        prompt: int,
        peak_row: int,
        value: float,
        offs: np.ndarray,
        first: np.ndarray,
    ) -> Context:
        lo = max(int(first[local]), peak_row - self.before)
        hi = min(int(offs[local + 1]), peak_row + self.after + 1)
        acts = np.zeros(hi - lo, dtype=np.float64)
        a, z = np.searchsorted(rows, [lo, hi])
        acts[rows[a:z] - lo] = vals[a:z]
        base = int(offs[local])
        return Context(
            kind=kind,
            rank=0,
            prompt=prompt,
            position=peak_row - base,
            value=float(value),
            start=lo - base,
            token_ids=[int(t) for t in b.token_ids[lo:hi]],
            acts=[float(v) for v in acts],
        )

    def results(self, quantiles: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)) -> list[dict[str, Any]]:
        """Per feature: counts, density, histogram, top and quantile contexts, group means."""
        out = []
        for f, st in zip(self.features, self.state, strict=True):
            edges, counts = st.hist.result()
            top = [Context(**{**c.__dict__, "rank": r}) for r, c in enumerate(st.top)]
            out.append(
                {
                    "feature": f,
                    "n_tokens": self.n_tokens,
                    "n_fire": st.n_fire,
                    "density": st.n_fire / self.n_tokens if self.n_tokens else 0.0,
                    "n_prompts": self.n_prompts,
                    "n_prompts_fire": st.n_prompts_fire,
                    "max_value": st.max_value,
                    "hist_edges": edges,
                    "hist_counts": counts,
                    "contexts": top + pick_quantiles(st.sample, quantiles),
                    "pool": self.pool,
                    "group_means": {
                        str(g): st.group_sum.get(g, 0.0) / n for g, n in self.group_n.items() if n
                    },
                    "group_sizes": {str(g): n for g, n in self.group_n.items()},
                }
            )
        return out


def pick_quantiles(sample: list[Context], quantiles: tuple[float, ...]) -> list[Context]:
    """From a uniform sample of firing prompts, the contexts at the given quantiles of their
    peak values (each sampled context used once)."""
    if not sample:
        return []
    ordered = sorted(sample, key=lambda c: (c.value, c.prompt))
    out, used = [], set()
    for r, q in enumerate(quantiles):
        i = int(round(q * (len(ordered) - 1)))
        if i in used:
            continue
        used.add(i)
        c = ordered[i]
        out.append(Context(**{**c.__dict__, "rank": r, "quantile": float(q)}))
    return out
