"""Prompt tables and the built-in demo prompts.

Re-exported here so notebooks and stages import one place: `from saelab.data import read_prompts`.
"""

from saelab.data.prompts import DEMO_SOURCE, PromptTable, demo_prompts, read_prompts

__all__ = ["DEMO_SOURCE", "PromptTable", "demo_prompts", "read_prompts"]
