#!/usr/bin/env python
"""Run a demo-sized pipeline and print the sha256 of every file each stage wrote.

Used to prove that a refactor leaves every stage's outputs byte-identical: run it on the code
before and after the change (same machine, same thread count, same OUT folder: codes record
the SAE's path) and compare the two listings.

    python scripts/stage_hashes.py OUT --src OTHER/src --label before   # e.g. a main export
    python scripts/stage_hashes.py OUT --label after                    # this checkout's src/
    diff OUT/before.txt OUT/after.txt

The runs go to OUT/runs (emptied first). The bookkeeping files (`manifest.json`: timings and
unit records; `run.toml`: the resolved configuration) and training checkpoints (scratch, with
timings inside) are left out; every stage output (zarr chunks and metadata, safetensors,
cfg.json, parquet tables, json summaries, patch parts) is listed.
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
SKIP_DIRS = {"checkpoints"}


def commands(out: Path, run_flag: bool) -> list[list[str]]:
    """The demo pipeline; `run_flag`: the code names the run folder with --run in every
    command (older code took it as the first argument of contrast, export and patch)."""
    x, s, t = str(out / "x"), str(out / "s"), str(out / "t")
    xr = ["--run", x] if run_flag else [x]
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
        ["contrast", *xr, "--groups", "formal,casual", "--pool", "max", "--quiet"],
        ["contrast", *xr, "--groups", "formal,casual", "--pool", "mean", "--source", "activations",
         "--hooks", "resid_post.3", "--quiet"],
        # export chosen features
        ["export", *xr, "--features", "0,1,2", "--format", "json", "--out", f"{x}/export.json"],
        # patch: a sweep over contrast's strongest features
        ["patch", *xr, "--sweep", "top:1", "--values", "0,@20", "--generate", "3",
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
    ap.add_argument("out", type=Path, help="folder for the runs and the listing")
    ap.add_argument("--label", default="hashes", help="the listing is OUT/LABEL.txt")
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()
    runs = a.out / "runs"
    if runs.exists():
        shutil.rmtree(runs)
    runs.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(a.src.resolve()), "OMP_NUM_THREADS": "2"}
    env.pop("SAELAB_DEBUG", None)
    helped = subprocess.run([a.python, "-m", "saelab", "contrast", "--help"], env=env,
                            capture_output=True, text=True, check=True)  # fmt: skip
    for cmd in commands(runs, "--run" in helped.stdout):
        t0 = time.perf_counter()
        subprocess.run([a.python, "-m", "saelab", *cmd], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        print(f"{time.perf_counter() - t0:6.1f} s  saelab {' '.join(cmd[:2])}", file=sys.stderr)
    lines = []
    for p in sorted(runs.rglob("*")):
        rel = p.relative_to(runs)
        if p.is_file() and p.name not in SKIP and not SKIP_DIRS & set(rel.parts):
            lines.append(f"{digest(p)}  {rel.as_posix()}")
    listing = a.out / f"{a.label}.txt"
    listing.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} files hashed into {listing}", file=sys.stderr)


if __name__ == "__main__":
    main()
