"""Batched patched generation: one `model.generate` with a KV cache, row i with its own edits.

Prompts are left padded (as HF generation needs); `patched` edits each row in padded
coordinates, so a row's result does not depend on what else is in the batch beyond the
float rounding of padded attention. Greedy by default; sampling is seeded and leaves the
caller's random state as it was.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.models.capture import make_batch
from saelab.models.tokens import tokenize_prompts
from saelab.patch.apply import patched
from saelab.patch.edits import Edit
from saelab.sae import SAE


@dataclass
class PatchedGeneration:
    """What one batched patched generation produced, one entry per row."""

    token_ids: list[list[int]]  # generated ids per row (prompt excluded), cut after the first EOS
    texts: list[str]  # the generated ids decoded, special tokens skipped
    first_logprobs: torch.Tensor  # (rows, vocab) float32 log-softmax at the first answer position
    token_logprobs: list[list[float]] = field(default_factory=list)  # log p of each kept token
    finish: list[str] = field(default_factory=list)  # "eos" | "length" per row
    applied: list[int] = field(default_factory=list)  # positions each row's edits were applied at


def _eos_ids(lm: Any) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def _token_lists(lm: Any, prompts: Sequence[Sequence[int]] | Sequence[str], chat: bool) -> list:
    if not prompts:
        raise SaelabError("no prompts to generate from")
    if all(isinstance(p, str) for p in prompts):
        return tokenize_prompts(lm.tokenizer, list(prompts), chat=chat).ids  # type: ignore[arg-type]
    if any(isinstance(p, str) for p in prompts):
        raise SaelabError("prompts mix texts and token ids: give one kind")
    ids = [[int(t) for t in p] for p in prompts]
    if any(not p for p in ids):
        raise SaelabError("a prompt has no tokens: every prompt needs at least one")
    return ids


@torch.no_grad()
def generate_patched(
    lm: Any,
    prompts: Sequence[Sequence[int]] | Sequence[str],
    row_edits: Sequence[Sequence[Edit]],
    saes: Mapping[str, SAE],
    *,
    max_new_tokens: int = 16,
    at: str = "last+generated",
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool = False,
    share_prefix: bool = True,
) -> PatchedGeneration:
    """Generate for every row at once; row i uses prompts[i] and row_edits[i] (empty: baseline).

    Texts are tokenized with saelab's BOS rule (and the chat template with `chat`); token id
    lists are used as they are. With `share_prefix`, when edits start at the last prompt token
    and rows repeat prompts (a sweep), each distinct prompt's other tokens are run once and
    their KV cache is shared by its rows."""
    ids = _token_lists(lm, prompts, chat)
    if len(ids) != len(row_edits):
        raise SaelabError(
            f"{len(ids)} prompts but {len(row_edits)} edit rows: give one edit row per prompt"
            " (repeat a prompt to try several edits on it)"
        )
    if max_new_tokens < 1:
        raise SaelabError(f"--max-new-tokens {max_new_tokens} must be at least 1")
    batch = make_batch(ids, lm.pad_id, "left", lm.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": lm.pad_id,
        "return_dict_in_generate": True,
        "output_logits": True,
    }
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    _check_reachable(row_edits, at, max_new_tokens)
    if not getattr(lm, "kv_cache", True):  # a wrapped module: every step re-runs it all
        out, applied = _generate_uncached(lm, batch, row_edits, saes, at, kwargs, seed)
        return _result(lm, batch, out, applied)
    cache = _shared_prefix(lm, ids, batch, row_edits, at) if share_prefix else None
    cached = 0
    if cache is not None:
        kwargs[_cache_kwarg(lm.model)] = cache
        cached = batch.input_ids.shape[1] - 1
    devices = [lm.device] if torch.device(lm.device).type == "cuda" else []
    with (
        torch.random.fork_rng(devices=devices),
        patched(lm, saes, row_edits, batch.lengths, at, cached=cached) as session,
    ):
        torch.manual_seed(seed)
        out = lm.model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs
        )
    session.check_applied()
    return _result(lm, batch, out, session.applied_per_row())


def _result(lm: Any, batch: Any, out: Any, applied: list[int]) -> PatchedGeneration:
    new = out.sequences[:, batch.input_ids.shape[1] :]
    logps = [torch.log_softmax(s.float(), dim=-1) for s in out.logits]  # per step (rows, vocab)
    stops = _eos_ids(lm)
    token_ids, texts, token_lp, finish = [], [], [], []
    for r, row in enumerate(new.tolist()):
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        kept = row if cut is None else row[: cut + 1]
        token_ids.append(kept)
        finish.append("length" if cut is None else "eos")
        texts.append(lm.tokenizer.decode(kept, skip_special_tokens=True))
        token_lp.append([float(logps[k][r, t]) for k, t in enumerate(kept)])
    return PatchedGeneration(
        token_ids=token_ids,
        texts=texts,
        first_logprobs=logps[0].cpu(),
        token_logprobs=token_lp,
        finish=finish,
        applied=applied,
    )


def _generate_uncached(
    lm: Any,
    batch: Any,
    row_edits: Sequence[Sequence[Edit]],
    saes: Mapping[str, SAE],
    at: str,
    kwargs: dict[str, Any],
    seed: int,
) -> tuple[Any, list[int]]:
    """Generation for a model without a KV cache: each step runs the whole padded sequence
    under its own `patched` block (positions count from 0 in every pass), greedy or sampled
    as `kwargs` say. Returns (sequences and per-step logits, positions edited per row)."""
    seq, mask = batch.input_ids, batch.attention_mask
    stops = _eos_ids(lm)
    done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
    applied = [0] * seq.shape[0]
    steps: list[torch.Tensor] = []
    devices = [lm.device] if torch.device(lm.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _ in range(kwargs["max_new_tokens"]):
            with patched(lm, saes, row_edits, batch.lengths, at) as session:
                logits = lm.model(input_ids=seq, attention_mask=mask).logits[:, -1].float()
            applied = [a + b for a, b in zip(applied, session.applied_per_row(), strict=True)]
            steps.append(logits)
            if kwargs.get("do_sample"):
                probs = torch.softmax(logits / max(float(kwargs["temperature"]), 1e-6), dim=-1)
                nxt = torch.multinomial(probs, 1)[:, 0]
            else:
                nxt = logits.argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, lm.pad_id), nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            done |= torch.isin(nxt, torch.tensor(sorted(stops), dtype=nxt.dtype))
            if bool(done.all()):
                break
    for r, edits in enumerate(row_edits):
        if edits and applied[r] == 0:
            raise SaelabError(
                f"edit {edits[0].spec} (row {r}) was applied at no position: it asks for"
                f" positions '{at}'; give more new tokens or another --at"
            )
    return SimpleNamespace(sequences=seq, logits=tuple(steps)), applied


def _check_reachable(row_edits: Sequence[Sequence[Edit]], at: str, max_new_tokens: int) -> None:
    """Refuse, before generating, edits that could never apply: generated token k is fed back
    (and so edited) only when token k+1 is generated, so with one new token `generated`
    positions never run through the model."""
    if at == "generated" and max_new_tokens < 2 and any(row_edits):
        raise SaelabError(
            "edits at generated positions need at least 2 new tokens (a generated token is"
            f" edited when it is fed back to make the next one), not {max_new_tokens}:"
            " generate more tokens or edit at 'last+generated'"
        )


def _cache_kwarg(model: torch.nn.Module) -> str:
    """The name `generate` takes a prepared KV cache under: `cache` from transformers 5.24,
    `past_key_values` before. Asked of the model's own input preparation, not assumed; a
    wrong guess cannot go unnoticed, since the position count then disagrees with the cache."""
    params = inspect.signature(model.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def _shared_prefix(
    lm: Any, ids: list[list[int]], batch: Any, row_edits: Sequence[Sequence[Edit]], at: str
) -> Any:
    """The KV cache of every row's prompt but its last token, computed once per distinct
    prompt and repeated for the rows that share it; None when nothing would be saved."""
    width = batch.input_ids.shape[1]
    if at not in ("last", "generated", "last+generated") or width < 2:
        return None
    if not getattr(lm, "kv_cache", True):  # a wrapped module re-runs the whole sequence
        return None
    if not any(row_edits):
        return None
    keys = [tuple(p) for p in ids]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    if len(first) * 2 > len(keys):  # too few repeats to pay for the extra pass
        return None
    uniq = sorted(first.values())
    pos = {keys[i]: j for j, i in enumerate(uniq)}
    idx = torch.tensor([pos[k] for k in keys], device=batch.input_ids.device)
    sel = torch.tensor(uniq, device=batch.input_ids.device)
    inp = batch.input_ids.index_select(0, sel)[:, : width - 1]
    mask = batch.attention_mask.index_select(0, sel)[:, : width - 1]
    position = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = lm.model(input_ids=inp, attention_mask=mask, position_ids=position, use_cache=True)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    cache.reorder_cache(idx)
    return cache
