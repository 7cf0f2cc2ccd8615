"""Model specs: the default GGUF (cached once), local folders, hub ids from the cache, dtypes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import transformers as T

from saelab.errors import SaelabError
from saelab.models import HookPoint, load_model, resolve_device, resolve_spec
from saelab.models.capture import capture_prompts
from saelab.models.loading import convert_gguf, default_gguf_path, gguf_cache_path


def test_default_gguf_is_converted_once_and_cached(smol):
    gguf = default_gguf_path()
    folder = gguf_cache_path(gguf)
    assert (folder / "saelab-cache.json").is_file() and (folder / "model.safetensors").is_file()
    t0 = time.perf_counter()
    assert convert_gguf(gguf) == folder
    assert time.perf_counter() - t0 < 1.0
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert smol.n_layers == 30 and smol.d_model == 576 and smol.adapter.family == "llama"
    # greedy continuation of a known prompt (models.md): " Paris"
    ids = smol.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = smol.model(input_ids=ids).logits[0, -1].argmax()
    assert smol.tokenizer.decode(nxt).strip() == "Paris"


def tiny_llama_folder(path, smol):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(smol.tokenizer),
    )
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    return path


def test_local_folder_spec(smol, tmp_path):
    folder = tiny_llama_folder(tmp_path / "tiny", smol)
    lm = load_model(str(folder))
    assert lm.source.kind == "folder" and lm.n_layers == 2 and lm.d_model == 64
    ids = lm.tokenizer("hello there").input_ids
    ((idx, out),) = list(
        capture_prompts(lm.model, lm.adapter, [HookPoint(1, "resid_post")], [ids], pad_id=0)
    )
    assert out[HookPoint(1, "resid_post")][0].shape == (len(ids), 64)


def _hub_cache(home, repo, folder):
    """Lay out a Hugging Face cache entry (as huggingface_hub writes it) for `repo`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)


def _load_in_subprocess(spec, env):
    code = (
        "from saelab.models import load_model\n"
        f"lm = load_model({spec!r})\n"
        "print(lm.source.kind, lm.n_layers, lm.d_model)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180
    )


def test_hub_id_from_the_local_cache_and_offline_error(smol, tmp_path):
    home = tmp_path / "hf"
    _hub_cache(home, "saelab-test/tiny-llama", tiny_llama_folder(tmp_path / "tiny", smol))
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    res = _load_in_subprocess("saelab-test/tiny-llama", env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["hub", "2", "64"]
    res = _load_in_subprocess("saelab-test/not-here", env)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "not in the local Hugging Face cache" in last and "hf download" in last


def test_spec_errors():
    with pytest.raises(SaelabError, match="neither a file nor a folder"):
        resolve_spec("./missing/model")
    with pytest.raises(SaelabError, match="not a .gguf file"):
        resolve_spec(__file__)
    assert resolve_spec("gpt2").kind == "hub"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_device_errors_without_a_gpu():
    with pytest.raises(SaelabError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(SaelabError, match="not one of"):
        resolve_device("tpu")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_float16_model_runs_finite(tmp_path):
    lm = load_model("default", dtype="float16")
    assert next(lm.model.parameters()).dtype == torch.float16
    ids = lm.tokenizer("Hello world").input_ids
    ((_, out),) = list(
        capture_prompts(lm.model, lm.adapter, [HookPoint(3, "resid_post")], [ids], pad_id=2)
    )
    assert torch.isfinite(out[HookPoint(3, "resid_post")][0]).all()
