"""A tokenizer for models that have no Hugging Face tokenizer.

saelab turns prompt texts into token ids, and ids back into text, through the few things
every Hugging Face tokenizer has (`tok(texts)["input_ids"]`, `decode`, `bos_token_id`,
`eos_token_id`, `pad_token_id`, `chat_template`). A custom model (`saelab.models.wrap`) may
bring any of:

* nothing: each prompt is then its token ids written as text, `"12 7 3"`;
* a vocabulary `{token: id}`: single-character keys make a character-level tokenizer, longer
  keys a whitespace-word one; `<bos>`, `<eos>`, `<pad>` and `<unk>` keys are special;
* an object with `encode(text) -> ids` (and `decode(ids) -> text`, `bos_token_id`, ...);
* a function `text -> ids`;
* a Hugging Face tokenizer, used as it is.

`as_tokenizer` gives every one of them that interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from saelab.errors import SaelabError

_SPECIALS = {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"}


class SimpleTokenizer:
    """What saelab needs of a tokenizer, over a user's encode/decode functions."""

    chat_template = None

    def __init__(
        self,
        encode: Callable[[str], Sequence[int]],
        decode: Callable[[Sequence[int]], str] | None = None,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        name: str = "tokenizer",
    ):
        self._encode = encode
        self._decode = decode
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.name = name

    @property
    def special_ids(self) -> set[int]:
        ids = (self.bos_token_id, self.eos_token_id, self.pad_token_id)
        return {int(i) for i in ids if i is not None}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [int(t) for t in self._encode(text)]
        if add_special_tokens and self.bos_token_id is not None:
            ids = [int(self.bos_token_id), *ids]
        return ids

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True) -> dict:
        batch = [texts] if isinstance(texts, str) else list(texts)
        ids = [self.encode(t, add_special_tokens) for t in batch]
        return {"input_ids": ids[0] if isinstance(texts, str) else ids}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False, **_: Any) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        if self._decode is None:
            return " ".join(str(i) for i in ids)
        return self._decode(ids)

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.decode([ids])
        return [self.decode([i]) for i in ids]


def _integer_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split()]
    except ValueError:
        raise SaelabError(
            f"prompt {text[:40]!r} is not token ids: this model was wrapped without a"
            " tokenizer, so each prompt must be its ids separated by spaces ('12 7 3'); or pass"
            " tokenizer= (a vocabulary dict, an object with encode/decode, or a function)"
        ) from None


def vocab_tokenizer(vocab: Mapping[str, int]) -> SimpleTokenizer:
    """Character-level when every ordinary token is one character, else whitespace words."""
    specials = {k: vocab.get(v) for k, v in _SPECIALS.items()}
    ordinary = {t: i for t, i in vocab.items() if t not in _SPECIALS.values()}
    if not ordinary:
        raise SaelabError("the tokenizer vocabulary has no ordinary tokens; give {token: id}")
    inverse = {int(i): t for t, i in vocab.items()}
    unk = specials["unk"]
    chars = all(len(t) == 1 for t in ordinary)

    def encode(text: str) -> list[int]:
        out = []
        for piece in text if chars else text.split():
            i = ordinary.get(piece, unk)
            if i is None:
                raise SaelabError(
                    f"{piece!r} is not in the model's vocabulary and it has no <unk> token:"
                    " remove it from the prompt or add <unk> to the vocabulary"
                )
            out.append(int(i))
        return out

    def decode(ids: Sequence[int]) -> str:
        return ("" if chars else " ").join(inverse.get(int(i), "?") for i in ids)

    return SimpleTokenizer(
        encode,
        decode,
        bos_token_id=specials["bos"],
        eos_token_id=specials["eos"],
        pad_token_id=specials["pad"],
        name="char-level" if chars else "word-level",
    )


def _is_hf(tok: Any) -> bool:
    return hasattr(tok, "convert_ids_to_tokens") and hasattr(tok, "bos_token_id")


def as_tokenizer(tok: Any) -> Any:
    """Any supported tokenizer as one saelab can use (see the module docstring)."""
    if tok is None:
        return SimpleTokenizer(_integer_ids, name="integer ids")
    if _is_hf(tok):
        return tok
    if isinstance(tok, Mapping):
        return vocab_tokenizer(tok)
    if hasattr(tok, "encode"):
        return SimpleTokenizer(
            tok.encode,
            getattr(tok, "decode", None),
            bos_token_id=getattr(tok, "bos_token_id", None),
            eos_token_id=getattr(tok, "eos_token_id", None),
            pad_token_id=getattr(tok, "pad_token_id", None),
            name=type(tok).__name__,
        )
    if callable(tok):
        return SimpleTokenizer(tok, name=getattr(tok, "__name__", "function"))
    raise SaelabError(
        f"tokenizer of type {type(tok).__name__} is not usable: give a vocabulary dict, an"
        " object with encode(text)/decode(ids), a function text -> ids, or None for id prompts"
    )
