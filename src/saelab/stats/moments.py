"""Streaming per-feature, per-group moments of sparse codes: the one pass over the data.

`TwoGroupAccumulator` takes one hook's codes in row blocks (CSR, prompts x features) with a
boolean label per row (True = group A) and keeps, per feature and group, in float64:

    n       rows of the group (the same for every feature)
    active  rows where the feature is non-zero
    sum     sum of the values
    sumsq   sum of the squared values
    vmin, vmax  the extremes of the values, tracked only while the feature fires in every row
            of the group seen so far (enough to tell exactly whether a group, or the whole
            column, is constant)

Every update is O(nnz): each group's rows, read as the CSC of their transpose, times a vector
of ones (the `X.T @ indicator` product, one group at a time); no dense prompts x features
matrix is ever built. With `keep_values` (the default) it also keeps every non-zero
value with its feature and group (a COO of 7-13 bytes per non-zero), which the Mann-Whitney
ranks and the two-pass variance need. Group statistics come from `two_group_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from saelab.errors import SaelabError

A, B = 0, 1  # row index of each group in the (2, n_features) arrays


@dataclass(frozen=True)
class KeptValues:
    """The non-zero values of one hook, concatenated over blocks (in arrival order)."""

    feature: np.ndarray  # uint16 or uint32, feature id of each non-zero
    value: np.ndarray  # float32 or float64, never 0 or NaN
    in_b: np.ndarray  # bool, True where the row belongs to group B


class TwoGroupAccumulator:
    """Per-feature group counts, sums and sums of squares (float64), streamed over row blocks.

    `add(block, in_a)` takes a scipy.sparse CSR matrix (rows = prompts, columns = the
    `n_features` features; float32/64 or integer values, zeros implicit; other sparse
    formats and dense arrays, float16 included, are converted) and a boolean vector, True
    where the row is in group A and False where it is in group B. Rows of neither group must
    be removed by the caller. Blocks may come in any order and size; the result does not
    depend on how the rows were split (up to float64 rounding of the sums).
    """

    def __init__(self, n_features: int, *, keep_values: bool = True) -> None:
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        f = int(n_features)
        self.n_features = f
        self.keep_values = bool(keep_values)
        self.n = np.zeros(2, dtype=np.int64)
        self.active = np.zeros((2, f), dtype=np.int64)
        self.sum = np.zeros((2, f), dtype=np.float64)
        self.sumsq = np.zeros((2, f), dtype=np.float64)
        self.vmin = np.full((2, f), np.inf)
        self.vmax = np.full((2, f), -np.inf)
        self._feature_dtype = np.uint16 if f <= 1 << 16 else np.uint32
        self._kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    # -- input --------------------------------------------------------------------------

    def add(self, block: sp.spmatrix | sp.sparray | np.ndarray, in_a: np.ndarray) -> None:
        """Accumulate one row block (see the class docstring)."""
        x = self._as_csr(block)
        labels = np.asarray(in_a)
        if labels.dtype != np.bool_:
            raise ValueError(f"in_a must be a boolean array, got dtype {labels.dtype}")
        if labels.shape != (x.shape[0],):
            raise ValueError(
                f"in_a has shape {labels.shape} but the block has {x.shape[0]} rows;"
                " give one label per row"
            )
        n_rows = x.shape[0]
        if n_rows == 0:
            return
        n_a = int(np.count_nonzero(labels))
        self.n += (n_a, n_rows - n_a)
        if x.nnz == 0:
            return

        if not labels[:n_a].all():  # gather each group's rows (one O(nnz) copy)
            x = x[np.concatenate((np.flatnonzero(labels), np.flatnonzero(~labels)))]
        ip, split = x.indptr, int(x.indptr[n_a])  # group A's rows first: non-zeros [0, split)
        if split > 0:
            self._add_group(A, ip[: n_a + 1], x.indices[:split], x.data[:split])
        if x.nnz > split:
            self._add_group(B, ip[n_a:] - split, x.indices[split:], x.data[split:])

    def _add_group(self, g: int, indptr: np.ndarray, indices: np.ndarray, raw: np.ndarray) -> None:
        """Accumulate the rows of one group (CSR arrays): three sparse mat-vecs, O(nnz).

        The rows, read as the CSC of their transpose, times a vector of ones give column
        sums; the same matrix serves the values, their squares and the firing indicator.
        """
        if self.keep_values:
            small = raw.dtype in (np.float16, np.float32)
            value = raw.astype(np.float32 if small else np.float64)
            in_b = np.full(raw.size, g == B)
            self._kept.append((indices.astype(self._feature_dtype), value, in_b))
        n_rows = indptr.size - 1
        data = raw.astype(np.float64)  # float64 sums only (float16 squares overflow)
        xt = sp.csc_matrix((data, indices, indptr), shape=(self.n_features, n_rows))
        ones = np.ones(n_rows)
        self.sum[g] += xt @ ones
        np.square(data, out=data)  # xt holds `data` itself: the same matrix, squared
        self.sumsq[g] += xt @ ones
        data.fill(1.0)
        counts = (xt @ ones).astype(np.int64)
        self.active[g] += counts
        self._track_extremes(g, counts, n_rows, indices, raw)

    def _as_csr(self, block: sp.spmatrix | sp.sparray | np.ndarray) -> sp.csr_matrix:
        if isinstance(block, np.ndarray):  # a dense block (scipy.sparse has no float16)
            dense = np.atleast_2d(block)
            block = sp.csr_matrix(dense.astype(np.float32) if dense.dtype == np.float16 else dense)
        if not sp.issparse(block):
            raise ValueError(f"a block must be a scipy.sparse CSR matrix, got {type(block)}")
        x = block if block.format == "csr" else block.tocsr()
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise SaelabError(
                f"a block of codes has {x.shape[-1]} features but the accumulator expects"
                f" {self.n_features}; give every shard of one hook the same SAE width"
            )
        if x.dtype.kind not in "fiub":
            raise ValueError(f"codes must be real numbers, got dtype {x.dtype}")
        if not x.has_canonical_format:
            x = x.copy()
            x.sum_duplicates()
        if x.dtype.kind == "f" and not np.isfinite(x.data).all():
            raise SaelabError(
                "a block of codes contains NaN or infinite values; re-encode the hook"
                " (its SAE or activations overflowed) before testing it"
            )
        if x.nnz and not x.data.all():
            x = x.copy()
            x.eliminate_zeros()
        return x

    def _track_extremes(
        self, g: int, counts: np.ndarray, n_rows: int, indices: np.ndarray, raw: np.ndarray
    ) -> None:
        """Update vmin/vmax of the features that fire in every row of this group's block.

        A feature that misses a row anywhere can never be constant in the group, so only
        these matter; in SAE codes they are few, so this costs next to nothing.
        """
        full = counts == n_rows
        if not full.any():
            return
        sel = full[indices]
        if sel.any():
            values = raw[sel].astype(np.float64)
            np.minimum.at(self.vmin[g], indices[sel], values)
            np.maximum.at(self.vmax[g], indices[sel], values)

    # -- output -------------------------------------------------------------------------

    @property
    def nnz(self) -> int:
        return int(self.active.sum())

    def group_constant(self) -> np.ndarray:
        """(2, n_features) bool: the feature takes one value in every row of the group."""
        n = self.n[:, None]
        every_row = (self.active == n) & (self.vmin == self.vmax)
        return (self.active == 0) | every_row

    def column_constant(self) -> np.ndarray:
        """(n_features,) bool: one value over all rows of both groups (dead features too)."""
        total = self.active.sum(axis=0)
        dead = total == 0
        full = total == self.n.sum()
        same = (self.vmin[A] == self.vmax[A]) & (self.vmin[B] == self.vmax[B])
        return dead | (full & same & (self.vmin[A] == self.vmin[B]))

    def kept(self) -> KeptValues:
        """The kept non-zero values, concatenated (a copy; the accumulator keeps its own)."""
        if not self.keep_values:
            raise ValueError("this accumulator was built with keep_values=False")
        if not self._kept:
            empty = np.zeros(0, dtype=self._feature_dtype)
            return KeptValues(empty, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool))
        feats, vals, groups = zip(*self._kept, strict=True)
        return KeptValues(np.concatenate(feats), np.concatenate(vals), np.concatenate(groups))


def group_means_vars(
    acc: TwoGroupAccumulator, kept: KeptValues | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group means and sample variances (ddof=1), each (2, n_features) float64.

    With the kept values the variance is two-pass (centred, as numpy and scipy compute it):
    the sum of (v - mean)^2 over the non-zeros plus mean^2 for every zero. Without them it
    comes from the float64 sums of squares, clamped at 0 (relative error ~1e-16 x mean^2/var).
    A group whose feature is constant gets exactly 0 either way.
    """
    n = acc.n[:, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = acc.sum / n
        if kept is not None:
            f = acc.n_features
            flat = kept.feature.astype(np.intp) + f * kept.in_b
            dev = kept.value - mean.reshape(-1)[flat]
            m2 = np.bincount(flat, weights=dev * dev, minlength=2 * f).astype(np.float64)
            m2 = m2.reshape(2, f)
            m2 += (n - acc.active) * mean * mean
        else:
            m2 = acc.sumsq - acc.sum * mean
        var = np.maximum(m2, 0.0) / (n - 1.0)
    var[acc.group_constant()] = 0.0
    return mean, var
