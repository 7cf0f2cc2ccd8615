"""The SAE module: formulas per architecture, SAELens file layout, loading errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.errors import SaelabError
from saelab.sae import SAE, SAEConfig
from saelab.sae.model import init_weights


def make(arch, d=16, s=48, k=4, seed=0):
    sae = init_weights(SAE(SAEConfig(d_in=d, d_sae=s, architecture=arch, k=k)), seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        if sae.threshold is not None:
            sae.threshold.uniform_(0.0, 0.2, generator=g)
    return sae


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_encode_decode_follow_the_documented_formulas(arch):
    sae = make(arch)
    x = torch.randn(10, 16)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if arch == "topk":
        r = torch.relu(pre)
        want = torch.where(r >= r.topk(4, dim=-1).values[:, -1:], r, 0.0)
    elif arch in ("jumprelu", "batchtopk"):
        want = torch.relu(pre) * (pre > sae.threshold)
    else:
        want = torch.relu(pre)
    f = sae.encode(x)
    torch.testing.assert_close(f, want)
    torch.testing.assert_close(sae(x), want @ sae.W_dec + sae.b_dec)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_save_load_round_trip_in_saelens_layout(tmp_path, arch):
    sae = make(arch)
    sae.cfg.metadata = {"hook_name": "blocks.3.hook_resid_post", "model_name": "m"}
    sae.save(tmp_path / "s", log_density=torch.full((48,), -2.0))
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    cfg = json.loads((tmp_path / "s/cfg.json").read_text())
    for key in (
        "d_in",
        "d_sae",
        "dtype",
        "device",
        "apply_b_dec_to_input",
        "normalize_activations",
        "reshape_activations",
        "architecture",
        "metadata",
    ):
        assert key in cfg
    saved_arch = {"batchtopk": "jumprelu", "relu": "standard"}.get(arch, arch)
    assert cfg["architecture"] == saved_arch and ("k" in cfg) == (arch == "topk")
    w = load_file(str(tmp_path / "s/sae_weights.safetensors"))
    assert w["W_enc"].shape == (16, 48) and w["W_dec"].shape == (48, 16)
    assert ("threshold" in w) == (arch in ("jumprelu", "batchtopk"))
    back = SAE.load(tmp_path / "s")
    x = torch.randn(7, 16)
    torch.testing.assert_close(back(x), sae(x))
    assert back.cfg.hook_name == "blocks.3.hook_resid_post"


def test_fold_input_scale_gives_the_same_function_on_raw_inputs():
    sae = make("jumprelu")
    x = torch.randn(5, 16) * 30
    s = 0.05
    scaled_out = sae(x * s) / s
    sae.fold_input_scale(s)
    torch.testing.assert_close(sae(x), scaled_out, rtol=1e-4, atol=1e-4)


def test_loading_errors_name_the_file(tmp_path):
    sae = make("topk")
    sae.save(tmp_path / "ok")
    with pytest.raises(SaelabError, match="has no cfg.json"):
        SAE.load(tmp_path / "nothing")
    bad = tmp_path / "bad"
    sae.save(bad)
    cfg = json.loads((bad / "cfg.json").read_text())
    cfg["d_in"] = 17
    (bad / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaelabError, match="W_enc has shape .* d_in=17"):
        SAE.load(bad)
    miss = tmp_path / "miss"
    sae.save(miss)
    w = load_file(str(miss / "sae_weights.safetensors"))
    del w["b_dec"]
    save_file(w, str(miss / "sae_weights.safetensors"))
    with pytest.raises(SaelabError, match="no tensor 'b_dec'"):
        SAE.load(miss)
    (miss / "cfg.json").write_text("{not json")
    with pytest.raises(SaelabError, match="cfg.json is damaged"):
        SAE.load(miss)


def test_config_errors():
    # a lower layer speaks of the value; the CLI writes it as --k (tests/test_stage_contract.py)
    with pytest.raises(SaelabError, match="`k` 60 must be between 1 and d_sae"):
        SAEConfig(d_in=8, d_sae=50, architecture="topk", k=60)
    with pytest.raises(SaelabError, match="not one of"):
        SAEConfig(d_in=8, d_sae=50, architecture="gated")


def test_saved_files_are_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders header metadata differently per process; saelab sorts it, so a
    resumed run's files equal an uninterrupted run's byte for byte."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from saelab.sae import SAE, SAEConfig; torch.manual_seed(0);"
        "s = SAE(SAEConfig(d_in=8, d_sae=16, architecture='topk', k=2,"
        " metadata={'hook_name': 'blocks.1.hook_resid_post', 'a': 1, 'b': 2}));"
        "s.save(sys.argv[1])"
    )
    blobs = set()
    for i in range(4):
        out = tmp_path / f"s{i}"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120)
        blobs.add((out / "sae_weights.safetensors").read_bytes())
    assert len(blobs) == 1
