"""`saelab encode` on the real default model: codes equal `sae.encode` on the stored
activations for every position mode, chosen features, resume, reading and export, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.cli import main
from saelab.errors import SaelabError
from saelab.pipeline.encode import EncodeConfig, run_encode
from saelab.pipeline.export import ExportConfig, run_export
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.sae import SAE, SAEConfig
from saelab.store import open_activations
from saelab.store.codes import open_codes
from tests.cli_errors import cli, one_line

HOOKS = "resid_post.2,resid_post.4"
NAMES = ["blocks.2.hook_resid_post", "blocks.4.hook_resid_post"]


def random_sae(arch: str, hook: str, d_sae: int = 512, seed: int = 0, k: int | None = 16) -> SAE:
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(d_in=576, d_sae=d_sae, architecture=arch, k=k if arch == "topk" else None,
                    metadata={"hook_name": hook})  # fmt: skip
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(576, d_sae, generator=g) / 24)
        sae.W_dec.copy_(torch.randn(d_sae, 576, generator=g) / 24)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.5 - 1.0)
        sae.b_dec.copy_(torch.randn(576, generator=g) * 0.1)
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 2)
    return sae


@pytest.fixture(scope="module")
def store_run(smol, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("encode")
    texts = [
        f"Sentence {i} is about {'cats and dogs ' * (i % 5)}and the weather." for i in range(20)
    ]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "text": t, "group": "ab"[i % 2]}) + "\n"
                               for i, t in enumerate(texts)))  # fmt: skip
    run = root / "run"
    run_extract(ExtractConfig(prompts=str(prompts), hooks=HOOKS, run=str(run), quiet=True,
                               store_dtype="float32", shard_size=8), lm=smol)  # fmt: skip
    return run


@pytest.fixture(scope="module")
def saes(tmp_path_factory) -> Path:
    """A folder of per-hook SAE folders, as `saelab train` leaves in RUN/saes."""
    root = tmp_path_factory.mktemp("saes")
    random_sae("jumprelu", NAMES[0], seed=1).save(root / NAMES[0])
    random_sae("topk", NAMES[1], seed=2).save(root / NAMES[1])
    return root


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def expected(sae: SAE, store, hook: str, positions: str, feats=None) -> np.ndarray:
    """Per prompt, from the stored rows with SAE.encode: the reference the codes must equal."""
    out = []
    with torch.no_grad():
        for i in range(store.n_prompts):
            x = torch.from_numpy(store.prompt(hook, i)).float()
            f = sae.encode(x).numpy()
            if positions == "all":
                out.append(f)
            elif positions == "last":
                out.append(f[-1:])
            elif positions == "max":
                out.append(f[1:].max(0, keepdims=True))  # BOS excluded
            else:
                out.append(f[1:].mean(0, keepdims=True))
    full = np.concatenate(out)
    return full if feats is None else full[:, feats]


@pytest.mark.parametrize("positions", ["all", "last", "max", "mean"])
def test_codes_equal_sae_encode_on_the_stored_activations(store_run, saes, tmp_path, positions):
    run = copy_run(store_run, tmp_path / "run")
    res = run_encode(EncodeConfig(saes=str(saes), run=str(run), positions=positions, quiet=True))
    assert set(res.hooks) == set(NAMES)
    store = open_activations(run)
    codes = open_codes(run)
    assert codes.hooks == sorted(NAMES)
    for hook in NAMES:
        sae = SAE.load(saes / hook)
        hc = codes[hook]
        got = hc.matrix().toarray()
        want = expected(sae, store, hook, positions)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert list(hc.prompt_index) == list(range(store.n_prompts))
        assert codes.prompt_ids(hook)[:3] == ["q0", "q1", "q2"]
        assert codes.groups(hook)[:2] == ["a", "b"]
        assert len(hc.shards) == 3
        assert hc.meta["sae_format"] == "saelens"
    d = run / "codes" / NAMES[0] / "00000.safetensors"
    from safetensors.numpy import load_file

    assert load_file(str(d))["indices"].dtype == np.uint16


def test_chosen_features_only_and_export(store_run, saes, tmp_path):
    run = copy_run(store_run, tmp_path / "run")
    feats = [3, 17, 200, 511]
    run_encode(EncodeConfig(saes=str(saes), run=str(run), features="3,17,200,511", quiet=True))
    store = open_activations(run)
    codes = open_codes(run)
    for hook in NAMES:
        sae = SAE.load(saes / hook)
        m = codes[hook].matrix()
        assert set(np.unique(m.indices)) <= set(feats)
        want = expected(sae, store, hook, "all", feats)
        np.testing.assert_allclose(m[:, feats].toarray(), want, rtol=1e-5, atol=1e-5)
    path = run_export(ExportConfig(run=str(run), features="3,200", format="json"))
    items = json.loads(path.read_text())
    assert len(items) == store.n_prompts and items[0]["id"] == "q0"
    first = items[1]
    assert len(first["token_ids"]) == len(first["features"][NAMES[0]]["3"])
    assert first["tokens"][0] == "<|im_start|>"
    npz = np.load(run_export(ExportConfig(run=str(run), features="3,200", format="npz")))
    vals = npz[f"{NAMES[1]}/values"]
    assert vals.shape == (store.n_rows, 2)
    with pytest.raises(SaelabError, match="feature 4 was not kept"):
        run_export(ExportConfig(run=str(run), features="4", format="json"))


def test_a_killed_encode_resumes_at_the_first_missing_shard(store_run, saes, tmp_path):
    run = copy_run(store_run, tmp_path / "run")
    run_encode(EncodeConfig(saes=str(saes), run=str(run), quiet=True))
    whole = {p.relative_to(run): p.read_bytes() for p in (run / "codes").rglob("*.safetensors")}
    # as if killed during the second hook: one of its shards and the record of it are gone
    (run / "codes" / NAMES[1] / "00001.safetensors").unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["stages"]["encode"]["units"][NAMES[1]]
    (run / "manifest.json").write_text(json.dumps(manifest))
    stamp = (run / "codes" / NAMES[1] / "00000.safetensors").stat().st_mtime_ns
    run_encode(EncodeConfig(saes=str(saes), run=str(run), quiet=True))
    again = {p.relative_to(run): p.read_bytes() for p in (run / "codes").rglob("*.safetensors")}
    assert again == whole
    assert (run / "codes" / NAMES[1] / "00000.safetensors").stat().st_mtime_ns == stamp


def test_show_lists_the_codes(store_run, saes, tmp_path, capsys):
    run = copy_run(store_run, tmp_path / "run")
    run_encode(EncodeConfig(saes=str(saes), run=str(run), positions="last", quiet=True))
    capsys.readouterr()
    main(["show", "--run", str(run)])
    out = capsys.readouterr().out
    assert "codes (RUN/codes/<hook>), positions last" in out
    assert NAMES[0] in out and "saelens" in out


def test_bad_input_is_one_line_and_writes_no_codes(store_run, saes, tmp_path, capsys):
    run = copy_run(store_run, tmp_path / "run")
    wide = tmp_path / "wide"
    SAE(SAEConfig(d_in=64, d_sae=32, architecture="relu",
                  metadata={"hook_name": NAMES[0]})).save(wide)  # fmt: skip
    other = tmp_path / "other"
    random_sae("relu", "blocks.9.hook_resid_post").save(other)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    cases = [
        (["--saes", str(wide), "--hooks", "resid_post.2"], ["d_in=64", "576"]),
        (["--saes", str(other), "--hooks", "resid_post.2", "--strict"], ["blocks.9", "--strict"]),
        (["--saes", str(junk)], ["notes.txt"]),
        (["--saes", str(tmp_path / "nope")], ["does not exist"]),
        (["--saes", str(saes), "--hooks", "resid_post.7"], ["blocks.7.hook_resid_post"]),
        (["--saes", str(saes), "--positions", "first"], ["--positions", "first"]),
        (["--saes", str(saes), "--features", "600"], ["--features", "600"]),
        (["--saes", str(saes), "--features", "x"], ["--features"]),
        (["--saes", "hf://a"], ["hf://"]),
    ]
    for extra, fragments in cases:
        code, err = cli(capsys, "encode", "--run", str(run), "--quiet", *extra)
        one_line(code, err, *fragments)
        assert not any((run / "codes").rglob("*.safetensors")), extra
    # an SAE made for another hook is used with a warning when not --strict
    res = run_encode(EncodeConfig(saes=str(other), run=str(run), hooks="resid_post.2",
                                   overwrite=True, quiet=True))  # fmt: skip
    assert res.hooks[NAMES[0]]["rows"] > 0
