"""Activation store: write speed, size and read speed against gzip + pickle.

Real float16 activations of the default model (several resid_post layers over a few hundred
stdlib docstrings, up to 128 tokens each, no padding) are saved three ways:

  gzip_pickle  gzip.open(path, "wb") + pickle.dump({"token_ids": [...], "acts": {hook: [one
               float16 torch tensor per prompt]}}): how users store traces today; the baseline
  pickle_zstd  the same pickle compressed with zstd level 3 (numcodecs.Zstd), for context
  saelab       saelab.store.ActivationWriter(...).write_shard(...) (zarr v3, byte shuffle +
               zstd, sha256 of every file), including the torch.cat of the per-prompt rows

Writes (then reads) alternate in rotated order, each round into fresh files. Reads are warm
(the files were just written, so they sit in the page cache): they measure decoding, not the
disk. saelab's reader returns float32 (the others float16 tensors), which it pays for here.
Targets: saelab's bytes on disk <= gzip_pickle's, and writes >= 10x faster (median of paired
ratios gzip_time / saelab_time).

    .venv/bin/python benchmarks/bench_store.py [--quick] [--json OUT] [--dir TMPDIR]
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import _common as C

C.use_repo_source()


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--prompts", type=int, default=None, help="prompts (default 192)")
    p.add_argument("--layers", default="0,4,8", help="resid_post layers stored (default 0,4,8)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per prompt at most")
    p.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed rounds")
    a = p.parse_args()
    n_prompts = a.prompts or (64 if a.quick else 192)
    budget = a.budget or (6.0 if a.quick else 30.0)
    min_rounds, max_rounds = (2, 3) if a.quick else (3, 8)

    C.pin_threads(a.threads)
    import numpy as np
    import torch
    from numcodecs import Zstd

    from saelab.budget.measure import dir_size
    from saelab.models import capture_prompts, load_model, parse_hooks, tokenize_prompts
    from saelab.store import ActivationWriter, open_activations

    # -- real activations -------------------------------------------------------------
    t0 = time.perf_counter()
    lm = load_model("default", dtype="float32", device="cpu")
    hooks = parse_hooks(",".join(f"resid_post.{x}" for x in a.layers.split(",")), lm.n_layers)
    texts = C.stdlib_docstrings(min_chars=200, limit=n_prompts)
    tp = tokenize_prompts(lm.tokenizer, texts, max_length=a.max_length)
    acts: dict[str, list[torch.Tensor | None]] = {h.name: [None] * n_prompts for h in hooks}
    for idx, out in capture_prompts(
        lm.model, lm.adapter, hooks, tp.ids, pad_id=lm.pad_id, batch_size=8
    ):
        for h in hooks:
            for r, i in enumerate(idx):
                acts[h.name][i] = out[h][r].to(torch.float16)
    capture_s = time.perf_counter() - t0
    del lm
    token_ids = [torch.tensor(t, dtype=torch.int32) for t in tp.ids]
    names = [h.name for h in hooks]
    per_prompt = {h: [t for t in acts[h] if t is not None] for h in names}
    n_tokens = tp.n_tokens
    raw_bytes = sum(t.numel() * 2 for h in names for t in per_prompt[h])
    raw_bytes += sum(t.numel() * 4 for t in token_ids)
    peak = max(float(t.float().abs().max()) for h in names for t in per_prompt[h])
    obj = {"token_ids": token_ids, "acts": per_prompt}
    zstd = Zstd(level=3)

    # -- the three ways to save -------------------------------------------------------
    def w_gzip(path: Path) -> None:
        with gzip.open(path, "wb") as f:
            pickle.dump(obj, f)

    def r_gzip(path: Path) -> None:
        with gzip.open(path, "rb") as f:
            back = pickle.load(f)
        assert len(back["acts"][names[0]]) == n_prompts

    def w_zstd(path: Path) -> None:
        path.write_bytes(zstd.encode(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)))

    def r_zstd(path: Path) -> None:
        back = pickle.loads(zstd.decode(path.read_bytes()))
        assert len(back["acts"][names[0]]) == n_prompts

    def w_saelab(path: Path) -> None:
        writer = ActivationWriter(path, hooks=names, d_model={h: 576 for h in names})
        writer.write_shard(
            0,
            prompt_index=np.arange(n_prompts, dtype=np.int64),
            token_ids=[t.numpy() for t in token_ids],
            acts={h: torch.cat(per_prompt[h]) for h in names},
        )

    def r_saelab(path: Path) -> None:
        st = open_activations(path)
        for h in names:
            x = st[h].to_numpy()
            assert x.shape == (n_tokens, 576)

    write = {"gzip_pickle": w_gzip, "pickle_zstd": w_zstd, "saelab": w_saelab}
    read = {"gzip_pickle": r_gzip, "pickle_zstd": r_zstd, "saelab": r_saelab}
    suffix = {"gzip_pickle": "acts.pkl.gz", "pickle_zstd": "acts.pkl.zst", "saelab": "activations"}
    methods = list(write)

    def size(path: Path) -> int:
        return dir_size(path) if path.is_dir() else path.stat().st_size

    tw: dict[str, list[float]] = {m: [] for m in methods}
    tr: dict[str, list[float]] = {m: [] for m in methods}
    sizes: dict[str, int] = {}
    base = Path(tempfile.mkdtemp(prefix="saelab-bench-store-", dir=a.dir))
    exact = None
    try:
        t_loop = time.perf_counter()
        rounds = 0
        while C.another_round(rounds, min_rounds, max_rounds, t_loop, budget):
            folder = base / f"round{rounds}"
            folder.mkdir()
            paths = {m: folder / suffix[m] for m in methods}
            for m in C.rotated(methods, rounds):
                tw[m].append(C.timed(write[m], paths[m]))
            for m in C.rotated(methods, rounds + 1):
                tr[m].append(C.timed(read[m], paths[m]))
            if rounds == 0:
                sizes = {m: size(paths[m]) for m in methods}
                st = open_activations(paths["saelab"])
                exact = all(
                    np.array_equal(st[h].to_numpy(), torch.cat(per_prompt[h]).float().numpy())
                    for h in names
                )
            shutil.rmtree(folder)
            rounds += 1
    finally:
        shutil.rmtree(base, ignore_errors=True)

    parts = _write_breakdown(per_prompt, names, token_ids, n_prompts, a.dir)

    def paired(t: dict[str, list[float]], m: str) -> list[float]:
        return [b / c for b, c in zip(t["gzip_pickle"], t[m], strict=True)]

    rows = []
    for m in methods:
        rows.append(
            {
                "format": m,
                "MB on disk": C.mb(sizes[m]),
                "ratio raw/disk": raw_bytes / sizes[m],
                "write s (median)": C.median(tw[m]),
                "write MB/s": C.mb(raw_bytes) / C.median(tw[m]),
                "write speed-up vs gzip": C.median(paired(tw, m)),
                "read s (median)": C.median(tr[m]),
                "read speed-up vs gzip": C.median(paired(tr, m)),
            }
        )
    print(
        f"activation store, {n_prompts} prompts, {n_tokens:,} tokens (no padding),"
        f" {len(names)} hooks ({', '.join(names)}) x 576 float16 = {C.mb(raw_bytes):.1f} MB raw"
        f" (incl. token ids); max |x| {peak:.3g}; {rounds} rounds; capture took {capture_s:.1f} s"
    )
    C.print_table(rows)
    print(f"check: saelab store reads back bit-exact: {exact}")
    C.print_table(
        [
            {
                "saelab write, by part (median of 3)": k,
                "seconds": v,
                "MB/s of raw activations": C.mb(raw_bytes) / v if v > 0 else None,
            }
            for k, v in parts.items()
        ]
    )
    size_ratio = sizes["gzip_pickle"] / sizes["saelab"]
    speed = C.median(paired(tw, "saelab"))
    print(
        C.summary_line(
            "store.size_gzip_over_saelab",
            size_ratio,
            ">= 1.0 (saelab no bigger)",
            size_ratio >= 1.0,
            f"saelab {C.mb(sizes['saelab']):.1f} MB vs gzip+pickle"
            f" {C.mb(sizes['gzip_pickle']):.1f} MB",
        )
    )
    print(
        C.summary_line(
            "store.write_speedup_vs_gzip",
            speed,
            ">= 10",
            speed >= 10,
            f"saelab {C.median(tw['saelab']):.2f} s vs gzip+pickle"
            f" {C.median(tw['gzip_pickle']):.2f} s; read speed-up"
            f" {C.median(paired(tr, 'saelab')):.2f}x",
        )
    )
    C.dump_json(
        a.json,
        {
            "benchmark": "store",
            "machine": C.machine(),
            "config": {
                "prompts": n_prompts,
                "tokens": n_tokens,
                "hooks": names,
                "raw_bytes": raw_bytes,
                "rounds": rounds,
                "quick": a.quick,
                "capture_seconds": capture_s,
            },
            "bytes_on_disk": sizes,
            "write_seconds": tw,
            "read_seconds": tr,
            "bit_exact": exact,
            "saelab_write_parts_seconds": parts,
            "summary": {
                "size_ratio_gzip_over_saelab": size_ratio,
                "write_speedup": speed,
                "read_speedup": C.median(paired(tr, "saelab")),
                "pass": size_ratio >= 1.0 and speed >= 10,
            },
        },
    )


def _write_breakdown(per_prompt, names, token_ids, n_prompts, where) -> dict[str, float]:  # noqa: ANN001
    """Where saelab's write time goes (medians of 3): concatenation, the float16 cast, and the
    shuffle+zstd codec on one thread, beside the whole write_shard call (which runs the codec
    on every core and hashes the bytes as it writes them)."""
    import numpy as np
    import torch
    from numcodecs import Shuffle, Zstd

    from saelab.store import ActivationWriter
    from saelab.store.activations import _rows_per_chunk
    from saelab.store.codecs import DTYPES, ZSTD_LEVEL, encode_rows

    dt = DTYPES["float16"]
    shuffle, zstd = Shuffle(elementsize=2), Zstd(level=ZSTD_LEVEL)
    res: dict[str, list[float]] = {
        "torch.cat of per-prompt rows": [],
        "encode_rows (cast + overflow check)": [],
        "bare codec, one thread: shuffle + zstd": [],
        "whole write_shard call": [],
    }
    base = Path(tempfile.mkdtemp(prefix="saelab-bench-parts-", dir=where))
    try:
        for k in range(3):
            t0 = time.perf_counter()
            cat = {h: torch.cat(per_prompt[h]) for h in names}
            res["torch.cat of per-prompt rows"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            enc = {h: encode_rows(cat[h], dt, None, h) for h in names}
            res["encode_rows (cast + overflow check)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for h in names:
                x = enc[h]
                step = _rows_per_chunk(x.shape[1], 2, x.shape[0])
                for i in range(0, x.shape[0], step):
                    zstd.encode(shuffle.encode(np.ascontiguousarray(x[i : i + step])))
            res["bare codec, one thread: shuffle + zstd"].append(time.perf_counter() - t0)
            root = base / f"s{k}"
            writer = ActivationWriter(root, hooks=names, d_model={h: 576 for h in names})
            t0 = time.perf_counter()
            writer.write_shard(
                0,
                prompt_index=np.arange(n_prompts, dtype=np.int64),
                token_ids=[t.numpy() for t in token_ids],
                acts=cat,
            )
            res["whole write_shard call"].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {k: C.median(v) for k, v in res.items()}


if __name__ == "__main__":
    main()
