"""Contrast statistics: per-feature two-group tests on sparse SAE codes, against scipy dense.

Synthetic SAE-like codes, one CSR matrix (prompts x features, float32) per hook: per-feature
firing rates log-uniform in 1e-4..0.3 (heavy-tailed: most features rare, a few busy), 10%
dead features, exponential magnitudes with a lognormal scale per feature; ~3% dense. 1% of
the features carry a real group effect (firing rate x1.5 and magnitudes x1.3 in group A).
Groups: half the prompts each (3,200 + 3,200 by default).

  part 1  one hook. saelab: TwoGroupAccumulator(keep_values=False).add + two_group_stats
          (Welch t/df/p/log10 p, Cohen's d, Hedges' g, firing-rate test) + bh_adjust(p_t),
          from the CSR matrix. Baseline: scipy.stats.ttest_ind(dense_A, dense_B,
          equal_var=False) on the dense float64 matrix (built once, untimed). Alternating
          rounds, order rotated; median of paired ratios. Target: >= 20x and saelab < 1 s.
  part 2  --hooks hooks of the same size (31 by default), in a fresh child process: every
          statistic (keep_values=True: Mann-Whitney too) for each hook, a BH per hook, then
          a global BH over all hooks (p_t, p_u, p_rate). Each hook's codes are generated
          just before it is tested and dropped after (standing in for reading its shards);
          the tables of all hooks are kept. Timed: the statistics (accumulate + tests + BH),
          and the wall time including the generation. Peak RSS (VmHWM) of the child, and its
          increase over the baseline after imports and generating the first hook's codes.
          Targets: statistics of all hooks < 30 s, peak < 2 GB.

    .venv/bin/python benchmarks/bench_contrast.py [--quick] [--json OUT] [--threads N]

--quick (~30 s): part 1 on 16,384 features (half the dense matrix for scipy) and part 2 on
12 hooks; the 31-hook time is extrapolated from the per-hook time (and marked so). The full
run takes ~45 s on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import _common as C

C.use_repo_source()

GB = 1e9


def make_hook(
    seed: int, n_a: int, n_b: int, n_features: int, *, interleave: bool = True
) -> tuple[Any, Any]:
    """(codes CSR float32, in_a) of one synthetic hook; group A rows first unless interleave."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n = n_a + n_b
    rate = np.exp(rng.uniform(np.log(1e-4), np.log(0.3), n_features))
    rate[rng.random(n_features) < 0.10] = 0.0  # dead latents
    scale = rng.lognormal(0.0, 0.5, n_features).astype(np.float32)
    effect = rng.random(n_features) < 0.01
    rate_a = np.where(effect, np.minimum(rate * 1.5, 1.0), rate)
    feats, rows = [], []
    for size, r, offset in ((n_a, rate_a, 0), (n_b, rate, n_a)):
        f = np.repeat(np.arange(n_features, dtype=np.int32), rng.binomial(size, r))
        feats.append(f)
        rows.append(offset + rng.integers(0, size, f.size, dtype=np.int32))
    feat = np.concatenate(feats)
    row = np.concatenate(rows)
    value = rng.standard_exponential(feat.size, dtype=np.float32) * scale[feat]
    value[(row < n_a) & effect[feat]] *= np.float32(1.3)
    in_a = np.arange(n) < n_a
    if interleave:  # prompts of the two groups mixed, as a real prompt table has them
        perm = rng.permutation(n).astype(np.int32)
        row = perm[row]
        in_a = in_a[np.argsort(perm)]
    x = sp.coo_matrix((value, (row, feat)), shape=(n, n_features)).tocsr()  # sums duplicates
    return x, in_a


def welch_saelab(x: Any, in_a: Any) -> dict[str, Any]:
    from saelab.stats import TwoGroupAccumulator, bh_adjust, two_group_stats

    acc = TwoGroupAccumulator(x.shape[1], keep_values=False)
    acc.add(x, in_a)
    res = two_group_stats(acc)
    res["q_t"] = bh_adjust(res["p_t"])
    return res


