"""Generation traces: size, write and read speed against gzip + pickle; random-trace latency.

Real traces of the default model are made once, untimed, as `saelab extract --generate`
makes them: stdlib docstrings cut to 32 tokens (BOS included), greedy generation of 64 new
tokens (`saelab.pipeline.traces.generate_batch`), then one forward pass over prompt+answer
(`capture_sequences`) for the hidden states of all 30 layers (resid_post.0-29, every position)
and the attention maps of a few layers (default 0,5,10,15,20,29, all 9 heads). Hidden states
and attention maps are held in memory as float16 torch tensors; every format below gets the
same tensors, so only the writes and reads are timed:

  gzip_pickle   gzip.open(path, "wb") + pickle.dump of a list of per-trace dicts (prompt and
                answer ids, answer text, {hook: (T, 576) float16 tensor}, {layer: (9, T, T)
                float16 tensor}, full squares): how users store traces today; the baseline
  saelab        TraceWriter(...).write_shard(...) per shard (zarr v3, byte shuffle + zstd,
                attention as packed causal lower triangles, sha256 of every file), lossless
  saelab_kb7    the same with keep_bits=7 (--keep-bits 7: 7 of float16's 10 mantissa bits)
  gzip_attn / saelab_attn
                the attention maps alone, the same two ways (dense squares vs packed
                triangles), for the attention part of the comparison

Writes, then whole-store reads, alternate in rotated order, each round into fresh files.
Reads are warm (the files were just written and sit in the page cache): they time decoding,
not the disk. A whole read is `pickle.load` of the file for gzip_pickle (float16 tensors)
and every item of `TraceDataset(run, attentions="all")` for saelab (float32 tensors, dense
T x T attention rebuilt from the triangle), which saelab pays for here. Random access is
timed per item on an open `TraceDataset`: all 30 hooks; a few attention layers alone; both.
With gzip_pickle one trace costs the whole file; a file per trace is timed for context.

Targets: saelab (lossless) bytes on disk <= gzip_pickle's; writes >= 10x faster (median of
paired ratios gzip_time / saelab_time); a random item reads in milliseconds (p95 < 100 ms).

    .venv/bin/python benchmarks/bench_traces.py [--quick] [--json OUT] [--traces N] [--dir TMP]
"""

from __future__ import annotations

import gzip
import math
import pickle
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

C.use_repo_source()

