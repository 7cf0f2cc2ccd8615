"""What a stage reads from a run folder that an earlier stage wrote: the run's model, its depth,
the prompt table, the activation store, the codes.

Stages meet only through the run folder, so each input has one reader here, and each refusal
says which stage to run first.
"""

from __future__ import annotations

from typing import Any

from saelab.errors import SaelabError
from saelab.models.describe import describe_model
from saelab.models.hooks import hook_point
from saelab.run import RunFolder
from saelab.store import (
    ActivationStore,
    Codes,
    TraceStore,
    open_activations,
    open_codes,
    open_traces,
)
from saelab.store.codes import read_prompt_table


def run_model(run: RunFolder, default: str = "default") -> str:
    """The model spec the run's activations came from (extract records it), else `default`."""
    return str(run.read_config().get("extract", {}).get("model") or default)


def model_depth(run: RunFolder, model: str | None = None, hooks: list[str] | None = None) -> int:
    """The real layer count of the run's model, read from its config or file header (no
    weights). A model not on this machine falls back to the deepest layer the run holds."""
    spec = model or run_model(run)
    try:
        return int(describe_model(spec).shape.n_layers)
    except SaelabError:
        layers = [hook_point(h).layer for h in hooks or []]
        if not layers:
            raise
        return max(layers) + 1


def activations(run: RunFolder) -> ActivationStore:
    """The run's activation store; a missing one names the command that makes it."""
    if not (run.path / "activations").is_dir():
        raise SaelabError(
            f"{run.path} has no activation store: run `saelab extract --run {run.path}` first"
        )
    return open_activations(run.path)


def traces(run: RunFolder) -> TraceStore:
    """The run's generation traces; missing ones name the command that records them."""
    if not (run.path / "traces").is_dir():
        raise SaelabError(
            f"{run.path} has no generation traces; record them with"
            f" `saelab extract --generate N --run {run.path}`"
        )
    return open_traces(run.path)


def codes(run: RunFolder) -> Codes:
    if not (run.path / "codes").is_dir():
        raise SaelabError(f"no codes in {run.path}; run `saelab encode --run {run.path}` first")
    return open_codes(run.path)


def prompt_table(run: RunFolder) -> dict[str, list[Any]]:
    """ids, texts and groups of the prompts extract recorded (RUN/prompts.parquet)."""
    if not (run.path / "prompts.parquet").is_file():
        raise SaelabError(
            f"{run.path} has no prompts.parquet; run `saelab extract --run {run.path}` first"
        )
    return read_prompt_table(run.path / "prompts.parquet")