def part1(a: Any, n_prompts: int, n_features: int) -> dict[str, Any]:
    import numpy as np
    from scipy import stats

    n_a = n_prompts // 2
    x, in_a = make_hook(1, n_a, n_prompts - n_a, n_features, interleave=False)
    t0 = time.perf_counter()
    dense = x.toarray().astype(np.float64)
    dense_a, dense_b = dense[:n_a], dense[n_a:]  # views: A rows come first here
    build_s = time.perf_counter() - t0
    budget = a.budget or (12.0 if a.quick else 60.0)
    min_rounds, max_rounds = (2, 3) if a.quick else (3, 5)

    out: dict[str, Any] = {}

    def run_scipy() -> None:
        out["scipy"] = stats.ttest_ind(dense_a, dense_b, axis=0, equal_var=False)

    def run_saelab() -> None:
        out["saelab"] = welch_saelab(x, in_a)

    fns = {"scipy_dense": run_scipy, "saelab": run_saelab}
    times: dict[str, list[float]] = {m: [] for m in fns}
    t_loop = time.perf_counter()
    rounds = 0
    while C.another_round(rounds, min_rounds, max_rounds, t_loop, budget):
        for m in C.rotated(list(fns), rounds):
            times[m].append(C.timed(fns[m]))
        rounds += 1
    ratios = [s / o for s, o in zip(times["scipy_dense"], times["saelab"], strict=True)]

    ours, ref = out["saelab"], out["scipy"]
    tested = ours["tested"] & np.isfinite(ref.statistic) & (ref.pvalue > 0)

    def rel(u: Any, v: Any) -> float:
        return float(np.max(np.abs(u - v) / np.maximum(np.abs(v), 1e-300))) if u.size else 0.0

    agree = {
        "t": rel(ours["t"][tested], ref.statistic[tested]),
        "p": rel(ours["p_t"][tested], ref.pvalue[tested]),
    }
    return {
        "prompts": n_prompts,
        "features": n_features,
        "nnz": int(x.nnz),
        "density": x.nnz / (n_prompts * n_features),
        "dense_build_seconds": build_s,
        "rounds": rounds,
        "seconds": times,
        "paired_ratios": ratios,
        "speedup": C.median(ratios),
        "saelab_seconds": C.median(times["saelab"]),
        "scipy_seconds": C.median(times["scipy_dense"]),
        "tested": int(ours["tested"].sum()),
        "significant_q05": int(np.sum(ours["q_t"] < 0.05)),
        "max_rel_diff_vs_scipy": agree,
    }


def part2_child(n_hooks: int, n_prompts: int, n_features: int) -> dict[str, Any]:
    """Runs in a fresh process: every statistic of n_hooks hooks and a global BH."""
    import numpy as np

    from saelab.budget.measure import process_peak_rss
    from saelab.stats import TwoGroupAccumulator, bh_adjust, two_group_stats

    n_a = n_prompts // 2
    t_wall = time.perf_counter()
    gen_s = 0.0
    t0 = time.perf_counter()
    x, in_a = make_hook(100, n_a, n_prompts - n_a, n_features)
    gen_s += time.perf_counter() - t0
    baseline = process_peak_rss()
    stats_s = 0.0
    per_hook_s: list[float] = []
    tables: list[dict[str, Any]] = []
    nnz = 0
    for h in range(n_hooks):
        if h > 0:
            t0 = time.perf_counter()
            x, in_a = make_hook(100 + h, n_a, n_prompts - n_a, n_features)
            gen_s += time.perf_counter() - t0
        nnz += x.nnz
        t0 = time.perf_counter()
        acc = TwoGroupAccumulator(n_features)
        acc.add(x, in_a)
        res = two_group_stats(acc)
        for src in ("p_t", "p_u", "p_rate"):
            res["q_hook" + src[1:]] = bh_adjust(res[src])
        del acc
        dt = time.perf_counter() - t0
        per_hook_s.append(dt)
        stats_s += dt
        tables.append(res)
        del x, in_a
    t0 = time.perf_counter()
    q = {
        src: bh_adjust(np.concatenate([t[src] for t in tables])) for src in ("p_t", "p_u", "p_rate")
    }
    bh_s = time.perf_counter() - t0
    stats_s += bh_s
    wall = time.perf_counter() - t_wall
    peak = process_peak_rss()
    tested = int(sum(t["tested"].sum() for t in tables))
    return {
        "hooks": n_hooks,
        "prompts": n_prompts,
        "features": n_features,
        "nnz_total": nnz,
        "stats_seconds": stats_s,
        "per_hook_seconds": per_hook_s,
        "global_bh_seconds": bh_s,
        "generation_seconds": gen_s,
        "wall_seconds": wall,
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "peak_increase_bytes": peak - baseline,
        "tested": tested,
        "significant_q05": {k: int(np.sum(v < 0.05)) for k, v in q.items()},
        "table_bytes": int(sum(v.nbytes for t in tables for v in t.values())),
    }


