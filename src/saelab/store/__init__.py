"""Dense activation store (`RUN/activations/`) and generation traces (`RUN/traces/`), zarr v3;
usable without a run or the CLI. `TraceDataset` is imported on first use: it needs torch,
which nothing else here does."""

from typing import Any

from saelab.store.activations import STORE_DIR, ActivationWriter
from saelab.store.codes import Codes, HookCodes, open_codes
from saelab.store.reader import ActivationStore, HookArray, open_activations
from saelab.store.trace_reader import TraceStore, open_traces
from saelab.store.traces import TRACES_DIR, Trace, TraceWriter

__all__ = [
    "STORE_DIR",
    "TRACES_DIR",
    "ActivationStore",
    "ActivationWriter",
    "Codes",
    "HookCodes",
    "HookArray",
    "Trace",
    "TraceDataset",
    "TraceStore",
    "TraceWriter",
    "open_activations",
    "open_codes",
    "open_traces",
]


def __getattr__(name: str) -> Any:
    if name == "TraceDataset":
        from saelab.store.trace_dataset import TraceDataset

        return TraceDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
