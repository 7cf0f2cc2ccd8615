#!/usr/bin/env python
"""Run a demo-sized pipeline and print the sha256 of every file each stage wrote.

Used to prove that a refactor leaves every stage's outputs byte-identical: run it on the code
before and after the change (same machine, same thread count) and compare the two listings.

    python scripts/stage_hashes.py OUT                 # this checkout's src/
    python scripts/stage_hashes.py OUT --src OTHER/src # another checkout, e.g. a main export
    diff OUT_A/hashes.txt OUT_B/hashes.txt

The bookkeeping files (`manifest.json`: timings and unit records; `run.toml`: the resolved
configuration) and the export's absolute paths are left out; every stage output (zarr chunks
and metadata, safetensors, cfg.json, parquet tables, json summaries, patch parts) is listed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SKIP = {"manifest.json", "run.toml"}


def commands(out: Path) -> list[list[str]]:
    x, s, t = str(out / "x"), str(out / "s"), str(out / "t")
    return [
        # extract: three hooks over the built-in two-style prompts (the activation store)
        ["extract", "--prompts", "builtin:styles", "--limit", "32", "--hooks",
         "resid_post.3,resid_post.7,mlp_out.5", "--shard-size", "12", "--run", x, "--quiet"],
        # train from the store (small TopK SAE on layer 7)
        ["train", "--run", x, "--hooks", "resid_post.7", "--arch", "topk", "--k", "8",
         "--expansion", "2", "--batch-size", "64", "--epochs", "3", "--holdout", "8",
         "--quiet"],
        # train streamed from the model over the built-in corpus
        ["train", "--run", s, "--stream", "--corpus", "builtin:stdlib", "--hooks",
         "blocks.7.hook_resid_post", "--d-sae", "1152", "--k", "16", "--tokens", "4096",
         "--batch-size", "256", "--context", "64", "--holdout", "4", "--no-splice", "--quiet"],
        # encode the store with the SAE trained on it
        ["encode", "--run", x, "--saes", f"{x}/saes", "--quiet"],
        # contrast both sources
        ["contrast", x, "--groups", "formal,casual", "--pool", "max", "--quiet"],
        ["contrast", x, "--groups", "formal,casual", "--pool", "mean", "--source", "activations",
         "--hooks", "resid_post.3", "--quiet"],
        # export chosen features
        ["export", x, "--features", "0,1,2", "--format", "json", "--out", f"{x}/export.json"],
        # patch: a sweep over contrast's strongest features
        ["patch", x, "--sweep", "top:1", "--values", "0,@20", "--generate", "3",
         "--targets", " the, a", "--outcome", "excl=!", "--quiet"],
        # extract --generate: generation traces with attention maps
        ["extract", "--prompts", "builtin:styles", "--limit", "5", "--generate", "4",
         "--hooks", "resid_post.2,resid_post.5", "--attentions", "0,3", "--shard-size", "3",
         "--run", t, "--quiet"],
    ]  # fmt: skip


def digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="empty folder for the runs and hashes.txt")
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(a.src.resolve()), "OMP_NUM_THREADS": "2"}
    env.pop("SAELAB_DEBUG", None)
    for cmd in commands(a.out):
        t0 = time.perf_counter()
        subprocess.run([a.python, "-m", "saelab", *cmd], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        print(f"{time.perf_counter() - t0:6.1f} s  saelab {' '.join(cmd[:2])}", file=sys.stderr)
    lines = []
    for p in sorted(a.out.rglob("*")):
        if p.is_file() and p.name not in SKIP and p.name != "hashes.txt":
            lines.append(f"{digest(p)}  {p.relative_to(a.out).as_posix()}")
    (a.out / "hashes.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} files hashed into {a.out / 'hashes.txt'}", file=sys.stderr)


if __name__ == "__main__":
    main()