def part3_child(n_hooks: int, n_prompts: int, n_features: int, workers: int) -> dict[str, Any]:
    """Runs in a fresh process: the same job as part 2 through `hook_tables` with `workers`
    forked processes; each worker generates its hook's codes (standing in for reading them)."""
    import resource

    import numpy as np

    from saelab.budget.measure import process_peak_rss
    from saelab.stats import bh_adjust, hook_tables

    n_a = n_prompts // 2

    def blocks_of(hook: str):
        x, in_a = make_hook(100 + int(hook), n_a, n_prompts - n_a, n_features)
        return [(x, in_a)]

    t0 = time.perf_counter()
    tables = hook_tables([(str(h), n_features) for h in range(n_hooks)], blocks_of,
                         workers=workers)  # fmt: skip
    for res in tables.values():
        for src in ("p_t", "p_u", "p_rate"):
            res["q_hook" + src[1:]] = bh_adjust(res[src])
    q = {src: bh_adjust(np.concatenate([t[src] for t in tables.values()]))
         for src in ("p_t", "p_u", "p_rate")}  # fmt: skip
    wall = time.perf_counter() - t0
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    parent_peak = process_peak_rss()
    return {
        "hooks": n_hooks,
        "workers": workers,
        "wall_seconds": wall,
        "parent_peak_rss_bytes": parent_peak,
        "largest_worker_peak_rss_bytes": child_peak,
        "peak_rss_bound_bytes": parent_peak + workers * child_peak,
        "significant_q05": {k: int(np.sum(v < 0.05)) for k, v in q.items()},
    }


