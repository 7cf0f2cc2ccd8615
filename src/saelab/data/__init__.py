"""Prompt tables, the built-in demo prompts, and token streams for SAE training.

Re-exported here so notebooks and stages import one place: `from saelab.data import read_prompts`.
"""

from saelab.data.corpus import (
    STDLIB_SOURCE,
    TokenWindows,
    builtin_text,
    corpus_fingerprint,
    iter_texts,
    pack_windows,
    split_windows,
)
from saelab.data.prompts import DEMO_SOURCE, PromptTable, demo_prompts, read_prompts

__all__ = [
    "DEMO_SOURCE",
    "STDLIB_SOURCE",
    "PromptTable",
    "TokenWindows",
    "builtin_text",
    "corpus_fingerprint",
    "demo_prompts",
    "iter_texts",
    "pack_windows",
    "read_prompts",
    "split_windows",
]
