"""Slow tests, run in CI too: kill -9 and resume, and the real Gemma 3 270M GGUF."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from saelab.atomic import tree_digests
from saelab.models import HookPoint, load_model, parse_hooks, tokenize_prompts
from saelab.models.capture import HookCapture, make_batch
from saelab.store import open_activations
from tests.conftest import hidden_states, rel_err

pytestmark = pytest.mark.slow


def _extract_cmd(prompts, run):
    return [
        sys.executable,
        "-m",
        "saelab",
        "extract",
        "--prompts",
        str(prompts),
        "--run",
        str(run),
        "--hooks",
        "resid_post.0-29",
        "--batch-size",
        "4",
        "--shard-size",
        "4",
        "--quiet",
        "--device",
        "cpu",
    ]


def test_kill_9_then_resume_is_byte_identical(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text(
        "".join(f"Prompt {i}: " + "some words " * (5 + i % 9) + "\n" for i in range(48))
    )
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_extract_cmd(prompts, ref), check=True, timeout=600)
    proc = subprocess.Popen(_extract_cmd(prompts, run))
    manifest = run / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        units = 0
        if manifest.exists():
            try:
                st = json.loads(manifest.read_text())["stages"].get("extract", {})
                units = len(st.get("units", {}))
            except (json.JSONDecodeError, KeyError):
                pass
        if units >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = json.loads(manifest.read_text())["stages"]["extract"]
    assert not st.get("complete"), "the run finished before it could be killed"
    assert 3 <= len(st["units"]) < 12
    subprocess.run(_extract_cmd(prompts, run), check=True, timeout=600)
    assert tree_digests(ref / "activations") == tree_digests(run / "activations")
    assert json.loads(manifest.read_text())["stages"]["extract"]["complete"]


@pytest.fixture(scope="module")
def gemma(gemma_gguf):
    return load_model(str(gemma_gguf))


def test_gemma3_adapter_on_the_real_model(gemma):
    assert gemma.adapter.family == "gemma3" and gemma.n_layers == 18 and gemma.d_model == 640
    hooks = parse_hooks(
        ["resid_pre.4", "attn_out.4", "resid_mid.4", "mlp_out.4", "resid_post.4", "resid_post.*"],
        gemma.n_layers,
    )
    tp = tokenize_prompts(gemma.tokenizer, ["The capital of France is", "One two three four"])
    assert all(ids[0] == gemma.tokenizer.bos_token_id for ids in tp.ids)
    assert all(ids.count(gemma.tokenizer.bos_token_id) == 1 for ids in tp.ids)
    b = make_batch(tp.ids, gemma.pad_id, "left")
    with HookCapture(gemma.model, gemma.adapter, hooks) as cap:
        v = cap.run(b)
    hs = hidden_states(gemma.model, b)
    m = b.attention_mask.bool()

    def g(site, layer=4):
        return v[HookPoint(layer, site)][m]

    # Gemma's post-attention / post-MLP norms are inside attn_out / mlp_out
    assert rel_err(g("resid_pre") + g("attn_out"), g("resid_mid")) < 1e-4
    assert rel_err(g("resid_mid") + g("mlp_out"), g("resid_post")) < 1e-4
    for layer in range(gemma.n_layers - 1):
        assert rel_err(v[HookPoint(layer, "resid_post")][m], hs[layer + 1][m]) < 1e-5


def test_plan_and_extract_on_the_gemma_gguf(gemma, gemma_gguf, tmp_path):
    run = tmp_path / "run"
    common = [
        "--model",
        str(gemma_gguf),
        "--hooks",
        "resid_post.0-17",
        "--limit",
        "8",
        "--run",
        str(run),
        "--quiet",
        "--device",
        "cpu",
    ]
    for cmd in ("plan", "extract"):
        res = subprocess.run(
            [sys.executable, "-m", "saelab", cmd, *common],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ),
        )
        assert res.returncode == 0, res.stderr
    store = open_activations(run)
    assert store.n_prompts == 8 and store.d_model["blocks.17.hook_resid_post"] == 640
    assert store.tokens(0)[0] == gemma.tokenizer.bos_token_id
