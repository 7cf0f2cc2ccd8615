"""Planning for a machine that is not here: profiles, devices, limits, and the cheapest
change that fits (checked against a brute-force search over every combination)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saelab.budget.estimate import ExtractWorkload, TokenStats, estimate_extract
from saelab.budget.fit import _workloads, _worst, cheapest_fits, options, try_option
from saelab.budget.planner import Budget, fits, platform_dtypes, suggest_extract
from saelab.budget.targets import GB, PROFILES, parse_target, plan_device
from saelab.cli import main
from saelab.errors import SaelabError
from saelab.models.builtin_shapes import builtin_shape
from saelab.models.hooks import parse_hooks
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.plan import PlanConfig, plan_extract


def test_profiles_and_free_form_targets():
    for name in ("t4", "a100-40g", "a100-80g", "h100", "l4", "cpu-16g", "cpu-8g", "colab-free"):
        t = parse_target(name)
        assert t.name == name and t.memory > 0 and t.flops_float32 > 0
        assert (t.gpu_memory is not None) == (t.device == "cuda")
    assert parse_target("T4").gpu_memory == 15 * GB and not parse_target("t4").bf16
    assert parse_target("colab-free").memory < parse_target("t4").memory
    g = parse_target("gpu:24GB")
    assert g.device == "cuda" and g.gpu_memory == 23 * GB and g.memory == 46.5 * GB
    g = parse_target("gpu:24GB,ram:64GB,disk:200GB")
    assert g.memory == 62.5 * GB and g.disk == 200 * GB
    c = parse_target("cpu:32GB")
    assert c.device == "cpu" and c.gpu_memory is None and c.memory == int(32 * GB * 0.8)
    assert parse_target("cpu-16g").quantized == ("int8",)
    assert parse_target("h100").quantized == ("int8", "nf4")
    for bad in ("tpu", "gpu:lots", "gpu:", "gpu:24GB,vram:2GB", "gpu:0.5GB"):
        with pytest.raises(SaelabError, match="machine profile"):
            parse_target(bad)


def test_planning_needs_no_device_here():
    assert plan_device("cuda", None) == "cuda"  # refused by extract on a CPU box, not by plan
    assert plan_device("auto", PROFILES["t4"]) == "cuda"
    assert plan_device("auto", PROFILES["cpu-8g"]) == "cpu"
    assert plan_device("cpu", PROFILES["t4"]) == "cpu"
    if not torch.cuda.is_available():
        assert plan_device("auto", None) == "cpu"
    with pytest.raises(SaelabError, match="not one of"):
        plan_device("tpu", None)


def test_target_limits_replace_this_machines(tmp_path):
    t = PROFILES["colab-free"]
    lim = Budget().resolve(tmp_path, target=t)
    assert (lim.memory, lim.gpu, lim.disk) == (t.memory, t.gpu_memory, t.disk)
    assert lim.ram_label() == "colab-free's RAM (est.)"
    lim = Budget(max_memory=2 * GB, max_gpu_memory=4 * GB).resolve(tmp_path, target=t)
    assert (lim.memory, lim.gpu) == (2 * GB, 4 * GB) and lim.ram_label() == "--max-memory"
    lim = Budget(max_disk=GB).resolve(tmp_path, target=PROFILES["t4"])  # no disk in profile
    assert lim.disk == GB


def workload(model="meta-llama/Llama-3.2-1B", hooks="resid_post.*", device="cpu", **kw):
    shape = builtin_shape(model)
    tokens = TokenStats.from_lengths([40] * 200)
    return ExtractWorkload(
        shape=shape,
        hooks=tuple(parse_hooks(hooks, shape.n_layers)),
        tokens=tokens,
        device=device,
        file_dtype="bfloat16",
        batch_size=16,
        shard_size=64,
        **kw,
    )


def brute_force(w, limits, dtypes):
    """Every option, no early exit and no pruning: the cheapest that fits, and the least RAM
    any option needs at batch 1."""
    best, least = None, None
    for o in options(w, dtypes):
        est = _worst(_workloads(w, o, 1), estimate_extract)
        least = est.ram if least is None else min(least, est.ram)
        if try_option(w, o, lambda e: fits(e, limits), estimate_extract) is not None:
            if best is None or o.cost < best.cost:
                best = o
    return best, least


@pytest.mark.parametrize(
    "kw, target, max_memory",
    [
        ({}, "cpu-8g", None),
        ({}, None, 2 * GB),
        ({}, None, 1.5 * GB),
        ({"hooks": "resid_post.0-3,mlp_out.2"}, None, GB),
        ({"model": "meta-llama/Llama-3.1-8B", "device": "cuda"}, "colab-free", None),
        ({"model": "meta-llama/Llama-3.1-8B", "device": "cuda"}, "gpu:6GB", None),
        ({"model": "google/gemma-2-2b", "device": "cuda"}, "gpu:3GB", None),
    ],
)
def test_cheapest_fit_is_the_brute_force_cheapest(tmp_path, kw, target, max_memory):
    t = parse_target(target) if target else None
    w = workload(**kw)
    limits = Budget(max_memory=max_memory).resolve(tmp_path, target=t)
    dtypes = platform_dtypes(limits, w.device)
    found, minimum = cheapest_fits(w, lambda e: fits(e, limits), estimate_extract, dtypes)
    best, least = brute_force(w, limits, dtypes)
    if best is None:
        assert found == [] and minimum is not None
        assert minimum.estimate.ram == least  # the minimum it states is the true minimum
        return
    assert minimum is None and found and found[0].option.cost == best.cost
    first = found[0]
    # the suggested change, estimated again from scratch, fits; one batch more would not
    ws = _workloads(w, first.option, first.batch_size)
    assert all(fits(estimate_extract(x), limits) for x in ws)
    if first.batch_size < w.batch_size:
        more = _worst(_workloads(w, first.option, first.batch_size + 1), estimate_extract)
        assert not fits(more, limits)


def test_suggestions_name_settings_and_estimates(tmp_path):
    w = workload()
    limits = Budget(max_memory=2 * GB).resolve(tmp_path)
    (first, *_) = suggest_extract(w, limits)
    assert first.startswith("`dtype` bfloat16") and "fewer layers: `hooks` resid_post.0-" in first
    assert "(est. peak RAM" in first
    (only,) = suggest_extract(w, dataclasses.replace(limits, memory=GB // 2))
    assert only.startswith("no setting fits: even the least this run can take (")
    assert "needs" in only and "the limits are" in only


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """(exit code, everything printed) of `saelab ARGS...`."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    got = capsys.readouterr()
    return code, " ".join((got.out + got.err).split())