def part3(a: Any, n_hooks: int, n_prompts: int, n_features: int, workers: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--part3-child",
           f"{n_hooks},{n_prompts},{n_features},{workers}"]  # fmt: skip
    proc = subprocess.run(
        cmd, env=C.subprocess_env(a.threads), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"part 3 child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part2(a: Any, n_hooks: int, n_prompts: int, n_features: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--part2-child",
        f"{n_hooks},{n_prompts},{n_features}",
    ]
    proc = subprocess.run(
        cmd, env=C.subprocess_env(a.threads), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"part 2 child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--part2-child":
        hooks, prompts, features = (int(v) for v in sys.argv[2].split(","))
        print(json.dumps(part2_child(hooks, prompts, features)))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--part3-child":
        hooks, prompts, features, workers = (int(v) for v in sys.argv[2].split(","))
        print(json.dumps(part3_child(hooks, prompts, features, workers)))
        return
    p = C.base_parser(__doc__)
    p.add_argument("--prompts", type=int, default=6400, help="prompts, half per group (6400)")
    p.add_argument("--features", type=int, default=32768, help="SAE width (default 32768)")
    p.add_argument(
        "--part1-features", type=int, default=None, help="width in part 1 (quick: 16384)"
    )
    p.add_argument("--hooks", type=int, default=None, help="hooks in part 2 (31; quick: 12)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed rounds, part 1")
    p.add_argument("--workers", type=int, default=2, help="part 3: hooks in flight (default 2)")
    a = p.parse_args()
    C.pin_threads(a.threads)
    f1 = a.part1_features or (16384 if a.quick else a.features)
    n_hooks = a.hooks or (12 if a.quick else 31)
    full_hooks = 31

    r1 = part1(a, a.prompts, f1)
    print(
        f"part 1: one hook, {a.prompts:,} prompts"
        f" ({a.prompts // 2:,} + {a.prompts - a.prompts // 2:,})"
        f" x {f1:,} features, density {r1['density']:.2%} (nnz {r1['nnz']:,}); dense float64"
        f" {a.prompts * f1 * 8 / GB:.2f} GB built in {r1['dense_build_seconds']:.1f} s (untimed);"
        f" {r1['rounds']} rounds"
    )
    C.print_table(
        [
            {
                "method": "scipy ttest_ind(dense A, dense B, equal_var=False)",
                "seconds (median)": r1["scipy_seconds"],
                "spread": C.spread(r1["seconds"]["scipy_dense"]),
                "speed-up vs scipy": 1.0,
            },
            {
                "method": "saelab accumulate + Welch/d/g/rate + BH (sparse)",
                "seconds (median)": r1["saelab_seconds"],
                "spread": C.spread(r1["seconds"]["saelab"]),
                "speed-up vs scipy": r1["speedup"],
            },
        ]
    )
    agree = r1["max_rel_diff_vs_scipy"]
    print(
        f"check: max relative difference vs scipy over {r1['tested']:,} tested features:"
        f" t {agree['t']:.1e}, p {agree['p']:.1e}; {r1['significant_q05']} features with"
        " BH q < 0.05"
    )

    r2 = part2(a, n_hooks, a.prompts, a.features)
    per_hook = r2["stats_seconds"] / n_hooks
    stats_31 = r2["stats_seconds"] * full_hooks / n_hooks
    extrapolated = n_hooks != full_hooks
    print(
        f"\npart 2: {n_hooks} hooks x {a.prompts:,} prompts x {a.features:,} features"
        f" ({r2['nnz_total'] / n_hooks / 1e6:.2f} M non-zeros each), every statistic incl."
        f" Mann-Whitney, BH per hook and over all hooks ({r2['tested']:,} tested features)"
    )
    C.print_table(
        [
            {"part 2": "statistics, all hooks (s)", "value": r2["stats_seconds"]},
            {"part 2": "  per hook, median (s)", "value": C.median(r2["per_hook_seconds"])},
            {"part 2": "  global BH x3 (s)", "value": r2["global_bh_seconds"]},
            {
                "part 2": "generating the codes (s, untimed above)",
                "value": r2["generation_seconds"],
            },
            {"part 2": "wall incl. generation (s)", "value": r2["wall_seconds"]},
            {"part 2": "peak RSS (GB)", "value": r2["peak_rss_bytes"] / GB},
            {
                "part 2": "baseline: imports + 1 hook generated (GB)",
                "value": r2["baseline_rss_bytes"] / GB,
            },
            {"part 2": "peak increase over baseline (GB)", "value": r2["peak_increase_bytes"] / GB},
            {"part 2": "result tables held (GB)", "value": r2["table_bytes"] / GB},
        ]
    )
    print(f"significant (global BH q < 0.05): {r2['significant_q05']}")

    ok1 = r1["speedup"] >= 20 and r1["saelab_seconds"] < 1.0
    ok_time = stats_31 < 30.0
    ok_mem = r2["peak_rss_bytes"] < 2 * GB
    print(
        C.summary_line(
            "contrast.welch_speedup_vs_scipy_dense",
            r1["speedup"],
            ">= 20, and saelab < 1 s",
            ok1,
            f"saelab {r1['saelab_seconds']:.3f} s vs scipy {r1['scipy_seconds']:.2f} s"
            f" ({a.prompts:,} x {f1:,})",
        )
    )
    print(
        C.summary_line(
            "contrast.all_stats_31_hooks_30s_over_measured",
            30.0 / stats_31,
            ">= 1.0 (31 hooks < 30 s)",
            ok_time,
            f"{stats_31:.1f} s for 31 hooks"
            + (
                f" (extrapolated from {n_hooks} hooks, {per_hook:.2f} s each)"
                if extrapolated
                else ""
            )
            + f"; wall incl. generating the codes {r2['wall_seconds']:.1f} s for {n_hooks}",
        )
    )
    print(
        C.summary_line(
            "contrast.peak_rss_2GB_over_measured",
            2 * GB / r2["peak_rss_bytes"],
            ">= 1.0 (peak < 2 GB)",
            ok_mem,
            f"peak {r2['peak_rss_bytes'] / GB:.2f} GB, +{r2['peak_increase_bytes'] / GB:.2f} GB"
            f" over the generation baseline; {n_hooks} hooks",
        )
    )
    r3 = part3(a, n_hooks, a.prompts, a.features, a.workers)
    wall_31 = r3["wall_seconds"] * full_hooks / n_hooks
    print(
        f"\npart 3: the same {n_hooks} hooks through saelab.stats.hook_tables with"
        f" {a.workers} forked workers (each generates its hook's codes): wall"
        f" {r3['wall_seconds']:.1f} s incl. generation (sequential part 2:"
        f" {r2['wall_seconds']:.1f} s); peak RSS parent {r3['parent_peak_rss_bytes'] / GB:.2f} GB,"
        f" largest worker {r3['largest_worker_peak_rss_bytes'] / GB:.2f} GB; significant"
        f" {r3['significant_q05']} (part 2: {r2['significant_q05']})"
    )
    same = r3["significant_q05"] == r2["significant_q05"]
    ok_par = wall_31 < 30.0 and r3["peak_rss_bound_bytes"] < 2 * GB and same
    print(
        C.summary_line(
            "contrast.parallel_31_hooks_30s_over_measured",
            30.0 / wall_31,
            ">= 1.0 (31 hooks < 30 s incl. generation, all processes < 2 GB)",
            ok_par,
            f"{wall_31:.1f} s for 31 hooks with {a.workers} workers"
            + (f" (extrapolated from {n_hooks})" if extrapolated else "")
            + f"; RSS bound parent + {a.workers} x worker"
            f" {r3['peak_rss_bound_bytes'] / GB:.2f} GB; results as sequential: {same}",
        )
    )
    C.dump_json(
        a.json,
        {
            "benchmark": "contrast",
            "part3": r3,
            "machine": C.machine(),
            "config": {
                "prompts": a.prompts,
                "features": a.features,
                "part1_features": f1,
                "hooks": n_hooks,
                "quick": a.quick,
            },
            "part1": r1,
            "part2": r2,
            "summary": {
                "welch_speedup": r1["speedup"],
                "welch_saelab_seconds": r1["saelab_seconds"],
                "all_stats_31_hooks_seconds": stats_31,
                "extrapolated": extrapolated,
                "peak_rss_bytes": r2["peak_rss_bytes"],
                "pass": ok1 and ok_time and ok_mem,
            },
        },
    )


if __name__ == "__main__":
    main()
