"""Inputs are refused before the model loads, in one line: hooks against the model's depth
(read from its config, as `plan` does), SAE widths (from the SAE's header), option ranges and
group columns. A value meaning "the default" is spelled by leaving the option out: 0 or a
negative size is refused, naming the option and its range.

Nothing is timed: the Hugging Face loader is replaced by one that counts and fails, so a
refusal that came only after loading the model fails the test."""

from __future__ import annotations

import json

import pytest
import transformers

from saelab.errors import SaelabError
from saelab.pipeline.encode import EncodeConfig, run_encode
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.train import TrainConfig, run_train
from tests.cli_errors import cli, one_line


@pytest.fixture(scope="module")
def run(smol, tmp_path_factory):
    """A real small run: extract, train and encode of one hook (4 prompts per group)."""
    tmp = tmp_path_factory.mktemp("early")
    prompts = tmp / "p.jsonl"
    prompts.write_text("".join(
        json.dumps({"text": f"{'Dear sir, kindly' if i % 2 else 'yo dude'} item {i}",
                    "group": "a" if i % 2 else "b"}) + "\n" for i in range(8)))  # fmt: skip
    run = tmp / "run"
    run_extract(ExtractConfig(prompts=str(prompts), hooks="resid_post.1", run=str(run),
                              quiet=True), lm=smol)  # fmt: skip
    run_train(TrainConfig(run=str(run), expansion=2, k=4, batch_size=16, splice=False,
                          quiet=True))  # fmt: skip
    run_encode(EncodeConfig(run=str(run), saes=str(run / "saes"), quiet=True))
    return run


@pytest.fixture
def loads(monkeypatch):
    """How often a model was loaded; loading fails (the refusal must come first)."""
    count = [0]

    def refuse(*args, **kwargs):
        count[0] += 1
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    return count


RANGES = [
    (["train", "--expansion", "0"], ["--expansion 0", "at least 1", "leave it out", "(8)"]),
    (["train", "--expansion", "-2"], ["--expansion -2", "at least 1"]),
    (["train", "--tokens", "0"], ["--tokens 0", "at least 1", "leave it out for the default"]),
    (["train", "--tokens", "-100"], ["--tokens -100", "at least 1"]),
    (["train", "--d-sae", "0"], ["--d-sae 0", "at least 1"]),
    (["train", "--k", "0"], ["--k 0", "at least 1"]),
    (["train", "--eval-every", "0"], ["--eval-every 0", "at least 1"]),
    (["train", "--checkpoint-every", "0"], ["--checkpoint-every 0", "at least 1"]),
    (["train", "--patience", "-1"], ["--patience -1", "at least 0"]),
    (["train", "--stream", "--context", "1"], ["--context 1", "at least 2"]),
    (["extract", "--shard-size", "0"], ["--shard-size 0", "at least 1"]),
    (["extract", "--limit", "0"], ["--limit 0", "at least 1"]),
    (["contrast", "--groups", "a,b", "--top", "-1"], ["--top -1", "at least 0"]),
    (["contrast", "--groups", "a,b", "--min-active", "0"], ["--min-active 0", "at least 1"]),
    (["patch", "--edits", "resid_post.1:1=0", "--generate", "0"], ["--generate 0", "at least 1"]),
    (["inspect", "--hook", "resid_post.1", "--features", "1", "--top", "-3"], ["--top -3"]),
]


@pytest.mark.parametrize("args,fragments", RANGES, ids=lambda v: " ".join(v)[:40])
def test_zero_or_negative_sizes_are_refused_naming_the_range(run, loads, capsys, args, fragments):
    one_line(*cli(capsys, "-q", *args, "--run", str(run)), *fragments)
    assert loads[0] == 0


def test_sizes_are_refused_when_the_config_is_built():
    """The library path too: a config with a 0 size never exists."""
    with pytest.raises(SaelabError, match=r"`expansion` 0 is out of range"):
        TrainConfig(run="r", expansion=0)
    assert TrainConfig(run="r", expansion=None).expansion is None  # absent: the default


BEFORE_LOAD = [
    (["extract", "--hooks", "resid_post.99", "--prompts", "{prompts}", "--run", "{fresh}"],
     ["resid_post.99", "30 layers"]),
    (["train", "--stream", "--hooks", "resid_post.99", "--run", "{fresh}"],
     ["resid_post.99", "30 layers"]),
    (["encode", "--saes", "{run}/saes", "--hooks", "resid_post.99", "--run", "{fresh}",
      "--prompts", "{prompts}"], ["resid_post.99", "30 layers"]),
    (["patch", "--edits", "resid_post.99:1=0", "--run", "{run}"], ["resid_post.99", "30 layers"]),
    (["patch", "--edits", "resid_post.1:99999=0", "--run", "{run}"], ["99999", "d_sae 1152"]),
    (["patch", "--edits", "resid_post.1:1=0", "--at", "nope", "--run", "{run}"], ["--at 'nope'"]),
    (["patch", "--edits", "resid_post.1:1=0", "--top-p", "3", "--run", "{run}"], ["--top-p 3"]),
    (["patch", "--edits", "resid_post.1:1=0", "--temperature", "-1", "--run", "{run}"],
     ["--temperature -1"]),
    (["inspect", "--hook", "resid_post.99", "--features", "1", "--run", "{run}"],
     ["resid_post.99", "30 layers"]),
    (["inspect", "--hook", "resid_post.1", "--features", "99999", "--run", "{run}"],
     ["99999", "numbered 0-1151"]),
    (["contrast", "--groups", "a,b", "--group-column", "nope", "--run", "{run}"],
     ["--group-column nope", "no column 'nope'", "columns: 'text', 'group'"]),
]  # fmt: skip


@pytest.mark.parametrize("args,fragments", BEFORE_LOAD, ids=lambda v: " ".join(v)[:50])
def test_inputs_are_checked_before_the_model_loads(run, loads, capsys, tmp_path, args, fragments):
    names = {"run": str(run), "fresh": str(tmp_path / "fresh"),
             "prompts": str(run.parent / "p.jsonl")}  # fmt: skip
    argv = [a.format(**names) for a in args]
    state = [(run / f).read_bytes() for f in ("run.toml", "manifest.json")]
    one_line(*cli(capsys, "-q", *argv), *fragments)
    assert loads[0] == 0
    assert [(run / f).read_bytes() for f in ("run.toml", "manifest.json")] == state
