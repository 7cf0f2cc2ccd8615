"""Turning prompt texts into token ids, with one explicit rule for BOS.

Tokenizers disagree about BOS: Gemma's adds `<bos>`, SmolLM2's does not add its
`<|im_start|>` BOS, GPT-2's has none by default. Activations at position 0 differ hugely
(attention sink, massive activations), so saelab makes the rule explicit: with
`prepend_bos=True` (the default, as in TransformerLens and SAELens) every prompt starts with
the tokenizer's BOS token exactly once; with False, no special tokens are added at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saelab.errors import SaelabError


@dataclass
class TokenizedPrompts:
    ids: list[list[int]]
    bos_id: int | None
    truncated: int  # prompts cut to max_length

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.ids]

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)


def tokenize_prompts(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    prepend_bos: bool = True,
    max_length: int | None = None,
    chat: bool = False,
) -> TokenizedPrompts:
    """Token ids per prompt. With `chat`, each text becomes one user turn of the tokenizer's
    chat template followed by the assistant's turn opening, as instruct models expect."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SaelabError("`chat`: this model's tokenizer has no chat template; drop `chat`")
        enc = []
        for t in texts:
            r = tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True
            )
            enc.append(list(r["input_ids"] if hasattr(r, "keys") else r))  # dict in HF >= 5
    else:
        enc = tokenizer(list(texts), add_special_tokens=prepend_bos)["input_ids"]
    ids: list[list[int]] = []
    truncated = 0
    for toks in enc:
        toks = list(toks)
        if prepend_bos and bos is not None and (not toks or toks[0] != bos):
            toks = [bos, *toks]
        if max_length is not None and len(toks) > max_length:
            toks = toks[:max_length]
            truncated += 1
        ids.append(toks)
    return TokenizedPrompts(ids, bos if prepend_bos else None, truncated)
