"""Dense activation store (zarr v3 under `RUN/activations/`); usable without a run or the CLI."""

from saelab.store.activations import STORE_DIR, ActivationWriter
from saelab.store.reader import ActivationStore, HookArray, open_activations

__all__ = ["STORE_DIR", "ActivationStore", "ActivationWriter", "HookArray", "open_activations"]
