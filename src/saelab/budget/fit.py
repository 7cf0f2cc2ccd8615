"""When a plan does not fit: the cheapest change that does, or a plain 'nothing fits'.

Changes are combined, not tried one at a time: on a 2 GB laptop a 1B model needs int8 *and*
a smaller batch, and no single change would say so. Each combination gets a cost, the price a
user pays for it, in this order (cheapest first):

    a smaller batch            only speed
    float16 store              a rounding of stored values nobody sees
    layer groups               time: one run per group, each re-running the model
    half precision, int8, nf4  numerics, in that order (only where the platform has them)
    last-token positions       data: one row per prompt instead of one per token
    fewer layers               data: the deepest hooks are dropped
    fewer prompts              data

Combinations are estimated in order of cost (each with the largest batch that fits), and the
first that fits is the suggestion. When even the most frugal combination does not fit, the
verdict says so and gives that combination's needs: the minimum this run takes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saelab.budget.estimate import Estimate, ExtractWorkload, TokenStats
from saelab.models.hooks import HookPoint
from saelab.units import format_bytes

EstimateFn = Callable[[ExtractWorkload], Estimate]
_DTYPE_COST = {"float32": 0.0, "float16": 1.5, "bfloat16": 1.5, "int8": 2.5, "nf4": 3.5}


@dataclass(frozen=True)
class Option:
    """One combination of changes, its cost, and the workloads it runs (one per group)."""

    dtype: str
    store_dtype: str
    positions: str
    groups: int
    keep_hooks: int
    n_prompts: int
    cost: float


@dataclass(frozen=True)
class Fit:
    option: Option
    batch_size: int
    estimate: Estimate  # of the group that needs the most
    changes: tuple[str, ...]  # "`dtype` int8", ... in the values' own names

    def describe(self) -> str:
        e = self.estimate
        need = f"peak RAM {format_bytes(e.ram)}"
        if e.gpu:
            need += f", GPU {format_bytes(e.gpu)}"
        return f"{', '.join(self.changes)} (est. {need}, disk {format_bytes(e.disk)})"


def hook_spec(hooks: Sequence[HookPoint]) -> str:
    """Hook points written compactly: resid_post.0-7,mlp_out.3."""
    by_site: dict[str, list[int]] = {}
    out: list[str] = []
    for h in hooks:
        if h.is_module:
            out.append(h.name)
        else:
            by_site.setdefault(h.site, []).append(h.layer)
    for site, layers in by_site.items():
        layers = sorted(set(layers))
        runs: list[str] = []
        start = prev = layers[0]
        for x in [*layers[1:], None]:
            if x is not None and x == prev + 1:
                prev = x
                continue
            runs.append(f"{site}.{start}" if start == prev else f"{site}.{start}-{prev}")
            if x is not None:
                start = prev = x
        out.extend(runs)
    return ",".join(out)


def _chunks(hooks: Sequence[HookPoint], groups: int) -> list[tuple[HookPoint, ...]]:
    n = len(hooks)
    size = math.ceil(n / groups)
    return [tuple(hooks[i : i + size]) for i in range(0, n, size)]


def _tokens(t: TokenStats, n: int) -> TokenStats:
    if n >= t.n_prompts:
        return t
    return dataclasses.replace(
        t, n_prompts=n, n_tokens=max(n, int(t.n_tokens * n / max(t.n_prompts, 1)))
    )


def options(w: ExtractWorkload, dtypes: Sequence[str]) -> list[Option]:
    """Every combination worth trying, cheapest first."""
    order = [w.model_dtype, *[d for d in dtypes if _DTYPE_COST[d] > _DTYPE_COST[w.model_dtype]]]
    stores = [w.store_dtype] + (["float16"] if w.store_dtype == "float32" else [])
    positions = [w.positions] + (["last"] if w.positions == "all" and not w.generate else [])
    n = len(w.hooks)
    groups = sorted({g for g in (1, 2, 4, 8, n) if 1 <= g <= n})
    keeps = sorted({k for k in (n, (3 * n) // 4, n // 2, n // 4, 1) if k >= 1}, reverse=True)
    p = w.tokens.n_prompts
    prompts = sorted({q for q in (p, p // 2, p // 4, p // 10) if q >= 1}, reverse=True)
    out = []
    for dt, st, pos, g, keep, q in itertools.product(
        order, stores, positions, groups, keeps, prompts
    ):
        if g > keep:
            continue
        cost = (
            _DTYPE_COST[dt] - _DTYPE_COST[w.model_dtype]
            + (0.5 if st != w.store_dtype else 0)
            + math.log2(g)
            + (6 if pos != w.positions else 0)
            + (7 + (n - keep) / n if keep < n else 0)
            + (9 + (p - q) / p if q < p else 0)
        )  # fmt: skip
        out.append(Option(dt, st, pos, g, keep, q, cost))
    return sorted(out, key=lambda o: o.cost)


def _workloads(w: ExtractWorkload, o: Option, batch: int) -> list[ExtractWorkload]:
    kept = w.hooks[: o.keep_hooks]
    base = dataclasses.replace(
        w,
        model_dtype=o.dtype,
        store_dtype=o.store_dtype,
        positions=o.positions,
        tokens=_tokens(w.tokens, o.n_prompts),
        batch_size=batch,
        shard_size=min(w.shard_size, max(batch, 1)) if batch < w.batch_size else w.shard_size,
    )
    return [dataclasses.replace(base, hooks=chunk) for chunk in _chunks(kept, o.groups)]


def _worst(ws: list[ExtractWorkload], estimate: EstimateFn) -> Estimate:
    ests = [estimate(x) for x in ws]
    worst = max(ests, key=lambda e: (e.ram, e.gpu))
    # every group writes its own store: disk adds up
    return dataclasses.replace(worst, disk=sum(e.disk for e in ests))


def try_option(
    w: ExtractWorkload, o: Option, fits: Callable[[Estimate], bool], estimate: EstimateFn
) -> tuple[int, Estimate] | None:
    """The largest batch (up to the current one) with which `o` fits, and its estimate."""
    if not fits(est := _worst(_workloads(w, o, 1), estimate)):
        return None
    lo, hi, best = 2, w.batch_size, (1, est)
    while lo <= hi:
        mid = (lo + hi) // 2
        est = _worst(_workloads(w, o, mid), estimate)
        if fits(est):
            best, lo = (mid, est), mid + 1
        else:
            hi = mid - 1
    return best


def changes(w: ExtractWorkload, o: Option, batch: int) -> tuple[str, ...]:
    out = []
    if o.dtype != w.model_dtype:
        out.append(f"`dtype` {o.dtype}")
    if batch != w.batch_size:
        out.append(f"`batch_size` {batch}")
    if o.store_dtype != w.store_dtype:
        out.append(f"`store_dtype` {o.store_dtype}")
    if o.positions != w.positions:
        out.append(f"`positions` {o.positions}")
    kept = w.hooks[: o.keep_hooks]
    if o.keep_hooks < len(w.hooks):
        out.append(f"fewer layers: `hooks` {hook_spec(kept)}")
    if o.groups > 1:
        parts = [hook_spec(c) for c in _chunks(kept, o.groups)]
        out.append(
            f"{len(parts)} layer groups, one run folder each: `hooks` " + ", then ".join(parts)
        )
    if o.n_prompts < w.tokens.n_prompts:
        out.append(f"fewer prompts: `limit` {o.n_prompts}")
    return tuple(out)


def cheapest_fits(
    w: ExtractWorkload,
    fits: Callable[[Estimate], bool],
    estimate: EstimateFn,
    dtypes: Sequence[str],
    n: int = 3,
) -> tuple[list[Fit], Fit | None]:
    """Up to `n` fitting combinations, cheapest first, none a superset of an earlier one;
    and, when nothing fits, the most frugal combination (the run's minimum) instead."""
    opts = options(w, dtypes)
    # Every knob but the dtype only ever lowers the needs, so each dtype's most frugal
    # combination says whether that dtype can fit at all (int8 on CPU keeps float32
    # embeddings and loads every layer: a memory-mapped bfloat16 run of fewer layers can
    # need less).
    frugal = {o.dtype: _frugal(o, opts) for o in opts}
    possible = {d for d, o in frugal.items() if try_option(w, o, fits, estimate)}
    if not possible:
        ests = {d: _worst(_workloads(w, o, 1), estimate) for d, o in frugal.items()}
        least = min(ests, key=lambda d: (ests[d].ram, ests[d].gpu, ests[d].disk))
        return [], Fit(frugal[least], 1, ests[least], changes(w, frugal[least], 1))
    found: list[Fit] = []
    for o in (o for o in opts if o.dtype in possible):
        if any(_covers(o, f.option, w) for f in found):
            continue
        got = try_option(w, o, fits, estimate)
        if got is None:
            continue
        batch, est = got
        found.append(Fit(o, batch, est, changes(w, o, batch)))
        if len(found) >= n:
            break
    return found, None


def _frugal(o: Option, opts: list[Option]) -> Option:
    """The option of `o`'s dtype that gives up the most: every knob at its end."""
    same = [x for x in opts if x.dtype == o.dtype]
    return Option(
        o.dtype,
        min((x.store_dtype for x in same), key=lambda d: d != "float16"),
        min((x.positions for x in same), key=lambda p: p != "last"),
        1,
        min(x.keep_hooks for x in same),
        min(x.n_prompts for x in same),
        max(x.cost for x in same),
    )


def _covers(o: Option, earlier: Option, w: ExtractWorkload) -> bool:
    """`o` gives up at least everything `earlier` gave up (so it is no new choice)."""
    return (
        _DTYPE_COST[o.dtype] >= _DTYPE_COST[earlier.dtype]
        and (o.store_dtype != w.store_dtype or earlier.store_dtype == w.store_dtype)
        and (o.positions != w.positions or earlier.positions == w.positions)
        and o.groups >= earlier.groups
        and o.keep_hooks <= earlier.keep_hooks
        and o.n_prompts <= earlier.n_prompts
    )