ITEM_P95_MS = 100.0  # "milliseconds, not seconds": a random item must stay under this at p95


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--traces", type=int, default=None, help="prompts traced (default 100)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length, BOS included")
    p.add_argument("--layers", default="0-29", help="resid_post layers stored (default 0-29)")
    p.add_argument(
        "--attentions", default="0,5,10,15,20,29", help="attention layers stored (all heads)"
    )
    p.add_argument(
        "--few", default="0,15,29", help="attention layers read in the 'few layers' items"
    )
    p.add_argument("--batch-size", type=int, default=50, help="prompts per generate batch, max")
    p.add_argument("--shard-size", type=int, default=32, help="traces per saelab shard")
    p.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed rounds")
    a = p.parse_args()
    n_traces = a.traces or (12 if a.quick else 100)
    budget = a.budget or (6.0 if a.quick else 50.0)
    min_rounds, max_rounds = (2, 2) if a.quick else (2, 4)
    n_items = 12 if a.quick else 30  # random items timed per dataset and round

    C.pin_threads(a.threads)
    import numpy as np
    import torch

    from saelab.budget.measure import dir_size
    from saelab.models import load_model, parse_hooks, tokenize_prompts
    from saelab.pipeline.traces import capture_sequences, generate_batch
    from saelab.store.trace_dataset import TraceDataset
    from saelab.store.trace_reader import open_traces
    from saelab.store.traces import Trace, TraceWriter

    # -- real traces, made once -----------------------------------------------------------
    t0 = time.perf_counter()
    lm = load_model("default", dtype="float32", device="cpu")
    load_s = time.perf_counter() - t0
    hooks = parse_hooks(",".join(f"resid_post.{x}" for x in _layers(a.layers)), lm.n_layers)
    names = [h.name for h in hooks]
    att_layers = _layers(a.attentions)
    few = [x for x in _layers(a.few) if x in att_layers] or att_layers[:1]
    n_heads = lm.model.config.num_attention_heads
    d_model = lm.d_model
    texts = C.stdlib_docstrings(min_chars=200, limit=n_traces)
    tp = tokenize_prompts(lm.tokenizer, texts, max_length=a.prompt_tokens)
    n_batches = math.ceil(n_traces / a.batch_size)
    size = math.ceil(n_traces / n_batches)  # even batches: 100 -> 2 x 50
    traces: list[Any] = []
    gen_s = cap_s = 0.0
    t_all = time.perf_counter()
    for start in range(0, n_traces, size):
        batch = tp.ids[start : start + size]
        t1 = time.perf_counter()
        gens = generate_batch(lm, batch, a.new_tokens)
        gen_s += time.perf_counter() - t1
        seqs = [list(p_) + g.answer_ids for p_, g in zip(batch, gens, strict=True)]
        t1 = time.perf_counter()
        hidden, attn = capture_sequences(lm, hooks, att_layers, seqs)
        cap_s += time.perf_counter() - t1
        for k, (p_, g, hid, att) in enumerate(zip(batch, gens, hidden, attn, strict=True)):
            text = lm.tokenizer.decode(g.answer_ids, skip_special_tokens=True)
            traces.append(
                Trace(
                    index=start + k,
                    prompt_ids=np.asarray(p_, dtype=np.int64),
                    answer_ids=np.asarray(g.answer_ids, dtype=np.int64),
                    answer_text=text,
                    clean_answer=text.strip(),
                    finish=g.finish,
                    # own float16 copies (a view would pickle the whole batch's storage)
                    hidden={h: v.to(torch.float16).contiguous() for h, v in hid.items()},
                    attentions={x: v.to(torch.float16).contiguous() for x, v in att.items()},
                )
            )
        del hidden, attn
    make_s = time.perf_counter() - t_all
    n_layers = lm.n_layers
    del lm
    lengths = np.asarray([len(t.prompt_ids) + len(t.answer_ids) for t in traces])
    answer_lens = np.asarray([len(t.answer_ids) for t in traces])
    raw_hidden = int(lengths.sum()) * d_model * 2 * len(names)
    raw_square = int((lengths**2).sum()) * n_heads * 2 * len(att_layers)
    raw_tri = int((lengths * (lengths + 1) // 2).sum()) * n_heads * 2 * len(att_layers)
    peak = max(float(t.hidden[h].float().abs().max()) for t in traces for h in names)

    def as_dict(tr: Any, hidden: bool = True, attention: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": tr.index,
            "prompt_ids": torch.from_numpy(tr.prompt_ids),
            "answer_ids": torch.from_numpy(tr.answer_ids),
            "answer_text": tr.answer_text,
        }
        if hidden:
            d["hidden"] = dict(tr.hidden)
        if attention:
            d["attentions"] = dict(tr.attentions)
        return d

    full_obj = [as_dict(t) for t in traces]
    attn_obj = [as_dict(t, hidden=False) for t in traces]
    attn_traces = [
        Trace(
            t.index,
            t.prompt_ids,
            t.answer_ids,
            t.answer_text,
            t.clean_answer,
            t.finish,
            {},
            t.attentions,
        )
        for t in traces
    ]

    # -- the ways to save and load ------------------------------------------------------
    def w_pickle(obj: Any) -> Any:
        def write(path: Path) -> None:
            with gzip.open(path, "wb") as f:
                pickle.dump(obj, f)

        return write

    def r_pickle(path: Path) -> None:
        with gzip.open(path, "rb") as f:
            back = pickle.load(f)
        assert len(back) == n_traces and len(back[0]["hidden"]) == len(names)

    def w_saelab(items: list[Any], hook_names: list[str], keep_bits: int | None) -> Any:
        def write(path: Path) -> None:
            writer = TraceWriter(
                path,
                hooks=hook_names,
                d_model={h: d_model for h in hook_names},
                dtype="float16",
                keep_bits=keep_bits,
                attention_layers=att_layers,
                n_heads=n_heads,
            )
            for k, s in enumerate(range(0, len(items), a.shard_size)):
                writer.write_shard(k, items[s : s + a.shard_size])

        return write

    def r_saelab(path: Path) -> None:
        ds = TraceDataset(path, attentions="all")
        for i in range(len(ds)):
            item = ds[i]
        assert len(ds) == n_traces and len(item["hidden"]) == len(names)

    write = {
        "gzip_pickle": w_pickle(full_obj),
        "saelab": w_saelab(traces, names, None),
        "saelab_kb7": w_saelab(traces, names, 7),
        "gzip_attn": w_pickle(attn_obj),
        "saelab_attn": w_saelab(attn_traces, [], None),
    }
    read = {"gzip_pickle": r_pickle, "saelab": r_saelab, "saelab_kb7": r_saelab}
    suffix = {m: ("traces.pkl.gz" if m.startswith("gzip") else "traces") for m in write}
    methods = list(write)
    once = ("gzip_attn", "saelab_attn")  # the attention-only pair: first round only

    def size_of(path: Path) -> int:
        return dir_size(path) if path.is_dir() else path.stat().st_size

    tw: dict[str, list[float]] = {m: [] for m in methods}
    tr: dict[str, list[float]] = {m: [] for m in read}
    item_ms: dict[str, list[float]] = {"hooks": [], "few_attn": [], "hooks_all_attn": []}
    item_ms["gzip_one_file"] = []
    open_ms: list[float] = []
    sizes: dict[str, int] = {}
    summaries: dict[str, dict[str, Any]] = {}
    checks: dict[str, Any] = {}
    rng = random.Random(0)
    base = Path(tempfile.mkdtemp(prefix="saelab-bench-traces-", dir=a.dir))
    try:
        # context: one gzip+pickle file per trace (random access without loading it all)
        one_dir = base / "one_file_per_trace"
        one_dir.mkdir()
        sample = rng.sample(range(n_traces), min(6, n_traces))
        for i in sample:
            w_pickle(full_obj[i])(one_dir / f"{i}.pkl.gz")
        one_size = size_of(one_dir) / len(sample)

        def r_one(i: int) -> None:
            with gzip.open(one_dir / f"{i}.pkl.gz", "rb") as f:
                pickle.load(f)

        t_loop = time.perf_counter()
        rounds = 0
        while C.another_round(rounds, min_rounds, max_rounds, t_loop, budget):
            folder = base / f"round{rounds}"
            folder.mkdir()
            paths = {m: folder / f"{m}.{suffix[m]}" for m in methods}
            for m in C.rotated(methods, rounds):
                if rounds == 0 or m not in once:
                    tw[m].append(C.timed(write[m], paths[m]))
            for m in C.rotated(list(read), rounds + 1):
                tr[m].append(C.timed(read[m], paths[m]))
            if rounds == 0:
                sizes = {m: size_of(paths[m]) for m in methods}
                shard0 = next((paths["saelab"] / "shards").iterdir())
                n_files = sum(1 for f in shard0.rglob("*") if f.is_file())
                for m in ("saelab", "saelab_kb7", "saelab_attn"):
                    summaries[m] = open_traces(paths[m]).summary()
                checks = _check(paths, traces, names, att_layers, rng, TraceDataset)
            # random items on an open dataset, kinds alternating in rotated order
            t1 = time.perf_counter()
            dsets = {
                "hooks": TraceDataset(paths["saelab"]),
                "few_attn": TraceDataset(paths["saelab"], hooks=[], attentions=few),
                "hooks_all_attn": TraceDataset(paths["saelab"], attentions="all"),
            }
            open_ms.append((time.perf_counter() - t1) * 1e3 / len(dsets))
            kinds = [*dsets, "gzip_one_file"]
            for k in range(n_items):
                for kind in C.rotated(kinds, k):
                    if kind == "gzip_one_file":
                        item_ms[kind].append(C.timed(r_one, rng.choice(sample)) * 1e3)
                    else:
                        i = rng.randrange(n_traces)
                        item_ms[kind].append(C.timed(dsets[kind].__getitem__, i) * 1e3)
            del dsets
            shutil.rmtree(folder)
            rounds += 1
    finally:
        shutil.rmtree(base, ignore_errors=True)

    parts, n_chunks, fs = _write_breakdown(
        traces[: a.shard_size], names, att_layers, n_heads, d_model, a.dir
    )

    # -- report -------------------------------------------------------------------------
    def paired(t: dict[str, list[float]], m: str, ref: str = "gzip_pickle") -> list[float]:
        return [b / c for b, c in zip(t[ref], t[m], strict=True)]

    raw_total = raw_hidden + raw_square
    prompt_len = int(np.mean([len(t.prompt_ids) for t in traces]))
    n = n_traces
    print(
        f"generation traces of the default model: {n} prompts ({prompt_len} tokens,"
        f" stdlib docstrings) + greedy answers of {answer_lens.min()}-{answer_lens.max()}"
        f" tokens (mean {answer_lens.mean():.1f}; T = {lengths.min()}-{lengths.max()});"
        f" {len(names)} hooks"
        f" ({names[0]} .. {names[-1]}) x {d_model} float16, attention layers {att_layers}"
        f" x {n_heads} heads; max |x| {peak:.3g}"
    )
    print(
        f"raw float16: hidden {C.mb(raw_hidden) / n:.2f} MB/trace, attention squares"
        f" {C.mb(raw_square) / n:.2f} MB/trace (triangles {C.mb(raw_tri) / n:.2f});"
        f" total {C.mb(raw_total):.0f} MB. Made in {make_s:.0f} s (generate {gen_s:.0f} s,"
        f" capture {cap_s:.0f} s; model load {load_s:.1f} s); {rounds} timed rounds"
    )
    rows = []
    for m in ("gzip_pickle", "saelab", "saelab_kb7"):
        rows.append(
            {
                "format (hidden + attention)": m,
                "MB/trace": C.mb(sizes[m]) / n,
                "MB total": C.mb(sizes[m]),
                "raw/disk": raw_total / sizes[m],
                "write s": C.median(tw[m]),
                "write MB/s": C.mb(raw_total) / C.median(tw[m]),
                "write x vs gzip": C.median(paired(tw, m)),
                "read-all s": C.median(tr[m]),
                "read x vs gzip": C.median(paired(tr, m)),
            }
        )
    C.print_table(rows, "(a)-(c) whole store, medians over rounds; x = median of paired ratios")
    s_ll = summaries["saelab"]
    att_disk = {
        "saelab": s_ll["bytes"]["attentions"],
        "saelab_kb7": summaries["saelab_kb7"]["bytes"]["attentions"],
        "saelab_attn": sizes["saelab_attn"],
    }
    dense_raw = sum(v["bytes_raw"] for v in s_ll["attentions"].values())
    packed_raw = sum(v["bytes_packed_raw"] for v in s_ll["attentions"].values())
    att_key = f"attention, {len(att_layers)} layers"
    att_rows = [
        {
            att_key: "dense float16 squares, raw (saelab bytes_raw)",
            "KB/trace": dense_raw / n / 1e3,
            "x vs dense raw": 1.0,
            "write s": None,
        },
        {
            att_key: "packed float16 triangles, raw (bytes_packed_raw)",
            "KB/trace": packed_raw / n / 1e3,
            "x vs dense raw": dense_raw / packed_raw,
            "write s": None,
        },
        {
            att_key: "gzip_attn: gzip+pickle of the squares (+ ids, text)",
            "KB/trace": sizes["gzip_attn"] / n / 1e3,
            "x vs dense raw": dense_raw / sizes["gzip_attn"],
            "write s": C.median(tw["gzip_attn"]),
        },
        {
            att_key: "saelab_attn: packed, shuffle+zstd (whole store)",
            "KB/trace": sizes["saelab_attn"] / n / 1e3,
            "x vs dense raw": dense_raw / sizes["saelab_attn"],
            "write s": C.median(tw["saelab_attn"]),
        },
        {
            att_key: "saelab: attn.* arrays of the full store",
            "KB/trace": att_disk["saelab"] / n / 1e3,
            "x vs dense raw": dense_raw / att_disk["saelab"],
            "write s": None,
        },
        {
            att_key: "saelab_kb7: attn.* arrays, keep_bits=7",
            "KB/trace": att_disk["saelab_kb7"] / n / 1e3,
            "x vs dense raw": dense_raw / att_disk["saelab_kb7"],
            "write s": None,
        },
    ]
    C.print_table(att_rows, f"(d) attention maps, layers {att_layers} x {n_heads} heads, per trace")
    attn_speed = C.median(paired(tw, "saelab_attn", "gzip_attn"))
    print(
        f"attention write speed-up saelab_attn vs gzip_attn (one pair): {attn_speed:.1f}x; size"
        f" gzip_attn / saelab_attn {sizes['gzip_attn'] / sizes['saelab_attn']:.2f}x."
        f" All {n_layers} layers would scale linearly: x{n_layers / len(att_layers):.0f}"
        f" = {dense_raw / n / 1e6 * n_layers / len(att_layers):.1f} MB/trace dense raw,"
        f" {att_disk['saelab'] / n / 1e6 * n_layers / len(att_layers):.2f} MB/trace in saelab"
    )
    split = {k: v / n / 1e3 for k, v in s_ll["bytes"].items()}
    print(
        "saelab lossless, KB/trace by part: "
        + ", ".join(f"{k} {v:,.1f}" for k, v in split.items())
        + f"; keep_bits=7 hidden {summaries['saelab_kb7']['bytes']['hidden'] / n / 1e3:,.1f}"
    )

    shard_raw = sum(
        v.numel() * 2
        for t in traces[: a.shard_size]
        for d in (t.hidden, t.attentions)
        for v in d.values()
    )
    C.print_table(
        [
            {
                "saelab write of one shard, by part (median of 3)": k,
                "seconds": v,
                "MB/s of raw values": C.mb(shard_raw) / v if v > 0 else None,
            }
            for k, v in parts.items()
        ],
        f"first shard: {min(a.shard_size, n)} traces, {C.mb(shard_raw):.0f} MB raw,"
        f" {len(names) + len(att_layers)} arrays, {n_chunks} chunk files ({n_files} files in all);"
        f" this file system: mkdir {fs['mkdir_us']:.0f} us, create+write 300 KB"
        f" {fs['create_write_300KB_us']:.0f} us",
    )

    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) if xs else float("nan")

    item_rows = [
        {
            "random item (warm)": kind,
            "n": len(v),
            "median ms": C.median(v),
            "p95 ms": pct(v, 95),
            "max ms": max(v) if v else None,
        }
        for kind, v in item_ms.items()
    ]
    C.print_table(
        item_rows,
        f"random trace, TraceDataset already open (open: {C.median(open_ms):.1f} ms each);"
        f" hooks = all {len(names)}, few_attn = layers {few} alone,"
        f" hooks_all_attn = all {len(names)} hooks + {len(att_layers)} layers;"
        " gzip_one_file = context, a file per trace",
    )
    print(
        "gzip_pickle (one file) gives one trace only by loading all:"
        f" {C.median(tr['gzip_pickle']):.2f} s;"
        f" a file per trace is {one_size / 1e6:.2f} MB/trace"
    )
    print(
        f"checks: saelab reads back bit-exact: {checks['exact']}; keep_bits=7 max relative"
        " error of normal float16 values"
        f" {checks['kb7_rel_err']:.2e} (bound 2^-8 = {2**-8:.2e}); attention rows sum to 1 within"
        f" {checks['attn_row_sum_err']:.1e}; {checks['n_checked']} traces checked"
    )

    size_ratio = sizes["gzip_pickle"] / sizes["saelab"]
    speed = C.median(paired(tw, "saelab"))
    hooks_p95 = pct(item_ms["hooks"], 95)
    few_p95 = pct(item_ms["few_attn"], 95)
    ok = {
        "size": size_ratio >= 1.0,
        "write": speed >= 10,
        "item_hooks": hooks_p95 < ITEM_P95_MS,
        "item_attn": few_p95 < ITEM_P95_MS,
    }
    print(
        C.summary_line(
            "traces.size_gzip_over_saelab",
            size_ratio,
            ">= 1.0 (saelab no bigger)",
            ok["size"],
            f"{C.mb(sizes['saelab']) / n:.2f} vs {C.mb(sizes['gzip_pickle']) / n:.2f} MB/trace;"
            f" keep_bits=7 {C.mb(sizes['saelab_kb7']) / n:.2f} MB/trace"
            f" ({sizes['gzip_pickle'] / sizes['saelab_kb7']:.2f}x)",
        )
    )
    print(
        C.summary_line(
            "traces.write_speedup_vs_gzip",
            speed,
            ">= 10",
            ok["write"],
            f"saelab {C.median(tw['saelab']):.2f} s vs gzip+pickle"
            f" {C.median(tw['gzip_pickle']):.2f} s"
            f" for {n} traces; keep_bits=7 {C.median(paired(tw, 'saelab_kb7')):.1f}x;"
            f" read-all {C.median(paired(tr, 'saelab')):.2f}x",
        )
    )
    for key, kind, what in (
        ("item_hooks", "hooks", f"all {len(names)} hooks"),
        ("item_attn", "few_attn", f"attention layers {few}"),
    ):
        v = item_ms[kind]
        print(
            f"SUMMARY traces.random_{kind}_ms: {C.median(v):.1f} ms median, p95 {pct(v, 95):.1f} ms"
            f" (target p95 < {ITEM_P95_MS:.0f} ms) {'PASS' if ok[key] else 'FAIL'};"
            f" TraceDataset item with {what}; gzip+pickle loads the whole"
            f" file: {C.median(tr['gzip_pickle']):.2f} s"
        )
    C.dump_json(
        a.json,
        {
            "benchmark": "traces",
            "machine": C.machine(),
            "config": {
                "traces": n,
                "prompt_tokens": a.prompt_tokens,
                "new_tokens": a.new_tokens,
                "answer_lengths": answer_lens.tolist(),
                "hooks": names,
                "attention_layers": att_layers,
                "few_layers": few,
                "n_heads": n_heads,
                "shard_size": a.shard_size,
                "raw_bytes": {
                    "hidden": raw_hidden,
                    "attn_square": raw_square,
                    "attn_triangle": raw_tri,
                },
                "rounds": rounds,
                "quick": a.quick,
                "seconds": {"load": load_s, "generate": gen_s, "capture": cap_s},
            },
            "bytes_on_disk": sizes,
            "bytes_per_trace": {m: v / n for m, v in sizes.items()},
            "gzip_one_file_per_trace_bytes": one_size,
            "saelab_summaries": summaries,
            "write_seconds": tw,
            "read_seconds": tr,
            "item_ms": item_ms,
            "open_ms": open_ms,
            "checks": checks,
            "saelab_write_parts_seconds": parts,
            "first_shard_chunk_files": n_chunks,
            "fs_costs_us": fs,
            "summary": {
                "size_ratio_gzip_over_saelab": size_ratio,
                "size_ratio_gzip_over_saelab_kb7": sizes["gzip_pickle"] / sizes["saelab_kb7"],
                "write_speedup": speed,
                "write_speedup_kb7": C.median(paired(tw, "saelab_kb7")),
                "read_speedup": C.median(paired(tr, "saelab")),
                "attn_write_speedup": attn_speed,
                "item_hooks_ms": {"median": C.median(item_ms["hooks"]), "p95": hooks_p95},
                "item_few_attn_ms": {"median": C.median(item_ms["few_attn"]), "p95": few_p95},
                "pass": all(ok.values()),
            },
        },
    )


def _layers(spec: str) -> list[int]:
    """'0-29' or '0,5,10' (or a mix) to a sorted list of layer numbers."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return sorted(out)


class _Raw:
    """An encoder that writes chunks as they are: the chunk files' own cost, without zstd."""

    def encode(self, chunk: Any) -> bytes:
        import numpy as np

        return np.ascontiguousarray(chunk).tobytes()


def _write_breakdown(traces, names, att_layers, n_heads, d_model, where):  # noqa: ANN001
    """Where saelab's write of one shard goes (medians of 3): building the arrays (hidden rows
    cast and concatenated; attention triangles packed and checked), the codec on one thread,
    the chunk files alone (uncompressed: folders, temp files, renames, sha256), zarr's array
    metadata, beside the whole write_shard call (codec on every core, files, metadata)."""
    import zarr

    from saelab.store import traces as ST
    from saelab.store.chunks import ChunkEncoder, write_chunks
    from saelab.store.codecs import ZSTD_LEVEL, compressors, quiet_numcodecs
    from saelab.store.shards import rows_per_chunk

    enc = ChunkEncoder(2, ZSTD_LEVEL)
    res: dict[str, list[float]] = {
        "build hidden arrays (TraceWriter._hidden)": [],
        "build attention arrays (_attention: pack + check)": [],
        "bare codec, one thread: shuffle + zstd": [],
        "chunk files alone (write_chunks, no codec)": [],
        "zarr create_group + create_array metadata": [],
    }
    res["whole write_shard call"] = []
    base = Path(tempfile.mkdtemp(prefix="saelab-bench-traces-parts-", dir=where))
    n_chunks = 0
    try:
        for k in range(3):
            w = ST.TraceWriter(
                base / f"w{k}",
                hooks=names,
                d_model={h: d_model for h in names},
                attention_layers=att_layers,
                n_heads=n_heads,
            )
            t0 = time.perf_counter()  # first, before the parts below fill the page cache
            w.write_shard(0, traces)
            res["whole write_shard call"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            arrays = {h: w._hidden(traces, h) for h in names}
            res["build hidden arrays (TraceWriter._hidden)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            arrays.update({f"attn.{x}": w._attention(traces, x) for x in att_layers})
            res["build attention arrays (_attention: pack + check)"].append(
                time.perf_counter() - t0
            )
            rows = {
                name: (
                    rows_per_chunk(x.shape[1] * 2, x.shape[0], ST._CHUNK_BYTES)
                    if x.ndim == 2
                    else max(1, min(ST._CHUNK_BYTES // 2, x.shape[0]))
                )
                for name, x in arrays.items()
            }
            n_chunks = sum(-(-x.shape[0] // rows[name]) for name, x in arrays.items())
            t0 = time.perf_counter()
            for name, x in arrays.items():
                for i in range(0, x.shape[0], rows[name]):
                    enc.encode(x[i : i + rows[name]])
            res["bare codec, one thread: shuffle + zstd"].append(time.perf_counter() - t0)
            d = base / f"files{k}"
            d.mkdir()
            t0 = time.perf_counter()
            for name, x in arrays.items():
                write_chunks(d / name, x, rows[name], _Raw(), d)  # type: ignore[arg-type]
            res["chunk files alone (write_chunks, no codec)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with quiet_numcodecs():
                g = zarr.create_group(store=str(base / f"meta{k}"), zarr_format=3)
                for name, x in arrays.items():
                    g.create_array(
                        name,
                        shape=x.shape,
                        dtype=x.dtype,
                        chunks=(rows[name], *x.shape[1:]),
                        compressors=compressors(2),
                        fill_value=0,
                        config={"write_empty_chunks": True},
                    )
            res["zarr create_group + create_array metadata"].append(time.perf_counter() - t0)
            del arrays
        fs = _fs_costs(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {k: C.median(v) for k, v in res.items()}, n_chunks, fs


def _fs_costs(base: Path, n: int = 200) -> dict[str, float]:
    """Microseconds per mkdir and per create+write of a 300 KB file on this file system: what
    each chunk file of a 2-D array costs (`c/<i>/0`: a folder and a file per chunk)."""
    import os

    d = base / "fs"
    d.mkdir()
    payload = b"x" * 300_000
    t0 = time.perf_counter()
    for i in range(n):
        os.mkdir(d / str(i))
    mk = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        with open(d / str(i) / "0", "wb") as f:
            f.write(payload)
    cr = time.perf_counter() - t0
    return {"mkdir_us": mk / n * 1e6, "create_write_300KB_us": cr / n * 1e6}


def _check(paths, traces, names, att_layers, rng, dataset_cls) -> dict[str, Any]:  # noqa: ANN001
    """Round trip of a sample of traces: lossless is bit-exact, keep_bits=7 within 2^-8."""
    import numpy as np

    ds = dataset_cls(paths["saelab"], attentions="all")
    kb = dataset_cls(paths["saelab_kb7"], attentions="all")
    exact, rel, row_err = True, 0.0, 0.0
    picked = rng.sample(range(len(traces)), min(8, len(traces)))
    for i in picked:
        tr, item, item7 = traces[i], ds[i], kb[i]
        for h in names:
            x = tr.hidden[h].float().numpy()
            exact &= bool(np.array_equal(item["hidden"][h].numpy(), x))
            y = item7["hidden"][h].numpy()
            normal = np.abs(x) >= 2.0**-14  # float16 subnormals have fewer mantissa bits
            rel = max(rel, float((np.abs(y - x)[normal] / np.abs(x[normal])).max()))
        for layer in att_layers:
            x = tr.attentions[layer].float().numpy()
            got = item["attentions"][layer].numpy()
            exact &= bool(np.array_equal(got, np.tril(x)))
            row_err = max(row_err, float(np.abs(got.sum(-1) - 1).max()))
    return {
        "exact": exact,
        "kb7_rel_err": rel,
        "attn_row_sum_err": row_err,
        "n_checked": len(picked),
    }


if __name__ == "__main__":
    main()
