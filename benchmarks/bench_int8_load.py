"""Peak RSS of loading a model with `dtype="int8"` on CPU: tensor by tensor vs float32 first.

Baseline: what saelab did before, load the whole model in float32 with transformers and then
swap its linear layers for int8 ones (`quantize_int8`). Candidate: `load_model(dtype="int8")`,
which builds the model with untouched (never resident) weights and quantises each linear
weight as it is read from the checkpoint. Each load runs in a fresh process (a process's peak
RSS cannot go down), alternating baseline and candidate with the order rotated each round;
the figure is the median of paired ratios candidate / baseline. Both children print a hash of
their model's state and of its logits on a prompt: they must be identical (the candidate
quantises the same float32 weights in the same way), else the run FAILs.

With --bf16, a second model is measured too: a random Llama-shaped model (~250M parameters)
saved in bfloat16, as hub checkpoints are; there the float32 path holds twice the file.

    .venv/bin/python benchmarks/bench_int8_load.py [--quick] [--rounds N] [--bf16] [--json OUT]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import _common as C

CHILD = r"""
import hashlib, sys, torch
torch.set_num_threads({threads})
from saelab.budget.measure import process_peak_rss
mode, spec = sys.argv[1], sys.argv[2]
if mode == "baseline":
    from saelab.models.int8 import quantize_int8
    from saelab.models.loading import load_model, local_folder, resolve_spec
    import transformers as T
    folder = str(local_folder(resolve_spec(spec)))
    model = quantize_int8(T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    model = model.float().eval()
else:
    from saelab.models.loading import load_model
    model = load_model(spec, dtype="int8").model
peak = process_peak_rss()
h = hashlib.sha256()
for k, v in sorted(model.state_dict().items()):
    h.update(k.encode()); h.update(v.contiguous().view(torch.uint8).numpy().tobytes())
with torch.no_grad():
    logits = model(input_ids=torch.tensor([[1, 504, 3458, 282, 4649, 314]])).logits
h.update(logits.numpy().tobytes())
print("RESULT", peak, h.hexdigest())
"""


def load_once(mode: str, spec: str, threads: int) -> tuple[int, str]:
    code = CHILD.format(threads=threads)
    res = subprocess.run(
        [sys.executable, "-c", code, mode, spec],
        capture_output=True,
        text=True,
        env=C.subprocess_env(threads),
        cwd=C.REPO,
        check=False,
    )
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
    if res.returncode != 0 or not line:
        raise SystemExit(f"{mode} load of {spec} failed:\n{res.stderr[-3000:]}")
    _, peak, digest = line[0].split()
    return int(peak), digest


def bf16_model(folder: Path) -> str:
    """A random Llama-shaped model saved in bfloat16 (~250M parameters, ~500 MB)."""
    import torch
    import transformers as T

    from saelab.models.loading import load_tokenizer

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
    T.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(folder)
    load_tokenizer("default").save_pretrained(folder)
    return str(folder)


def measure(spec: str, label: str, rounds: int, threads: int) -> dict:
    peaks: dict[str, list[int]] = {"baseline": [], "saelab": []}
    digests: dict[str, set[str]] = {"baseline": set(), "saelab": set()}
    for r in range(rounds):
        for name in C.rotated(["baseline", "saelab"], r):
            peak, digest = load_once(name, spec, threads)
            peaks[name].append(peak)
            digests[name].add(digest)
    ratios = [s / b for s, b in zip(peaks["saelab"], peaks["baseline"], strict=True)]
    same = len(digests["baseline"] | digests["saelab"]) == 1
    return {
        "model": label,
        "baseline_peak_mb": C.median([C.mb(p) for p in peaks["baseline"]]),
        "saelab_peak_mb": C.median([C.mb(p) for p in peaks["saelab"]]),
        "ratio": C.median(ratios),
        "spread": C.spread(ratios),
        "identical": same,
        "raw": peaks,
    }


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--rounds", type=int, default=None, help="paired loads (default 3, quick 1)")
    p.add_argument("--bf16", action="store_true", help="also a ~250M bfloat16 checkpoint")
    a = p.parse_args()
    C.use_repo_source()
    rounds = a.rounds or (1 if a.quick else 3)
    rows = [measure("default", "SmolLM2-135M (float32 file)", rounds, a.threads)]
    if a.bf16:
        with tempfile.TemporaryDirectory() as tmp:
            spec = bf16_model(Path(tmp) / "llama-bf16")
            rows.append(measure(spec, "Llama-shaped 250M (bfloat16 file)", rounds, a.threads))
    C.print_table(
        [{k: v for k, v in r.items() if k != "raw"} for r in rows],
        title="peak RSS of a dtype=int8 load (MB), fresh process each",
    )
    ok = all(r["identical"] and r["ratio"] < 1.0 for r in rows)
    for r in rows:
        print(
            C.summary_line(
                f"int8 load peak RSS, {r['model']}",
                r["ratio"],
                "< 1.0, identical model",
                ok,
                f"{r['baseline_peak_mb']:.0f} MB -> {r['saelab_peak_mb']:.0f} MB, same weights"
                f" and logits: {r['identical']}",
            )
        )
    C.dump_json(a.json, {"machine": C.machine(), "rows": rows, "rounds": rounds})


if __name__ == "__main__":
    main()
