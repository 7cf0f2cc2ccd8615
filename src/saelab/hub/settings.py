"""Where the hub is and where its cache lives, read when a call is made.

huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE once, when it is
first imported (`huggingface_hub.constants`). A notebook or a test that sets them afterwards
would be ignored, so saelab reads the environment at call time and falls back to those
constants only when a variable is unset. HF_TOKEN needs nothing here: huggingface_hub's
`build_hf_headers` already reads it at call time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants

_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubSettings:
    """The hub configuration in force for one call."""

    endpoint: str  # e.g. "https://huggingface.co", no trailing slash
    cache_dir: Path  # the hub cache: HF_HUB_CACHE, else HF_HOME/hub
    offline: bool  # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE): never touch the network


def current() -> HubSettings:
    """The settings from the environment now, else huggingface_hub's import-time constants."""
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if os.environ.get("HF_HUB_CACHE"):
        cache = os.environ["HF_HUB_CACHE"]
    elif os.environ.get("HF_HOME"):
        cache = os.path.join(os.environ["HF_HOME"], "hub")
    else:
        cache = constants.HF_HUB_CACHE
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    offline = flag.strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)
    return HubSettings(
        endpoint=endpoint.rstrip("/"),
        cache_dir=Path(os.path.expandvars(os.path.expanduser(cache))),
        offline=offline,
    )
