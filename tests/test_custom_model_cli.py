"""A custom model (no `transformers` code) through every stage from the command line:
`--model module:tests.tiny_custom:build_trained` for extract, train (with its own stream of
prompts), encode, contrast and patch, as a user with their own PyTorch model would run them."""

from __future__ import annotations

import json

import duckdb
import pytest
import torch

from tests.cli_errors import cli
from tests.tiny_custom import accuracy, run_text, train

MODEL = "module:tests.tiny_custom:build_trained"


@pytest.mark.slow
def test_every_stage_runs_on_a_custom_model(capsys, tmp_path, monkeypatch):
    model = train()
    assert accuracy(model) > 0.9  # it learned the task: there is structure to find
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    monkeypatch.setenv("TINY_CUSTOM_WEIGHTS", str(tmp_path / "tiny.pt"))
    rows = [
        {"text": run_text(start, 8, up), "group": "up" if up else "down"}
        for start in range(26)
        for up in (True, False)
    ]
    prompts = tmp_path / "runs.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = str(tmp_path / "run")
    hook = "encoder.layers.1"
    steps = [
        ("extract", "--model", MODEL, "--prompts", str(prompts), "--hooks", hook, "--run", run),
        ("train", "--run", run, "--d-sae", "128", "--k", "8", "--batch-size", "64",
         "--tokens", "20000", "--epochs", "40", "--patience", "0", "--no-splice"),
        ("encode", "--run", run, "--saes", f"{run}/saes", "--positions", "mean"),
        ("contrast", "--run", run, "--groups", "up,down", "--pool", "mean", "--min-active", "3"),
        ("patch", "--run", run, "--sweep", "top:2", "--values", "0,@20", "--generate", "3",
         "--at", "all"),
    ]  # fmt: skip
    for args in steps:
        code, err = cli(capsys, *args, "--quiet")[:2]
        assert code == 0, (args[0], err)
    con = duckdb.connect()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    for stage in ("extract", "train", "encode", "contrast", "patch"):
        assert manifest["stages"][stage]["complete"], stage
    run_dir = tmp_path / "run"
    q_min = con.execute(f"SELECT min(q) FROM '{run_dir}/stats/contrast.parquet'").fetchone()[0]
    assert q_min < 1e-6  # the mode sign is carried in layer 1: up and down runs are told apart
    per_edit = dict(
        con.execute(
            f"SELECT edit, min(applied) FROM '{run_dir}/patch/results.parquet' GROUP BY edit"
        ).fetchall()
    )
    assert per_edit.pop("baseline") == 0 and len(per_edit) == 4  # 2 features x 2 values
    assert min(per_edit.values()) > 0  # every edited row had its edits applied
    kl = dict(
        con.execute(
            f"SELECT edit, avg(kl) FROM '{run_dir}/patch/results.parquet' GROUP BY edit"
        ).fetchall()
    )
    steered = max(v for k, v in kl.items() if k.endswith("@20"))
    assert steered > 0.01  # steering a feature hard moves the custom model's next letters