def test_plan_for_targets_through_the_cli(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")
    base = ["plan", "--model", "meta-llama/Llama-3.2-1B", "--no-calibrate", "--quiet"]
    base += ["--hooks", "resid_post.*", "--run", str(tmp_path / "r")]
    code, out = run_cli(capsys, *base, "--target", "t4")
    assert code == 0 and "on cuda" in out and "target t4: 14 GiB GPU" in out
    assert "faster: --dtype float16 runs ~5x faster on t4" in out
    code, out = run_cli(capsys, *base, "--max-memory", "2GB", "--device", "cpu")
    assert (
        code == 3 and "would fit with: --dtype bfloat16, fewer layers: --hooks resid_post.0-" in out
    )
    # the suggestion, planned as it says, fits
    layers = out.split("--hooks resid_post.0-")[1].split()[0]
    code, out = run_cli(
        capsys, *base, "--max-memory", "2GB", "--device", "cpu", "--dtype", "bfloat16",
        "--hooks", f"resid_post.0-{layers}",
    )  # fmt: skip
    assert code == 0, out
    code, out = run_cli(capsys, *base, "--max-memory", "500MB", "--device", "cpu")
    assert code == 3 and "no setting fits: even the least this run can take" in out
    code, out = run_cli(capsys, *base, "--target", "tpu")
    assert code != 0 and "machine profile 'tpu' is not known" in out


def test_plan_for_a_gpu_from_a_machine_without_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    opts = dict(model="meta-llama/Llama-3.1-8B", hooks="resid_post.20", run=str(tmp_path / "r"))
    res, _ = plan_extract(PlanConfig(**opts, target="colab-free", quiet=True), calibrate=True)
    assert res.calibration is None  # another machine cannot be timed here
    assert res.job.device == "cuda" and res.job.limits.gpu == PROFILES["colab-free"].gpu_memory
    assert not res.verdict.fits and "GPU memory" in res.verdict.problems[0]
    assert res.verdict.suggestions[0].startswith("--dtype int8 (est.")
    ok, _ = plan_extract(
        PlanConfig(**opts, target="colab-free", dtype="int8", quiet=True), calibrate=False
    )
    assert ok.verdict.fits
    t4, _ = plan_extract(
        ExtractConfig(**opts, device="cuda", dtype="float16", quiet=True), calibrate=False
    )
    if not torch.cuda.is_available():
        assert t4.job.device == "cuda" and any("no GPU here" in n for n in t4.estimate.notes)
