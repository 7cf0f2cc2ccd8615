"""`saelab train` end to end on the real default model: store and stream data, the SAE files
and metrics it leaves, resume after a kill, and refusals of bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.errors import SaelabError
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractOptions
from saelab.pipeline.train import TrainOptions, run_train
from saelab.run import RunFolder, tree_digests
from saelab.sae import SAE
from saelab.store import open_activations
from saelab.store.activations import ActivationWriter
from tests.cli_errors import cli, one_line

HOOKS = "resid_post.3,resid_post.5"
SMALL = dict(d_sae=256, k=8, batch_size=128, lr=2e-3, quiet=True)


def _texts(n: int) -> list[str]:
    from saelab.data.corpus import iter_texts

    out = []
    for t in iter_texts("builtin:stdlib"):
        if len(t) > 200:
            out.append(t[:400])
        if len(out) == n:
            return out
    raise AssertionError("the standard library has too few docstrings")


@pytest.fixture(scope="module")
def store_run(smol, tmp_path_factory) -> Path:
    """A run folder with ~4k stored tokens of two hooks (real text through the real model)."""
    root = tmp_path_factory.mktemp("train")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(60)))
    run = root / "run"
    run_extract(
        ExtractOptions(
            prompts=str(prompts), hooks=HOOKS, run=str(run), quiet=True, store_dtype="float32"
        ),
        lm=smol,
    )
    return run


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_train_from_the_store_leaves_loadable_saes_and_honest_metrics(store_run, tmp_path, capsys):
    run = _copy(store_run, tmp_path / "run")
    res = run_train(TrainOptions(run=str(run), epochs=4, holdout=6, **{**SMALL, "quiet": False}))
    out = capsys.readouterr().out
    assert set(res) == {"blocks.3.hook_resid_post", "blocks.5.hook_resid_post"}
    store = open_activations(run)
    offsets = np.asarray(store.row_offsets)
    for hook, m in res.items():
        assert f"{hook}: explained variance" in out
        assert 0.5 < m["explained_variance"] <= 1.0, m
        assert m["l0"] == pytest.approx(8.0)
        assert 0 <= m["dead_fraction"] < 1 and m["warnings"] == []
        assert 0.0 < m["ce_loss_recovered"] <= 1.05 and m["kl_div"] >= 0
        assert sum(c for _, _, c in m["density_histogram"]) == 256
        folder = run / "saes" / hook
        cfg = json.loads((folder / "cfg.json").read_text())
        assert cfg["d_in"] == 576 and cfg["d_sae"] == 256 and cfg["architecture"] == "topk"
        assert cfg["k"] == 8 and cfg["metadata"]["hook_name"] == hook
        assert cfg["metadata"]["l0"] == pytest.approx(m["l0"])
        assert (folder / "sparsity.safetensors").is_file()
        # the saved SAE works on raw activations: same EV as reported, on the held-out prompts
        sae = SAE.load(folder)
        rows = torch.from_numpy(np.asarray(store[hook][int(offsets[-7]) :])).float()
        rows = rows[np.isin(np.arange(int(offsets[-7]), int(offsets[-1])), offsets[:-1]) == 0]
        with torch.no_grad():
            x_hat = sae(rows)
        ev = 1 - ((x_hat - rows) ** 2).sum() / ((rows - rows.mean(0)) ** 2).sum()
        assert float(ev) == pytest.approx(m["explained_variance"], abs=2e-3)
    units = RunFolder(run).done_units("train")
    assert set(units) == set(res)
    assert not any((run / "checkpoints" / "train").glob("*.pt"))
    # a second call finds the work done and changes nothing
    before = {h: (run / "saes" / h / "sae_weights.safetensors").read_bytes() for h in res}
    again = run_train(TrainOptions(run=str(run), epochs=4, holdout=6, **SMALL))
    assert again.keys() == res.keys()
    for h in res:
        assert (run / "saes" / h / "sae_weights.safetensors").read_bytes() == before[h]
    # another configuration is refused and changes nothing
    with pytest.raises(SaelabError, match="another configuration.*--overwrite"):
        run_train(TrainOptions(run=str(run), epochs=4, holdout=6, **{**SMALL, "k": 4}))
    for h in res:
        assert (run / "saes" / h / "sae_weights.safetensors").read_bytes() == before[h]


def _train_cmd(run: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "saelab", "train", "--run", str(run),
        "--hooks", "resid_post.3", "--d-sae", "1024", "--k", "8", "--batch-size", "64",
        "--epochs", "12", "--checkpoint-every", "10", "--patience", "0", "--no-splice",
        "--quiet", *extra,
    ]  # fmt: skip


def test_a_killed_training_resumes_to_the_same_weights(store_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = _copy(store_run, tmp_path / "whole")
    subprocess.run(_train_cmd(whole), check=True, env=env, timeout=600)
    killed = _copy(store_run, tmp_path / "killed")
    ckpt = killed / "checkpoints" / "train" / "blocks.3.hook_resid_post.pt"
    proc = subprocess.Popen(_train_cmd(killed), env=env)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # let it run past the checkpoint, then kill it mid-step
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    step = torch.load(ckpt, weights_only=True)["trainers"]["blocks.3.hook_resid_post"]["state"][
        "step"
    ]
    assert step > 0
    assert not (killed / "saes" / "blocks.3.hook_resid_post").exists()
    subprocess.run(_train_cmd(killed), check=True, env=env, timeout=600)
    name = "saes/blocks.3.hook_resid_post/sae_weights.safetensors"
    assert (killed / name).read_bytes() == (whole / name).read_bytes()


def test_stream_trains_every_hook_from_one_pass(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(120)))
    run = tmp_path / "run"
    res = run_train(
        TrainOptions(
            run=str(run),
            stream=True,
            corpus=str(corpus),
            hooks=HOOKS,
            tokens=6144,
            context=64,
            holdout=8,
            **SMALL,
        )  # fmt: skip
    )
    assert set(res) == {"blocks.3.hook_resid_post", "blocks.5.hook_resid_post"}
    for hook, m in res.items():
        assert m["train_tokens"] == 6144 and m["l0"] == pytest.approx(8.0)
        assert m["explained_variance"] > 0.3 and "ce_loss_recovered" in m
        cfg = json.loads((run / "saes" / hook / "cfg.json").read_text())
        assert cfg["metadata"]["dataset_path"] == str(corpus)
        assert cfg["metadata"]["context_size"] == 64


# -- bad input -------------------------------------------------------------------------------


def test_bad_training_input_gets_one_line_and_leaves_the_run_as_it_was(store_run, tmp_path, capsys):
    run = _copy(store_run, tmp_path / "run")
    before = tree_digests(run)
    args = ["train", "--run", str(run), "--quiet", "--no-splice"]
    cases = [
        (["--hooks", "resid_post.9"], ["blocks.9.hook_resid_post", "extract it first"]),
        (["--k", "300", "--d-sae", "256"], ["--k 300", "d_sae"]),
        (["--arch", "gated"], ["--arch", "gated"]),
        (["--batch-size", "0"], ["--batch-size 0"]),
        (["--epochs", "0"], ["--epochs 0"]),
        (["--dtype", "float8"], ["--dtype"]),
        (["--batch-size", "100000"], ["fewer than one batch", "--batch-size"]),
        (["--holdout", "50", "--batch-size", "1024"], ["--holdout 50", "hold out fewer"]),
        (["--holdout", "abc"], ["holdout", "abc"]),
        (["--holdout", "1.5"], ["below 1"]),
    ]
    for extra, fragments in cases:
        code, err = cli(capsys, *args, *extra)
        one_line(code, err, *fragments)
        assert tree_digests(run) == before, extra
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    code, err = cli(capsys, "train", "--run", str(tmp_path / "s"), "--stream", "--corpus",
                    str(empty), "--quiet")  # fmt: skip
    one_line(code, err, "empty.txt")
    code, err = cli(capsys, "train", "--run", str(tmp_path / "nostore"), "--quiet")
    one_line(code, err, "activation store", "extract")


def test_nan_activations_name_the_hook_and_the_prompt(tmp_path, capsys):
    run = tmp_path / "run"
    w = ActivationWriter(run / "activations", hooks=["blocks.0.hook_resid_post"],
                         d_model={"blocks.0.hook_resid_post": 16}, dtype="float32")  # fmt: skip
    rng = np.random.default_rng(0)
    toks = [rng.integers(1, 100, 50) for _ in range(40)]
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    x[17 * 50 + 3, 5] = np.nan  # prompt 17
    w.write_shard(0, prompt_index=np.arange(40), token_ids=toks,
                  acts={"blocks.0.hook_resid_post": x})  # fmt: skip
    code, err = cli(capsys, "train", "--run", str(run), "--d-sae", "32", "--k", "4",
                    "--batch-size", "64", "--no-splice", "--quiet")  # fmt: skip
    one_line(code, err, "blocks.0.hook_resid_post", "NaN", "prompt 17")
    assert not (run / "saes").exists()


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(store_run, tmp_path, capsys):
    run = _copy(store_run, tmp_path / "run")
    code, err = cli(capsys, "train", "--run", str(run), "--hooks", "resid_post.3", "--d-sae",
                    "256", "--k", "8", "--batch-size", "64", "--lr", "1e6", "--epochs", "3",
                    "--checkpoint-every", "1", "--no-splice", "--quiet")  # fmt: skip
    one_line(code, err, "diverged", "--lr")
    assert not (run / "saes").exists()
