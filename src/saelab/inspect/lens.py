"""Logit lens of a feature: which tokens its decoder direction promotes and suppresses.

The direction is read the way the model reads the residual stream at its end: through the
final norm, then the unembedding. What the norm adds on its own (a LayerNorm's bias) and the
unembedding's bias are taken out by subtracting the same path applied to a zero vector, so
only the direction's own effect remains; for RMSNorm (Llama, Gemma, Qwen) that is exactly
W_U (gamma * d / rms(d)). Ranking is unchanged by the direction's length.
"""

from __future__ import annotations

from typing import Any

import torch

from saelab.errors import SaelabError


def final_norm(lm: Any) -> torch.nn.Module:
    """The model's final norm module (the adapter lists where each family keeps it)."""
    for path in lm.adapter.final_norm:
        try:
            return lm.model.get_submodule(path)
        except AttributeError:
            continue
    raise SaelabError(
        f"model {lm.name}: no final norm at {', '.join(lm.adapter.final_norm)}; the logit lens"
        " needs it"
    )


@torch.no_grad()
def direction_logits(lm: Any, directions: torch.Tensor) -> torch.Tensor:
    """(n, vocab) logits of n residual-stream directions (n, d_model), float32 on CPU."""
    head = lm.model.get_output_embeddings()
    if head is None:
        raise SaelabError(f"model {lm.name} has no unembedding; the logit lens needs one")
    norm = final_norm(lm)
    p = next(head.parameters())
    d = directions.to(device=p.device, dtype=p.dtype)
    zero = torch.zeros(1, d.shape[1], device=p.device, dtype=p.dtype)
    out = head(norm(d[:, None, :]))[:, 0] - head(norm(zero[:, None, :]))[:, 0]
    return out.float().cpu()


def logit_lens(lm: Any, w_dec_rows: torch.Tensor, k: int = 10) -> list[dict[str, list[Any]]]:
    """Per direction: the k tokens it promotes most and suppresses most, with their logits."""
    if w_dec_rows.shape[-1] != lm.d_model:
        raise SaelabError(
            f"decoder rows have width {w_dec_rows.shape[-1]}, the model's residual stream"
            f" {lm.d_model}: the logit lens needs an SAE on the residual stream's width"
        )
    logits = direction_logits(lm, w_dec_rows)
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1)
    bottom = (-logits).topk(k, dim=1)
    out = []
    for i in range(len(logits)):
        up = [int(t) for t in top.indices[i]]
        down = [int(t) for t in bottom.indices[i]]
        out.append(
            {
                "promoted_ids": up,
                "promoted": decode_tokens(lm.tokenizer, up),
                "promoted_logits": [float(v) for v in top.values[i]],
                "suppressed_ids": down,
                "suppressed": decode_tokens(lm.tokenizer, down),
                "suppressed_logits": [-float(v) for v in bottom.values[i]],
            }
        )
    return out


def decode_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token id as its own text (spaces kept), for showing tokens one by one."""
    return [tokenizer.decode([int(t)]) for t in ids]
